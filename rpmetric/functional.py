"""The metric's maths in one place: RobustDistance and the cached :func:`rpmetric.distance`
(both in :mod:`rpmetric.metric`) call it, and this module imports neither."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cosine_distance", "rgb_to_lab", "DISTANCE_TOLERANCE"]

# How far apart the distances of the same images may lie when they were embedded in different
# batches, positions or thread counts (BLAS rounding is about 1e-7 per embedding element, which
# moves a cosine distance by far less). Threshold tests (dedup, --against) allow this slack, so
# that the same image stored twice is within a threshold of 0. Exact ties between identical images
# do not need it: rpmetric embeds them once (rpmetric.unique).
DISTANCE_TOLERANCE = 1e-6


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - cos(a, b)`` along the last dimension, in float32; ``[N, D]`` inputs broadcast.

    Computed as ``||a/|a| - b/|b|||^2 / 2``, which equals ``1 - cos`` for unit vectors but is exactly
    0 for identical embeddings, never negative, and has finite gradients there (lpips' sqrt-based
    distance gives NaN gradients at ``x == y``).

    Example:
        >>> cosine_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
        tensor([1.])
    """
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    return 0.5 * (a - b).pow(2).sum(dim=-1)


# skimage.color.rgb2lab's constants, which lpips' Lab L2 baseline calls: sRGB primaries to XYZ, and
# the D65 white of the 2-degree observer. (Its cube-root knee, 0.008856 and 7.787, is CIE's, rounded.)
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                 (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """CIELAB ``[N, 3, H, W]`` (L in [0, 100]; float64) of sRGB images ``[N, 3, H, W]`` in [0, 1],
    as ``skimage.color.rgb2lab`` computes it (D65, 2-degree observer), the conversion lpips uses.

    Example:
        >>> rgb_to_lab(torch.ones(1, 3, 1, 1))[0, 0].item()
        100.0
    """
    x = x.double()
    linear = torch.where(x > 0.04045, ((x + 0.055) / 1.055).pow(2.4), x / 12.92)
    matrix = torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64, device=x.device)
    white = torch.tensor(_D65_WHITE, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,njhw->nihw", matrix, linear) / white
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0.008856).pow(1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(dim=1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)
