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

    The cost is bounded by the output, whatever the aspect ratio: an image elongated beyond
    ``_WINDOW_ASPECT`` (whose full shortest-side resize would be mostly cropped away: a 1 x 20000
    strip resizes to 256 x 5,120,000) is cropped to the part that survives the centre crop before
    it is resized, with the resize's own filter weights at their own positions, so the pixels are
    those of the full resize and crop (to float rounding; see :func:`_window_resize`). A squash
    resize of a thin strip shrinks the long side first.

    Example:
        >>> resize_and_crop(torch.rand(2, 3, 300, 400), Preprocessing(image_size=224, resize_size=256)).shape
        torch.Size([2, 3, 224, 224])
    """
    h, w = x.shape[-2:]
    size = pp.image_size
    if (h, w) == (size, size):
        return x
    new_h, new_w = target_size(h, w, pp)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    if new_h * new_w > _WINDOW_ASPECT * pp.resize_size ** 2:
        return _window_resize(x, (new_h, new_w), (top, left), size, pp.interpolation)
    if (new_h, new_w) != (h, w):
        if h * new_w > _WINDOW_ASPECT * new_h * w:  # a tall strip: the vertical pass first, as two passes
            x = _resize(_resize(x, (new_h, w), pp.interpolation), (new_h, new_w), pp.interpolation)
        else:
            x = _resize(x, (new_h, new_w), pp.interpolation)
    return x[..., top:top + size, left:left + size]


# Beyond this aspect ratio, the shortest-side resize is mostly cropped away: only the window that
# survives the crop is resized (:func:`_window_resize`). Below it, torch's own kernel does the whole
# resize (cheaper for ordinary images, and exactly the pixels of earlier releases).
_WINDOW_ASPECT = 4


def _resize(x: torch.Tensor, size: Tuple[int, int], interpolation: str) -> torch.Tensor:
    smooth = interpolation != "nearest"
    x = F.interpolate(x, size=size, mode=interpolation, align_corners=False if smooth else None, antialias=smooth)
    if interpolation == "bicubic" and x.is_floating_point():
        x = x.clamp(0.0, 1.0)  # bicubic overshoots; PIL clips too (and uint8 saturates)
    return x


def _window_resize(x: torch.Tensor, new_size: Tuple[int, int], offset: Tuple[int, int], size: int,
                   interpolation: str) -> torch.Tensor:
    """``size`` x ``size`` pixels at ``offset`` of ``x`` resized to ``new_size``, without resizing the rest.

    Each output pixel is a weighted sum of the input pixels under its filter; the weights are those
    of torch's antialiased resize (PIL's), computed for the output rows and columns that the crop
    keeps, over the input window they reach. The horizontal pass runs first and uint8 images are
    rounded to 8 bits after each pass, as in PIL and torch's 8-bit kernel.
    """
    dtype = x.dtype if x.is_floating_point() else torch.float32
    # torch computes a float32 image's weights in float32, others' in float64: so do these.
    exact = "float32" if x.dtype == torch.float32 else "float64"
    (rows, row_w), (cols, col_w) = (_axis_weights(n, m, o, size, interpolation, exact)
                                    for n, m, o in zip(x.shape[-2:], new_size, offset))
    row_w, col_w = (torch.from_numpy(w).to(x.device, dtype) for w in (row_w, col_w))
    window = x[..., rows, :][..., cols]
    out = window.to(dtype) @ col_w.T
    if not x.is_floating_point():
        out = out.round_().clamp_(0, 255)
    out = row_w.to(dtype) @ out
    if not x.is_floating_point():
        return out.round_().clamp_(0, 255).to(x.dtype)
    return out.clamp(0.0, 1.0) if interpolation == "bicubic" else out


def _axis_weights(n_in: int, n_out: int, first: int, count: int, interpolation: str, dtype: str):
    """``(input window, [count, len(window)] weights)`` of outputs ``first .. first + count`` of one axis
    resized from ``n_in`` to ``n_out``: torch's rule for ``nearest``, else its antialiased filters
    (PIL's: bicubic with a = -0.5, or a triangle), stretched by the scale when shrinking."""
    import numpy as np

    out = np.arange(first, first + count)
    if interpolation == "nearest":  # torch: floor(i * in / out), in float32
        scale = np.float32(n_in) / np.float32(n_out)
        index = np.minimum(np.floor(out.astype(np.float32) * scale).astype(np.int64), n_in - 1)
        lo, hi = int(index.min()), int(index.max()) + 1
        weights = np.zeros((count, hi - lo), dtype)
        weights[np.arange(count), index - lo] = 1.0
        return slice(lo, hi), weights
    real = np.dtype(dtype).type
    scale = real(n_in) / real(n_out)
    support = real(2.0 if interpolation == "bicubic" else 1.0) * max(scale, real(1.0))
    stretch = real(1.0) / max(scale, real(1.0))
    center = scale * (out.astype(dtype) + real(0.5))
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((center + support + 0.5).astype(np.int64), n_in)
    lo, hi = int(xmin.min()), int(xmax.max())
    taps = np.arange(lo, hi)[None, :]
    d = np.abs((taps.astype(dtype) - center[:, None] + real(0.5)) * stretch)
    if interpolation == "bicubic":
        a = -0.5
        weights = np.where(d < 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                           np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))
    else:
        weights = np.maximum(1.0 - d, 0.0)
    weights = np.where((taps >= xmin[:, None]) & (taps < xmax[:, None]), weights, 0.0)
    weights = (weights / weights.sum(axis=1, keepdims=True)).astype(dtype)
    return slice(lo, hi), weights


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, kept in the model so attacks see [0, 1] pixels."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
