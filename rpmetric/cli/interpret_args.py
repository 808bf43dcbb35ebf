"""What ``rpmetric invert`` and ``rpmetric explain`` share: images of one size (loaded, brought to
``--size`` when given, and checked), and the short name a figure gives a model."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import torch


def check_files(paths: Sequence[Path]) -> None:
    """Every image exists, or a one-line error naming the first missing one (before a model loads)."""
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Image file not found: {path}")


def load_sized(path: Path, size: Optional[int]) -> torch.Tensor:
    """``[1, 3, H, W]`` in [0, 1]; with ``size``, the shorter side resized to ``size`` (bicubic,
    antialiased) and the centre ``size`` x ``size`` cropped, as a model's preprocessing does."""
    from ..images import load_image

    x = load_image(path, size=size)
    if size is None:
        return x
    height, width = x.shape[-2:]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return x[..., top:top + size, left:left + size].contiguous()


def load_same_size(paths: Sequence[Path], size: Optional[int], why: str) -> List[torch.Tensor]:
    """The images as ``[1, 3, H, W]`` tensors of one size; without ``size`` they must already share
    one, or a one-line error names two that differ and the ``--size`` that fixes it."""
    images = [load_sized(path, size) for path in paths]
    first = images[0].shape[-2:]
    for path, image in zip(paths, images):
        if image.shape[-2:] != first:
            (h0, w0), (h, w) = first, image.shape[-2:]
            raise ValueError(f"{path} is {w} x {h} pixels but {paths[0]} is {w0} x {h0}; {why}: pass "
                             f"`size={min(h0, w0, h, w)}` to bring every image to one square size.")
    return images


def model_label(model: str) -> str:
    """A model's name in a figure: a zoo name as it is, a Hub id or a local folder by its last part.

    Example:
        >>> model_label("hf-hub:chs20/FARE4-ViT-B-32@main"), model_label("/tmp/models/tiny-vit/")
        ('FARE4-ViT-B-32', 'tiny-vit')
    """
    name = model[len("hf-hub:"):] if model.startswith("hf-hub:") else model
    return Path(name.split("@")[0]).name or name
