"""Feature inversion: images whose embedding matches a target embedding.

The R-CLIP paper shows that inverting a robust encoder's embedding gives a recognisable image,
where a clean encoder's gives noise-like patterns. :func:`invert` optimises the pixels with Adam to
maximise the cosine to the target, under the regularisers that make inversions readable:

- total variation (``tv``): the mean absolute difference between neighbouring pixels, which
  penalises the high-frequency patterns that an encoder's gradients put into pixels first;
- jitter (``jitter``): each step embeds the image rolled by a random shift of up to ``jitter``
  pixels (wrapping around), so that no pattern that only works at one exact alignment survives;
- ℓ2 (``l2``, off by default): the mean squared distance of the pixels from mid-grey 0.5.

Pixels are optimised directly in [0, 1] and clamped back into it after each step (projected
Adam), rather than through a sigmoid, so that ``lr`` is a step size in pixel units and pixels at
0 or 1 still move. The defaults were checked on the tests' tiny random-weight models only (the
tiny ViT reaches a cosine of 0.99 within 100 steps, both reach 0.999 in 300): a sanity check, not
a tuning.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ..validation import check_images, check_int, check_real
from ._pixels import from_unit, generator, progress_bar

__all__ = ["invert", "cosine", "INITS", "DEFAULT_STEPS", "DEFAULT_LR", "DEFAULT_TV", "DEFAULT_L2",
           "default_jitter"]

INITS = ("noise", "gray")
DEFAULT_STEPS = 500
DEFAULT_LR = 0.05
DEFAULT_TV = 0.01
DEFAULT_L2 = 0.0
_NOISE_RANGE = (0.25, 0.75)  # mid-grey noise: no pixel starts stuck at a bound of the clamp

Size = Union[int, Tuple[int, int]]


def default_jitter(height: int, width: int) -> int:
    """The default jitter: 1/32 of the shorter side, rounded, at least 1 pixel (7 px at 224).

    Example:
        >>> default_jitter(224, 224), default_jitter(32, 48)
        (7, 1)
    """
    return max(1, round(min(height, width) / 32))


def invert(metric, target: torch.Tensor, *, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR,
           init: Union[str, torch.Tensor] = "noise", size: Optional[Size] = None, tv: float = DEFAULT_TV,
           jitter: Optional[int] = None, l2: float = DEFAULT_L2, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """Images whose embedding under ``metric`` has the largest cosine to ``target``.

    All targets are optimised together in one batch; each image's loss is its own (the batch's
    losses are summed, Adam is element-wise and the jitter shift is shared), so an image's result
    does not depend on the others in its batch, up to float rounding (which Adam's normalised
    steps can amplify where a gradient is close to 0).

    Args:
        metric: a :class:`~rpmetric.RobustDistance` (only ``embed``, ``to_unit``, ``value_range``,
            ``device`` and ``spec`` are used). Everything runs on its device.
        target: embeddings ``[N, D]`` (normalised or not), or images ``[N, 3, H, W]`` in the metric's
            ``value_range``, which are embedded first.
        steps: Adam steps.
        lr: Adam's learning rate, in [0, 1] pixel units.
        init: ``"noise"`` (uniform in [0.25, 0.75]), ``"gray"`` (0.5), or images ``[N or 1, 3, H, W]``
            in ``value_range`` to start from.
        size: ``S`` or ``(H, W)`` of the inversions; None takes the size of ``init`` images, else of
            ``target`` images, else the model's input size (``metric.spec.preprocessing.image_size``).
        tv: weight of the total-variation term (0 turns it off).
        jitter: the largest random shift per step, in pixels (0 turns it off); None:
            :func:`default_jitter` of the size.
        l2: weight of the ℓ2 term on the pixels' distance from 0.5 (0, the default, turns it off).
        seed: seeds the noise and the shifts (a private ``torch.Generator``; the global RNG is left
            alone): the same seed gives the same images on the same device and software.
        progress: show a tqdm bar with the batch's mean cosine.

    Returns:
        Images ``[N, 3, H, W]`` in the metric's ``value_range``, on its device, without gradients.
        Their cosine to the target is :func:`cosine`.

    Raises:
        ValueError, TypeError: a bad argument; the message names it and the valid values.

    Example:
        >>> import torch, rpmetric
        >>> from torch import nn
        >>> from rpmetric.models.encoder import Encoder
        >>> from rpmetric.models.spec import ModelSpec, Preprocessing
        >>> _ = torch.manual_seed(0)  # a tiny random-weight encoder for 32 px inputs (any zoo model works the same)
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), nn.GELU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 24))
        >>> spec = ModelSpec(name="tiny", preprocessing=Preprocessing(image_size=32, resize_size=32))
        >>> metric = rpmetric.RobustDistance(Encoder(net, spec), device="cpu")
        >>> x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> images = invert(metric, metric.embed(x), steps=100, seed=0, progress=False)
        >>> images.shape, bool(cosine(metric, images, metric.embed(x)).min() > 0.99)
        (torch.Size([2, 3, 32, 32]), True)
    """
    steps = check_int("steps", steps, low=1)
    lr = check_real("lr", lr, 0.0, float("inf"))
    tv = check_real("tv", tv, 0.0, float("inf"))
    l2 = check_real("l2", l2, 0.0, float("inf"))
    goal, target_size = _target(metric, target)
    x = _init(metric, init, goal.shape[0], _size(size, init, target_size, metric), generator(seed))
    height, width = x.shape[-2:]
    jitter = default_jitter(height, width) if jitter is None else check_int("jitter", jitter, low=0)
    if jitter >= min(height, width):
        raise ValueError(f"Argument `jitter` must be less than the image's shorter side ({min(height, width)} px), "
                         f"but got {jitter}; pass `jitter={default_jitter(height, width)}` (the default).")
    rng = generator(seed + 1)  # the shifts: independent of the init noise, and of the init's kind
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    with progress_bar(steps, "invert", progress) as bar:
        for step in range(steps):
            shifted = x
            if jitter:
                dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=rng).tolist()
                shifted = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            cos = (metric.embed(from_unit(metric, shifted)) * goal).sum(dim=-1)
            loss = -cos
            if tv:
                loss = loss + tv * total_variation(x)
            if l2:
                loss = loss + l2 * (x - 0.5).pow(2).flatten(1).mean(dim=1)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
            bar.update(1)
            if progress and (step % 10 == 0 or step == steps - 1):
                bar.set_postfix(cosine=f"{float(cos.detach().mean()):.4f}")
    return from_unit(metric, x.detach())


def cosine(metric, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosines ``[N]`` between the embeddings of ``images`` (in ``value_range``) and ``target``
    (embeddings ``[N, D]`` or images ``[N, 3, H, W]``), without gradients.

    Example:
        >>> from types import SimpleNamespace
        >>> metric = SimpleNamespace(embed=lambda x: F.normalize(x.flatten(1), dim=-1), device=torch.device("cpu"))
        >>> cosine(metric, torch.ones(1, 3, 1, 1), torch.tensor([[1.0, 1.0, 0.0]]))
        tensor([0.8165])
    """
    with torch.no_grad():
        goal, _ = _target(metric, target)
        return (metric.embed(images) * goal).sum(dim=-1).float()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per image ``[N]``: the mean absolute difference between vertically and between horizontally
    neighbouring pixels, summed (anisotropic TV, averaged over channels and positions).

    Example:
        >>> total_variation(torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]]))
        tensor([1.])
    """
    down = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(dim=1) if x.shape[-2] > 1 else 0.0
    right = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(dim=1) if x.shape[-1] > 1 else 0.0
    return down + right


# -- arguments -------------------------------------------------------------------------------
def _target(metric, target) -> Tuple[torch.Tensor, Optional[Tuple[int, int]]]:
    """(unit embeddings ``[N, D]`` on the metric's device, the target images' size or None)."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"Argument `target` must be a tensor of embeddings [N, D] or images [N, 3, H, W], but got "
                        f"{type(target).__name__}.")
    if target.ndim == 4:
        with torch.no_grad():
            return metric.embed(target).detach(), tuple(target.shape[-2:])
    if target.ndim != 2 or target.shape[0] == 0 or target.shape[1] == 0:
        raise ValueError(f"Argument `target` must be embeddings [N, D] or images [N, 3, H, W], but got shape "
                         f"{tuple(target.shape)}.")
    if not target.is_floating_point() or not torch.isfinite(target).all():
        raise ValueError("Argument `target` must hold finite floating-point embeddings.")
    if bool((target.norm(dim=-1) == 0).any()):
        raise ValueError("Argument `target` holds an all-zero embedding, which has no direction to invert.")
    return F.normalize(target.detach().float(), dim=-1).to(metric.device), None


