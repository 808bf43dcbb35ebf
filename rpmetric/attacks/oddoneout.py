"""Robust odd-one-out accuracy (THINGS): APGD on one image of each triplet, so that the decision flips.

Threat model: the attacker may perturb **any one** of the three images, within the ε-ball in [0, 1]
pixels at the model's input size; the other two stay clean. Each image is attacked in turn (three
APGD-CE runs, the second and third only on triplets still judged right), and a triplet counts as
robust only if no single-image attack changes the metric's odd one out away from the people's.

The decision is a 3-class classifier, :class:`OddOneOutLogits`: class ``k`` is "image ``k + 1`` is the
odd one out", its logit the cosine similarity of the other two images (the pair that stays together
is the most similar one). The label is the people's odd one out. Credit follows
:func:`rpmetric.scoring.odd_one_out_credits` (a tie between ``k`` candidates counts ``1/k``), both clean
and attacked, re-checked with a fresh full-precision forward pass; a triplet's robust credit is the
least of its clean credit and its credit under each attack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..datasets import OddOneOut, OddOneOutImages
from ..functional import cosine_distance
from ..runlog import RunLog, record_check
from ..scoring import odd_one_out_credits
from ..unique import embed_unique
from ..validation import check_int
from .apgd import run_apgd
from .batches import attack_in_batches
from .config import AttackConfig
from .threat import checked_norms
from .evaluate import (AttackResult, _dataset_and_keys, _loader_transform, _prepared, _result,
                       _run_config)
from .features import PlainFeatures, as_embedder

__all__ = ["OddOneOutLogits", "evaluate_odd_one_out_attack", "attack_odd_one_out_groups", "ODD_ONE_OUT_THREAT"]

ODD_ONE_OUT_THREAT = ("any one of the three images is perturbed (each in turn, the other two clean); a triplet is "
                      "robust if no such attack changes the odd one out")
# What attack_config_from_args gives that this attack uses; eot_samples applies to a counterattack only.
_OPTIONS = ("norm", "eps", "steps", "restarts", "seed", "n_samples")


class OddOneOutLogits(nn.Module):
    """``[s23, s13, s12]`` per triplet, with image ``position`` (0, 1 or 2) given as input and the other
    two fixed: ``s_ij`` is the cosine similarity of images i and j, so class ``k`` (the largest logit)
    means "image ``k + 1`` is the odd one out".

    Args:
        features: maps images ``[N, 3, S, S]`` in [0, 1] to embeddings ``[N, D]`` (differentiably).
        position: which image the input replaces.
        fixed: ``[N, 3, D]`` clean embeddings of the three images (the ``position`` column is unused).

    Example:
        >>> fixed = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
        >>> OddOneOutLogits(torch.nn.Flatten(), 0, fixed)(torch.tensor([1.0, 0.1]).view(1, 2, 1, 1)).argmax(1)
        tensor([2])
    """

    def __init__(self, features, position: int, fixed: torch.Tensor):
        super().__init__()
        if fixed.ndim != 3 or fixed.shape[1] != 3:
            raise ValueError(f"Argument `fixed` must have shape [N, 3, D], but got {tuple(fixed.shape)}.")
        if position not in (0, 1, 2):
            raise ValueError(f"Argument `position` must be one of (0, 1, 2), but got {position!r}.")
        self.features = features
        self.position = position
        self.fixed = fixed.detach()  # a plain attribute: it changes per batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """The logits with embeddings ``f`` ``[N, D]`` at ``position``."""
        e = [f if k == self.position else self.fixed[:, k] for k in range(3)]
        return torch.stack([1.0 - cosine_distance(e[1], e[2]), 1.0 - cosine_distance(e[0], e[2]),
                            1.0 - cosine_distance(e[0], e[1])], dim=1)

    def select(self, rows: torch.Tensor) -> "OddOneOutLogits":
        """The same classifier for a subset of the triplets (``rows`` indexes the batch)."""
        return OddOneOutLogits(self.features, self.position, self.fixed[rows])


def evaluate_odd_one_out_attack(metric, triplets: Sequence[OddOneOut], *, norm: str = "linf",
                                eps: Optional[float] = None, steps: int = 100, restarts: int = 1, seed: int = 0,
                                batch_size: int = 16, n_samples: Optional[int] = None, workers: int = 0,
                                runlog_path=None, resume: bool = False, progress: bool = True) -> AttackResult:
    """Clean and robust odd-one-out accuracy of a metric under APGD-CE on one image at a time.

    Args:
        metric: a :class:`~rpmetric.RobustDistance` (without a counterattack) or a module with
            ``embed(x, normalize=False)``, as for :func:`~rpmetric.attacks.evaluate_attack`.
        triplets: :class:`~rpmetric.datasets.OddOneOut` records, e.g. from ``read_things``.
        norm, eps, steps, restarts, seed: the attack (one radius; see :class:`AttackConfig`).
        batch_size: triplets per batch; a resumed run must use the same one.
        n_samples: attack only the first ``n_samples`` triplets; None for all.
        workers: DataLoader worker processes decoding images.
        runlog_path, resume: a JSON-lines run log of finished batches, and continuing from it.
        progress: show a progress bar.

    Returns:
        An :class:`AttackResult` whose records hold ``key``, ``odd``, the clean ``d12``, ``d13``,
        ``d23``, ``clean_correct`` and ``robust_correct`` (credits), ``fooled_by`` (the position, 1-3,
        of the first image whose attack lowered the credit, or None), and the largest ``linf`` and
        ``l2`` of the perturbations tried.

    Raises:
        ValueError: a bad argument, several radii, a counterattack, an unreadable image, duplicate
            ids, or a run log of another configuration.

    Example:
        >>> from rpmetric.datasets import read_things
        >>> result = evaluate_odd_one_out_attack(metric, read_things("/data/things"), eps=4 / 255)  # doctest: +SKIP
        >>> result.clean_accuracy, result.robust_accuracy  # doctest: +SKIP
    """
    if isinstance(eps, (list, tuple)):
        raise ValueError("The odd-one-out attack takes one radius; robustness curves over several are for "
                         "2AFC (`rpmetric eval nights|bapps|triplets`).")
    config = AttackConfig.create(norm, eps, steps, restarts, seed)
    batch_size = check_int("batch_size", batch_size, 1)
    embedder = as_embedder(metric)
    if embedder.counterattack is not None:
        raise ValueError("The odd-one-out attack evaluates the plain metric; build the RobustDistance without a "
                         "counterattack.")
    records = list(triplets)
    bad = next((t for t in records if not isinstance(t, OddOneOut)), None)
    if bad is not None:
        raise TypeError(f"Argument `triplets` must be rpmetric.datasets.OddOneOut records, but holds a "
                        f"{type(bad).__name__}.")
    dataset, keys = _dataset_and_keys(OddOneOutImages(records, transform=_loader_transform(embedder)))
    n = len(keys) if n_samples is None else min(check_int("n_samples", n_samples, 1), len(keys))
    if n == 0:
        raise ValueError("Argument `triplets` holds no triplets; pass at least one.")
    keys = keys[:n]
    run_config = {**_run_config(metric, config, None, batch_size, keys, dataset), "task": "robust-odd-one-out",
                  "threat": ODD_ONE_OUT_THREAT}
    run_config["attack"].pop("target", None)  # the 2AFC threat models do not apply: `threat` says which image moves
    log = None if runlog_path is None else RunLog(runlog_path, run_config, resume,
                                                  check=record_check(["clean_correct", "robust_correct"]))
    records = attack_in_batches(dataset, keys, batch_size, log,
                                lambda batch, batch_keys: _attack_batch(embedder, batch, batch_keys, config),
                                item="Triplet", source="`triplets`", desc=f"APGD-{config.norm.value} odd-one-out",
                                workers=workers, progress=progress)
    return _result(records, run_config)


def _attack_batch(embedder, batch: dict, keys: List[str], config: AttackConfig) -> List[dict]:
    device = embedder.device
    images = [_prepared(batch[f], embedder, device) for f in ("im1", "im2", "im3")]
    odd = batch["odd"].double()
    y = (odd.long() - 1).to(device)
    judge = PlainFeatures(embedder)
    with torch.no_grad():
        # Each distinct image once, so that identical images tie exactly on any machine.
        fixed = torch.stack(embed_unique(judge, torch.cat(images)).chunk(3), dim=1)
    clean = OddOneOutLogits(judge, 0, fixed).logits(fixed[:, 0])
    clean_ok = _credits(clean, odd)
    still, fooled_by = list(clean_ok), [None] * len(keys)
    linf, l2 = [0.0] * len(keys), [0.0] * len(keys)
    for position in range(3):
        attacker = OddOneOutLogits(PlainFeatures(embedder, amp=True), position, fixed)
        attack = torch.tensor(still, device=device) > 0
        attacked = run_apgd(attacker, images[position], y, config, correct=attack).images
        sizes = [t.tolist() for t in checked_norms(attacked, images[position], config)]
        with torch.no_grad():
            credit = _credits(OddOneOutLogits(judge, position, fixed)(attacked), odd)
        # An image the attack left as it was keeps its clean judgement: embedded again, in another
        # batch, it could differ from its clean embedding by rounding and break an exact tie.
        unchanged = (attacked == images[position]).flatten(1).all(dim=1).tolist()
        credit = [c if not same else ok for c, same, ok in zip(credit, unchanged, clean_ok)]
        for j in range(len(keys)):
            if credit[j] < still[j] and fooled_by[j] is None:
                fooled_by[j] = position + 1
            still[j] = min(still[j], credit[j])
            linf[j], l2[j] = max(linf[j], sizes[0][j]), max(l2[j], sizes[1][j])
    distances = (1.0 - clean).tolist()
    return [{"key": k, "odd": int(o), "d12": d[2], "d13": d[1], "d23": d[0], "clean_correct": c,
             "robust_correct": r, "fooled_by": f, "linf": a, "l2": b}
            for k, o, d, c, r, f, a, b in zip(keys, odd.tolist(), distances, clean_ok, still, fooled_by, linf, l2)]


def _credits(logits: torch.Tensor, odd: torch.Tensor) -> List[float]:
    """The scoring module's credits for logits ``[s23, s13, s12]`` (distances ``1 - s``)."""
    d = (1.0 - logits.detach().double()).cpu()
    return odd_one_out_credits(d[:, 2], d[:, 1], d[:, 0], odd).tolist()


