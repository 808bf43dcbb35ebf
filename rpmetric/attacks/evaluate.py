"""Robust 2AFC accuracy: the share of triplets still judged like the humans after APGD attacks the
reference image (the protocol of Croce et al., SaTML 2025), batched and resumable."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..datasets import Triplet, TripletImages
from ..fingerprint import model_identity, records_fingerprint
from ..images import unit_float
from ..models.preprocess import resize_and_crop
from ..runlog import RunLog, record_check
from ..scoring import binary_agreements
from ..unique import embed_unique
from ..validation import check_int
from .apgd import run_apgd
from .batches import attack_in_batches
from .config import SQUARE_QUERIES, AttackConfig, Target
from .features import (DefendedFeatures, Embedder, EOTDefendedFeatures, PlainFeatures, as_embedder, check_defence,
                       eot_seeds)
from .logits import TwoAFCLogits, human_labels
from .square import run_square
from .threat import TripletView, worst_per_triplet

__all__ = ["AttackResult", "evaluate_attack"]


@dataclass
class AttackResult:
    """Clean and robust binary accuracy on the same triplets, with the per-triplet records.

    With several radii (a robustness curve, ``eps`` a list), ``robust_accuracy`` and the three
    defended figures under attack are None, and ``curve`` holds them per radius instead; each record's
    ``adv_d0``, ``adv_d1``, ``robust_correct``, ``linf``, ``l2`` (and ``nonadaptive_correct``,
    ``adaptive_correct``, ``adaptive_linf``, ``adaptive_l2``) are then lists, one value per radius.

    Attributes:
        n: number of triplets.
        clean_accuracy: share judged like the humans (label ``p > 0.5``) on the clean images; a
            tie counts half, as in :func:`rpmetric.scoring.binary_accuracy`.
        robust_accuracy: share still judged correctly after the attack, re-checked with a fresh
            forward pass on the returned images; a triplet wrong on the clean images counts wrong.
        records: one dict per triplet (``key``, ``p``, ``label``, distances ``clean_d0/d1`` and
            ``adv_d0/d1``, ``clean_correct``, ``robust_correct``, the perturbation's ``linf`` and
            ``l2``; with a counterattack also ``defended_clean_correct``, ``nonadaptive_correct``,
            ``adaptive_correct``, ``adaptive_linf``, ``adaptive_l2``, and, for a
            :class:`rpmetric.Counterattack`, the ``tau`` it measured on the clean, the attacked and
            the adaptively attacked reference: ``tau_clean``, ``tau_attacked``, ``tau_adaptive``;
            under ``target="distorted"`` the attacked taus are the distorted image's). With the
            suite also ``suite_correct`` (``{attack: correct}``) and ``fooled_by`` (the attacks
            that lowered the clean correctness), and with a counterattack ``adaptive_suite_correct``
            and ``adaptive_fooled_by``; ``robust_correct`` and ``adaptive_correct`` are then the
            worst case, and the distances and norms those of the worst attack's images.
        config: the attack configuration and what else defines the run.
        defended_clean_accuracy: with a counterattack, clean accuracy of the defended metric.
        nonadaptive_accuracy: the defended metric judging the images attacked through the plain
            metric (the TTC paper's evaluation).
        adaptive_accuracy: the defended metric judging images attacked through the defence itself.
        worst_case_accuracy: per triplet the worse of the two: correct only if both attacks fail.
        curve: with several radii, one dict per radius in increasing order: ``eps``,
            ``robust_accuracy``, and with a counterattack ``nonadaptive_accuracy``,
            ``adaptive_accuracy``, ``worst_case_accuracy`` (with the suite also
            ``suite_accuracy`` and ``adaptive_suite_accuracy``); None for a single radius.
        suite_accuracy: with ``suite``, ``{attack: robust accuracy}`` of each attack alone on the
            plain metric (``robust_accuracy`` is then their worst case, per triplet); else None.
        adaptive_suite_accuracy: the same through the counterattack (``adaptive_accuracy`` is their
            worst case).
        images: with ``keep_images``, ``{key: {"clean": ref, "attacked": ref + delta}}`` of the first
            triplets as the attack produced them (with several radii, at the largest) (``[3, S, S]`` float32 CPU tensors at the model's
            input size, in [0, 1]); triplets resumed from a run log have none.
    """

    n: int
    clean_accuracy: float
    robust_accuracy: Optional[float]
    records: List[dict] = field(repr=False)
    config: dict = field(default_factory=dict)
    defended_clean_accuracy: Optional[float] = None
    nonadaptive_accuracy: Optional[float] = None
    adaptive_accuracy: Optional[float] = None
    worst_case_accuracy: Optional[float] = None
    curve: Optional[List[dict]] = None
    images: Dict[str, dict] = field(default_factory=dict, repr=False)
    suite_accuracy: Optional[Dict[str, float]] = None
    adaptive_suite_accuracy: Optional[Dict[str, float]] = None

    def to_dict(self) -> dict:
        """The figures and the configuration as JSON-ready data (without the per-triplet records).

        With several radii, ``robust_accuracy`` gives way to ``per_eps``, a list of one summary per
        radius (``eps``, ``robust_accuracy`` and, with a counterattack, a ``counterattack`` dict of the
        three accuracies under attack); the top-level ``counterattack`` keeps its config and clean
        accuracy, which no radius changes.
        """
        if self.curve is not None:
            return self._curve_dict()
        summary = {"n": self.n, "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
                   "attack": self.config.get("attack")}
        if self.suite_accuracy is not None:
            summary["suite"] = {**self.suite_accuracy, "ensemble": self.robust_accuracy}
        if self.defended_clean_accuracy is not None:
            summary["counterattack"] = {
                "config": self.config.get("counterattack"),
                "clean_accuracy": self.defended_clean_accuracy,
                "nonadaptive_accuracy": self.nonadaptive_accuracy,
                "adaptive_accuracy": self.adaptive_accuracy,
                "worst_case_accuracy": self.worst_case_accuracy,
            }
            if self.adaptive_suite_accuracy is not None:
                summary["counterattack"]["adaptive_suite"] = {**self.adaptive_suite_accuracy,
                                                              "ensemble": self.adaptive_accuracy}
        return summary

    def _curve_dict(self) -> dict:
        defended = self.defended_clean_accuracy is not None
        per_eps = [{"eps": point["eps"], "robust_accuracy": point["robust_accuracy"],
                    **({"suite": {**point["suite_accuracy"], "ensemble": point["robust_accuracy"]}}
                       if "suite_accuracy" in point else {}),
                    **({"counterattack": {key: point[key] for key in _DEFENDED_FIGURES}} if defended else {})}
                   for point in self.curve]
        for point, summary in zip(self.curve, per_eps):
            if "adaptive_suite_accuracy" in point:
                summary["counterattack"]["adaptive_suite"] = {**point["adaptive_suite_accuracy"],
                                                              "ensemble": point["adaptive_accuracy"]}
        summary = {"n": self.n, "clean_accuracy": self.clean_accuracy, "attack": self.config.get("attack"),
                   "per_eps": per_eps}
        if defended:
            summary["counterattack"] = {"config": self.config.get("counterattack"),
                                        "clean_accuracy": self.defended_clean_accuracy}
        return summary


def evaluate_attack(metric, data: Union[Sequence[Triplet], torch.utils.data.Dataset], *, norm: str = "linf",
                    eps: Union[None, float, Sequence[float]] = None, steps: int = 100, restarts: int = 1, seed: int = 0,
                    counterattack=None, eot_samples: int = 4, batch_size: int = 16,
                    n_samples: Optional[int] = None, workers: int = 0, device=None, runlog_path=None,
                    resume: bool = False, progress: bool = True, keep_images: int = 0, target: str = "ref",
                    suite=False, square_queries: int = SQUARE_QUERIES) -> AttackResult:
    """Clean and robust 2AFC binary accuracy of a metric under APGD-CE (or an attack ensemble).

    By default (``target="ref"``, the published protocol) only the reference is perturbed. The
    left and right images are embedded once, clean, and held fixed; the classifier's logits are
    ``[cos(f(ref + delta), e_left), cos(f(ref + delta), e_right)]`` (no temperature) and the label
    is the human choice, ``p > 0.5``. Images are first resized and cropped to the model's input
    size (its ``prepare``), then attacked in [0, 1].

    Args:
        metric: a :class:`~rpmetric.RobustDistance`, or any module with ``embed(x, normalize=False)``
            mapping ``[N, 3, H, W]`` images in [0, 1] to raw ``[N, D]`` embeddings differentiably
            (such as :class:`rpmetric.models.encoder.Encoder`); an optional ``prepare(x)`` method resizes
            images to the model's input size. A RobustDistance is attacked through its encoder, on
            [0, 1] images whatever its ``value_range``.
        data: :class:`~rpmetric.datasets.Triplet` records (e.g. from ``read_nights``), or a dataset
            yielding :class:`~rpmetric.datasets.TripletImages`-style items.
        norm: ``"linf"`` or ``"l2"``.
        eps: the radius on [0, 1] pixels; None gives the published one (4/255 for linf, 3 for l2).
            A list of radii gives a robustness curve in one run (see :class:`AttackResult`): each
            batch is embedded clean once, then attacked at each radius in increasing order. An
            adversarial image found at a smaller radius lies in every larger ball too, so a triplet
            fooled at one radius counts as fooled at the larger ones, and only the triplets still
            judged correctly are attacked at the next radius: robust accuracy never rises with eps.
        steps: APGD iterations (100 as published).
        restarts: random restarts (1 as published).
        seed: APGD's seed; the same seed gives the same result.
        counterattack: a test-time defence (:class:`rpmetric.Counterattack`), evaluated both
            non-adaptively and adaptively (see :class:`AttackResult`); None takes the metric's own
            hook, if it has one.
        eot_samples: with a counterattack: gradient samples per adaptive step, each through a copy
            of the defence with another seed.
        batch_size: triplets per batch. A resumed run must use the same one.
        n_samples: attack only the first ``n_samples`` triplets; None for all.
        workers: DataLoader worker processes decoding images.
        device: where to run; None for the model's device. The model is moved there.
        runlog_path: a JSON-lines file that records every finished batch, so that an interrupted run
            can continue with ``resume=True`` and give exactly the same result.
        resume: continue the run recorded in ``runlog_path``; refused when the model's files (its
            resolved location and file digests) or the triplets (ids, paths, ``p``) differ from the
            run's that wrote it (see :mod:`rpmetric.fingerprint`).
        progress: show a progress bar.
        keep_images: keep the clean and attacked references of the first ``keep_images`` triplets
            (``AttackResult.images``), for a review page (with ``target="distorted"`` the attacked
            distorted image).
        target: the threat model (:class:`~rpmetric.attacks.Target`): ``"ref"``; ``"distorted"``, the
            image people judged closer (left where ``p <= 0.5``) pushed away from the clean
            reference (Ghildyal & Liu, TMLR 2023); ``"both"``, all three images at once, each in its
            own ball. Works with a counterattack and with several radii.
        suite: True for the attack ensemble (:data:`~rpmetric.attacks.SUITE`: APGD-CE, APGD on
            the margin, APGD on the target logit, Square), or a sequence of its names. Every attack
            runs on every triplet judged correctly; a triplet is robust only if all of them fail:
            ``robust_correct`` (and with a counterattack ``adaptive_correct``) is the worst case,
            ``suite_correct`` the per-attack results and ``fooled_by`` the attacks that succeeded.
            With a counterattack the APGD attacks go through the defence (BPDA with EOT) and Square
            queries the defended decision; the non-adaptive figure judges the plain worst case.
        square_queries: Square's query budget (pyautoattack's default 5000).

    Raises:
        ValueError: a bad argument, an unreadable image, duplicate triplet ids, or a run log
            written with another configuration.
        FileExistsError: ``runlog_path`` exists and ``resume`` is False.

    Example:
        >>> import rpmetric
        >>> from rpmetric.datasets import read_nights
        >>> metric = rpmetric.RobustDistance("r-clip-t-convnext")  # doctest: +SKIP
        >>> result = evaluate_attack(metric, read_nights("/data/nights", "test"), norm="l2")  # doctest: +SKIP
        >>> result.clean_accuracy, result.robust_accuracy  # doctest: +SKIP
        >>> triplets = read_nights("/data/nights", "test")  # doctest: +SKIP
        >>> curve = evaluate_attack(metric, triplets, eps=[0, 2 / 255, 4 / 255])  # doctest: +SKIP
        >>> [point["robust_accuracy"] for point in curve.curve]  # doctest: +SKIP
    """
    configs, several = _radii(norm, eps, steps, restarts, seed, eot_samples, target, suite, square_queries)
    config = configs[0]
    batch_size = check_int("batch_size", batch_size, 1)
    embedder = as_embedder(metric)
    if counterattack is None:
        counterattack = embedder.counterattack
    if counterattack is not None:
        check_defence(counterattack)
    if device is not None:
        embedder = embedder._replace(device=torch.device(device))
        embedder.module.to(embedder.device)
    dataset, keys = _dataset_and_keys(data, _loader_transform(embedder))
    n = len(keys) if n_samples is None else min(check_int("n_samples", n_samples, 1), len(keys))
    if n == 0:
        raise ValueError("Argument `data` holds no triplets; pass at least one.")
    keys = keys[:n]
    run_config = _run_config(metric, configs if several else config, counterattack, batch_size, keys, dataset)
    log = None if runlog_path is None else RunLog(runlog_path, run_config, resume,
                                                  check=_record_check(counterattack is not None, configs, several,
                                                                      bool(config.suite)))
    kept: Dict[str, dict] = {}
    wanted = set(keys[:max(0, int(keep_images))])

    def attack(batch, batch_keys):
        return _attack_batch(embedder, batch, batch_keys, configs, counterattack, several,
                             keep=(wanted, kept) if wanted else None)

    def postfix(done):
        robust = [r["robust_correct"][-1] if several else r["robust_correct"] for r in done.values()]
        return dict(clean=_mean(done.values(), "clean_correct"), robust=sum(robust) / len(robust))

    records = attack_in_batches(dataset, keys, batch_size, log, attack, item="Triplet", source="`data`",
                                desc=f"{'suite' if config.suite else 'APGD'}-{config.norm.value}", workers=workers,
                                progress=progress, postfix=postfix)
    result = _result(records, run_config, configs if several else None)
    result.images = {k: kept[k] for k in keys if k in kept}
    return result


def _radii(norm, eps, steps, restarts, seed, eot_samples, target="ref", suite=False, square_queries=SQUARE_QUERIES):
    """``(configs, several)``: one checked config per radius, in increasing order, and whether ``eps``
    was a list (a curve) rather than one number."""
    several = isinstance(eps, (list, tuple))
    rest = dict(target=target, suite=suite, square_queries=square_queries)
    if not several:
        return [AttackConfig.create(norm, eps, steps, restarts, seed, eot_samples, **rest)], False
    if not eps:
        raise ValueError("Argument `eps` must hold at least one radius, but got an empty list.")
    configs = [AttackConfig.create(norm, e, steps, restarts, seed, eot_samples, **rest) for e in eps]
    radii = [c.eps for c in configs]
    twice = next((e for i, e in enumerate(radii) if e in radii[:i]), None)
    if twice is not None:
        raise ValueError(f"Argument `eps` holds the radius {twice!r} twice; give each radius once.")
    return sorted(configs, key=lambda c: c.eps), True


# -- one batch -------------------------------------------------------------------------------
def _attack_batch(embedder: Embedder, batch: dict, keys: List[str], configs: List[AttackConfig], counterattack,
                  several: bool, keep=None) -> List[dict]:
    """The batch's records: one clean pass, then the attack (or each attack of the suite) at each
    radius in turn (see ``eps`` of :func:`evaluate_attack`); with one radius, each per-radius field
    is a number rather than a list. ``keep``: (wanted keys, {key: images}) to fill with the first
    attacked images, for a review page."""
    device = embedder.device
    ref = _prepared(batch["ref"], embedder, device)
    left = _prepared(batch["left"], embedder, device)
    right = _prepared(batch["right"], embedder, device)
    p = batch["p"].double()
    y = human_labels(p).to(device)
    view = TripletView(configs[0].target, ref, left, right, y)

    judge, clean, f_ref = _clean_judge(PlainFeatures(embedder), ref, left, right)
    clean_ok = _agreement(clean, p)
    checker = judge if view.target is Target.REF else view.classifier(judge.features, f_ref, judge.e_left,
                                                                      judge.e_right)
    attacker = view.classifier(PlainFeatures(embedder, amp=True), f_ref, judge.e_left, judge.e_right)
    # Square needs no gradient: it queries the full-precision judge, whose scores it compares.
    attackers = {name: checker if name == "square" else attacker for name in configs[0].attacks}
    per_eps = _attacks_over_radii(view, attackers, checker, configs, clean_ok, clean, p)
    if keep is not None:  # the clean image and the worst attack at the largest radius
        wanted, kept = keep
        first, attacked = view.first_rows(view.x), view.first_rows(per_eps[-1]["images"])
        kept.update((k, {"clean": first[j].detach().float().cpu(), "attacked": attacked[j].detach().float().cpu()})
                    for j, k in enumerate(keys) if k in wanted)

    records = [{"key": k, "p": float(pi), "label": int(yi), "clean_d0": c0, "clean_d1": c1, "clean_correct": co}
               for k, pi, yi, c0, c1, co in zip(keys, p.tolist(), y.tolist(), *clean, clean_ok)]
    suite = ("suite_correct", "fooled_by") if configs[0].suite else ()
    _add_per_eps(records, per_eps, ("adv_d0", "adv_d1", "robust_correct", "linf", "l2", *suite), several)
    if counterattack is not None:
        defended_clean, defended, taus = _defence_records(embedder, counterattack, view, ref, left, right,
                                                          [e["images"] for e in per_eps], p, configs)
        for record, ok in zip(records, defended_clean):
            record["defended_clean_correct"] = ok
        adaptive_suite = ("adaptive_suite_correct", "adaptive_fooled_by") if configs[0].suite else ()
        _add_per_eps(records, defended, _DEFENDED_PER_EPS + adaptive_suite, several)
        for name, tau in (taus or {}).items():
            for record, value in zip(records, tau.tolist()):
                record[name] = value if math.isfinite(value) else None  # a zero embedding's tau is inf
    return records


def _attacks_over_radii(view: TripletView, attackers: dict, checker, configs: List[AttackConfig],
                        start: List[float], clean, p: torch.Tensor, eot_iter: int = 1) -> List[dict]:
    """Per radius: each attack of ``attackers`` (name: the classifier it attacks) on the rows it has
    not fooled at a smaller radius, re-checked by ``checker``; and per triplet the worst case over
    the attacks, the first in suite order where several tie. One dict per radius: the worst case's
    ``images``, ``adv_d0``, ``adv_d1``, ``robust_correct``, ``linf``, ``l2``, and per attack
    ``suite_correct`` and ``fooled_by`` (the attacks that lowered the clean correctness)."""
    names = list(attackers)
    state = {name: (view.x, start) for name in names}
    per_eps = []
    for config in configs:
        found = {}
        for name in names:
            previous, ok = state[name]
            images = _attack_the_rest(attackers[name], view, config, ok, previous,
                                      eot_iter=1 if name == "square" else eot_iter, attack=name)
            linf, l2 = view.norms(images, config)
            adv = view.distances(checker, images, clean)
            ok = [min(s, a) for s, a in zip(ok, _agreement(adv, p))]
            state[name] = (images, ok)
            found[name] = {"images": images, "adv_d0": adv[0], "adv_d1": adv[1], "robust_correct": ok,
                           "linf": linf, "l2": l2}
        worst = worst_per_triplet(names, {name: found[name]["robust_correct"] for name in names})
        point = {field: [found[names[w]][field][j] for j, w in enumerate(worst)]
                 for field in ("adv_d0", "adv_d1", "robust_correct", "linf", "l2")}
        images = found[names[0]]["images"]
        if len(names) > 1:
            rows = view.per_row(torch.tensor(worst, device=images.device))
            images = images.clone()
            for i, name in enumerate(names[1:], start=1):
                images[rows == i] = found[name]["images"][rows == i]
        point["images"] = images
        point["suite_correct"] = [{name: found[name]["robust_correct"][j] for name in names}
                                  for j in range(len(start))]
        point["fooled_by"] = [[name for name in names if found[name]["robust_correct"][j] < start[j]]
                              for j in range(len(start))]
        per_eps.append(point)
    return per_eps


def _attack_the_rest(logits, view: TripletView, config: AttackConfig, still: List[float], previous: torch.Tensor,
                     eot_iter: int = 1, attack: str = "apgd-ce") -> torch.Tensor:
    """``attack`` at ``config``'s radius on the triplets still judged correctly (``still`` > 0); the
    other rows keep ``previous``, the image that fooled them at a smaller radius (or their clean image)."""
    robust = view.per_row(torch.tensor(still, device=view.x.device) > 0)
    if attack == "square":
        attacked = run_square(logits, view.x, view.y, config, correct=robust).images
    else:  # APGD; the published protocol's call is kept as it was
        loss = {} if attack == "apgd-ce" else {"loss": attack[len("apgd-"):]}
        attacked = run_apgd(logits, view.x, view.y, config, correct=robust, eot_iter=eot_iter, **loss).images
    return torch.where(robust.view(-1, 1, 1, 1), attacked, previous)


def _add_per_eps(records: List[dict], per_eps: List[dict], names, several: bool) -> None:
    """Copy each per-triplet field of ``per_eps`` (one dict of lists per radius) into the records: a
    list over the radii, or the value itself for a single radius (the layout of a one-radius run)."""
    for i, record in enumerate(records):
        for name in names:
            values = [point[name][i] for point in per_eps]
            record[name] = values if several else values[0]


def _defence_records(embedder, counterattack, view: TripletView, ref, left, right, attacked: List[torch.Tensor], p,
                     configs: List[AttackConfig]):
    """``(defended clean, per radius, taus)``: per triplet the defended metric clean; then per radius
    its judgement of the plain attack's images (non-adaptive) and of attacks through the defence
    (adaptive: APGD by BPDA with EOT over its random start; Square, black-box, on the defended
    decision as deployed), each chained over the radii as the plain attack is."""
    features = DefendedFeatures(embedder, counterattack, record_tau=hasattr(counterattack, "tau_threshold"))
    judge, clean, f_ref = _clean_judge(features, ref, left, right)
    taus = {"tau_clean": _reference_tau(features.tau, ref, left, right)}
    clean_ok = _agreement(clean, p)
    checker = judge if view.target is Target.REF else view.classifier(features, f_ref, judge.e_left, judge.e_right)
    seeds = eot_seeds(counterattack, configs[0].seed, configs[0].eot_samples)
    through = view.classifier(EOTDefendedFeatures(embedder, counterattack, seeds, amp=True), f_ref, judge.e_left,
                              judge.e_right)
    deployed = view.classifier(DefendedFeatures(embedder, counterattack), f_ref, judge.e_left, judge.e_right)
    attackers = {name: deployed if name == "square" else through for name in configs[0].attacks}
    transfer_ok, nonadaptive = clean_ok, []
    for transferred in attacked:
        transfer_ok = [min(c, a) for c, a in zip(transfer_ok, _agreement(view.distances(checker, transferred, clean),
                                                                          p))]
        nonadaptive.append(transfer_ok)
    # Of the plain attack's images at the largest radius; under `both`, of the references.
    taus["tau_attacked"] = None if features.tau is None else view.per_triplet(features.tau)
    adaptive = _attacks_over_radii(view, attackers, checker, configs, clean_ok, clean, p,
                                   eot_iter=configs[0].eot_samples)
    if len(attackers) > 1 and features.record_tau:  # the tau of the worst case, not of the last attack's images
        view.distances(checker, adaptive[-1]["images"], clean)
    taus["tau_adaptive"] = None if features.tau is None else view.per_triplet(features.tau)
    per_eps = [{"nonadaptive_correct": transfer, "adaptive_correct": point["robust_correct"],
                "adaptive_linf": point["linf"], "adaptive_l2": point["l2"],
                "adaptive_suite_correct": point["suite_correct"], "adaptive_fooled_by": point["fooled_by"]}
               for transfer, point in zip(nonadaptive, adaptive)]
    return clean_ok, per_eps, (taus if features.record_tau else None)


def _reference_tau(tau: Optional[torch.Tensor], ref, left, right) -> Optional[torch.Tensor]:
    """The references' rows of the tau that the clean judge measured on ``cat([ref, left, right])``,
    each distinct image once (see :func:`rpmetric.unique.embed_unique`)."""
    if tau is None:
        return None
    if len(tau) == 3 * len(ref):  # no image repeated: the rows are the batch's own
        return tau[:len(ref)]
    from ..unique import unique_images

    return tau[unique_images(torch.cat([ref, left, right]))[1][:len(ref)].to(tau.device)]


def _clean_judge(features, ref: torch.Tensor, left: torch.Tensor, right: torch.Tensor):
    """``(judge, clean (d0, d1), f_ref)``: the left and right embeddings, computed once per triplet
    outside the attack, the clean distances and the references' embeddings. Each distinct image is
    embedded once, so a triplet whose left and right are the same image is an exact tie on any machine."""
    with torch.no_grad():
        f_ref, e_left, e_right = embed_unique(features, torch.cat([ref, left, right])).chunk(3)
    judge = TwoAFCLogits(features, e_left, e_right)
    return judge, _split(judge.logits(f_ref)), f_ref


def _split(logits: torch.Tensor):
    d = 1.0 - logits
    return d[:, 0].tolist(), d[:, 1].tolist()


def _agreement(distances, p: torch.Tensor) -> List[float]:
    """Per triplet 1, 0, or 0.5 for a tie, by the scoring module's rule."""
    return binary_agreements(*distances, p).tolist()


