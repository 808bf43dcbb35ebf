"""Reading images from disk into the tensors the metric takes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .models.preprocess import shorter_side_size
from .validation import check_int

__all__ = ["load_image", "read_rgb", "read_rgb_bytes", "read_pixels", "read_pixels_bytes", "unit_float", "pixel_limit", "DECODE_ERRORS", "decode_failure"]

_EXIF_ORIENTATION = 0x0112
# Pillow's convert("RGB") clips these modes at 255 rather than scaling them, so that a 16-bit
# image loads as white; they are scaled here instead.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_CHUNK_PIXELS = 1 << 20  # rows are scaled in blocks of about this many pixels, to bound the temporaries
# 16-bit value -> nearest 8-bit level (v * 255 / 65535 is never a tie: it is v / 257).
_LEVELS_16 = ((np.arange(65536, dtype=np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


# What decoding and resizing one file can raise: read_rgb's own errors, and a decoder's or an
# allocation's failure. Data loaders report it as that file's reason and go on with the others.
DECODE_ERRORS = (ValueError, FileNotFoundError, OSError, SyntaxError, RuntimeError, MemoryError)


def decode_failure(path: Union[str, Path], err: BaseException) -> str:
    """The one-line reason a loader reports for ``path`` when ``err`` (one of ``DECODE_ERRORS``) stopped it.

    Example:
        >>> decode_failure("a.png", MemoryError())
        'a.png cannot be decoded and resized: MemoryError (out of memory)'
    """
    text = str(err)
    if str(path) in text:  # read_rgb's messages name the file already
        return text
    return f"{path} cannot be decoded and resized: {type(err).__name__} ({text or 'out of memory'})"


def pixel_limit() -> Optional[int]:
    """The most pixels an image file may hold: Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485
    unless changed; None: no limit), read at each call so that raising it for trusted files works."""
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


def _too_large(path: Path, size=None) -> ValueError:
    held = f"it is {size[0]} x {size[1]} = {size[0] * size[1]:,} pixels, over" if size else "it holds more than twice"
    return ValueError(
        f"{path} cannot be read as an image: {held} the limit of {pixel_limit():,} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS, which guards against decompression bombs); downscale the file, or raise "
        "PIL.Image.MAX_IMAGE_PIXELS in Python if it is trusted."
    )


def read_rgb(path: Union[str, Path]) -> np.ndarray:
    """``H x W x 3`` uint8 RGB array of an image file, in any of Pillow's pixel modes; EXIF rotation applied.

    Modes of more than 8 bits are scaled to 8, rounding to nearest: 16-bit (``I;16``, ``I;16B``,
    ``I;16L``) and 32-bit integer (``I``, read as 16-bit values in [0, 65535], as Pillow writes it
    to PNG) by 255/65535, 32-bit float (``F``) from [0, 1]. Pillow's ``convert("RGB")`` converts
    every other mode: transparency is dropped (the colour under it is kept) and CMYK goes through
    Pillow's conversion. Pillow itself decodes 16-bit colour PNGs to 8 bits, keeping the high byte
    of each value (within one level of rounding).

    A file of more than :func:`pixel_limit` pixels is refused from its header, before it is
    decoded (Pillow's decompression-bomb threshold, as an error rather than Pillow's warning).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image, holds more than :func:`pixel_limit` pixels,
            or its ``I`` or ``F`` pixels lie outside the range those modes are read in.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    return _decode(path, path)


def read_rgb_bytes(data: bytes, name: str) -> np.ndarray:
    """:func:`read_rgb` of an image file's bytes (a WebDataset or Parquet sample), with the same
    pixel limit and errors; ``name`` (the sample's key) is what the error messages name.

    Example:
        >>> import io; from PIL import Image
        >>> buf = io.BytesIO(); Image.new("RGB", (3, 2), (255, 0, 0)).save(buf, "PNG")
        >>> read_rgb_bytes(buf.getvalue(), "red").shape
        (2, 3, 3)
    """
    import io

    return _decode(io.BytesIO(data), name)


def _decode(source, path) -> np.ndarray:
    """:func:`read_rgb`'s decoding of ``source`` (a path or a binary file object), naming ``path``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns above its limit and refuses above twice that: both are refused here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(source)
    except Image.DecompressionBombError:
        raise _too_large(path) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path} cannot be read as an image: {err}") from None
    try:
        with opened as img:
            limit = pixel_limit()
            if limit is not None and img.size[0] * img.size[1] > limit:
                raise _too_large(path, img.size)
            # exif_transpose and convert each return a full copy even when there is nothing to do,
            # a third of the decoding time of a typical JPEG: only call them when needed.
            if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
            if img.mode in _WIDE_MODES:
                return _wide_to_rgb(np.asarray(img), img.mode, path)
            if img.mode != "RGB":
                img = img.convert("RGB")
            return np.asarray(img)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path} cannot be read as an image: {err}") from None


def _wide_to_rgb(a: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """``H x W`` pixels of a 16-bit, 32-bit integer or float mode as ``H x W x 3`` uint8 grey."""
    lo, hi = (a.min(), a.max()) if a.size else (0, 0)  # NaN propagates into both
    if mode == "F":
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"{path} holds NaN or infinite pixels; float (mode F) images must hold values in [0, 1].")
        tol = 1e-3  # float rounding at the ends of the range, removed by the clip below
        if lo < -tol or hi > 1 + tol:
            raise ValueError(
                f"{path} holds 32-bit float pixels in [{lo:.4g}, {hi:.4g}]; float (mode F) images are read as "
                "[0, 1]: rescale the file into [0, 1], or save it with 8 or 16 bits per channel."
            )
    elif lo < 0 or hi > 65535:
        raise ValueError(
            f"{path} holds 32-bit integer pixels in [{lo}, {hi}]; integer (mode I) images are read as 16-bit "
            "values in [0, 65535]: rescale the file into that range, or save it with 8 or 16 bits per channel."
        )
    out = np.empty(a.shape + (3,), np.uint8)
    rows = max(1, _CHUNK_PIXELS // max(1, a.shape[1]))
    for r in range(0, a.shape[0], rows):
        block = a[r:r + rows]
        if mode == "F":
            grey = np.floor(np.clip(block, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        else:
            grey = _LEVELS_16[block.astype(np.uint16)]
        out[r:r + rows] = grey[..., None]
    return out


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


def read_pixels_bytes(data: bytes, name: str) -> torch.Tensor:
    """:func:`read_pixels` of an image file's bytes (see :func:`read_rgb_bytes`)."""
    return torch.tensor(read_rgb_bytes(data, name)).permute(2, 0, 1)


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
            resizes by itself, so this only saves memory for very large images. A resize to more
            than :func:`pixel_limit` pixels (a thin strip's long side) is refused.

    Example:
        >>> import rpmetric
        >>> img = rpmetric.load_image("photo.png")  # doctest: +SKIP
        >>> img.shape  # doctest: +SKIP
        torch.Size([1, 3, 480, 640])
    """
    size = None if size is None else check_int("size", size, low=1)
    x = unit_float(read_pixels(path)[None].contiguous())
    if size is not None:
        h, w = shorter_side_size(x.shape[-2], x.shape[-1], size)
        limit = pixel_limit()
        if limit is not None and h * w > max(limit, x.shape[-2] * x.shape[-1]):
            raise ValueError(f"Argument `size` ({size}) would resize {path} ({x.shape[-1]} x {x.shape[-2]}) to {w} x {h} "
                             f"pixels, over the limit of {limit:,}; load it without `size` (the metric crops "
                             "before it resizes).")
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    return x
