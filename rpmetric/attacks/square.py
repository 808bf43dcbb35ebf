"""The Square attack (Andriushchenko et al., ECCV 2020) from pyautoattack, on the 2AFC decision.

Square is black-box: it only queries the decision's scores, so it needs no gradient and goes
through a defence as deployed (a counterattack included), which is what exposes gradient masking.

Like APGD (see :mod:`rpmetric.attacks.apgd`), ``SquareAttack`` queries shrinking subsets of the
batch (the rows not yet fooled) without naming them, while each 2AFC row carries its own
embeddings. Its loop keeps the margins it minimises in one tensor, which it returns from its first
query and then updates in place, and queries exactly the rows whose margin is still positive. The
subclass here keeps a reference to that tensor and reads from it which rows each query holds, so
pyautoattack's own loop runs unchanged, on batched encoder passes of the rows still robust.
"""

from __future__ import annotations

from typing import Optional

import torch

from .apgd import ApgdResult, pyautoattack_class
from .config import AttackConfig

__all__ = ["run_square", "square_class"]


def square_class():
    """pyautoattack's ``SquareAttack``, or an error that says how to install it."""
    return pyautoattack_class("square", "SquareAttack")


def _row_aware(base):
    class RowAwareSquare(base):
        """``SquareAttack`` whose queries go to the 2AFC classifier of the rows they hold."""

        def start(self, logits) -> None:
            self.logits = logits
            self.margins = None

        def margin_and_loss(self, x, y):
            if self.margins is None:  # the first query of a run: every row
                rows = torch.arange(len(x), device=x.device)
            else:  # Square queries the rows whose margin is still positive, in order
                rows = (self.margins > 0.0).nonzero().view(-1)
            if len(rows) != len(x):
                raise RuntimeError(f"Square queried {len(x)} rows where {len(rows)} are still positive; this "
                                   "pyautoattack version differs from the one rpmetric was written for, please report it.")
            self.predict = self.logits.select(rows)
            margin, loss = super().margin_and_loss(x, y)
            if self.margins is None:
                self.margins = margin
            return margin, loss

    return RowAwareSquare


def run_square(logits, x: torch.Tensor, y: torch.Tensor, config: AttackConfig, *,
               correct: Optional[torch.Tensor] = None) -> ApgdResult:
    """Square (margin loss, pyautoattack's defaults) on the rows ``x`` of ``logits`` towards misclassifying ``y``.

    Args:
        logits: a 2AFC classifier with a ``select(rows)`` method (the attack needs only its outputs).
        x: ``[N, 3, S, S]`` clean inputs in [0, 1].
        y: ``[N]`` labels.
        config: norm, eps, restarts, seed and ``square_queries`` (per restart).
        correct: rows to attack (the others are returned clean); None computes it with ``logits``.

    Returns:
        The images (Square's best point per row; the clean image for rows not attacked) and the
        rows it saw fooled. The caller re-checks. The caller's RNG state is left untouched.
    """
    x = x.detach().float()
    y = y.to(x.device)
    with torch.no_grad():
        if correct is None:
            correct = logits(x).argmax(1) == y
        correct = correct.to(x.device)
        attack = _row_aware(square_class())(logits, norm=config.norm.autoattack_name, eps=config.eps,
                                            n_queries=config.square_queries, n_restarts=1, seed=config.seed,
                                            loss="margin", device=x.device)
        attack.init_hyperparam(x)
        images = x.clone()
        robust = correct.clone()
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)  # as SquareAttack.perturb seeds it
            for _ in range(config.restarts):
                rows = robust.nonzero().view(-1)
                if rows.numel() == 0:
                    break
                attack.start(logits.select(rows))
                _, best = attack.attack_single_run(x[rows], y[rows])
                # Square keeps the point of lowest margin: the strongest image to hand on when not fooled.
                images[rows] = best
                robust[rows[attack.margins <= 0.0]] = False  # Square's own margins of its best points
    return ApgdResult(images.detach(), correct & ~robust)
