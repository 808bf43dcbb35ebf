"""Input checks with messages that say how to fix the input (lpips users' most common trap
is the value range: [-1, 1] vs [0, 1] vs [0, 255])."""

from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch

__all__ = ["check_images", "check_value_range", "check_batches", "check_int", "check_real"]


def check_int(name: str, value, low: Optional[int] = None) -> int:
    """``value`` as an int; any integral type (numpy too) is accepted, bools are not.

    Example:
        >>> check_int("steps", 0, low=1)
        Traceback (most recent call last):
        ...
        ValueError: Argument `steps` must be at least 1, but got 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Argument `{name}` must be an integer, but got {value!r}.")
    if low is not None and value < low:
        raise ValueError(f"Argument `{name}` must be at least {low}, but got {value!r}.")
    return int(value)


def check_real(name: str, value, low: float = -math.inf, high: float = math.inf, hint: str = "") -> float:
    """``value`` as a float in ``[low, high]``; ``hint`` is appended to the range error.

    Example:
        >>> check_real("eps", 4.0, 0.0, 1.0, " For 4/255 pass 4/255, not 4.")
        Traceback (most recent call last):
        ...
        ValueError: Argument `eps` must be in [0, 1], but got 4.0. For 4/255 pass 4/255, not 4.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise TypeError(f"Argument `{name}` must be a real number, but got {value!r}.")
    if not low <= value <= high:
        raise ValueError(f"Argument `{name}` must be in [{low:g}, {high:g}], but got {value!r}.{hint}")
    return float(value)


def check_value_range(value_range) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise TypeError(f"Argument `value_range` must be a pair (low, high), but got {value_range!r}.") from None
    if not hi > lo:
        raise ValueError(f"Argument `value_range` must have low < high, but got {value_range!r}.")
    return lo, hi


def check_images(x, name: str, value_range: Tuple[float, float], clamp: Optional[bool] = None) -> Tuple[float, float]:
    """Raise TypeError/ValueError unless ``x`` is a float ``[N, 3, H, W]`` batch within ``value_range``.

    Args:
        clamp: the metric's ``clamp`` option: True accepts (finite) values outside ``value_range``,
            which the caller clamps; False names the option in the range error; None (for callers
            without the option) does neither.

    Returns:
        The batch's (min, max), so callers need no second pass over the pixels.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"`{name}` must be a torch.Tensor of shape [N, 3, H, W], but got {type(x).__name__}; "
            "use rpmetric.load_image(path) or torch.as_tensor(...)."
        )
    if not x.is_floating_point():
        hint = " Convert with x.float() / 255 for 8-bit images." if x.dtype == torch.uint8 else " Convert with x.float()."
        raise TypeError(f"`{name}` must be a floating-point tensor, but got dtype {x.dtype}.{hint}")
    shape = tuple(x.shape)
    if x.ndim != 4:
        hint = " For a single image, add the batch dimension: x.unsqueeze(0)." if x.ndim == 3 else ""
        raise ValueError(f"`{name}` must have 4 dimensions [N, 3, H, W], but got shape {shape}.{hint}")
    if shape[1] != 3:
        if shape[1] == 1:
            hint = " It looks grayscale: repeat the channel with x.repeat(1, 3, 1, 1)."
        elif shape[-1] in (1, 3, 4) and shape[1] > 4:
            hint = " It looks channels-last: use x.permute(0, 3, 1, 2)."
        elif shape[1] == 4:
            hint = " It looks RGBA: drop alpha with x[:, :3] (or composite it first)."
        else:
            hint = ""
        raise ValueError(f"`{name}` must have 3 (RGB) channels in dimension 1, but got shape {shape}.{hint}")
    if shape[0] == 0:
        raise ValueError(f"`{name}` is an empty batch (shape {shape}); pass at least one image.")
    if shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"`{name}` has an empty spatial size (shape {shape}).")
    low, high = value_range
    lo_val, hi_val = (float(v) for v in torch.aminmax(x.detach()))  # one device sync for all checks
    if lo_val != lo_val or hi_val != hi_val:
        raise ValueError(f"`{name}` contains NaN values; check the preprocessing that produced it.")
    if lo_val in (float("inf"), float("-inf")) or hi_val in (float("inf"), float("-inf")):
        raise ValueError(f"`{name}` contains infinite values; check the preprocessing that produced it.")
    tol = 1e-3 * (high - low)
    if not clamp and (lo_val < low - tol or hi_val > high + tol):
        raise ValueError(
            f"`{name}` has values in [{lo_val:.4g}, {hi_val:.4g}], outside value_range=({low:g}, {high:g})."
            + _range_hint(lo_val, hi_val, (low, high))
            + (" If they drifted there in an optimisation loop, pass clamp=True to RobustDistance or "
               "rpmetric.distance to clamp them into value_range." if clamp is False else "")
        )
    return lo_val, hi_val


def _range_hint(lo_val: float, hi_val: float, value_range) -> str:
    if lo_val >= -1.001 and lo_val < -1e-3 and hi_val <= 1.001 and value_range != (-1.0, 1.0):
        return " It looks like [-1, 1]: pass value_range=(-1, 1)."
    if lo_val >= -1e-3 and 1.5 < hi_val <= 255.5 and value_range != (0.0, 255.0):
        return " It looks like [0, 255]: divide by 255 or pass value_range=(0, 255)."
    return " Rescale the images into value_range, or pass the range they are in as value_range=(low, high)."


def check_batches(x: torch.Tensor, y: torch.Tensor) -> None:
    """Batch sizes must match, or one of them must be 1 (it broadcasts)."""
    nx, ny = x.shape[0], y.shape[0]
    if nx != ny and 1 not in (nx, ny):
        raise ValueError(
            f"Batch sizes of `x` ({nx}) and `y` ({ny}) do not match; pass equal batches, "
            "or a batch of 1 to compare one image against many."
        )
