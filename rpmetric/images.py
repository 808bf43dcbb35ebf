"""Reading images from disk into the tensors the metric takes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["load_image", "read_rgb"]


def read_rgb(path: Union[str, Path]) -> np.ndarray:
    """``H x W x 3`` uint8 RGB array; grayscale, palette and RGBA files are converted, EXIF rotation applied.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path} cannot be read as an image: {err}") from None


def load_image(path: Union[str, Path], size: Optional[int] = None) -> torch.Tensor:
    """Load an image as a ``[1, 3, H, W]`` float tensor in [0, 1], ready for the metric.

    Args:
        path: image file (anything Pillow reads).
        size: if given, resize so that the shorter side is ``size`` (bicubic); the metric
            resizes by itself, so this only saves memory for very large images.

    Example:
        >>> import rpmetric
        >>> img = rpmetric.load_image("photo.png")  # doctest: +SKIP
        >>> img.shape  # doctest: +SKIP
        torch.Size([1, 3, 480, 640])
    """
    x = torch.from_numpy(read_rgb(path).copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    if size is not None:
        from .preprocess import target_size
        from .spec import Preprocessing

        h, w = target_size(x.shape[-2], x.shape[-1], Preprocessing(image_size=1, resize_size=size))
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    return x
