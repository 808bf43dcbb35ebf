"""Robustness of retrieval decisions: APGD perturbs query images to change their kNN label or to
push them away from their true duplicate; clean and attacked accuracy are reported.

The decisions themselves (a kNN vote, a nearest neighbour) are not differentiable, so the attack
runs on a surrogate classifier, :class:`NearestClassLogits`: per class, the mean of the k highest
cosine similarities between the query's embedding and the class's reference embeddings (for
duplicates every stored image is its own class and k = 1). A surrogate attack can only show an
upper bound on robust accuracy. The attack is the robust-evaluation issue's APGD-CE
(:func:`rpmetric.attacks.run_apgd`), and the real decision is re-checked on the returned images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..images import unit_float
from .index import search
from .knn import knn_classify
from .rows import as_rows
from ..validation import check_int

__all__ = ["TASKS", "NearestClassLogits", "RetrievalAttackResult", "evaluate_retrieval_attack"]

TASKS = ("knn", "duplicate")


class NearestClassLogits(nn.Module):
    """``logits[n, c]`` = mean of the ``k`` highest cosines between ``f(x_n)`` and class c's reference rows.

    With ``k = 1`` this is a 1-NN classifier as logits; a larger ``k`` follows a k-NN vote more
    closely (a class wins by having several close members, not one).

    Args:
        features: maps images ``[N, 3, S, S]`` in [0, 1] to embeddings, differentiably (an Encoder).
        reference: ``[M, D]`` reference embeddings, held fixed.
        classes: ``[M]`` class index of each reference row, in ``[0, n_classes)``.
        n_classes: number of classes.
        k: members per class that count (fewer if the class is smaller).

    Example:
        >>> logits = NearestClassLogits(nn.Flatten(), torch.eye(3), torch.tensor([0, 1, 1]), 2)
        >>> logits(torch.tensor([[0.0, 3.0, 4.0]]).view(1, 3, 1, 1))
        tensor([[0.0000, 0.8000]])
        >>> NearestClassLogits(nn.Flatten(), torch.eye(3), torch.tensor([0, 1, 1]), 2, k=2)(
        ...     torch.tensor([[0.0, 3.0, 4.0]]).view(1, 3, 1, 1))
        tensor([[0.0000, 0.7000]])
    """

    def __init__(self, features, reference: torch.Tensor, classes: torch.Tensor, n_classes: int, k: int = 1):
        super().__init__()
        self.features = features
        self.reference = F.normalize(reference.detach().float(), dim=-1)
        self.classes = classes.long()
        self.n_classes = n_classes
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A matrix product ranks against every reference row at once; this is a similarity (a logit),
        # not a reported distance.
        sim = F.normalize(self.features(x).float(), dim=-1) @ self.reference.to(x.device).T
        classes = self.classes.to(x.device)
        if self.k == 1:
            out = sim.new_zeros(len(x), self.n_classes)
            return out.scatter_reduce(1, classes.expand(len(x), -1), sim, reduce="amax", include_self=False)
        columns = []
        for c in range(self.n_classes):  # kNN labels are few, so a loop over classes is cheap
            members = sim[:, classes == c]
            columns.append(members.topk(min(self.k, members.shape[1]), dim=1).values.mean(dim=1))
        return torch.stack(columns, dim=1)

    def select(self, rows: torch.Tensor) -> "NearestClassLogits":
        """The same classifier for a subset of rows (the reference is shared by all rows)."""
        return self


@dataclass
class RetrievalAttackResult:
    """Clean and attacked accuracy of a retrieval decision, with one record per query.

    ``clean_accuracy`` covers all ``n`` queries; ``robust_accuracy`` the first ``n_attacked`` (0
    without an attack), whose records alone hold an ``"attacked"`` decision.
    """

    task: str
    n: int
    clean_accuracy: float
    robust_accuracy: Optional[float]
    attack: Optional[dict]
    records: List[dict] = field(default_factory=list)
    n_attacked: int = 0

    def to_dict(self) -> dict:
        return {"task": self.task, "n": self.n, "clean_accuracy": self.clean_accuracy, "n_attacked": self.n_attacked,
                "robust_accuracy": self.robust_accuracy, "attack": self.attack, "records": self.records}


def _surrogate_reference(reference, rows) -> torch.Tensor:
    """The reference rows in memory for the attack's surrogate (a tensor as it is; a store's rows
    gathered in its dtype), which holds them as float32 unit vectors: refused above
    ``EMBEDDINGS_LIMIT`` of float32, as ``embeddings()`` is."""
    if rows.in_memory:
        return reference
    from . import store as store_mod

    size = len(rows) * rows.dim * 4
    if size > store_mod.EMBEDDINGS_LIMIT:
        raise ValueError(
            f"The attack's surrogate classifier holds its {len(rows):,} reference rows as float32 "
            f"({size / 2**30:.1f} GiB), above rpmetric.stores.store.EMBEDDINGS_LIMIT "
            f"({store_mod.EMBEDDINGS_LIMIT / 2**30:.1f} GiB); attack against fewer reference rows (--task knn with "
            "a smaller labelled set), or drop the attack: clean accuracy streams a store of any size.")
    parts = [block for _, block in rows.blocks()]
    return torch.cat(parts) if parts else torch.zeros((0, rows.dim))


def _decide(task: str, reference, labels, emb: torch.Tensor, k: int, vote: str) -> List:
    if task == "knn":
        return [p.label for p in knn_classify(reference, labels, emb, k, vote=vote, index="exact")]
    return search(reference, emb, 1, index="exact").indices[:, 0].tolist()


def evaluate_retrieval_attack(metric, reference: torch.Tensor, images: torch.Tensor, truth: Sequence, *,
                              task: str = "knn", labels: Optional[Sequence[str]] = None, k: int = 5,
                              vote: str = "majority", config=None, batch_size: int = 16,
                              n_samples: Optional[int] = None,
                              names: Optional[Sequence[str]] = None) -> RetrievalAttackResult:
    """Accuracy of kNN labels or duplicate retrieval on clean and APGD-attacked query images.

    Args:
        metric: the :class:`~rpmetric.RobustDistance` that embedded ``reference``.
        reference: ``[M, D]`` reference embeddings, or an EmbeddingStore or a selection of its
            rows (the labelled ones), which the clean and attacked decisions stream; an attack's
            surrogate holds the rows as float32, so it is refused above ``EMBEDDINGS_LIMIT``.
        images: ``[Q, 3, S, S]`` query images at the model's input size: uint8 (as
            :func:`rpmetric.stores.store.model_input` gives, a quarter of float32's memory; converted to
            [0, 1] per batch) or float in [0, 1].
        truth: per query, its true label (``task="knn"``) or the reference row of its true
            duplicate (``task="duplicate"``).
        task: ``"knn"`` (attack pushes the kNN vote to another label) or ``"duplicate"`` (attack
            pushes the query away from its duplicate: correct means its nearest neighbour is it).
        labels: ``M`` reference labels (``task="knn"``).
        k, vote: the kNN rule (see :func:`rpmetric.stores.knn.knn_vote`).
        config: an :class:`rpmetric.attacks.AttackConfig`; None reports clean accuracy only.
        batch_size: queries attacked at once.
        n_samples: with ``config``, attack only the first ``n_samples`` queries (clean accuracy
            still covers all); None attacks all.
        names: per query, a name for the records (e.g. its path).

    Example:
        >>> from rpmetric.attacks import AttackConfig
        >>> result = evaluate_retrieval_attack(metric, store.embeddings(), x, ["cat", "dog"], labels=labels,
        ...                                    config=AttackConfig.create("linf"))  # doctest: +SKIP
    """
    if task not in TASKS:
        raise ValueError(f"Argument `task` must be one of {TASKS}, but got {task!r}.")
    if len(truth) != len(images):
        raise ValueError(f"Argument `truth` must give one entry per query image ({len(images)}), but got {len(truth)}.")
    if n_samples is not None and config is None:
        raise ValueError("Argument `n_samples` limits the attack; pass `config` too, or leave n_samples None.")
    n = len(images)
    n_attacked = 0 if config is None else n if n_samples is None else min(check_int("n_samples", n_samples, 1), n)
    rows = as_rows(reference, "reference")
    surrogate = _surrogate_reference(reference, rows) if n_attacked else None  # before any work
    if task == "knn":
        if labels is None or len(labels) != len(rows):
            raise ValueError("task 'knn' needs `labels`, one per reference row.")
        vocabulary = {label: c for c, label in enumerate(sorted(set(labels)))}
        unknown = sorted({t for t in truth if t not in vocabulary})
        if unknown:
            raise ValueError(f"True labels {unknown[:3]} do not occur in the reference labels {list(vocabulary)[:10]}; "
                             "the kNN vote could never be right.")
        classes = torch.tensor([vocabulary[label] for label in labels])
        targets = torch.tensor([vocabulary[t] for t in truth])
        logits = NearestClassLogits(metric.encoder, surrogate, classes, len(vocabulary), k=k) if n_attacked else None
    else:
        targets = torch.tensor([int(t) for t in truth])
        logits = NearestClassLogits(metric.encoder, surrogate, torch.arange(len(rows)), len(rows)) if n_attacked else None

    clean_pred, attacked_pred = [], []
    for start in range(0, n, batch_size):
        x = unit_float(images[start:start + batch_size].to(metric.device))
        with torch.no_grad():
            pred = _decide(task, reference, labels, metric.encoder(x).cpu(), k, vote)
        clean_pred.extend(pred)
        stop = min(start + batch_size, n_attacked)
        if stop <= start:
            continue
        from ..attacks import run_apgd

        correct = torch.tensor([p == t for p, t in zip(pred, truth[start:stop])], device=x.device)
        adv = run_apgd(logits, x[:stop - start], targets[start:stop].to(x.device), config, correct=correct).images
        with torch.no_grad():
            attacked_pred.extend(_decide(task, reference, labels, metric.encoder(adv).cpu(), k, vote))
    names = list(names) if names is not None else [str(i) for i in range(n)]
    records = [{"query": name, "truth": t, "clean": c} for name, t, c in zip(names, truth, clean_pred)]
    for record, a in zip(records, attacked_pred):
        record["attacked"] = a
    clean = sum(c == t for c, t in zip(clean_pred, truth)) / n if n else float("nan")
    robust = sum(a == t for a, t in zip(attacked_pred, truth)) / n_attacked if n_attacked else None
    recorded = config.to_dict(defended=False) if config is not None else None  # no counterattack here
    return RetrievalAttackResult(task, n, clean, robust, recorded, records, n_attacked)
