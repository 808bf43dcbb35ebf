"""What the attack differentiates: the embedding of the reference, plain or through a defence.

The attacked object may be a :class:`~rpmetric.RobustDistance`, an :class:`rpmetric.models.encoder.Encoder`,
or any module with the same ``embed`` interface (see :func:`as_embedder`).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import nn

__all__ = ["Embedder", "as_embedder", "PlainFeatures", "DefendedFeatures", "EOTDefendedFeatures", "eot_seeds",
           "check_defence",
           "autocast_for"]


class Embedder(NamedTuple):
    """The pieces of a model the attack uses.

    Attributes:
        module: has ``embed(x, normalize=False)``: ``[N, 3, H, W]`` images in [0, 1] to raw
            ``[N, D]`` embeddings, differentiable w.r.t. ``x``; it is what a defence wraps.
        prepare: brings images to the model's input size (identity when the model has none).
        counterattack: the defence the model carries (a RobustDistance's hook), or None.
        device: where the model's parameters live.
    """

    module: nn.Module
    prepare: Callable[[torch.Tensor], torch.Tensor]
    counterattack: Optional[object]
    device: torch.device


def as_embedder(model) -> Embedder:
    """The attack's view of ``model``.

    - A :class:`~rpmetric.RobustDistance`: its ``.encoder`` (images in [0, 1], whatever the metric's
      ``value_range``; its counterattack hook, if any, is reported separately, not applied).
    - Anything else with a callable ``embed(x, normalize=False)``, such as an
      :class:`rpmetric.models.encoder.Encoder`; an optional ``prepare(x)`` method resizes to its input size.

    Example:
        >>> as_embedder(torch.nn.Linear(2, 2))
        Traceback (most recent call last):
        ...
        TypeError: Argument `metric` must be a RobustDistance or a module with an `embed(x, normalize=False)` method (like rpmetric.models.encoder.Encoder), but got Linear.
    """
    from ..counterattack import encoder_parts

    model, prepare, counterattack = encoder_parts(model)
    if not callable(getattr(model, "embed", None)):
        raise TypeError("Argument `metric` must be a RobustDistance or a module with an `embed(x, normalize=False)` "
                        f"method (like rpmetric.models.encoder.Encoder), but got {type(model).__name__}.")
    return Embedder(model, prepare, counterattack, _device_of(model))


def autocast_for(device: torch.device):
    """Mixed precision for the attack's gradient passes on CUDA (bfloat16 where supported, its wide
    exponent keeps small gradients from underflowing); a no-op elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class PlainFeatures(nn.Module):
    """Raw embeddings ``f(x)`` (float32) of the undefended model.

    Args:
        embedder: from :func:`as_embedder`.
        amp: run under :func:`autocast_for` (the attack's gradient passes); the judging passes
            run in full precision.
    """

    def __init__(self, embedder: Embedder, amp: bool = False):
        super().__init__()
        self.embedder = embedder
        self.amp = amp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_for(x.device) if self.amp else contextlib.nullcontext():
            return self.embedder.module.embed(x, normalize=False).float()


class DefendedFeatures(nn.Module):
    """``counterattack.defended_features(model, x)``: what the defended metric embeds.

    The defence detaches its perturbation, so a gradient through it is that of ``f`` at the
    counterattacked image: the defence acts as the identity in the backward pass (BPDA).
    """

    def __init__(self, embedder: Embedder, counterattack, amp: bool = False, record_tau: bool = False):
        super().__init__()
        self.embedder = embedder
        self.counterattack = counterattack
        self.amp = amp
        # With record_tau (a Counterattack's defended_features(..., return_tau=True)), ``tau`` holds
        # the last call's per-image tau, for the review page's histogram.
        self.record_tau = record_tau
        self.tau: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_for(x.device) if self.amp else contextlib.nullcontext():
            if not self.record_tau:
                return self.counterattack.defended_features(self.embedder.module, x).float()
            features, self.tau = self.counterattack.defended_features(self.embedder.module, x, return_tau=True)
            return features.float()


class EOTDefendedFeatures(nn.Module):
    """The adaptive attacker's view of a randomised defence: each call goes through the next of a
    few copies of the counterattack, each with its own seed (so its own random start).

    With APGD's ``eot_iter = len(seeds)``, each step averages the gradients of one pass through
    every copy: expectation over transformation. Build a new instance per batch: the cycle
    restarts, so a batch's result does not depend on the batches before it.
    """

    def __init__(self, embedder: Embedder, counterattack, seeds: Sequence[int], amp: bool = False):
        super().__init__()
        self.samples = [DefendedFeatures(embedder, _with_seed(counterattack, s), amp) for s in seeds]
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sample = self.samples[self.calls % len(self.samples)]
        self.calls += 1
        return sample(x)


def eot_seeds(counterattack, attack_seed: int, samples: int):
    """Seeds for the EOT copies: distinct from the defence's own seed (the attacker models the
    defence's randomness, it does not replay the judge's draw) and fixed by the attack's seed."""
    base = int(getattr(counterattack, "seed", 0))
    generator = torch.Generator().manual_seed(attack_seed)
    seeds = []
    while len(seeds) < samples:
        s = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        if s != base and s not in seeds:
            seeds.append(s)
    return seeds


def check_defence(counterattack) -> None:
    """Raise TypeError unless ``counterattack`` has what both evaluations use: ``defended_features``
    (to judge and to attack through) and a ``seed`` (to draw the EOT copies)."""
    if not callable(getattr(counterattack, "defended_features", None)) or not hasattr(counterattack, "seed"):
        raise TypeError("Argument `counterattack` must have a `defended_features(encoder, x)` method and a `seed` "
                        f"attribute, like rpmetric.Counterattack, but got {type(counterattack).__name__}.")


def _with_seed(counterattack, seed: int):
    twin = copy.copy(counterattack)
    twin.seed = seed
    return twin


def _device_of(module) -> torch.device:
    if isinstance(module, nn.Module):
        for tensor in list(module.parameters()) + list(module.buffers()):
            return tensor.device
    return torch.device("cpu")