def _size(size, init, target_size, metric) -> Tuple[int, int]:
    if isinstance(init, torch.Tensor):
        shape = tuple(init.shape[-2:])
        if size is not None and _pair(size) != shape:
            raise ValueError(f"Argument `size` {_pair(size)} differs from the `init` images' size {shape}; pass "
                             "`size=None` to invert at the init images' size, or resize them.")
        return shape
    if size is not None:
        return _pair(size)
    if target_size is not None:
        return target_size
    image_size = metric.spec.preprocessing.image_size
    return image_size, image_size


def _pair(size) -> Tuple[int, int]:
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"Argument `size` must be S or (H, W), but got {size!r}.")
        return check_int("size", size[0], low=1), check_int("size", size[1], low=1)
    side = check_int("size", size, low=1)
    return side, side


def _init(metric, init, n: int, size: Tuple[int, int], rng: torch.Generator) -> torch.Tensor:
    """The starting pixels ``[n, 3, H, W]`` in [0, 1], float32, on the metric's device (a fresh tensor)."""
    if isinstance(init, torch.Tensor):
        check_images(init, "init", metric.value_range)
        if init.shape[0] not in (1, n):
            raise ValueError(f"Argument `init` holds {init.shape[0]} images for {n} targets; pass one per target, "
                             "or one for all.")
        return metric.to_unit(init.detach()).float().expand(n, -1, -1, -1).clone()
    if init == "noise":
        low, high = _NOISE_RANGE
        x = low + (high - low) * torch.rand(n, 3, *size, generator=rng)
    elif init == "gray":
        x = torch.full((n, 3, *size), 0.5)
    else:
        raise ValueError(f"Argument `init` must be one of {', '.join(repr(i) for i in INITS)} or an image tensor "
                         f"[N, 3, H, W], but got {init!r}.")
    return x.to(metric.device)
