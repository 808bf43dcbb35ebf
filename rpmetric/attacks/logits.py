"""The 2AFC decision as a 2-class classifier, so classification attacks apply to it unchanged."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..functional import cosine_distance

__all__ = ["TwoAFCLogits", "human_labels"]


class TwoAFCLogits(nn.Module):
    """``[cos(f(x_ref), e_left), cos(f(x_ref), e_right)]`` per triplet, with no temperature.

    Class 0 is "left is closer to the reference", class 1 "right is closer". The left and right
    embeddings are computed once, from the clean images, and held fixed: only the reference is
    attacked, as in the published protocol.

    Args:
        features: maps reference images ``[N, 3, S, S]`` in [0, 1] to embeddings ``[N, D]``
            (differentiably), e.g. an :class:`rpmetric.models.encoder.Encoder`.
        e_left, e_right: ``[N, D]`` embeddings of the clean left and right images (``[1, D]``
            broadcasts to every row).

    Example:
        >>> logits = TwoAFCLogits(torch.nn.Flatten(), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
        >>> logits(torch.tensor([3.0, 4.0]).view(1, 2, 1, 1))  # cosines 3/5 and 4/5
        tensor([[0.6000, 0.8000]])
    """

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], e_left: torch.Tensor,
                 e_right: torch.Tensor):
        super().__init__()
        if e_left.shape != e_right.shape or e_left.ndim != 2:
            raise ValueError(f"Arguments `e_left` and `e_right` must both have shape [N, D], but got "
                             f"{tuple(e_left.shape)} and {tuple(e_right.shape)}.")
        self.features = features
        # Plain attributes, not buffers: they change per batch and never belong in a state dict.
        self.e_left = e_left.detach()
        self.e_right = e_right.detach()

    def forward(self, x_ref: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x_ref))

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """The logits of reference embeddings ``f`` ``[N, D]`` already computed."""
        return torch.stack([1.0 - cosine_distance(f, self.e_left), 1.0 - cosine_distance(f, self.e_right)], dim=1)

    def select(self, rows: torch.Tensor) -> "TwoAFCLogits":
        """The same classifier for a subset of the triplets (``rows`` indexes the batch)."""
        if self.e_left.shape[0] == 1:
            return self
        return TwoAFCLogits(self.features, self.e_left[rows], self.e_right[rows])


def human_labels(p: torch.Tensor) -> torch.Tensor:
    """The human choice as a class: 1 (right) where ``p > 0.5``, else 0 (left); ``p == 0.5`` is left.

    Example:
        >>> human_labels(torch.tensor([0.0, 0.5, 0.8]))
        tensor([0, 0, 1])
    """
    return (p > 0.5).long()
