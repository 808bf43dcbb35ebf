"""APGD-CE from pyautoattack (the official AutoAttack code), run so that every row keeps its own
left and right embeddings.

``APGDAttack.perturb`` calls the model on shrinking subsets of the batch (it skips the points
already misclassified, and each restart attacks only the points still robust) without telling the
model which rows it gets. A 2AFC classifier carries per-row embeddings, so that would pair
references with the wrong left/right images. :func:`run_apgd` therefore runs the restart loop of
``perturb`` itself, with the same seeding and the same rule (attack what is still correct, keep the
first success), and calls pyautoattack's own ``attack_single_run`` with the classifier restricted to
the rows it attacks.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..errors import MissingDependencyError
from .config import AttackConfig
from .logits import TwoAFCLogits

__all__ = ["ApgdResult", "run_apgd", "perturbation_norms", "apgd_class", "pyautoattack_class", "LOSSES"]

# APGD's objectives on the 2-class decision (margin m = z_y - z_other of the logits z):
# - "ce": cross-entropy, softplus(-m), the published protocol;
# - "margin": -m, the logit difference (Carlini & Wagner's loss);
# - "targeted": z_other alone, the cosine to the image people did not choose (the target class).
# CE and margin are increasing functions of -m, so on a deterministic model APGD (sign or
# normalised steps, and comparisons of losses only) takes the same path with either, up to
# rounding; they differ where gradients are averaged (EOT over a randomised defence) or saturate.
LOSSES = ("ce", "margin", "targeted")


class ApgdResult(NamedTuple):
    """What :func:`run_apgd` returns.

    Attributes:
        images: ``[N, 3, S, S]`` attacked references: the adversarial example for rows the attack
            fooled, the highest-loss point found for rows it did not (the strongest image to hand
            on, e.g. to a defence), and the clean image for rows that were wrong from the start.
        fooled: ``[N]`` bool, rows the attack itself saw misclassified (the evaluator re-checks).
    """

    images: torch.Tensor
    fooled: torch.Tensor


def apgd_class():
    """pyautoattack's ``APGDAttack``, or an error that says how to install it."""
    return pyautoattack_class("autopgd_base", "APGDAttack")


def pyautoattack_class(module: str, name: str):
    """``pyautoattack.MODULE.NAME``, or a :class:`MissingDependencyError` that says how to install it."""
    import importlib

    try:
        return getattr(importlib.import_module(f"pyautoattack.{module}"), name)
    except ModuleNotFoundError as err:
        if err.name is not None and err.name.split(".")[0] == "pyautoattack":
            raise MissingDependencyError(
                'Attacks need pyautoattack (the official AutoAttack code): pip install "rpmetric[attack]".',
                name="pyautoattack") from None
        raise


def _margin_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_other - z_y`` per row of 2-class logits (APGD ascends it)."""
    rows = torch.arange(len(z), device=z.device)
    return z[rows, 1 - y] - z[rows, y]


def _target_logit_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_other`` per row: the logit of the class that is not the label."""
    return z[torch.arange(len(z), device=z.device), 1 - y]


_CRITERIA = {"margin": _margin_loss, "targeted": _target_logit_loss}


def _apgd_with_loss(loss: str):
    """``APGDAttack`` for ``loss``. pyautoattack picks its criterion by name from a fixed list; its
    ``'ce-targeted'`` entry calls ``self.ce_loss_targeted``, a method the base class leaves to
    subclasses, so a subclass that defines it runs APGD unchanged on another loss."""
    base = apgd_class()
    if loss == "ce":
        return base, "ce"
    if loss not in _CRITERIA:
        raise ValueError(f"Argument `loss` must be one of {LOSSES}, but got {loss!r}.")
    criterion = _CRITERIA[loss]

    class CustomLossAPGD(base):
        def ce_loss_targeted(self, z, y):
            return criterion(z, y)

    return CustomLossAPGD, "ce-targeted"


def run_apgd(logits: TwoAFCLogits, x: torch.Tensor, y: torch.Tensor, config: AttackConfig, *,
             correct: Optional[torch.Tensor] = None, eot_iter: int = 1, loss: str = "ce") -> ApgdResult:
    """Attack the references ``x`` (``[N, 3, S, S]`` in [0, 1]) of ``logits`` towards misclassifying ``y``.

    Args:
        logits: the 2AFC classifier, with the left/right embeddings of the same ``N`` rows.
        x: clean references at the model's input size.
        y: ``[N]`` labels (the human choice).
        config: norm, eps, steps, restarts and seed.
        correct: ``[N]`` bool, rows judged correctly on the clean images; rows that are not are
            left unattacked, as ``perturb`` does. None computes it with ``logits``.
        eot_iter: gradient samples per step (for a randomised ``logits``; 1 otherwise).
        loss: ``"ce"`` (the published protocol), ``"margin"`` or ``"targeted"`` (see :data:`LOSSES`).
            Success is the decision flipping in every case.

    The global RNG is seeded with ``config.seed`` (as ``perturb`` does) inside ``fork_rng``, so the
    caller's random state is left untouched.
    """
    x = x.detach().float()
    y = y.to(x.device)
    if correct is None:
        with torch.no_grad():
            correct = logits(x).argmax(1) == y
    correct = correct.to(x.device)
    attack_class, name = _apgd_with_loss(loss)
    attack = attack_class(logits, norm=config.norm.autoattack_name, eps=config.eps, n_iter=config.steps,
                          n_restarts=1, seed=config.seed, loss=name, eot_iter=eot_iter, device=x.device)
    attack.init_hyperparam(x)
    images = x.clone()
    robust = correct.clone()
    best_loss = torch.full((len(x),), -float("inf"), device=x.device)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        for _ in range(config.restarts):
            rows = robust.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            attack.model = logits.select(rows)
            best, still_correct, loss, adversarial = attack.attack_single_run(x[rows], y[rows])
            fooled = ~still_correct.bool()
            images[rows[fooled]] = adversarial[fooled]
            # Rows not fooled keep the highest-loss point over the restarts.
            better = ~fooled & (loss > best_loss[rows])
            images[rows[better]] = best[better]
            best_loss[rows[better]] = loss[better]
            robust[rows[fooled]] = False
    return ApgdResult(images.detach(), correct & ~robust)


def perturbation_norms(adversarial: torch.Tensor, clean: torch.Tensor):
    """``(linf, l2)``: per-row ``[N]`` norms of ``adversarial - clean``, in float64 for the check.

    Example:
        >>> linf, l2 = perturbation_norms(torch.full((1, 3, 2, 2), 0.5), torch.zeros(1, 3, 2, 2))
        >>> linf.tolist(), l2.tolist()
        ([0.5], [1.7320508075688772])
    """
    delta = (adversarial.double() - clean.double()).flatten(1)
    return delta.abs().amax(dim=1), delta.norm(dim=1)
