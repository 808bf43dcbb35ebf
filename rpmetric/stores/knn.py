"""kNN classification over embeddings: the k nearest labelled reference rows vote."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .index import _check_choice, search
from .rows import as_rows

__all__ = ["VOTES", "Prediction", "knn_vote", "knn_classify"]

VOTES = ("majority", "distance")


@dataclass
class Prediction:
    """One kNN decision: the label, its share of the vote, and the neighbours that voted."""

    label: str
    score: float
    neighbours: List[int]
    distances: List[float]


def knn_vote(labels: Sequence[str], distances: Sequence[float], vote: str = "majority") -> Tuple[str, float]:
    """The label the neighbours vote for and its share of the vote.

    Args:
        labels: the neighbours' labels, nearest first.
        distances: their distances.
        vote: ``"majority"`` (one vote each) or ``"distance"`` (weight ``1 / (d + 1e-6)``, so an
            exact copy decides). A tie goes to the label whose nearest member is closest.

    Example:
        >>> knn_vote(["cat", "dog", "dog"], [0.1, 0.2, 0.3])
        ('dog', 0.6666666666666666)
        >>> knn_vote(["cat", "dog", "dog"], [0.01, 0.2, 0.3], vote="distance")[0]
        'cat'
    """
    _check_choice("vote", vote, VOTES)
    weights: dict = {}
    for label, d in zip(labels, distances):
        weights[label] = weights.get(label, 0.0) + (1.0 if vote == "majority" else 1.0 / (float(d) + 1e-6))
    if not weights:
        raise ValueError("knn_vote needs at least one neighbour.")
    best = max(weights, key=weights.get)  # dicts keep insertion order: ties go to the nearer label
    return best, weights[best] / sum(weights.values())


def knn_classify(reference, labels: Sequence[str], queries, k: int = 5, *, vote: str = "majority",
                 index: str = "auto", nprobe: Optional[int] = None) -> List[Prediction]:
    """Label queries by their ``k`` nearest labelled reference embeddings.

    Args:
        reference: ``[N, D]`` embeddings of the labelled set, or an EmbeddingStore (streamed; its
            labelled rows: ``store.select(rows)``).
        labels: N labels, one per reference row.
        queries: ``[Q, D]`` embeddings.
        k, vote, index, nprobe: see :func:`knn_vote` and :func:`search`.

    Example:
        >>> import torch
        >>> ref = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> [p.label for p in knn_classify(ref, ["safe", "safe", "nsfw"], torch.tensor([[0.1, 1.0]]), k=1)]
        ['nsfw']
    """
    n = len(as_rows(reference, "reference"))
    if len(labels) != n:
        raise ValueError(f"Argument `labels` must give one label per reference row ({n}), but got {len(labels)}.")
    _check_choice("vote", vote, VOTES)
    hits = search(reference, queries, k, index=index, nprobe=nprobe)
    predictions = []
    for row_d, row_i in zip(hits.distances.tolist(), hits.indices.tolist()):
        pairs = [(i, d) for i, d in zip(row_i, row_d) if i >= 0]
        label, score = knn_vote([labels[i] for i, _ in pairs], [d for _, d in pairs], vote)
        predictions.append(Prediction(label, score, [i for i, _ in pairs], [d for _, d in pairs]))
    return predictions