def _prepared(images, embedder: Embedder, device) -> torch.Tensor:
    """A batch at the model's input size in [0, 1]; images of different sizes are prepared one by one.

    8-bit images are resized in 8 bits when the model has a preprocessing spec, as the data loader
    does, so a dataset of full-size uint8 images gives the same result as triplet records.
    """
    resize = _loader_transform(embedder)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        if resize is not None and x.dtype == torch.uint8:
            x = resize(x)
        return embedder.prepare(unit_float(x.to(device)))

    if isinstance(images, torch.Tensor):
        return prepare(images)
    return torch.cat([prepare(im[None]) for im in images])


# -- data, config and result -----------------------------------------------------------------
def _dataset_and_keys(data, transform=None):
    if isinstance(data, torch.utils.data.Dataset):
        records = getattr(data, "records", None)
        keys = [str(r.id) for r in records] if records is not None else [str(i) for i in range(len(data))]
        dataset = data
    else:
        triplets = list(data)
        bad = next((t for t in triplets if not isinstance(t, Triplet)), None)
        if bad is not None:
            raise TypeError(f"Argument `data` must be rpmetric.datasets.Triplet records or a Dataset of triplet "
                            f"images, but holds a {type(bad).__name__}.")
        keys = [str(t.id) for t in triplets]
        dataset = TripletImages(triplets, transform=transform)
    seen = set()
    duplicate = next((k for k in keys if k in seen or seen.add(k)), None)
    if duplicate is not None:
        raise ValueError(f"Triplet id {duplicate!r} occurs more than once in `data`; ids must be unique so that "
                         "results can be recorded and resumed per triplet (evaluate one split or category at a time).")
    return dataset, keys


