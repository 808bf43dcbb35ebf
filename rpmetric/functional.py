"""The metric's maths in one place, and the functional API that shares it with RobustDistance."""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F

__all__ = ["cosine_distance", "distance", "DISTANCE_TOLERANCE"]

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


_CACHE: "OrderedDict[tuple, torch.nn.Module]" = OrderedDict()
_CACHE_SIZE = 4
_CACHE_LOCK = threading.Lock()


def distance(x: torch.Tensor, y: torch.Tensor, model=None, *, device=None, value_range=(0.0, 1.0),
             clamp: bool = False) -> torch.Tensor:
    """Perceptual distance ``[N]`` between image batches, loading (once) and caching the model.

    Args:
        x, y: ``[N, 3, H, W]`` float images in ``value_range``; a batch of 1 broadcasts.
        model: zoo name, ``hf-hub:ORG/NAME`` or local folder; None for the default model.
        device: where to run; defaults to the device of ``x``.
        value_range: the range the images are in.
        clamp: clamp inputs into ``value_range`` rather than refuse values outside it, with
            gradients passed straight through (see :class:`~rpmetric.RobustDistance`).

    Example:
        >>> import rpmetric, torch
        >>> d = rpmetric.distance(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))  # doctest: +SKIP
    """
    from .metric import RobustDistance

    device = torch.device(device) if device is not None else x.device if isinstance(x, torch.Tensor) else None
    key = (str(model), str(device), tuple(float(v) for v in value_range), clamp)
    with _CACHE_LOCK:
        metric = _CACHE.get(key)
        if metric is None:
            metric = RobustDistance(model, device=device, value_range=value_range, clamp=clamp)
            _CACHE[key] = metric
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
    return metric(x, y)
