"""Pixel-space plumbing shared by inversion and distance maps: the metric's value range, a
Gaussian blur, the progress bar and the seeded generator.

Both tools work on [0, 1] pixels (what :meth:`RobustDistance.to_unit` returns) and hand images
back to the metric in its own ``value_range``, so they use the metric's public calls only.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from ..validation import check_int

__all__ = ["from_unit", "gaussian_blur", "progress_bar", "generator"]


def from_unit(metric, x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels mapped into ``metric.value_range``, the inverse of ``metric.to_unit``.

    Example:
        >>> from types import SimpleNamespace
        >>> from_unit(SimpleNamespace(value_range=(-1.0, 1.0)), torch.tensor([0.0, 0.5, 1.0]))
        tensor([-1.,  0.,  1.])
    """
    low, high = metric.value_range
    if (low, high) == (0.0, 1.0):
        return x
    return low + (high - low) * x


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """``[N, H, W]`` maps blurred by a separable Gaussian of ``sigma`` pixels (edges replicated);
    ``sigma == 0`` returns them unchanged. The kernel spans 3 sigma each side, and its weights sum
    to 1, so a constant map stays constant.

    Example:
        >>> m = torch.zeros(1, 9, 9); m[0, 4, 4] = 1.0
        >>> b = gaussian_blur(m, 1.0)
        >>> round(float(b.sum()), 6), bool(b[0, 4, 4] == b.max())
        (1.0, True)
        >>> bool(torch.allclose(gaussian_blur(torch.full((1, 4, 4), 0.5), 2.0), torch.tensor(0.5)))
        True
    """
    if sigma == 0:
        return maps
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    kernel = torch.exp(-taps.pow(2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    x = F.pad(maps[:, None].float(), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "step"):
    """A tqdm bar on stderr (a no-op one when ``enabled`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                leave=False)


def generator(seed) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the random numbers are drawn on the CPU and moved to the
    metric's device, so a seed gives the same noise on every device, and the global RNG is left alone.

    Example:
        >>> torch.rand(2, generator=generator(0)).equal(torch.rand(2, generator=generator(0)))
        True
    """
    return torch.Generator().manual_seed(check_int("seed", seed, low=0))
