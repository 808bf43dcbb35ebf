"""timm checkpoints in the Hub's layout (config.json with 'architecture', model.safetensors)."""

from __future__ import annotations

import math

from torch import nn

from ..spec import Preprocessing
from .weights import load_strict, read_state_dict

__all__ = ["build_timm", "timm_preprocessing"]


def build_timm(files) -> nn.Module:
    """A timm model without classifier; its output is the pooled feature.

    For ViTs with token pooling (DINO) that is the CLS token after the final norm.
    """
    import timm

    arch = files.config["architecture"]
    model = timm.create_model(arch, pretrained=False, num_classes=0, **files.config.get("model_args", {}))
    state = read_state_dict(files.weights)
    # Classifier weights are irrelevant to an embedding: num_classes=0 made the classifier Identity.
    classifier = model.pretrained_cfg.get("classifier") or "head"
    load_strict(model, state, where=str(files.weights), ignore=(classifier + ".",))
    return model


def timm_preprocessing(config: dict) -> Preprocessing:
    """Preprocessing from a timm ``pretrained_cfg`` (crop_pct decides the resize)."""
    pre = config.get("pretrained_cfg", {})
    size = int(pre.get("input_size", [3, 224, 224])[-1])
    crop_pct = float(pre.get("crop_pct", 0.875))
    return Preprocessing(
        image_size=size,
        resize_size=int(math.floor(size / crop_pct)),
        interpolation=pre.get("interpolation", "bicubic"),
        mean=tuple(pre.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(pre.get("std", (0.229, 0.224, 0.225))),
    )
