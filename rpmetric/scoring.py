"""Agreement with human judgements: the 2AFC score, binary accuracy, JND mAP, and the correlations
with opinion scores (SRCC, KRCC, PLCC raw and after the 4-parameter logistic).

The formulas are those of lpips (BAPPS) and DreamSim (NIGHTS); every function takes plain
arrays (numpy, lists or tensors) and flattens them to ``[N]`` first, because lpips' own JND
script sorts an ``[N, 1, 1, 1]`` array along a length-1 axis and so gets a wrong mAP.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["twoafc_scores", "twoafc_score", "binary_agreements", "binary_accuracy", "jnd_precision_recall", "jnd_map",
           "srcc", "krcc", "plcc", "logistic4", "fit_logistic4", "logistic_plcc", "correlations"]


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
# -- correlation with opinion scores (full-reference IQA, pair files) ------------------------------
# Sign convention: a distance grows as an image looks worse, so against a score where higher means
# better (MOS) a good metric correlates negatively. `correlations` orients every figure so that a
# good metric scores positive: it correlates the predicted quality -d with the score as published,
# times -1 when the dataset's score is higher-is-worse (DMOS, PieAPP's error, a dissimilarity).


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (the ranking Spearman's coefficient uses)."""
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; NaN when either side is constant (the coefficient is then undefined)."""
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denominator) if denominator > 0 else float("nan")


def plcc(x, y) -> float:
    """Pearson's linear correlation coefficient (NaN for a constant input or fewer than 2 values).

    Example:
        >>> plcc([1, 2, 3], [2, 4, 7])
        0.9933992677987828
    """
    x, y = _flat("x", x), _flat("y", y)
    _same_length(x=x, y=y)
    return _pearson(x, y) if x.size > 1 else float("nan")


def srcc(x, y) -> float:
    """Spearman's rank correlation: Pearson's r of the ranks, tied values sharing their mean rank.

    Example:
        >>> srcc([1, 2, 2, 4], [10, 30, 20, 40])
        0.9486832980505138
    """
    x, y = _flat("x", x), _flat("y", y)
    _same_length(x=x, y=y)
    return _pearson(_ranks(x), _ranks(y)) if x.size > 1 else float("nan")


def krcc(x, y) -> float:
    """Kendall's tau-b, which corrects for ties on either side:
    ``(concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y))`` with ``n0 = n (n - 1) / 2``.

    Example:
        >>> krcc([1, 2, 3, 4], [1, 3, 2, 4])
        0.6666666666666669
    """
    from scipy.stats import kendalltau

    x, y = _flat("x", x), _flat("y", y)
    _same_length(x=x, y=y)
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(kendalltau(x, y, variant="b").statistic)


def logistic4(x, beta1: float, beta2: float, beta3: float, beta4: float):
    """The 4-parameter logistic of VQEG's FR-TV report, which IQA papers fit before the PLCC:
    ``(beta1 - beta2) / (1 + exp(-(x - beta3) / |beta4|)) + beta2``, rising from ``beta2`` to ``beta1``.

    Example:
        >>> float(logistic4(0.0, 5.0, 1.0, 0.0, 1.0))
        3.0
    """
    z = np.clip(-(np.asarray(x, dtype=np.float64) - beta3) / max(abs(beta4), 1e-12), -500, 500)
    return (beta1 - beta2) / (1.0 + np.exp(z)) + beta2


def fit_logistic4(x, y):
    """``(beta1, beta2, beta3, beta4)`` of :func:`logistic4` fitted to ``y`` by least squares
    (``scipy.optimize.curve_fit``), started at ``(max y, min y, mean x, std x)``; None when the fit
    does not converge or the data are constant.

    Example:
        >>> xs = np.linspace(-3, 3, 25)
        >>> [round(b, 3) for b in fit_logistic4(xs, logistic4(xs, 4.0, 1.0, 0.5, 0.7))]
        [4.0, 1.0, 0.5, 0.7]
    """
    from scipy.optimize import curve_fit

    x, y = _flat("x", x), _flat("y", y)
    _same_length(x=x, y=y)
    if x.size < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    start = [float(y.max()), float(y.min()), float(x.mean()), float(x.std()) or 1.0]
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # OptimizeWarning: no covariance, which is not used here
            beta, _ = curve_fit(logistic4, x, y, p0=start, maxfev=20000)
    except (RuntimeError, ValueError):  # no convergence; a degenerate design
        return None
    if not np.all(np.isfinite(beta)):
        return None
    beta[3] = abs(beta[3])  # the form uses |beta4|: report the positive one
    return tuple(float(b) for b in beta)


def logistic_plcc(x, y) -> float:
    """PLCC of ``y`` with ``logistic4(x)`` fitted to it (:func:`fit_logistic4`), signed by the fitted
    curve's direction: negative when the best fitting logistic falls (``beta1 < beta2``), so that a
    metric ranking the wrong way is not hidden by a decreasing fit. NaN when no fit exists.

    Example:
        >>> xs = np.linspace(-3, 3, 25)
        >>> round(logistic_plcc(xs, logistic4(xs, 4.0, 1.0, 0.5, 0.7)), 6)
        1.0
    """
    x, y = _flat("x", x), _flat("y", y)
    beta = fit_logistic4(x, y)
    if beta is None:
        return float("nan")
    r = _pearson(logistic4(x, *beta), y)
    return r if beta[0] >= beta[1] else -abs(r)


def correlations(d, score, higher_is_better: bool = True) -> dict:
    """SRCC, KRCC, raw PLCC and PLCC after the 4-parameter logistic between distances and opinion
    scores, oriented so that a good metric is positive (see the sign convention above).

    Args:
        d: distances, one per pair.
        score: the pairs' opinion scores as published.
        higher_is_better: True when a higher score means better quality or more similar (MOS,
            TID2013, KADID-10k, PIPAL's Elo); False when it means worse (CSIQ's DMOS, PieAPP's error).

    Returns:
        ``{"srcc", "krcc", "plcc", "plcc_raw"}``: floats, or None where undefined (fewer than 2
        pairs, a constant side; ``plcc`` also when the logistic fit fails or with fewer than 4).
        The logistic maps the predicted quality (``-d``) to the score oriented higher-is-better.

    Example:
        >>> c = correlations([0.1, 0.2, 0.3, 0.4], [4.0, 3.0, 2.5, 1.0])
        >>> c["srcc"], c["krcc"], round(c["plcc_raw"], 4)
        (1.0, 1.0, 0.9812)
    """
    d, score = _flat("d", d), _flat("score", score)
    _same_length(d=d, score=score)
    quality, target = -d, (score if higher_is_better else -score)
    figures = {"srcc": srcc(quality, target), "krcc": krcc(quality, target), "plcc": logistic_plcc(quality, target),
               "plcc_raw": plcc(quality, target)}
    return {k: (None if not math.isfinite(v) else v) for k, v in figures.items()}
