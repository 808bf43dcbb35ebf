"""Threat models of the 2AFC attack: which images of a triplet move, as rows a classification attack perturbs.

An attack perturbs one tensor of rows, each in its own ball. :class:`TripletView` lays a batch of
triplets out as such rows and builds the 2-class classifier over them:

- ``ref``: one row per triplet, the reference; :class:`~rpmetric.attacks.TwoAFCLogits` (the
  published protocol, unchanged).
- ``distorted``: one row per triplet, the image people judged closer (left where ``p <= 0.5``,
  by the label rule of :func:`~rpmetric.attacks.human_labels`), pushed away from the clean
  reference: :class:`DistortedLogits`.
- ``both``: three rows per triplet (reference, left, right), so that an attack's per-row projection
  keeps each image in its own ball, in l2 as in l-inf: :class:`JointLogits`. Each row carries its
  triplet's logits, so the three rows see the same loss and move in step (APGD's per-row step
  sizes and best points, Square's per-row acceptance).
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn

from ..functional import cosine_distance
from .apgd import perturbation_norms
from .config import AttackConfig, Norm, Target
from .logits import TwoAFCLogits

__all__ = ["TripletView", "DistortedLogits", "JointLogits"]

# float32 rounding of APGD's projection (x + eps is rounded) may exceed the radius by an ulp.
_BALL_TOLERANCE = 1e-6


class DistortedLogits(nn.Module):
    """2AFC logits when only the human-preferred distorted image moves.

    Per triplet, ``[cos(e_ref, f(x)), cos(e_ref, e_other)]`` if the moving image is the left one
    (``side == 0``), else ``[cos(e_ref, e_other), cos(e_ref, f(x))]``: the reference and the other
    image are embedded once, clean.

    Example:
        >>> logits = DistortedLogits(torch.nn.Flatten(), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]),
        ...                          torch.tensor([1]))
        >>> logits(torch.tensor([3.0, 4.0]).view(1, 2, 1, 1))  # the right image moves: cos 3/5 to the ref
        tensor([[0.0000, 0.6000]])
    """

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], e_ref: torch.Tensor, e_other: torch.Tensor,
                 side: torch.Tensor):
        super().__init__()
        self.features = features
        self.e_ref = e_ref.detach()
        self.e_other = e_other.detach()
        self.side = side.detach()
        self.fixed = 1.0 - cosine_distance(self.e_ref, self.e_other)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moving = 1.0 - cosine_distance(self.e_ref, self.features(x))
        fixed = self.fixed.to(moving.device)
        left = self.side.to(moving.device) == 0
        return torch.stack([torch.where(left, moving, fixed), torch.where(left, fixed, moving)], dim=1)

    def select(self, rows: torch.Tensor) -> "DistortedLogits":
        return DistortedLogits(self.features, self.e_ref[rows], self.e_other[rows], self.side[rows])


class JointLogits(nn.Module):
    """2AFC logits when all three images move: rows ``3i, 3i+1, 3i+2`` are the reference, left and
    right of triplet ``i``; each row gets its triplet's ``[cos(f(ref), f(left)), cos(f(ref), f(right))]``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).view(3, 2, 1, 1)
        >>> JointLogits(torch.nn.Flatten())(x)  # each of the triplet's three rows
        tensor([[1., 0.],
                [1., 0.],
                [1., 0.]])
    """

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        ref, left, right = f[0::3], f[1::3], f[2::3]
        z = torch.stack([1.0 - cosine_distance(ref, left), 1.0 - cosine_distance(ref, right)], dim=1)
        return z.repeat_interleave(3, dim=0)

    def select(self, rows: torch.Tensor) -> "JointLogits":
        groups = rows.view(-1, 3) if rows.numel() % 3 == 0 else None
        if groups is None or not bool(((groups[:, 0] % 3 == 0) & (groups[:, 1] == groups[:, 0] + 1)
                                       & (groups[:, 2] == groups[:, 0] + 2)).all()):
            raise RuntimeError("An attack asked for rows that split a triplet under --attack-target both; this is a "
                               "bug, please report it.")
        return self


class TripletView:
    """A batch of triplets as the rows an attack perturbs under one threat model.

    Args:
        target: the threat model.
        ref, left, right: ``[N, 3, S, S]`` clean images in [0, 1] at the model's input size.
        y: ``[N]`` labels (1 where people chose the right image).

    Attributes:
        x: the clean rows to perturb, ``[N * k, 3, S, S]``; ``k`` rows per triplet (3 for ``both``).
        y: the rows' labels.

    Example:
        >>> ref, left, right = (torch.full((2, 3, 1, 1), v) for v in (0.0, 0.5, 1.0))
        >>> view = TripletView("distorted", ref, left, right, torch.tensor([0, 1]))
        >>> view.x.flatten().tolist()  # the left image of the first triplet, the right of the second
        [0.5, 0.5, 0.5, 1.0, 1.0, 1.0]
    """

    def __init__(self, target, ref: torch.Tensor, left: torch.Tensor, right: torch.Tensor, y: torch.Tensor):
        self.target = Target.parse(target)
        self.labels = y
        if self.target is Target.REF:
            self.k, self.x = 1, ref
        elif self.target is Target.DISTORTED:
            self.k, self.x = 1, torch.where((y == 0).view(-1, 1, 1, 1), left, right)
        else:
            self.k, self.x = 3, torch.stack([ref, left, right], dim=1).flatten(0, 1)
        self.y = self.per_row(y)

    def per_row(self, values: torch.Tensor) -> torch.Tensor:
        """Per-triplet values repeated for each of a triplet's rows."""
        return values if self.k == 1 else values.repeat_interleave(self.k, dim=0)

    def per_triplet(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row values (equal within a triplet) as one per triplet."""
        return values if self.k == 1 else values[::self.k]

    def classifier(self, features, f_ref: torch.Tensor, e_left: torch.Tensor, e_right: torch.Tensor) -> nn.Module:
        """The 2-class classifier over the rows, with ``features`` embedding what moves and the clean
        embeddings ``f_ref``, ``e_left``, ``e_right`` (``[N, D]``) standing for what does not."""
        if self.target is Target.REF:
            return TwoAFCLogits(features, e_left, e_right)
        if self.target is Target.DISTORTED:
            right = (self.labels == 1).view(-1, 1).to(e_left.device)
            return DistortedLogits(features, f_ref, torch.where(right, e_left, e_right), self.labels)
        return JointLogits(features)

    def distances(self, checker: nn.Module, images: torch.Tensor, clean: Tuple[List[float], List[float]]):
        """``(d0, d1)`` lists per triplet of the attacked rows ``images``: a fresh pass of ``checker``.

        Under ``distorted`` and ``both``, a triplet none of whose images moved keeps its clean
        distances: its embeddings would otherwise be recomputed in another batch, whose rounding
        could split a tie between two identical images (the reference-only protocol never
        re-embeds the fixed images, so it needs no such rule).
        """
        with torch.no_grad():
            d = 1.0 - self.per_triplet(checker(images))
        d0, d1 = d[:, 0].tolist(), d[:, 1].tolist()
        if self.target is not Target.REF:
            still = (images == self.x).flatten(1).all(1).view(-1, self.k).all(1).tolist()
            d0 = [c if s else a for a, c, s in zip(d0, clean[0], still)]
            d1 = [c if s else a for a, c, s in zip(d1, clean[1], still)]
        return d0, d1

    def norms(self, images: torch.Tensor, config: AttackConfig) -> Tuple[List[float], List[float]]:
        """Per triplet the largest l-inf and l2 norm of its images' perturbations, after checking the
        promise of every attack: each image in its ball and in [0, 1]."""
        linf, l2 = checked_norms(images, self.x, config)
        if self.k > 1:
            linf, l2 = linf.view(-1, self.k).amax(1), l2.view(-1, self.k).amax(1)
        return linf.tolist(), l2.tolist()

    def first_rows(self, images: torch.Tensor) -> torch.Tensor:
        """One image per triplet: the moving one (the reference under ``both``), for a review page."""
        return self.per_triplet(images)


def checked_norms(attacked: torch.Tensor, clean: torch.Tensor, config: AttackConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row the l-inf and l2 norms of ``attacked - clean``, after checking the promise of every
    attack: each row in its ball and in [0, 1] (RuntimeError otherwise: a bug, not bad input)."""
    linf, l2 = perturbation_norms(attacked, clean)
    size = linf if config.norm is Norm.LINF else l2
    limit = config.eps * (1 + _BALL_TOLERANCE) + _BALL_TOLERANCE
    if bool((size > limit).any()) or float(attacked.min()) < 0.0 or float(attacked.max()) > 1.0:
        raise RuntimeError(f"An attack returned images outside the {config.norm.value} ball of radius {config.eps} or "
                           f"outside [0, 1] (largest norm {float(size.max())}, values in "
                           f"[{float(attacked.min())}, {float(attacked.max())}]); this is a bug, please report it.")
    return linf, l2


def worst_per_triplet(names: Sequence[str], correct: dict) -> List[int]:
    """Per triplet the index into ``names`` of the first attack with the lowest correctness."""
    n = len(correct[names[0]])
    return [min(range(len(names)), key=lambda i: correct[names[i]][j]) for j in range(n)]
