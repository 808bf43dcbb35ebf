"""Differentiable image geometry and normalisation, so gradients w.r.t. pixels are exact."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .spec import Preprocessing

__all__ = ["resize_and_crop", "target_size", "shorter_side_size", "Normalize"]


def target_size(height: int, width: int, pp: Preprocessing) -> Tuple[int, int]:
    """Size after the resize step: ``image_size`` squared for ``squash``, else :func:`shorter_side_size`."""
    if pp.resize_mode == "squash":
        return pp.image_size, pp.image_size
    return shorter_side_size(height, width, pp.resize_size)


def shorter_side_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """``(height, width)`` with the shorter side scaled to ``size``, following torchvision's rule
    (the longer side keeps the aspect ratio, truncated).

    Example:
        >>> shorter_side_size(30, 80, 20)
        (20, 53)
    """
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def resize_and_crop(x: torch.Tensor, pp: Preprocessing) -> torch.Tensor:
    """Resize and centre-crop ``[N, C, H, W]`` images to ``pp.image_size``.

    Float images in [0, 1] are resized differentiably. uint8 images (CPU) are resized in 8 bits
    and rounded, as PIL and torchvision's transforms do (within one or two levels of them); data
    loaders use that, since it is several times cheaper. Images already at the model's input size
    pass through untouched, so a 224 input meets the model exactly as in open_clip's own forward.

    Example:
        >>> resize_and_crop(torch.rand(2, 3, 300, 400), Preprocessing(image_size=224, resize_size=256)).shape
        torch.Size([2, 3, 224, 224])
    """
    h, w = x.shape[-2:]
    size = pp.image_size
    if (h, w) == (size, size):
        return x
    new_h, new_w = target_size(h, w, pp)
    if (new_h, new_w) != (h, w):
        smooth = pp.interpolation != "nearest"
        x = F.interpolate(
            x, size=(new_h, new_w), mode=pp.interpolation,
            align_corners=False if smooth else None, antialias=smooth,
        )
        if pp.interpolation == "bicubic" and x.is_floating_point():
            x = x.clamp(0.0, 1.0)  # bicubic overshoots; PIL clips too (and uint8 saturates)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return x[..., top:top + size, left:left + size]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, kept in the model so attacks see [0, 1] pixels."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