def _loader_transform(embedder: Embedder):
    """The model's resize and crop, to run in the DataLoader workers (None when it has no
    preprocessing spec; the batch is then prepared in this process)."""
    module = embedder.module
    pp = getattr(getattr(module, "spec", None), "preprocessing", None)
    if pp is None or not getattr(module, "resize", False):
        return None
    return partial(resize_and_crop, pp=pp)


def _run_config(metric, config: Union[AttackConfig, List[AttackConfig]], counterattack, batch_size: int,
                keys: List[str], dataset=None) -> dict:
    """What defines the run; with a list of configs (a curve), ``attack`` records its radii as a list."""
    spec = getattr(metric, "spec", None) or getattr(getattr(metric, "encoder", None), "spec", None)
    # The resolved location and file digests, not the name the model was given by (rpmetric.fingerprint).
    identity = model_identity(spec) if spec is not None else {"model": type(metric).__name__, "model_files": None}
    records = getattr(dataset, "records", None)
    return {
        "task": "robust-2afc",
        **identity,
        # How the reference is resized before the attack (rpmetric eval --preprocess changes it).
        "preprocessing": asdict(spec.preprocessing) if getattr(spec, "preprocessing", None) is not None else None,
        "attack": _attack_record(config, counterattack is not None),
        "counterattack": None if counterattack is None else repr(counterattack),
        "batch_size": batch_size,
        "n": len(keys),
        # Ids, paths and human targets; a dataset without records is known by its ids.
        "records": records_fingerprint(records[:len(keys)] if records is not None else keys),
    }


