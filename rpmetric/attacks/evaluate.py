"""Robust 2AFC accuracy: the share of triplets still judged like the humans after APGD attacks the
reference image (the protocol of Croce et al., SaTML 2025), batched and resumable."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..datasets import Triplet, TripletImages, collate_images
from ..fingerprint import model_identity, records_fingerprint
from ..datasets.loading import data_loader
from ..images import unit_float
from ..models.preprocess import resize_and_crop
from ..runlog import RunLog, record_check
from ..scoring import binary_agreements
from ..unique import embed_unique
from ..validation import check_int
from .apgd import perturbation_norms, run_apgd
from .config import AttackConfig, Norm
from .features import (DefendedFeatures, Embedder, EOTDefendedFeatures, PlainFeatures, as_embedder, check_defence,
                       eot_seeds)
from .logits import TwoAFCLogits, human_labels

__all__ = ["AttackResult", "evaluate_attack"]

# float32 rounding of APGD's projection (x + eps is rounded) may exceed the radius by an ulp.
_BALL_TOLERANCE = 1e-6


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
            the adaptively attacked reference: ``tau_clean``, ``tau_attacked``, ``tau_adaptive``).
        config: the attack configuration and what else defines the run.
        defended_clean_accuracy: with a counterattack, clean accuracy of the defended metric.
        nonadaptive_accuracy: the defended metric judging the images attacked through the plain
            metric (the TTC paper's evaluation).
        adaptive_accuracy: the defended metric judging images attacked through the defence itself.
        worst_case_accuracy: per triplet the worse of the two: correct only if both attacks fail.
        curve: with several radii, one dict per radius in increasing order: ``eps``,
            ``robust_accuracy``, and with a counterattack ``nonadaptive_accuracy``,
            ``adaptive_accuracy``, ``worst_case_accuracy``; None for a single radius.
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
        if self.defended_clean_accuracy is not None:
            summary["counterattack"] = {
                "config": self.config.get("counterattack"),
                "clean_accuracy": self.defended_clean_accuracy,
                "nonadaptive_accuracy": self.nonadaptive_accuracy,
                "adaptive_accuracy": self.adaptive_accuracy,
                "worst_case_accuracy": self.worst_case_accuracy,
            }
        return summary

    def _curve_dict(self) -> dict:
        defended = self.defended_clean_accuracy is not None
        per_eps = [{"eps": point["eps"], "robust_accuracy": point["robust_accuracy"],
                    **({"counterattack": {key: point[key] for key in _DEFENDED_FIGURES}} if defended else {})}
                   for point in self.curve]
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
                    resume: bool = False, progress: bool = True, keep_images: int = 0) -> AttackResult:
    """Clean and robust 2AFC binary accuracy of a metric under APGD-CE on the reference image.

    Only the reference is perturbed. The left and right images are embedded once, clean, and held
    fixed; the classifier's logits are ``[cos(f(ref + delta), e_left), cos(f(ref + delta), e_right)]``
    (no temperature) and the label is the human choice, ``p > 0.5``. The reference is first
    resized and cropped to the model's input size (its ``prepare``), then attacked in [0, 1].

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
            (``AttackResult.images``), for a review page.

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
    configs, several = _radii(norm, eps, steps, restarts, seed, eot_samples)
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
                                                  check=_record_check(counterattack is not None, configs, several))
    done: Dict[str, dict] = dict(log.done) if log is not None else {}

    # Fixed batch boundaries over the whole list: a resumed run re-forms exactly the same batches.
    batches = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    todo = [b for b in batches if not all(keys[i] in done for i in b)]
    kept: Dict[str, dict] = {}
    wanted = set(keys[:max(0, int(keep_images))])
    loader = data_loader(dataset, batch_sampler=todo, num_workers=workers, collate_fn=collate_images)
    from tqdm.auto import tqdm

    bar = tqdm(loader, total=len(todo), desc=f"APGD-{config.norm.value}", unit="batch", disable=not progress)
    try:
        for batch in bar:
            _raise_on_bad_items(batch, keys)
            records = _attack_batch(embedder, batch, [keys[i] for i in batch["index"]], configs, counterattack,
                                    several, keep=(wanted, kept) if wanted else None)
            new = [r for r in records if r["key"] not in done]
            if log is not None:
                log.append(new)
            done.update((r["key"], r) for r in new)
            robust = [r["robust_correct"][-1] if several else r["robust_correct"] for r in done.values()]
            bar.set_postfix(clean=_mean(done.values(), "clean_correct"), robust=sum(robust) / len(robust))
    finally:
        if log is not None:
            log.close()  # releases the log for the next run
    result = _result([done[k] for k in keys], run_config, configs if several else None)
    result.images = {k: kept[k] for k in keys if k in kept}
    return result


