"""timm checkpoints in the Hub's layout (config.json with 'architecture', model.safetensors)."""

from __future__ import annotations

import math
import numbers

from torch import nn

from ..spec import MAX_HIDDEN, MAX_IMAGE_SIZE, Preprocessing, config_int, config_real
from .weights import build_checked, read_weights

__all__ = ["build_timm", "timm_preprocessing", "check_timm_config", "check_timm_name"]

# timm.create_model's own keywords, which fetch or open weights (pretrained, pretrained_cfg(_overlay),
# checkpoint_path, cache_dir) or are rpmetric's to set (num_classes): never taken from a config.
_REFUSED_MODEL_ARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
                       "num_classes", "features_only", "scriptable", "exportable", "no_jit", "model_name")


def check_timm_name(key: str, name) -> None:
    """Raise unless ``name`` is a model in timm's registry: a plain name, never ``hf-hub:`` or
    ``local-dir:``, with which timm would fetch a config from the Hub or read another folder."""
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(f"`{key}` {name!r} is not a model of timm {timm.__version__}; give a timm architecture "
                         "name such as 'vit_base_patch16_224' (see timm.list_models()).")


def check_timm_config(config: dict) -> None:
    """Raise ValueError unless timm's ``config.json`` names a known architecture, with ``model_args``
    that fetch and open nothing and sizes within bounds (see :mod:`rpmetric.models.spec`)."""
    check_timm_name("architecture", config.get("architecture"))
    args = config.get("model_args", {})
    if not isinstance(args, dict):
        raise ValueError(f"`model_args` must be an object of timm.create_model keywords, but got {args!r}.")
    for key in args:
        if key in _REFUSED_MODEL_ARGS:
            raise ValueError(f"`model_args` sets {key!r}, which rpmetric does not take from a model folder (the "
                             "folder's own weights are loaded, and nothing is fetched or opened); remove it.")
        _check_numbers(f"model_args.{key}", args[key])
    _pretrained_cfg(config)


def _check_numbers(key: str, value) -> None:
    """Sizes in model_args (ints, also in lists) in [0, MAX_HIDDEN]; other numbers finite."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_numbers(f"{key}[{i}]", v)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        config_int(key, value, low=0, high=MAX_HIDDEN)
    elif isinstance(value, numbers.Real) and not math.isfinite(value):
        raise ValueError(f"`{key}` must be a finite number, but got {value!r}.")


def _pretrained_cfg(config: dict) -> dict:
    pre = config.get("pretrained_cfg", {})
    if not isinstance(pre, dict):
        raise ValueError(f"`pretrained_cfg` must be an object, but got {pre!r}.")
    return pre


def build_timm(files) -> nn.Module:
    """A timm model without classifier; its output is the pooled feature.

    For ViTs with token pooling (DINO) that is the CLS token after the final norm.
    """
    import timm

    arch = files.config["architecture"]
    args = files.config.get("model_args", {})
    # Classifier weights are irrelevant to an embedding: num_classes=0 made the classifier Identity.
    return build_checked(lambda: timm.create_model(arch, pretrained=False, num_classes=0, **args),
                         read_weights(files), config=str(files.config_path), weights=str(files.weights),
                         ignore=lambda model: ((model.pretrained_cfg.get("classifier") or "head") + ".",))


def timm_preprocessing(config: dict) -> Preprocessing:
    """Preprocessing from a timm ``pretrained_cfg`` (crop_pct decides the resize)."""
    pre = _pretrained_cfg(config)
    input_size = pre.get("input_size", [3, 224, 224])
    if not isinstance(input_size, (list, tuple)) or len(input_size) != 3 or input_size[1] != input_size[2]:
        raise ValueError(f"`pretrained_cfg.input_size` must be [3, size, size], but got {input_size!r}.")
    size = config_int("pretrained_cfg.input_size", input_size[-1], high=MAX_IMAGE_SIZE)
    crop_pct = config_real("pretrained_cfg.crop_pct", pre.get("crop_pct", 0.875), 0, 1, low_open=True)
    return Preprocessing(
        image_size=size,
        resize_size=int(math.floor(size / crop_pct)),
        interpolation=pre.get("interpolation", "bicubic"),
        mean=pre.get("mean", (0.485, 0.456, 0.406)),
        std=pre.get("std", (0.229, 0.224, 0.225)),
    )
