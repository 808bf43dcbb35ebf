"""Reading images from disk into the tensors the metric takes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .preprocess import shorter_side_size
from .validation import check_int

__all__ = ["load_image", "read_rgb", "read_pixels", "unit_float"]

_EXIF_ORIENTATION = 0x0112


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
            # exif_transpose and convert each return a full copy even when there is nothing to do,
            # a third of the decoding time of a typical JPEG: only call them when needed.
            if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = img.convert("RGB")
            return np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path} cannot be read as an image: {err}") from None


def read_pixels(path: Union[str, Path]) -> torch.Tensor:
    """``[3, H, W]`` uint8 tensor of an image file, as :func:`read_rgb` decodes it.

    The tensor is a channels-last view (``H x W x 3`` in memory): torch's 8-bit resize runs fastest
    on that layout; call ``.contiguous()`` for the usual one.

    Data loaders hand images on in 8 bits, a quarter of the bytes of float32, and resize them
    there as PIL and torchvision's transforms do; :func:`unit_float` turns a batch into [0, 1]
    floats once it has reached its device.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image.
    """
    return torch.tensor(read_rgb(path)).permute(2, 0, 1)  # a copy: PIL's buffer is read-only


def unit_float(x):
    """uint8 pixels in [0, 255] as float32 in [0, 1]; other tensors as float32 (no copy if they
    already are); lists and tuples element by element.

    Example:
        >>> unit_float(torch.tensor([0, 51, 255], dtype=torch.uint8))
        tensor([0.0000, 0.2000, 1.0000])
    """
    if isinstance(x, (list, tuple)):
        return [unit_float(v) for v in x]
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


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
    x = unit_float(read_pixels(path)[None].contiguous())
    if size is not None:
        h, w = shorter_side_size(x.shape[-2], x.shape[-1], check_int("size", size, low=1))
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    return x
