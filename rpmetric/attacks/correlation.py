"""How far an attack can move a metric's correlation with opinion scores (full-reference IQA, pair
files): APGD on each distorted image, pushing its distance towards the wrong rank.

The rule: with the quality ``q`` (the score oriented higher-is-better, see
:func:`rpmetric.scoring.correlations`) and its median ``m`` over the pairs evaluated, an image with
``q >= m`` (better than the median) has its distance pushed up, one with ``q < m`` down. The
reference's embedding is computed once, clean, and held fixed; only the distorted image is perturbed,
at the model's input size in [0, 1], within the ``eps`` ball.

The attack is APGD (pyautoattack's ``attack_single_run``, seeded per batch as
:func:`rpmetric.attacks.apgd.run_apgd` does) on a 2-logit classifier ``[s * cos, -s * cos]`` with label
0, whose cross-entropy ``log(1 + exp(-2 s cos))`` rises monotonically as ``s * cos`` falls: its
highest-loss point is the largest shift of the distance in the direction ``s``. Over restarts the
highest-loss point is kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..datasets.loading import ScoredPairImages
from ..datasets.records import ScoredPair
from ..fingerprint import model_identity, records_fingerprint
from ..functional import cosine_distance
from ..runlog import RunLog, record_check
from ..scoring import correlations
from ..validation import check_int
from .apgd import apgd_class
from .batches import attack_in_batches
from .config import AttackConfig
from .evaluate import _loader_transform, _prepared
from .threat import checked_norms
from .features import PlainFeatures, as_embedder

__all__ = ["DistanceLogits", "ShiftResult", "evaluate_shift", "shift_summary", "push_directions"]


class DistanceLogits(nn.Module):
    """``[s * cos(f(x), e_ref), -s * cos(f(x), e_ref)]`` per pair: with label 0, a classification
    attack that raises the cross-entropy lowers ``s * cos``, so it raises the distance where ``s = 1``
    and lowers it where ``s = -1``.

    Example:
        >>> logits = DistanceLogits(torch.nn.Flatten(), torch.tensor([[1.0, 0.0]]), torch.tensor([1.0]))
        >>> logits(torch.tensor([3.0, 4.0]).view(1, 2, 1, 1))  # cosine 3/5
        tensor([[ 0.6000, -0.6000]])
    """

    def __init__(self, features, e_ref: torch.Tensor, direction: torch.Tensor):
        super().__init__()
        self.features = features
        self.e_ref = e_ref.detach()
        self.direction = direction.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.direction.to(x.device) * (1.0 - cosine_distance(self.features(x), self.e_ref))
        return torch.stack([z, -z], dim=1)


@dataclass
class ShiftResult:
    """Per-pair clean and attacked distances (see :func:`evaluate_shift`).

    Attributes:
        records: one dict per pair: ``key``, ``score``, ``direction`` (+1: pushed up, -1: down),
            ``clean_d``, ``adv_d``, the perturbation's ``linf`` and ``l2``.
        config: what defines the run (attack, model, median, orientation).
        higher_is_better: which way the scores run.
    """

    records: List[dict] = field(repr=False)
    config: dict = field(default_factory=dict)
    higher_is_better: bool = True


def push_directions(scores: Sequence[float], higher_is_better: bool, median: Optional[float] = None) -> List[int]:
    """+1 (push the distance up) for pairs at or above the median quality, -1 below it.

    Example:
        >>> push_directions([1.0, 2.0, 3.0], True), push_directions([1.0, 2.0, 3.0], False)
        ([-1, 1, 1], [1, 1, -1])
    """
    quality = np.asarray(scores, dtype=np.float64) * (1 if higher_is_better else -1)
    m = float(np.median(quality)) if median is None else median * (1 if higher_is_better else -1)
    return [1 if q >= m else -1 for q in quality]


def evaluate_shift(metric, pairs: Sequence[ScoredPair], higher_is_better: bool, *, norm: str = "linf",
                   eps: Optional[float] = None, steps: int = 100, restarts: int = 1, seed: int = 0,
                   batch_size: int = 16, n_samples: Optional[int] = None, workers: int = 0, runlog_path=None,
                   resume: bool = False, progress: bool = True, eot_samples: Optional[int] = None) -> ShiftResult:
    """Attack the distorted image of every pair towards the wrong rank (see the module docstring).

    Args:
        metric: a :class:`~rpmetric.RobustDistance` or an encoder with ``embed`` (as for
            :func:`rpmetric.attacks.evaluate_attack`).
        pairs: the scored pairs; the median quality is taken over all of them.
        higher_is_better: which way their scores run.
        norm, eps, steps, restarts, seed: the APGD settings (eps None: 4/255 or 3).
        batch_size: pairs per batch; a resumed run must use the same one.
        n_samples: attack only the first ``n_samples`` pairs.
        runlog_path, resume: a run log of finished batches, to continue an interrupted run.
        eot_samples: not used (there is no defence to average over); accepted so that the options of
            :func:`rpmetric.attacks.cli.attack_config_from_args` pass through unchanged.

    Example:
        >>> result = evaluate_shift(metric, read_iqa("tid2013", root)[0], True, eps=4 / 255)  # doctest: +SKIP
    """
    config = AttackConfig.create(norm, eps, steps, restarts, seed)
    batch_size = check_int("batch_size", batch_size, 1)
    embedder = as_embedder(metric)
    pairs = list(pairs)
    if not pairs:
        raise ValueError("Argument `pairs` holds no pair; pass at least one.")
    directions = push_directions([p.score for p in pairs], higher_is_better)
    median = float(np.median([p.score for p in pairs]))
    n = len(pairs) if n_samples is None else min(check_int("n_samples", n_samples, 1), len(pairs))
    pairs, directions = pairs[:n], directions[:n]
    keys = [str(p.id) for p in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("Pair ids must be unique to be attacked and resumed; evaluate one split at a time.")
    spec = getattr(embedder.module, "spec", None)
    identity = model_identity(spec) if spec is not None else {"model": type(metric).__name__, "model_files": None}
    run_config = {"task": "correlation-shift", **identity,
                  "preprocessing": asdict(spec.preprocessing) if getattr(spec, "preprocessing", None) else None,
                  "attack": {k: v for k, v in config.to_dict(defended=False).items() if k != "target"},  # the distorted image moves "batch_size": batch_size, "n": n,
                  "higher_is_better": higher_is_better, "median": median, "records": records_fingerprint(pairs)}
    log = None if runlog_path is None else RunLog(runlog_path, run_config, resume,
                                                  check=record_check(["clean_d", "adv_d", "direction"]))
    dataset = ScoredPairImages(pairs, transform=_loader_transform(embedder))

    def attack(batch, batch_keys):
        push = torch.tensor([directions[i] for i in batch["index"]])
        return _shift_batch(embedder, batch, batch_keys, push, config)

    records = attack_in_batches(dataset, keys, batch_size, log, attack, item="Pair", source="`pairs`",
                                desc=f"APGD-{config.norm.value} shift", workers=workers, progress=progress)
    return ShiftResult(records, run_config, higher_is_better)


def _shift_batch(embedder, batch: dict, keys: List[str], direction: torch.Tensor, config: AttackConfig) -> List[dict]:
    device = embedder.device
    ref = _prepared(batch["ref"], embedder, device)
    dist = _prepared(batch["dist"], embedder, device)
    judge = PlainFeatures(embedder)
    with torch.no_grad():
        e_ref, e_dist = judge(torch.cat([ref, dist])).chunk(2)
        clean = cosine_distance(e_dist, e_ref)
    logits = DistanceLogits(PlainFeatures(embedder, amp=True), e_ref, direction.to(device))
    attacked = _apgd_highest_loss(logits, dist, config)
    linf, l2 = (t.tolist() for t in checked_norms(attacked, dist, config))
    with torch.no_grad():
        adv = cosine_distance(judge(attacked), e_ref)
    return [{"key": k, "score": float(s), "direction": int(di), "clean_d": float(c), "adv_d": float(a),
             "linf": li, "l2": l2_} for k, s, di, c, a, li, l2_ in
            zip(keys, batch["score"].tolist(), direction.tolist(), clean.tolist(), adv.tolist(), linf, l2)]


def _apgd_highest_loss(logits: DistanceLogits, x: torch.Tensor, config: AttackConfig) -> torch.Tensor:
    """pyautoattack's APGD single runs on every row, keeping each row's highest-loss point over the
    restarts (no row is ever "fooled" and dropped: the goal is the largest shift, not a flip)."""
    x = x.detach().float()
    y = torch.zeros(len(x), dtype=torch.long, device=x.device)
    if config.eps == 0:
        return x.clone()
    attack = apgd_class()(logits, norm=config.norm.autoattack_name, eps=config.eps, n_iter=config.steps,
                          n_restarts=1, seed=config.seed, loss="ce", eot_iter=1, device=x.device)
    attack.init_hyperparam(x)
    images, best_loss = x.clone(), torch.full((len(x),), -math.inf, device=x.device)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        for _ in range(config.restarts):
            best, _, loss, _ = attack.attack_single_run(x, y)
            better = loss > best_loss
            images[better] = best[better]
            best_loss[better] = loss[better]
    return images.detach()


def shift_summary(records: Sequence[dict], higher_is_better: bool, attack: dict) -> dict:
    """The figures of a group of :class:`ShiftResult` records: ``n``, the correlations on the clean
    and on the attacked distances (``clean``, ``attacked``: :func:`rpmetric.scoring.correlations`),
    ``srcc_drop`` (clean SRCC minus attacked SRCC), and the distance shift ``|adv_d - clean_d|``:
    ``mean_shift``, ``max_shift``, and ``wrong_way`` (the share of pairs whose distance moved against
    its push, which an attack that works leaves near 0).

    Example:
        >>> rows = [{"score": 1.0, "direction": -1, "clean_d": 0.5, "adv_d": 0.2},
        ...         {"score": 2.0, "direction": 1, "clean_d": 0.3, "adv_d": 0.6}]
        >>> s = shift_summary(rows, True, {})
        >>> s["clean"]["srcc"], s["attacked"]["srcc"], round(s["mean_shift"], 6), round(s["max_shift"], 6)
        (1.0, -1.0, 0.3, 0.3)
    """
    clean = [r["clean_d"] for r in records]
    adv = [r["adv_d"] for r in records]
    scores = [r["score"] for r in records]
    shifts = np.abs(np.asarray(adv) - np.asarray(clean))
    before, after = correlations(clean, scores, higher_is_better), correlations(adv, scores, higher_is_better)
    drop = None if before["srcc"] is None or after["srcc"] is None else before["srcc"] - after["srcc"]
    wrong = [r["direction"] * (r["adv_d"] - r["clean_d"]) < 0 for r in records]
    return {"n": len(records), "attack": attack, "clean": before, "attacked": after, "srcc_drop": drop,
            "mean_shift": float(shifts.mean()), "max_shift": float(shifts.max()),
            "wrong_way": float(np.mean(wrong))}