def _radii(norm, eps, steps, restarts, seed, eot_samples):
    """``(configs, several)``: one checked config per radius, in increasing order, and whether ``eps``
    was a list (a curve) rather than one number."""
    several = isinstance(eps, (list, tuple))
    if not several:
        return [AttackConfig.create(norm, eps, steps, restarts, seed, eot_samples)], False
    if not eps:
        raise ValueError("Argument `eps` must hold at least one radius, but got an empty list.")
    configs = [AttackConfig.create(norm, e, steps, restarts, seed, eot_samples) for e in eps]
    radii = [c.eps for c in configs]
    twice = next((e for i, e in enumerate(radii) if e in radii[:i]), None)
    if twice is not None:
        raise ValueError(f"Argument `eps` holds the radius {twice!r} twice; give each radius once.")
    return sorted(configs, key=lambda c: c.eps), True


# -- one batch -------------------------------------------------------------------------------
def _attack_batch(embedder: Embedder, batch: dict, keys: List[str], configs: List[AttackConfig], counterattack,
                  several: bool, keep=None) -> List[dict]:
    """The batch's records: one clean pass, then the attack at each radius in turn (see ``eps`` of
    :func:`evaluate_attack`); with one radius, each per-radius field is a number rather than a list.
    ``keep``: (wanted keys, {key: images}) to fill with the first references, for a review page."""
    device = embedder.device
    ref = _prepared(batch["ref"], embedder, device)
    left = _prepared(batch["left"], embedder, device)
    right = _prepared(batch["right"], embedder, device)
    p = batch["p"].double()
    y = human_labels(p).to(device)

    judge, clean = _clean_judge(PlainFeatures(embedder), ref, left, right)
    clean_ok = _agreement(clean, p)
    attacker = TwoAFCLogits(PlainFeatures(embedder, amp=True), judge.e_left, judge.e_right)
    per_eps, images, still = [], ref, clean_ok
    for config in configs:
        images = _attack_the_rest(attacker, ref, y, config, still, images)
        linf, l2 = _checked_norms(images, ref, config)
        adv = _distances(judge, images)
        still = [min(s, a) for s, a in zip(still, _agreement(adv, p))]
        per_eps.append({"images": images, "adv_d0": adv[0], "adv_d1": adv[1], "robust_correct": still,
                        "linf": linf, "l2": l2})
    if keep is not None:  # the clean reference and the attack at the largest radius
        wanted, kept = keep
        kept.update((k, {"clean": ref[j].detach().float().cpu(), "attacked": images[j].detach().float().cpu()})
                    for j, k in enumerate(keys) if k in wanted)

    records = [{"key": k, "p": float(pi), "label": int(yi), "clean_d0": c0, "clean_d1": c1, "clean_correct": co}
               for k, pi, yi, c0, c1, co in zip(keys, p.tolist(), y.tolist(), *clean, clean_ok)]
    _add_per_eps(records, per_eps, ("adv_d0", "adv_d1", "robust_correct", "linf", "l2"), several)
    if counterattack is not None:
        defended_clean, defended, taus = _defence_records(embedder, counterattack, ref, left, right,
                                                          [e["images"] for e in per_eps], p, y, configs)
        for record, ok in zip(records, defended_clean):
            record["defended_clean_correct"] = ok
        _add_per_eps(records, defended, _DEFENDED_PER_EPS, several)
        for name, tau in (taus or {}).items():
            for record, value in zip(records, tau.tolist()):
                record[name] = value if math.isfinite(value) else None  # a zero embedding's tau is inf
    return records


def _attack_the_rest(logits: TwoAFCLogits, ref: torch.Tensor, y: torch.Tensor, config: AttackConfig,
                     still: List[float], previous: torch.Tensor, eot_iter: int = 1) -> torch.Tensor:
    """APGD at ``config``'s radius on the rows still judged correctly (``still`` > 0); the other rows
    keep ``previous``, the image that fooled them at a smaller radius (or their clean image)."""
    robust = torch.tensor(still, device=ref.device) > 0
    attacked = run_apgd(logits, ref, y, config, correct=robust, eot_iter=eot_iter).images
    return torch.where(robust.view(-1, 1, 1, 1), attacked, previous)


def _add_per_eps(records: List[dict], per_eps: List[dict], names, several: bool) -> None:
    """Copy each per-triplet field of ``per_eps`` (one dict of lists per radius) into the records: a
    list over the radii, or the value itself for a single radius (the layout of a one-radius run)."""
    for i, record in enumerate(records):
        for name in names:
            values = [point[name][i] for point in per_eps]
            record[name] = values if several else values[0]


