"""Distance maps: where in image B the distance ``d(A, B)`` comes from, as a map ``[H, W]``.

A global-embedding metric has no per-pixel distance (lpips' ``spatial=True``); these maps stand in
for it, computed through the metric's public calls only:

- ``"occlusion"``: for each ``patch`` x ``patch`` window (every ``stride`` pixels, the last row
  and column of windows flush with the border so that every pixel is covered), B's pixels there
  are replaced by A's, and the window scores the change ``d(A, B) - d(A, B with A's window)``:
  how much distance that region of B adds, in distance units (negative where B's region brings B
  closer to A). A pixel's value is the mean score of the windows that cover it. Windows where A
  and B hold the same pixels score exactly 0 and are not embedded, so ``d(A, A)`` gives an
  all-zero map by construction. Each pair's windows are embedded in batches of ``batch_size``,
  against one copy of its A.
- ``"gradient"``: gradient times difference, ``sum_c |∂d/∂B_c · (B_c - A_c)|``: each pixel's
  gradient weighted by how far B is from A there, the first-order estimate of what occlusion
  measures at one pixel. It is in distance units and exactly 0 where A and B agree (before the
  blur), so it answers the same question as occlusion. The gradient is averaged SmoothGrad-style
  over ``samples`` noisy copies of B (Gaussian noise of std ``noise`` in [0, 1] pixel units,
  clamped into [0, 1]) and the map is blurred by a Gaussian of ``smooth`` pixels.
  ``times_difference=False`` gives the plain ``|∂d/∂B|`` summed over the colour channels: where
  small changes of B move the distance most, in distance per unit of [0, 1] pixel value. That is a
  sensitivity, not an attribution: it need not be small where A and B agree, and on random weights
  it is spread evenly over the image (see the README's *Distance maps*).
"""

from __future__ import annotations

from typing import List, Tuple

import torch

from ..validation import check_images, check_int, check_real
from ._pixels import from_unit, gaussian_blur, generator, progress_bar

__all__ = ["distance_map", "METHODS", "window_starts", "DEFAULT_PATCH", "DEFAULT_STRIDE", "DEFAULT_SAMPLES",
           "DEFAULT_NOISE", "DEFAULT_SMOOTH", "DEFAULT_BATCH_SIZE"]

METHODS = ("occlusion", "gradient")
DEFAULT_PATCH = 32
DEFAULT_STRIDE = 16
DEFAULT_SAMPLES = 8
DEFAULT_NOISE = 0.1  # SmoothGrad's paper finds 10-20% of the pixel range works best
DEFAULT_SMOOTH = 2.0
DEFAULT_BATCH_SIZE = 64


