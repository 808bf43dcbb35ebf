"""Agreement with human judgements: the 2AFC score, binary accuracy and JND mAP.

The formulas are those of lpips (BAPPS) and DreamSim (NIGHTS); every function takes plain
arrays (numpy, lists or tensors) and flattens them to ``[N]`` first, because lpips' own JND
script sorts an ``[N, 1, 1, 1]`` array along a length-1 axis and so gets a wrong mAP.
"""

from __future__ import annotations

import numpy as np

__all__ = ["twoafc_scores", "twoafc_score", "binary_agreements", "binary_accuracy", "jnd_precision_recall", "jnd_map"]


def _flat(name: str, values) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensors, on any device
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"Argument `{name}` must be finite, but contains NaN or inf.")
    return arr


def _same_length(**arrays) -> None:
    sizes = {name: a.size for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"Arguments {', '.join(f'`{n}`' for n in sizes)} must have the same number of "
                         f"elements, but got {sizes}.")
    if not next(iter(sizes.values())):
        raise ValueError("Nothing to score: the arrays are empty.")


def twoafc_scores(d0, d1, p) -> np.ndarray:
    """Per-triplet 2AFC agreement ``(d0<d1)(1-p) + (d1<d0)p + 0.5(d0==d1)``.

    Args:
        d0: distances from the reference to the left / p0 image.
        d1: distances from the reference to the right / p1 image.
        p: share of people who preferred the right / p1 image.

    A tie (``d0 == d1``) earns 0.5 whatever the people said.

    Example:
        >>> twoafc_scores([0.1, 0.5, 0.3], [0.2, 0.4, 0.3], [0.25, 0.25, 1.0])
        array([0.75, 0.25, 0.5 ])
    """
    d0, d1, p = _flat("d0", d0), _flat("d1", d1), _flat("p", p)
    _same_length(d0=d0, d1=d1, p=p)
    return (d0 < d1) * (1.0 - p) + (d1 < d0) * p + 0.5 * (d0 == d1)


def twoafc_score(d0, d1, p) -> float:
    """Mean of :func:`twoafc_scores`: the 2AFC score in [0, 1].

    Example:
        >>> twoafc_score([0.1, 0.5], [0.2, 0.4], [0.0, 1.0])
        1.0
    """
    return float(np.mean(twoafc_scores(d0, d1, p)))


def binary_agreements(d0, d1, p) -> np.ndarray:
    """Per triplet 1 where the metric picks the image most people picked, 0 where not, 0.5 for a tie.

    The label is "right preferred" when ``p > 0.5`` (so ``p == 0.5`` counts as left); the
    prediction is "right" when ``d1 < d0``. A tie ``d0 == d1`` counts half, as in the 2AFC score,
    so a metric that cannot tell the images apart scores 0.5, not 0 or 1.

    Example:
        >>> binary_agreements([0.1, 0.5, 0.3], [0.2, 0.4, 0.3], [0.4, 0.6, 1.0])
        array([1. , 1. , 0.5])
    """
    d0, d1, p = _flat("d0", d0), _flat("d1", d1), _flat("p", p)
    _same_length(d0=d0, d1=d1, p=p)
    return np.where(d0 == d1, 0.5, ((d1 < d0) == (p > 0.5)).astype(np.float64))


def binary_accuracy(d0, d1, p) -> float:
    """Mean of :func:`binary_agreements`: the share of triplets where the metric picks the image
    most people picked (a tie counts half).

    Example:
        >>> binary_accuracy([0.1, 0.5, 0.3], [0.2, 0.4, 0.3], [0.4, 0.6, 1.0])
        0.8333333333333334
    """
    return float(np.mean(binary_agreements(d0, d1, p)))


def jnd_precision_recall(d, same):
    """The JND precision-recall curve that :func:`jnd_map` integrates: ``(recall, precision,
    envelope)`` arrays, one point per pair in order of ascending distance.

    Pairs are sorted by ascending distance (stably, so tied distances keep their input order);
    ``TP = cumsum(same)``, ``FP = cumsum(1 - same)``, recall ``TP / sum(same)``, precision
    ``TP / (TP + FP)``; the envelope is the best precision reachable at this recall or beyond.

    Example:
        >>> r, p, e = jnd_precision_recall([0.1, 0.2, 0.3], [1.0, 0.0, 1.0])
        >>> r.tolist(), p.round(4).tolist(), e.round(4).tolist()
        ([0.5, 0.5, 1.0], [1.0, 0.5, 0.6667], [1.0, 0.6667, 0.6667])
    """
    d, same = _flat("d", d), _flat("same", same)
    _same_length(d=d, same=same)
    total = same.sum()
    if total <= 0:
        raise ValueError("Argument `same` must not be all zero: with no pair judged the same, recall is undefined.")
    order = np.argsort(d, kind="stable")
    tp = np.cumsum(same[order])
    fp = np.cumsum(1.0 - same[order])
    recall = tp / total
    precision = tp / (tp + fp)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return recall, precision, envelope


