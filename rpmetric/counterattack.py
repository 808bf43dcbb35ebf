"""Test-time counterattack (TTC), a training-free defence applied to each image before embedding.

Xing, Zhao and Sebe, "CLIP is Strong Enough to Fight Back" (CVPR 2025): adversarial images are
"falsely stable", their embedding hardly moves under small random noise. Such images are detected
by the relative shift ``tau`` of the embedding under noise and pushed away from where the attacker
put them by a few PGD steps, before the metric embeds them.

All noise and PGD steps act on the image at the model's input resolution (after the encoder's
``prepare``, its resize and crop), so ``eps`` is measured in the model's own pixel space, as in the
paper.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from typing import Callable, Iterable, NamedTuple, Optional, Tuple, Union

import torch

from .validation import check_images, check_int, check_real

__all__ = [
    "Counterattack",
    "CounterattackResult",
    "add_counterattack_options",
    "counterattack_from_args",
]

Embed = Callable[[torch.Tensor], torch.Tensor]


class CounterattackResult(NamedTuple):
    """What :meth:`Counterattack.__call__` returns, for inspection.

    Attributes:
        images: ``[N, 3, S, S]`` counterattacked images ``x + Delta`` in [0, 1], at the model's
            input size ``S``; detached.
        tau: ``[N]`` float32 relative embedding shift under the random start,
            ``||f(x + delta0) - f(x)|| / ||f(x)||``.
        flagged: ``[N]`` bool, True for "falsely stable" images (``tau < tau_threshold``), the
            ones that were counterattacked.
    """

    images: torch.Tensor
    tau: torch.Tensor
    flagged: torch.Tensor


class Counterattack:
    """Test-time counterattack, usable alone or as the ``counterattack`` hook of RobustDistance.

    For images ``x`` in [0, 1] and ``f`` the encoder's projected embedding before L2 normalisation:

    1. ``delta0 ~ U(-eps, eps)`` per pixel, clamped so that ``x + delta0`` stays in [0, 1];
    2. ``tau = ||f(x + delta0) - f(x)|| / ||f(x)||`` (by ``tau_encoder`` when given);
    3. images with ``tau < tau_threshold`` are "falsely stable": ``steps`` steps of l-inf sign-PGD
       with step ``step_size`` ascend ``||f(x + delta) - f(x)||^2`` from ``delta0``, each projected
       into the ``eps``-ball and [0, 1];
    4. they get ``Delta = sum_k w_k delta_k`` with ``w = softmax(beta * k)``, ``k = 0..steps``; every
       other image gets ``Delta = delta0``;
    5. the defended embedding is ``f(x + Delta)``.

    Args:
        eps: l-inf radius of the noise and of the counterattack, as a fraction of the [0, 1] pixel
            range (``4/255``, not 4).
        step_size: PGD step ``alpha``.
        steps: number of PGD steps ``N`` (0 keeps ``Delta = delta0`` for every image).
        tau_threshold: images with ``tau`` below it are counterattacked. 0.2 was tuned for the
            OpenAI CLIP; robust encoders move less under noise, so choose it with :meth:`calibrate`.
        beta: temperature of the step weights; larger favours the last steps.
        seed: seed of the random start (see "Determinism" below).
        skip_stable: run the PGD steps on the flagged images only. The result is identical to
            the official code, which computes the steps for every image and then discards them.
        tau_encoder: optional separate encoder for ``tau`` (the paper uses the original CLIP for
            fine-tuned models); same kinds as accepted for ``encoder`` below.

    Encoders: every method takes ``encoder`` as one of

    - a :class:`~rpmetric.RobustDistance`: its ``.encoder`` is used, and inputs are checked against
      (and mapped from) its ``value_range``;
    - any object with an ``embed(x, normalize=False)`` method (such as
      :class:`rpmetric.models.encoder.Encoder`), or else any callable, mapping ``[N, 3, H, W]`` images in
      [0, 1] to raw ``[N, D]`` embeddings. Its ``prepare(x)`` method, when present, brings images to
      the model's input size first; without one, images are used at the size given.

    Determinism: the random start of each image comes from a generator seeded by ``seed`` and a
    hash of the image's own pixels (their exact float32 values at the model's input size). So the
    same image gets the same result wherever it stands in a batch and however often it is called, and the two sides of ``metric(x, x)`` get identical
    ``Delta``, so ``d(x, x) = 0`` under the defence. (A per-call counter would break both.)

    Gradients: ``Delta`` is detached, so for a caller that differentiates through the metric the
    counterattack acts as the identity in the backward pass (the gradient is that of ``f`` at
    ``x + Delta``). This is what an adaptive attacker would use (BPDA), and is how the defence is
    meant to be evaluated. The PGD steps run on a private copy of the input, with gradients enabled
    for that copy only, so the defence works inside ``torch.no_grad()`` and
    ``torch.inference_mode()``; parameters' ``requires_grad`` is never touched, so metrics can run
    in parallel threads.

    Cost in encoder passes per image (as the benchmark in ``evals/bench_counterattack.py`` measures
    it), as in the official code: 2 forwards for images that are not flagged (``f(x)`` and
    ``f(x + delta0)``, which is also their defended embedding), and ``steps + 2`` forwards and
    ``steps`` backwards for flagged ones, whose first PGD step reuses the forward at
    ``x + delta0`` that gave ``tau`` (so that forward runs with autograd on and keeps its
    activations, like a training forward). When under 60% of a batch is attacked, their first
    step recomputes that forward on them alone (one forward more each), as a backward pass through
    the whole batch would cost more.

    Example:
        >>> import torch
        >>> encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
        >>> ttc = Counterattack(tau_threshold=float("inf"))  # counterattack every image
        >>> x = torch.rand(2, 3, 8, 8)
        >>> result = ttc(encoder, x)
        >>> result.flagged.tolist()
        [True, True]
        >>> bool((result.images - x).abs().max() <= 4 / 255 + 1e-6)
        True
        >>> [round(w, 4) for w in ttc.step_weights().tolist()]
        [0.0159, 0.1173, 0.8668]
    """

    def __init__(self, eps: float = 4 / 255, step_size: float = 1 / 255, steps: int = 2,
                 tau_threshold: float = 0.2, beta: float = 2.0, seed: int = 0, skip_stable: bool = True,
                 tau_encoder=None):
        self.eps = check_real("eps", eps, 0.0, 1.0, " It is a fraction of the [0, 1] range: pass e.g. 4/255.")
        self.step_size = check_real("step_size", step_size, 0.0, 1.0, " Pass e.g. 1/255.")
        self.steps = check_int("steps", steps, 0)
        self.tau_threshold = check_real("tau_threshold", tau_threshold, 0.0, math.inf, "")
        self.beta = check_real("beta", beta, -math.inf, math.inf, "")
        self.seed = check_int("seed", seed, None)
        if not isinstance(skip_stable, bool):
            raise TypeError(f"Argument `skip_stable` must be True or False, but got {skip_stable!r}.")
        self.skip_stable = skip_stable
        if tau_encoder is not None:
            _embedder(tau_encoder)  # fail now, not at the first batch
        self.tau_encoder = tau_encoder

    def __repr__(self) -> str:
        tau_encoder = None if self.tau_encoder is None else type(self.tau_encoder).__name__
        return (f"Counterattack(eps={self.eps:.6g}, step_size={self.step_size:.6g}, steps={self.steps}, "
                f"tau_threshold={self.tau_threshold:.6g}, beta={self.beta:g}, seed={self.seed}, "
                f"skip_stable={self.skip_stable}, tau_encoder={tau_encoder})")

    def to_dict(self) -> dict:
        """The settings as JSON-ready data (radii as fractions of [0, 1]), for results to record.

        Example:
            >>> Counterattack(tau_threshold=0.05).to_dict()["tau_threshold"]
            0.05
        """
        return {"eps": self.eps, "step_size": self.step_size, "steps": self.steps,
                "tau_threshold": self.tau_threshold, "beta": self.beta, "seed": self.seed,
                "skip_stable": self.skip_stable,
                "tau_encoder": None if self.tau_encoder is None else type(self.tau_encoder).__name__}

    # -- public API ------------------------------------------------------------------------
    def step_weights(self) -> torch.Tensor:
        """The weights ``softmax(beta * k)`` of ``delta_0 .. delta_steps``, float32 ``[steps + 1]``."""
        k = torch.arange(self.steps + 1, dtype=torch.float64)
        return torch.softmax(self.beta * k, dim=0).float()

    def __call__(self, encoder, x: torch.Tensor) -> CounterattackResult:
        """Counterattack ``x`` and return the images, ``tau`` and the flags (see the class doc)."""
        embed, x = _inputs(encoder, x)
        with torch.no_grad():
            delta, tau, flagged, _ = self._run(embed, x, keep_noisy=False)
            images = (x + delta).clamp(0.0, 1.0)
        return CounterattackResult(images, tau, flagged)

    def defended_features(self, encoder, x: torch.Tensor, return_tau: bool = False):
        """Defended raw embeddings ``f(x + Delta)`` ``[N, D]`` (float32) of images ``x`` in [0, 1].

        The hook :class:`~rpmetric.RobustDistance` calls; ``x`` is not checked. ``Delta`` is
        detached, so gradients reach ``x`` as if the counterattack were the identity. With
        ``return_tau``, ``(features, tau)``: the ``tau`` this pass measured (for a review page's
        histogram, at no extra cost).
        """
        embed, prepare = _embedder(encoder)
        x = prepare(x)
        delta, tau, flagged, noisy = self._run(embed, x, keep_noisy=True)
        rows = flagged.nonzero().squeeze(1)
        if noisy is None:  # tau came from tau_encoder: f(x + delta0) is still to compute
            features = embed(x + delta)
        elif rows.numel() == 0:
            features = noisy
        else:  # stable images keep f(x + delta0) from the tau pass; only flagged ones need a new forward
            features = noisy.index_copy(0, rows, embed(x[rows] + delta[rows]))
        return (features, tau.detach()) if return_tau else features

    def tau(self, encoder, x: torch.Tensor) -> torch.Tensor:
        """Per-image ``tau`` ``[N]`` (float32) of images ``x``, without counterattacking them."""
        embed, x = _inputs(encoder, x)
        with torch.no_grad():
            embed_tau = embed if self.tau_encoder is None else _embedder(self.tau_encoder)[0]
            return _relative_shift(embed_tau(x + self._random_start(x)), embed_tau(x))

    def calibrate(self, encoder, clean_images: Union[torch.Tensor, Iterable[torch.Tensor]], target_rate: float,
                  batch_size: int = 64, progress: bool = False) -> float:
        """Choose and set ``tau_threshold`` so that a share ``target_rate`` of clean images is flagged.

        The threshold lies halfway between the ``k``-th and ``k+1``-th smallest ``tau``, with
        ``k = round(target_rate * n)`` (half the smallest for ``k = 0``, 1.5 times the largest for
        ``k = n``), so exactly ``k`` of the ``n`` images are flagged unless several share that
        ``tau``. It never lies on an observed ``tau``, so rounding noise of 1e-8 (a different batch
        position or thread count) cannot flip a calibration image's flag.

        Args:
            encoder: as for the other methods (see the class doc).
            clean_images: ``[n, 3, H, W]`` tensor, or an iterable of such batches (e.g. a DataLoader
                yielding tensors).
            target_rate: the share of clean images to flag, in [0, 1].
            batch_size: images per encoder call when ``clean_images`` is a tensor.
            progress: show a progress bar.

        Returns:
            The new ``tau_threshold`` (also set on this object, so a metric using it follows).

        Example:
            >>> import torch
            >>> encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
            >>> ttc = Counterattack()
            >>> clean = torch.rand(10, 3, 8, 8)
            >>> threshold = ttc.calibrate(encoder, clean, target_rate=0.3)
            >>> int(ttc(encoder, clean).flagged.sum())
            3
        """
        rate = check_real("target_rate", target_rate, 0.0, 1.0, " It is a share: pass e.g. 0.05 for 5%.")
        batch_size = check_int("batch_size", batch_size, 1)
        if isinstance(clean_images, torch.Tensor):
            clean_images = clean_images.split(batch_size)
        from tqdm.auto import tqdm

        taus = [self.tau(encoder, batch).cpu() for batch in tqdm(clean_images, desc="calibrating tau",
                                                                 unit="batch", disable=not progress)]
        if not taus:
            raise ValueError("Argument `clean_images` holds no images; pass at least one clean image.")
        self.tau_threshold = _threshold_for_rate(torch.cat(taus), rate)
        return self.tau_threshold

    # -- the algorithm ---------------------------------------------------------------------
    def _run(self, embed: Embed, x: torch.Tensor, keep_noisy: bool):
        """``(Delta, tau, flagged, f(x + delta0) or None)`` for prepared images ``x`` in [0, 1].

        With ``keep_noisy`` (and no ``tau_encoder``), ``f(x + delta0)`` is returned with the
        caller's graph through ``x`` when the caller differentiates, so it can serve as the
        defended embedding of the stable images.
        """
        x0 = x.detach()
        delta0 = self._random_start(x0)
        if self.tau_encoder is None and self.steps > 0:
            return self._run_sharing_first_step(embed, x, delta0, keep_noisy)
        embed_tau = embed if self.tau_encoder is None else _embedder(self.tau_encoder)[0]
        noisy = None
        with torch.no_grad():
            z_tau = embed_tau(x0)
        if keep_noisy and self.tau_encoder is None:
            noisy = embed(x + delta0)
            noisy_tau = noisy.detach()
        else:
            with torch.no_grad():
                noisy_tau = embed_tau(x0 + delta0)
        tau = _relative_shift(noisy_tau, z_tau)
        flagged = tau < self.tau_threshold
        rows = self._attacked_rows(flagged)
        delta = delta0
        if self.steps > 0 and rows.numel() > 0:
            with torch.no_grad():
                z = embed(x0[rows])
            deltas = [delta0[rows]] + self._pgd_steps(embed, x0[rows], delta0[rows], z, self.steps)
            delta = self._weighted(delta0, rows, flagged, deltas)
        return delta, tau, flagged, noisy

    def _run_sharing_first_step(self, embed: Embed, x: torch.Tensor, delta0: torch.Tensor, keep_noisy: bool):
        """:meth:`_run` when ``f`` measures ``tau``: one forward at ``x + delta0`` serves both.

        As in the official code, ``f(x + delta0)`` gives ``tau`` and, when enough of the batch is
        attacked, the first PGD step's gradient too (4 forward and 2 backward passes in all for
        flagged images, instead of 5 and 2).
        """
        x0 = x.detach()
        with torch.no_grad():
            z = embed(x0)
        # The caller's graph through x is kept only when the caller differentiates: stable images'
        # defended embedding is this forward, whose gradient w.r.t. x is that of f at x + delta0.
        track_x = keep_noisy and torch.is_grad_enabled() and x.requires_grad
        # Inputs may be inference tensors (caller in inference_mode), which autograd cannot use:
        # leave inference mode and work on plain copies. Only our own delta0 requires grad.
        with torch.inference_mode(False), torch.enable_grad():
            x_plain, z, start = x0.clone(), z.clone(), delta0.clone().requires_grad_(True)
            noisy = embed((x if track_x else x_plain) + start)
            tau = _relative_shift(noisy.detach(), z)
            flagged = tau < self.tau_threshold
            rows = self._attacked_rows(flagged)
            delta, output = delta0, (noisy if track_x else noisy.detach())
            if rows.numel() >= _SHARED_BACKWARD_MIN_SHARE * len(x0) and rows.numel() > 0:
                # Backward through the whole batch (zero for the other rows) then saves each
                # attacked image a forward+backward pass.
                grad = _ascent_gradient(noisy[rows], z[rows], start, retain_graph=track_x)[rows]
                first = self._project(x_plain[rows], delta0[rows] + self.step_size * grad.sign())
                deltas = [delta0[rows], first] + self._pgd_steps(embed, x_plain[rows], first, z[rows], self.steps - 1)
                delta = self._weighted(delta0, rows, flagged, deltas)
            elif rows.numel() > 0:
                # Few attacked images: recomputing their first forward is cheaper than a backward
                # pass through the whole batch. Free this graph first (unless it is the output's).
                del noisy, start
                deltas = [delta0[rows]] + self._pgd_steps(embed, x_plain[rows], delta0[rows], z[rows], self.steps)
                delta = self._weighted(delta0, rows, flagged, deltas)
        return delta, tau, flagged, output if keep_noisy else None

    def _attacked_rows(self, flagged: torch.Tensor) -> torch.Tensor:
        """Indices of the images the PGD steps run on: the flagged ones, or all without ``skip_stable``."""
        return flagged.nonzero().squeeze(1) if self.skip_stable else torch.arange(len(flagged), device=flagged.device)

    def _weighted(self, delta0: torch.Tensor, rows: torch.Tensor, flagged: torch.Tensor, deltas) -> torch.Tensor:
        """``Delta``: ``sum_k w_k delta_k`` for the flagged rows, ``delta0`` for the others."""
        weighted = torch.einsum("k,kn...->n...", self.step_weights().to(delta0), torch.stack(deltas))
        keep = flagged[rows]  # with skip_stable=False, stable rows discard their steps here
        return delta0.index_copy(0, rows[keep], weighted[keep])

    def _random_start(self, x: torch.Tensor) -> torch.Tensor:
        """``delta0``: per-image uniform noise in [-eps, eps], seeded by the image's own pixels."""
        pixels = x.detach().to("cpu", torch.float32).contiguous()
        noise = torch.empty(pixels.shape, dtype=torch.float32)
        for i, image in enumerate(pixels):
            generator = torch.Generator().manual_seed(_image_seed(self.seed, image))
            torch.rand(image.shape, generator=generator, out=noise[i])
        noise = noise.to(x.device, x.dtype).mul_(2 * self.eps).sub_(self.eps)
        return (x + noise).clamp(0.0, 1.0) - x

    def _project(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``delta`` projected into the ``eps``-ball and so that ``x + delta`` stays in [0, 1]."""
        return (x + delta.clamp(-self.eps, self.eps)).clamp(0.0, 1.0) - x

    def _pgd_steps(self, embed: Embed, x: torch.Tensor, delta: torch.Tensor, z: torch.Tensor, steps: int):
        """The ``steps`` deltas after ``delta`` of l-inf sign-PGD ascending ``||f(x + d) - z||^2``."""
        with torch.inference_mode(False), torch.enable_grad():  # see _run_sharing_first_step
            x, z, delta = x.clone(), z.clone(), delta.clone()
            deltas = []
            for _ in range(steps):
                delta = delta.detach().requires_grad_(True)
                grad = _ascent_gradient(embed(x + delta), z, delta)
                delta = self._project(x, delta.detach() + self.step_size * grad.sign())
                deltas.append(delta)
            return deltas


# -- helpers -------------------------------------------------------------------------------
# Reuse the tau forward's graph for the first PGD step when at least this share of the batch is
# attacked. A backward pass w.r.t. the input (frozen weights) costs about 1.4 forwards over the whole
# batch; recomputing an attacked image's forward+backward costs about 2.4, so sharing pays from
# about 1.4 / 2.4 of the batch (the ViT-B/32 figures of evals/bench_counterattack.py).
_SHARED_BACKWARD_MIN_SHARE = 0.6


def _ascent_gradient(features: torch.Tensor, z: torch.Tensor, delta: torch.Tensor,
                     retain_graph: bool = False) -> torch.Tensor:
    """Gradient w.r.t. ``delta`` of each image's ``||features - z||^2``, each scaled by a power of two."""
    per_image = (features.float() - z).pow(2).sum(dim=-1)
    # Sign-PGD ignores a positive scale, so bring each image's loss into [1, 2) by a power of two:
    # exact in float32, and it keeps float16 gradients (autocast) from underflowing.
    scale = torch.exp2(-torch.floor(torch.log2(per_image.detach().clamp_min(1e-30))))
    (grad,) = torch.autograd.grad((per_image * scale).sum(), delta, retain_graph=retain_graph)  # images independent
    return grad


def _relative_shift(noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``tau = ||noisy - clean|| / ||clean||`` per row, float32 (a zero embedding gives inf: not flagged)."""
    clean, noisy = clean.float(), noisy.float()
    return (noisy - clean).norm(dim=-1) / clean.norm(dim=-1)


def _image_seed(seed: int, image: torch.Tensor) -> int:
    digest = hashlib.blake2b(image.numpy().tobytes(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _threshold_for_rate(taus: torch.Tensor, rate: float) -> float:
    """A threshold halfway between two observed ``taus``, below which (strictly) about ``rate * n`` fall.

    Never on an observed tau: an image whose tau sat exactly on the threshold would flip its flag
    with the 1e-8 rounding noise of its batch position. Below the smallest tau the cut is half the
    smallest (tau >= 0), above the largest it is 1.5 times the largest. When taus repeat, the cut
    nearest to ``round(rate * n)`` flagged images is taken (the lower on a tie).
    """
    # In float32 like tau itself: the flags compare float32 tau with the threshold cast to float32.
    values, counts = taus.float().unique(sorted=True, return_counts=True)
    k = int(round(rate * len(taus)))
    below = torch.cat([values.new_zeros(1), values])  # cut c lies between below[c] and above[c]
    above = torch.cat([values, values[-1:] * 2])
    cuts = (below + above) / 2
    flagged = torch.cat([counts.new_zeros(1), counts.cumsum(0)])  # images with tau < cuts[c]
    best = int((flagged - k).abs().argmin())  # argmin takes the first: the lower cut on a tie
    return float(cuts[best])


def encoder_parts(model) -> Tuple[object, Callable[[torch.Tensor], torch.Tensor], Optional[object]]:
    """``(encoder, prepare, counterattack)``: how the counterattack and the attacks see a model.

    A :class:`~rpmetric.RobustDistance` gives its ``.encoder`` and its counterattack hook; anything
    else is its own encoder, with no hook. ``prepare`` is the encoder's ``prepare`` method (resize
    to the input size) when it has one, else the identity.
    """
    from .metric import RobustDistance

    counterattack = None
    if isinstance(model, RobustDistance):
        model, counterattack = model.encoder, model.counterattack
    prepare = getattr(model, "prepare", None)
    return model, prepare if callable(prepare) else _identity, counterattack


def _embedder(encoder) -> Tuple[Embed, Callable[[torch.Tensor], torch.Tensor]]:
    """``(embed, prepare)`` for the kinds of encoder the class doc lists."""
    encoder, prepare, _ = encoder_parts(encoder)
    embed = getattr(encoder, "embed", None)
    if callable(embed):
        def raw(x, _embed=embed):
            return _embed(x, normalize=False)
    elif callable(encoder):
        raw = encoder
    else:
        raise TypeError(
            "Argument `encoder` must be a RobustDistance, an object with an `embed(x, normalize=False)` method, "
            f"or a callable mapping [N, 3, H, W] images in [0, 1] to [N, D] embeddings, but got {type(encoder).__name__}."
        )
    return raw, prepare


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _inputs(encoder, x) -> Tuple[Embed, torch.Tensor]:
    """Checked, [0, 1], prepared images and the embed function, for the public entry points."""
    from .metric import RobustDistance

    embed, prepare = _embedder(encoder)
    if isinstance(encoder, RobustDistance):
        x = encoder.to_unit(x)
    else:
        check_images(x, "x", (0.0, 1.0))
        x = x.clamp(0.0, 1.0)  # removes the rounding overshoot check_images tolerates
    return embed, prepare(x)


# -- command-line options ------------------------------------------------------------------
_PIXEL_UNIT = 255.0  # the CLI takes eps and step size in 1/255 units, as the papers state them


def pixel_unit_notice(option: str, value: float) -> Optional[str]:
    """A warning for an l-inf radius typed in 1/255 units that looks like a fraction of the [0, 1]
    range (0 < value < 0.5, e.g. 0.0157 for 4/255), or None.

    Example:
        >>> print(pixel_unit_notice("--eps", 0.0157))  # doctest: +NORMALIZE_WHITESPACE
        --eps 0.0157 is in units of 1/255, so it is taken as 0.0157/255 = 6.16e-05;
        for a fraction of the [0, 1] range, write it times 255: --eps 4
        >>> pixel_unit_notice("--eps", 4) is None
        True
    """
    if not 0 < value < 0.5:
        return None
    taken, meant = value / _PIXEL_UNIT, value * _PIXEL_UNIT
    return (f"{option} {value:g} is in units of 1/255, so it is taken as {value:g}/255 = {taken:.3g}; "
            f"for a fraction of the [0, 1] range, write it times 255: {option} {meant:.3g}")


def add_counterattack_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--counterattack`` and its knobs to a command's parser.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_counterattack_options(parser)
        >>> counterattack_from_args(parser.parse_args(["--counterattack", "--tau-threshold", "0.05"]))
        Counterattack(eps=0.0156863, step_size=0.00392157, steps=2, tau_threshold=0.05, beta=2, seed=0, skip_stable=True, tau_encoder=None)
    """
    group = parser.add_argument_group("test-time counterattack (TTC)")
    group.add_argument("--counterattack", action="store_true",
                       help="counterattack every image before embedding it (Xing et al., CVPR 2025)")
    group.add_argument("--tau-threshold", type=float, default=None, metavar="T",
                       help="counterattack images whose embedding shift under noise is below T (default: 0.2, "
                            "tuned for the OpenAI CLIP; robust models need a lower one, see Counterattack.calibrate)")
    group.add_argument("--counterattack-eps", type=float, default=None, metavar="E",
                       help="l-inf radius of noise and counterattack, in 1/255 units (default: 4)")
    group.add_argument("--counterattack-steps", type=int, default=None, metavar="N",
                       help="PGD steps of the counterattack (default: 2)")
    group.add_argument("--counterattack-step-size", type=float, default=None, metavar="A",
                       help="PGD step, in 1/255 units (default: 1)")
    group.add_argument("--counterattack-beta", type=float, default=None, metavar="B",
                       help="weight temperature of the steps (default: 2)")
    group.add_argument("--counterattack-seed", type=int, default=None, metavar="S",
                       help="seed of the random start (default: 0)")


_KNOBS = {  # option dest -> (Counterattack argument, whether the option is in 1/255 units)
    "tau_threshold": ("tau_threshold", False),
    "counterattack_eps": ("eps", True),
    "counterattack_steps": ("steps", False),
    "counterattack_step_size": ("step_size", True),
    "counterattack_beta": ("beta", False),
    "counterattack_seed": ("seed", False),
}


def counterattack_from_args(args: argparse.Namespace) -> Optional[Counterattack]:
    """The :class:`Counterattack` the parsed options ask for, or None without ``--counterattack``.

    Raises:
        ValueError: a counterattack knob without ``--counterattack``, or a value out of range.
    """
    given = {dest: getattr(args, dest) for dest in _KNOBS if getattr(args, dest, None) is not None}
    if not args.counterattack:
        if given:
            options = ", ".join("--" + dest.replace("_", "-") for dest in given)
            raise ValueError(f"{options} only apply with --counterattack; add --counterattack or drop them.")
        return None
    notice = pixel_unit_notice("--counterattack-eps", given.get("counterattack_eps", 0))
    if notice:
        print(f"rpmetric {getattr(args, 'command', '')}: warning: {notice}", file=sys.stderr)
    kwargs = {_KNOBS[dest][0]: value / _PIXEL_UNIT if _KNOBS[dest][1] else value for dest, value in given.items()}
    try:
        return Counterattack(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Invalid counterattack option: {err} (--counterattack-eps and "
                         "--counterattack-step-size are in 1/255 units).") from None
