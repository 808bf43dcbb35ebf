"""The encoder: [0, 1] pixels of any size in, the model's projected embedding out.

Geometry and mean/std normalisation live inside, so gradients with respect to pixels are
exact and attacks work in pixel space.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .backbones import build_backbone, native_preprocessing, prefers_own_preprocessing
from .preprocess import Normalize, resize_and_crop
from .spec import ModelSpec

__all__ = ["Encoder", "build_encoder"]


class Encoder(nn.Module):
    """A frozen backbone with its preprocessing.

    Args:
        backbone: maps normalised images at ``spec.preprocessing.image_size`` to ``[N, D]``.
        spec: the model's spec; its ``preprocessing`` must be set.
        resize: resize inputs as the preprocessing prescribes; if False, inputs must already be
            ``image_size`` square.
    """

    def __init__(self, backbone: nn.Module, spec: ModelSpec, resize: bool = True):
        super().__init__()
        if spec.preprocessing is None:
            raise ValueError(f"Spec {spec.name!r} has no preprocessing.")
        self.spec = spec
        self.resize = resize
        self.backbone = backbone
        self.normalize = Normalize(spec.preprocessing.mean, spec.preprocessing.std)
        self.requires_grad_(False)
        self.eval()

    @property
    def image_size(self) -> int:
        return self.spec.preprocessing.image_size

    def train(self, mode: bool = True) -> "Encoder":
        # A frozen encoder keeps eval behaviour (dropout off) even inside a model being trained.
        return super().train(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Resize and crop ``[N, 3, H, W]`` images in [0, 1] to the model's input size."""
        if self.resize:
            return resize_and_crop(x, self.spec.preprocessing)
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"With resize=False the images must be {self.image_size}x{self.image_size}, but got "
                f"{tuple(x.shape[-2:])}; pass resize=True to resize them as the model's preprocessing prescribes."
            )
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projected embeddings ``[N, D]`` (float32, not L2-normalised) of images in [0, 1]."""
        x = self.normalize(self.prepare(x))
        return self.backbone(x.to(_param_dtype(self.backbone))).float()

    def embed(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embeddings of images in [0, 1]; called like :meth:`RobustDistance.embed` so that code taking
        either (the attacks' feature wrapper) can call ``embed(x, normalize=...)``.

        Differs in two ways: no input checks or ``value_range`` (inputs are [0, 1]), and
        ``normalize`` defaults to False here (True there), because an encoder's embedding is the
        raw one :meth:`forward` returns. Code that may get either passes ``normalize`` explicitly.
        """
        f = self(x)
        return torch.nn.functional.normalize(f, dim=-1) if normalize else f


def _param_dtype(module: nn.Module):
    for p in module.parameters():
        return p.dtype
    return torch.float32


def build_encoder(files, spec: ModelSpec, *, resize: bool = True) -> Encoder:
    """The encoder of a checkpoint's fetched files (see :func:`rpmetric.models.hub.resolve`).

    Its preprocessing is the spec's (a zoo entry states it), else the one the checkpoint's own config
    prescribes; a transformers CLIP repo's ``preprocessor_config.json`` wins over the zoo's.
    """
    if spec.preprocessing is None or prefers_own_preprocessing(files):
        spec = replace(spec, preprocessing=native_preprocessing(files))
    return Encoder(build_backbone(files), spec, resize=resize)