def _attack_record(config: Union[AttackConfig, List[AttackConfig]], defended: bool) -> dict:
    if isinstance(config, AttackConfig):
        return config.to_dict(defended=defended)
    return {**config[0].to_dict(defended=defended), "eps": [c.eps for c in config]}


def _record_check(defended: bool, configs: List[AttackConfig], several: bool, suite: bool = False):
    """The run log's check of a record: finite numbers, or with several radii lists of one finite
    number per radius; with the suite, its per-attack fields present too."""
    numbers = ["clean_correct", *(["defended_clean_correct"] if defended else [])]
    per_eps = ["robust_correct", *(["nonadaptive_correct", "adaptive_correct"] if defended else [])]
    present = ["suite_correct", "fooled_by", *(["adaptive_suite_correct", "adaptive_fooled_by"] if defended else [])
               ] if suite else []
    if not several:
        return record_check(numbers + per_eps, present=present)
    plain = record_check(numbers, present=per_eps + present)

    def check(record: dict) -> Optional[str]:
        problem = plain(record)
        if problem is not None:
            return problem
        for name in per_eps:
            value = record[name]
            if not (isinstance(value, list) and len(value) == len(configs) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
                return f"has a field {name!r} that is not a list of {len(configs)} finite numbers ({value!r})"
        return None

    return check


def _result(records: List[dict], run_config: dict, configs: Optional[List[AttackConfig]] = None) -> AttackResult:
    """The accuracies of the records; ``configs`` (several radii) gives a curve instead of one robust figure."""
    if configs is not None:
        return _curve_result(records, run_config, configs)
    result = AttackResult(n=len(records), clean_accuracy=_mean(records, "clean_correct"),
                          robust_accuracy=_mean(records, "robust_correct"), records=records, config=run_config,
                          suite_accuracy=_suite_means(records, "suite_correct"))
    if records and "adaptive_correct" in records[0]:
        result.defended_clean_accuracy = _mean(records, "defended_clean_correct")
        result.nonadaptive_accuracy = _mean(records, "nonadaptive_correct")
        result.adaptive_accuracy = _mean(records, "adaptive_correct")
        result.worst_case_accuracy = sum(min(r["nonadaptive_correct"], r["adaptive_correct"])
                                         for r in records) / len(records)
        result.adaptive_suite_accuracy = _suite_means(records, "adaptive_suite_correct")
    return result


def _suite_means(records: List[dict], field_name: str) -> Optional[dict]:
    """Per attack of the suite its robust accuracy (``{name: share}``), None without the suite."""
    if not records or field_name not in records[0]:
        return None
    return {name: _mean([r[field_name] for r in records], name) for name in records[0][field_name]}


def _curve_result(records: List[dict], run_config: dict, configs: List[AttackConfig]) -> AttackResult:
    defended = bool(records) and "adaptive_correct" in records[0]
    curve = []
    for k, config in enumerate(configs):
        fields = ("robust_correct", *(_DEFENDED_PER_EPS if defended else ()),
                  *(name for name in ("suite_correct", "adaptive_suite_correct") if records and name in records[0]))
        at = [{name: r[name][k] for name in fields} for r in records]
        point = {"eps": config.eps, "robust_accuracy": _mean(at, "robust_correct")}
        if config.suite:
            point["suite_accuracy"] = _suite_means(at, "suite_correct")
        if defended:
            point.update(nonadaptive_accuracy=_mean(at, "nonadaptive_correct"),
                         adaptive_accuracy=_mean(at, "adaptive_correct"),
                         worst_case_accuracy=sum(min(r["nonadaptive_correct"], r["adaptive_correct"])
                                                 for r in at) / len(at))
            if config.suite:
                point["adaptive_suite_accuracy"] = _suite_means(at, "adaptive_suite_correct")
        curve.append(point)
    return AttackResult(n=len(records), clean_accuracy=_mean(records, "clean_correct"), robust_accuracy=None,
                        records=records, config=run_config, curve=curve,
                        defended_clean_accuracy=_mean(records, "defended_clean_correct") if defended else None)


# Per-triplet fields of the defended metric under attack (one value per radius), and their summaries.
_DEFENDED_PER_EPS = ("nonadaptive_correct", "adaptive_correct", "adaptive_linf", "adaptive_l2")
_DEFENDED_FIGURES = ("nonadaptive_accuracy", "adaptive_accuracy", "worst_case_accuracy")


def _mean(records, field_name: str) -> float:
    values = [r[field_name] for r in records]
    return sum(values) / len(values) if values else float("nan")

