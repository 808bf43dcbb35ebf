"""Backbone builders, one per checkpoint layout. Each returns a module mapping normalised
images to the model's embedding (before L2 normalisation)."""

from __future__ import annotations

from torch import nn

from ..spec import Family, Preprocessing
from .hf_vit import build_hf_vit, hf_vit_preprocessing
from .openclip import build_open_clip, open_clip_preprocessing
from .timm_model import build_timm, timm_preprocessing

__all__ = ["build_backbone", "native_preprocessing"]

_BUILDERS = {Family.OPEN_CLIP: build_open_clip, Family.TIMM: build_timm, Family.HF_VIT: build_hf_vit}


def build_backbone(files) -> nn.Module:
    """The backbone for fetched files (see :func:`rpmetric.hub.fetch`)."""
    return _BUILDERS[files.family](files)


def native_preprocessing(files) -> Preprocessing:
    """The preprocessing a checkpoint's own config prescribes (zoo specs override it)."""
    if files.family is Family.OPEN_CLIP:
        return open_clip_preprocessing(files.config)
    if files.family is Family.TIMM:
        return timm_preprocessing(files.config)
    return hf_vit_preprocessing(files.config, files.extras)