def attack_odd_one_out_groups(metric, groups: Mapping[str, Sequence[OddOneOut]], options: dict, *, batch_size: int,
                              workers: int = 0, log: Optional[Path] = None, resume: bool = False,
                              progress: bool = True) -> Dict[str, dict]:
    """:func:`evaluate_odd_one_out_attack` on each group, with the options of
    :func:`~rpmetric.attacks.attack_config_from_args`: ``{group: summary}`` in the layout of
    :meth:`AttackResult.to_dict` (``n``, ``clean_accuracy``, ``robust_accuracy``, ``attack``), plus
    ``threat``. Each group's run log is ``LOG.attack-GROUP.jsonl`` beside ``log``, as for 2AFC.

    Raises:
        ValueError: an option this attack does not offer (e.g. several radii).
    """
    from .cli import attack_log_path

    unknown = [k for k, v in options.items() if k not in _OPTIONS and k != "eot_samples" and v is not None]
    if unknown:
        raise ValueError(f"The odd-one-out attack does not take {', '.join(unknown)}; it perturbs one image at a "
                         "time with APGD-CE (drop the option).")
    kwargs = {k: options[k] for k in _OPTIONS if k in options}
    results = {}
    for group, records in groups.items():
        runlog = None if log is None else attack_log_path(log, group)
        result = evaluate_odd_one_out_attack(metric, records, batch_size=batch_size, workers=workers,
                                             runlog_path=runlog, resume=resume and runlog is not None and runlog.exists(),
                                             progress=progress, **kwargs)
        results[group] = {**result.to_dict(), "threat": ODD_ONE_OUT_THREAT}
    return results