def jnd_map(d, same) -> float:
    """JND mean average precision: how well small distances pick out the pairs people found identical.

    The area under the monotone precision envelope of :func:`jnd_precision_recall` (VOC style):
    ``sum over recall steps of (r_i - r_{i-1}) * max_{j >= i} precision_j``.

    Args:
        d: distances, any shape (flattened).
        same: share of people who judged each pair identical, in [0, 1].

    Example:
        >>> round(jnd_map([0.1, 0.2, 0.3], [1.0, 0.0, 1.0]), 6)
        0.833333
    """
    recall, _, envelope = jnd_precision_recall(d, same)
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


# -- odd-one-out (THINGS) -------------------------------------------------------------------------
__all__ += ["odd_one_out_choices", "odd_one_out_credits", "odd_one_out_accuracy"]


def odd_one_out_choices(d12, d13, d23) -> np.ndarray:
    """``[N, 3]`` bool: per triplet, which images the metric picks as the odd one out.

    The pair with the smallest distance stays together and the third image is odd: image 3 for
    ``d12``, 2 for ``d13``, 1 for ``d23``. Pairs tied at the smallest distance each name their odd
    image, so a tie marks two (or all three) candidates.

    Example:
        >>> odd_one_out_choices([0.1, 0.2], [0.5, 0.2], [0.4, 0.3]).astype(int).tolist()
        [[0, 0, 1], [0, 1, 1]]
    """
    d12, d13, d23 = _flat("d12", d12), _flat("d13", d13), _flat("d23", d23)
    _same_length(d12=d12, d13=d13, d23=d23)
    by_odd = np.stack([d23, d13, d12], axis=1)  # column k: the distance of the pair without image k + 1
    return by_odd == by_odd.min(axis=1, keepdims=True)


def odd_one_out_credits(d12, d13, d23, odd) -> np.ndarray:
    """Per triplet, the credit for matching the people's odd one out: 1 if the metric picks it alone,
    ``1/k`` if it is one of ``k`` candidates tied at the smallest distance, 0 otherwise.

    A tie splits the credit equally among the tied candidates, so a metric that cannot tell three
    images apart (all distances equal) scores 1/3, chance, on any triplet: ties neither win (as
    DreamSim's ``<=`` does, which counts an all-equal triplet right) nor lose outright.

    Args:
        d12, d13, d23: distances between images 1 and 2, 1 and 3, 2 and 3.
        odd: the position (1, 2 or 3) of the image people chose as the odd one out.

    Example:
        >>> odd_one_out_credits([0.1, 0.2, 0.3, 0.5], [0.5, 0.2, 0.3, 0.1], [0.4, 0.3, 0.3, 0.4], [3, 3, 3, 3])
        array([1.        , 0.5       , 0.33333333, 0.        ])
    """
    chosen = odd_one_out_choices(d12, d13, d23)
    odd = _flat("odd", odd)
    _same_length(d12=chosen[:, 0], odd=odd)
    if not np.all(np.isin(odd, (1, 2, 3))):
        bad = odd[~np.isin(odd, (1, 2, 3))][0]
        raise ValueError(f"Argument `odd` must hold positions 1, 2 or 3, but holds {bad:g}.")
    hit = chosen[np.arange(len(odd)), odd.astype(int) - 1]
    return hit / chosen.sum(axis=1)


def odd_one_out_accuracy(d12, d13, d23, odd) -> float:
    """Mean of :func:`odd_one_out_credits`: the share of triplets where the metric picks the people's
    odd one out (a tie between k candidates counts 1/k).

    Example:
        >>> odd_one_out_accuracy([0.1, 0.5], [0.5, 0.1], [0.4, 0.4], [3, 3])
        0.5
    """
    return float(np.mean(odd_one_out_credits(d12, d13, d23, odd)))