def _defence_records(embedder, counterattack, ref, left, right, attacked: List[torch.Tensor], p, y,
                     configs: List[AttackConfig]):
    """``(defended clean, per radius)``: per triplet the defended metric clean; then per radius its
    judgement of the plain attack's images (non-adaptive) and of an attack through the defence
    (adaptive: BPDA with EOT over its random start), each chained over the radii as the plain attack is."""
    features = DefendedFeatures(embedder, counterattack, record_tau=hasattr(counterattack, "tau_threshold"))
    judge, clean = _clean_judge(features, ref, left, right)
    taus = {"tau_clean": _reference_tau(features.tau, ref, left, right)}
    clean_ok = _agreement(clean, p)
    seeds = eot_seeds(counterattack, configs[0].seed, configs[0].eot_samples)
    through = TwoAFCLogits(EOTDefendedFeatures(embedder, counterattack, seeds, amp=True), judge.e_left,
                           judge.e_right)
    per_eps, transfer_ok, adaptive_ok, images = [], clean_ok, clean_ok, ref
    for config, transferred in zip(configs, attacked):
        transfer_ok = [min(c, a) for c, a in zip(transfer_ok, _agreement(_distances(judge, transferred), p))]
        taus["tau_attacked"] = features.tau  # of the plain attack's images at this radius: the last one stays
        images = _attack_the_rest(through, ref, y, config, adaptive_ok, images, eot_iter=config.eot_samples)
        linf, l2 = _checked_norms(images, ref, config)
        adaptive_ok = [min(c, a) for c, a in zip(adaptive_ok, _agreement(_distances(judge, images), p))]
        taus["tau_adaptive"] = features.tau
        per_eps.append({"nonadaptive_correct": transfer_ok, "adaptive_correct": adaptive_ok, "adaptive_linf": linf,
                        "adaptive_l2": l2})
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
    """``(judge, clean (d0, d1))``: the left and right embeddings, computed once per triplet outside
    the attack, and the clean distances. Each distinct image is embedded once, so a triplet whose
    left and right are the same image is an exact tie on any machine."""
    with torch.no_grad():
        f_ref, e_left, e_right = embed_unique(features, torch.cat([ref, left, right])).chunk(3)
    judge = TwoAFCLogits(features, e_left, e_right)
    return judge, _split(judge.logits(f_ref))


def _distances(judge: TwoAFCLogits, images: torch.Tensor):
    """``(d0, d1)`` lists: ``1 - cos`` to the left and right embeddings, a fresh full-precision pass."""
    with torch.no_grad():
        return _split(judge(images))


def _split(logits: torch.Tensor):
    d = 1.0 - logits
    return d[:, 0].tolist(), d[:, 1].tolist()


def _agreement(distances, p: torch.Tensor) -> List[float]:
    """Per triplet 1, 0, or 0.5 for a tie, by the scoring module's rule."""
    return binary_agreements(*distances, p).tolist()


def _checked_norms(attacked: torch.Tensor, clean: torch.Tensor, config: AttackConfig):
    """The perturbations' norms, after checking the promise of every attack: in the ball and in [0, 1]."""
    linf, l2 = perturbation_norms(attacked, clean)
    size = linf if config.norm is Norm.LINF else l2
    limit = config.eps * (1 + _BALL_TOLERANCE) + _BALL_TOLERANCE
    if bool((size > limit).any()) or float(attacked.min()) < 0.0 or float(attacked.max()) > 1.0:
        raise RuntimeError(f"APGD returned images outside the {config.norm.value} ball of radius {config.eps} or "
                           f"outside [0, 1] (largest norm {float(size.max())}, values in "
                           f"[{float(attacked.min())}, {float(attacked.max())}]); this is a bug, please report it.")
    return linf.tolist(), l2.tolist()


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


def _raise_on_bad_items(batch: dict, keys: List[str]) -> None:
    if batch.get("errors"):
        index, message = batch["errors"][0]
        raise ValueError(f"Triplet {keys[index]!r} cannot be loaded: {message} ({len(batch['errors'])} bad "
                         "triplet(s) in this batch); fix or remove them from `data`.")


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


def _record_check(defended: bool, configs: List[AttackConfig], several: bool):
    """The run log's check of a record: finite numbers, or with several radii lists of one finite
    number per radius."""
    numbers = ["clean_correct", *(["defended_clean_correct"] if defended else [])]
    per_eps = ["robust_correct", *(["nonadaptive_correct", "adaptive_correct"] if defended else [])]
    if not several:
        return record_check(numbers + per_eps)
    plain = record_check(numbers, present=per_eps)

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
                          robust_accuracy=_mean(records, "robust_correct"), records=records, config=run_config)
    if records and "adaptive_correct" in records[0]:
        result.defended_clean_accuracy = _mean(records, "defended_clean_correct")
        result.nonadaptive_accuracy = _mean(records, "nonadaptive_correct")
        result.adaptive_accuracy = _mean(records, "adaptive_correct")
        result.worst_case_accuracy = sum(min(r["nonadaptive_correct"], r["adaptive_correct"])
                                         for r in records) / len(records)
    return result


def _curve_result(records: List[dict], run_config: dict, configs: List[AttackConfig]) -> AttackResult:
    defended = bool(records) and "adaptive_correct" in records[0]
    curve = []
    for k, config in enumerate(configs):
        at = [{name: r[name][k] for name in ("robust_correct", *(_DEFENDED_PER_EPS if defended else ()))}
              for r in records]
        point = {"eps": config.eps, "robust_accuracy": _mean(at, "robust_correct")}
        if defended:
            point.update(nonadaptive_accuracy=_mean(at, "nonadaptive_correct"),
                         adaptive_accuracy=_mean(at, "adaptive_correct"),
                         worst_case_accuracy=sum(min(r["nonadaptive_correct"], r["adaptive_correct"])
                                                 for r in at) / len(at))
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