def window_starts(length: int, patch: int, stride: int) -> List[int]:
    """Start offsets of windows of ``patch`` pixels every ``stride`` along ``length``, the last one
    flush with the end, so that every pixel is covered.

    Example:
        >>> window_starts(10, 4, 3)
        [0, 3, 6]
        >>> window_starts(11, 4, 3)
        [0, 3, 6, 7]
    """
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def distance_map(metric, a: torch.Tensor, b: torch.Tensor, method: str = "occlusion", *,
                 patch: int = DEFAULT_PATCH, stride: int = DEFAULT_STRIDE, samples: int = DEFAULT_SAMPLES,
                 noise: float = DEFAULT_NOISE, smooth: float = DEFAULT_SMOOTH, times_difference: bool = True,
                 batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """A map of where ``b`` differs from ``a`` in the metric's eyes (see the module's text for the methods).

    Args:
        metric: a :class:`~rpmetric.RobustDistance` (only ``forward``, ``to_unit``, ``value_range`` and
            ``device`` are used). Everything runs on its device.
        a, b: images ``[N, 3, H, W]`` (or one image ``[3, H, W]``) in the metric's ``value_range``, of
            the same height and width; a batch of 1 on either side broadcasts.
        method: ``"occlusion"`` or ``"gradient"``.
        patch, stride: occlusion's window side and step, in pixels; ``patch`` at most the image's
            shorter side.
        samples, noise: gradient's noisy copies per pair and their noise std ([0, 1] pixel units;
            ``noise=0`` with ``samples=1``: no SmoothGrad averaging).
        smooth: gradient's Gaussian blur, std in pixels (0: none).
        times_difference: gradient only: weight it by ``|B - A|`` (the default); ``False`` gives the plain
            ``|∂d/∂B|`` sensitivity (see the module's text).
        batch_size: images per forward pass (occluded copies or noisy copies).
        seed: seeds gradient's noise (a private ``torch.Generator``).
        progress: show a tqdm bar.

    Returns:
        float32 maps ``[N, H, W]`` on the metric's device (``[H, W]`` for 3-dimensional inputs):
        occlusion and gradient in distance units; the plain gradient (``times_difference=False``)
        in distance per unit pixel value.

    Raises:
        ValueError, TypeError: a bad argument or images of different sizes; the message says which.

    Example:
        >>> import torch, rpmetric
        >>> from torch import nn
        >>> from rpmetric.models.encoder import Encoder
        >>> from rpmetric.models.spec import ModelSpec, Preprocessing
        >>> _ = torch.manual_seed(0)  # a tiny random-weight encoder for 32 px inputs (any zoo model works the same)
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), nn.GELU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 24))
        >>> spec = ModelSpec(name="tiny", preprocessing=Preprocessing(image_size=32, resize_size=32))
        >>> metric = rpmetric.RobustDistance(Encoder(net, spec), device="cpu")
        >>> a = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(0))
        >>> b = a.clone(); b[:, 8:24, 24:40] = 0.0  # a black square
        >>> m = distance_map(metric, a, b, patch=8, stride=4, progress=False)
        >>> m.shape, float(m[:, :16].abs().sum()) == 0.0  # windows away from the square score 0
        (torch.Size([48, 48]), True)
        >>> float(distance_map(metric, a, a, progress=False).abs().max())
        0.0
        >>> g = distance_map(metric, a, b, "gradient", smooth=0.0, progress=False)  # gradient x |B - A|
        >>> float(g[:, :24].abs().sum()) == 0.0 and float(g[8:24, 24:40].min()) >= 0.0  # 0 where A and B agree
        True
    """
    if method not in METHODS:
        raise ValueError(f"Argument `method` must be one of {', '.join(repr(m) for m in METHODS)}, but got {method!r}.")
    single = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.ndim == 3 and b.ndim == 3
    if single:
        a, b = a[None], b[None]
    ua, ub = _pair(metric, a, b)
    batch_size = check_int("batch_size", batch_size, low=1)
    if method == "occlusion":
        maps = _occlusion(metric, ua, ub, check_int("patch", patch, low=1), check_int("stride", stride, low=1),
                          batch_size, progress)
    else:
        if not isinstance(times_difference, bool):
            raise TypeError(f"Argument `times_difference` must be True or False, but got {times_difference!r}.")
        maps = _gradient(metric, ua, ub, check_int("samples", samples, low=1), check_real("noise", noise, 0.0, 1.0),
                         check_real("smooth", smooth, 0.0, float("inf")), times_difference, batch_size,
                         generator(seed), progress)
    return maps[0] if single else maps


def _pair(metric, a, b) -> Tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` checked, in [0, 1] on the metric's device, broadcast to one batch size."""
    check_images(a, "a", metric.value_range)
    check_images(b, "b", metric.value_range)
    if a.shape[-2:] != b.shape[-2:]:
        (ha, wa), (hb, wb) = a.shape[-2:], b.shape[-2:]
        raise ValueError(f"`a` is {wa} x {ha} pixels but `b` is {wb} x {hb}; a distance map compares pixels at the "
                         f"same positions: resize both to one size first.")
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(f"Batch sizes of `a` ({a.shape[0]}) and `b` ({b.shape[0]}) do not match; pass equal "
                         "batches, or a batch of 1 on one side.")
    n = max(a.shape[0], b.shape[0])
    ua = metric.to_unit(a.detach()).float().expand(n, -1, -1, -1)
    ub = metric.to_unit(b.detach()).float().expand(n, -1, -1, -1)
    return ua, ub


def _occlusion(metric, ua, ub, patch: int, stride: int, batch_size: int, progress: bool) -> torch.Tensor:
    n, _, height, width = ub.shape
    if patch > min(height, width):
        raise ValueError(f"Argument `patch` ({patch}) must be at most the image's shorter side ({min(height, width)} px: "
                         f"{width} x {height}); pass `patch={min(height, width)}` or less.")
    tops, lefts = window_starts(height, patch, stride), window_starts(width, patch, stride)
    device = ub.device
    coverage = torch.zeros(height, width, device=device)
    for top in tops:
        for left in lefts:
            coverage[top:top + patch, left:left + patch] += 1
    totals = torch.zeros(n, height, width, device=device)
    # Only windows where the images differ change B; the others score exactly 0.
    windows = [[(top, left) for top in tops for left in lefts
                if not torch.equal(ua[k, :, top:top + patch, left:left + patch],
                                   ub[k, :, top:top + patch, left:left + patch])]
               for k in range(n)]
    with torch.no_grad(), progress_bar(sum(map(len, windows)), "explain: occlusion", progress, unit="window") as bar:
        base = metric(from_unit(metric, ua), from_unit(metric, ub))
        for k in range(n):
            a_k = from_unit(metric, ua[k:k + 1])  # one A per batch of windows: the metric broadcasts it
            for start in range(0, len(windows[k]), batch_size):
                chunk = windows[k][start:start + batch_size]
                occluded = ub[k].expand(len(chunk), -1, -1, -1).clone()
                for row, (top, left) in enumerate(chunk):
                    occluded[row, :, top:top + patch, left:left + patch] = ua[k, :, top:top + patch, left:left + patch]
                change = base[k] - metric(a_k, from_unit(metric, occluded))
                for (top, left), value in zip(chunk, change):
                    totals[k, top:top + patch, left:left + patch] += value
                bar.update(len(chunk))
    return totals / coverage


def _gradient(metric, ua, ub, samples: int, noise: float, smooth: float, times_difference: bool, batch_size: int,
              rng: torch.Generator, progress: bool) -> torch.Tensor:
    n = ub.shape[0]
    sums = torch.zeros(n, *ub.shape[-2:], device=ub.device)
    jobs = [(k, s) for k in range(n) for s in range(samples)]
    with progress_bar(len(jobs), "explain: gradient", progress, unit="copy") as bar:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            index = torch.tensor([k for k, _ in chunk], device=ub.device)
            # drawn on the CPU in a fixed order (pair by pair, copy by copy): the same seed gives the same noise
            # whatever the batch size or device
            eps = torch.stack([noise * torch.randn(ub.shape[1:], generator=rng) for _ in chunk]).to(ub.device)
            copies = (ub[index] + eps).clamp(0.0, 1.0).requires_grad_(True)
            first, last = chunk[0][0], chunk[-1][0]
            a_side = ua[first:first + 1] if first == last else ua[index]  # one pair's copies: its A broadcasts
            d = metric(from_unit(metric, a_side), from_unit(metric, copies))
            (grad,) = torch.autograd.grad(d.sum(), copies)
            if times_difference:
                grad = grad * (ub[index] - ua[index])
            sums.index_add_(0, index, grad.abs().sum(dim=1).float())
            bar.update(len(chunk))
    return gaussian_blur(sums / samples, smooth)
