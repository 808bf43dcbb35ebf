"""Clean evaluation: distances for every 2AFC triplet or JND pair, scored against people.

The engine takes *distances* (a :class:`EncoderDistances` around any RobustDistance, or the
pixel baseline :class:`PixelL2`) and named groups of records (NIGHTS splits, BAPPS categories).
It is built for long runs:

- each image of a triplet is embedded once, in one encoder pass over ``cat([ref, left, right])``,
  and identical images within a batch once in all (see :mod:`rpmetric.unique`);
- a DataLoader decodes and resizes images in worker processes, so the encoder is the bottleneck;
- results go to an append-only :class:`~rpmetric.runlog.RunLog` batch by batch, and a resumed run
  recomputes only the missing batches;
- under torchrun, whole batches are dealt to the processes. Batches are cut from the full
  dataset order the same way in every case, so a resumed or sharded run evaluates exactly the same
  batches as an uninterrupted single process. With the same thread count, its distances are
  bit-identical; across thread or process counts they agree to about 1e-6 (BLAS rounding), and
  ties between identical images stay exact by construction.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .datasets import (BadItem, PairImages, TripletImages, collate_images, read_bapps_2afc, read_bapps_jnd,
                       read_nights)
from .datasets import OddOneOutImages, read_things, read_triplets_csv
from .datasets.loading import ScoredPairImages
from .datasets.loading import data_loader
from .distributed import broadcast_object, gather_records, rank_and_world, shard
from .fingerprint import model_identity, records_fingerprint
from .functional import cosine_distance, rgb_to_lab
from .images import unit_float
from .models.preprocess import resize_and_crop
from .runlog import RunLog, record_check
from .scoring import correlations, jnd_map, srcc, twoafc_score
from .scoring import odd_one_out_accuracy
from .unique import embed_unique

__all__ = ["PixelL2", "EncoderDistances", "load_distances", "Evaluation", "evaluate", "load_groups", "nights_total",
           "TASKS", "DATASETS", "PIXEL_BASELINES", "DEFAULT_PREPROCESS", "FILE_DATASETS", "load_file_groups",
           "correlation_task", "pooled_result"]

DATASETS = ("nights", "bapps", "jnd")
# The pixel baselines, by --model name: their colorspace. lpips' own L2 baseline is the Lab one.
PIXEL_BASELINES = {"l2": "rgb", "l2-lab": "lab"}
# The resize convention (rpmetric.models.spec.PREPROCESS_CONVENTIONS) that reproduces each dataset's
# published protocol: fra31/perceptual-metrics resizes BAPPS patches with a bilinear Resize(224),
# and gives NIGHTS images the model's own open_clip preprocessing (ConvNeXt: 256, crop 224).
DEFAULT_PREPROCESS = {"nights": "model", "bapps": "paper", "jnd": "paper"}


# -- what is evaluated --------------------------------------------------------------------------
class PixelL2:
    """A pixel baseline: mean squared difference over all pixels of the images as loaded.

    Args:
        colorspace: ``"rgb"`` (``l2``): the mean of ``(a - b)^2`` over [0, 1] RGB values;
            ``"lab"`` (``l2-lab``): lpips' L2 baseline (``lpips.L2``, whose default colorspace is
            Lab): ``0.5 * mean(((Lab(a) - Lab(b)) / 100)^2)`` over L, a, b and all pixels, with
            the Lab of :func:`~rpmetric.functional.rgb_to_lab` (skimage's, as lpips computes it).

    It needs no weights. The images of one triplet or pair must have the same size.

    Example:
        >>> PixelL2().pair_distances(torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5))
        tensor([0.2500])
    """

    device = torch.device("cpu")
    transform = None  # compares the pixels as loaded
    needs_equal_sizes = True

    def __init__(self, colorspace: str = "rgb"):
        if colorspace not in PIXEL_BASELINES.values():
            raise ValueError(f"Argument `colorspace` must be one of {tuple(PIXEL_BASELINES.values())}, but got "
                             f"{colorspace!r}.")
        self.colorspace = colorspace
        self.name = next(name for name, space in PIXEL_BASELINES.items() if space == colorspace)

    def describe(self) -> dict:
        return {"model": self.name}

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.colorspace == "lab":
            return 0.5 * ((rgb_to_lab(a) - rgb_to_lab(b)) / 100.0).pow(2).flatten(1).mean(dim=1)
        return (a - b).pow(2).flatten(1).mean(dim=1)

    def pair_distances(self, a, b) -> torch.Tensor:
        a, b = unit_float(a), unit_float(b)
        if isinstance(a, torch.Tensor):
            return self._distance(a, b)
        # Different sizes across the batch (never within a pair): one image at a time.
        return torch.cat([self._distance(x[None], y[None]) for x, y in zip(a, b)])

    def triplet_distances(self, ref, left, right) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.pair_distances(ref, left), self.pair_distances(ref, right)

    def pairwise_distances(self, im1, im2, im3) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(d12, d13, d23)`` of an odd-one-out triplet."""
        return self.pair_distances(im1, im2), self.pair_distances(im1, im3), self.pair_distances(im2, im3)


class EncoderDistances:
    """Cosine distances from a :class:`~rpmetric.RobustDistance`'s encoder (and counterattack, if set).

    Args:
        metric: the metric to evaluate.
        amp: run the encoder under ``torch.autocast`` (float16); None means on CUDA only. The
            distances themselves are always computed in float32.

    Example:
        >>> import rpmetric
        >>> dist = EncoderDistances(rpmetric.RobustDistance("r-clip-f-convnext"))  # doctest: +SKIP
    """

    needs_equal_sizes = False  # the transform brings every image to the model's input size

    def __init__(self, metric, amp: Optional[bool] = None):
        self.metric = metric
        self.amp = metric.device.type == "cuda" if amp is None else bool(amp)
        if self.amp and metric.device.type != "cuda":
            raise ValueError(f"Mixed precision (amp=True) needs a CUDA device, but the metric is on {metric.device}.")
        # Resizing happens in the DataLoader workers, so the encoder gets images at its input size.
        self.transform = partial(resize_and_crop, pp=metric.spec.preprocessing)

    @property
    def name(self) -> str:
        return self.metric.spec.name

    @property
    def device(self) -> torch.device:
        return self.metric.device

    def describe(self) -> dict:
        counter = self.metric.counterattack
        return {"model": self.name, "precision": "float16-autocast" if self.amp else "float32",
                "counterattack": None if counter is None else repr(counter)}

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        # Each distinct image once: identical images (a tie triplet's left and right) then get
        # identical embeddings whatever their batch positions, and the tie is exact on any BLAS.
        return embed_unique(self._embed, x)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = unit_float(x.to(self.metric.device, non_blocking=True))  # 8-bit batches travel as such
        amp = torch.autocast(device_type="cuda", dtype=torch.float16) if self.amp else nullcontext()
        # A counterattack leaves inference mode by itself for its gradient steps.
        with torch.inference_mode(), amp:
            # The images are [0, 1] pixels from disk, whatever value_range the metric was built for,
            # so they go to the feature hook directly (it applies the counterattack when one is set).
            return self.metric.features(x).float()

    def embed(self, x: torch.Tensor, unique: bool = True) -> torch.Tensor:
        """Raw float32 embeddings ``[N, D]`` of images at the model's input size, for measurements
        beyond distances (e.g. :mod:`rpmetric.attacks.certify`'s noisy references).

        Args:
            unique: each distinct image once, so identical images get identical rows; False embeds
                every row in one pass (for images known to differ, such as noisy copies).
        """
        return self._features(x) if unique else self._embed(x)

    def pair_distances(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = self._features(torch.cat([a, b])).chunk(2)
        return cosine_distance(fa, fb).cpu()

    def triplet_distances(self, ref, left, right) -> Tuple[torch.Tensor, torch.Tensor]:
        # One pass embeds each image once: 3 images per triplet, not the 4 of two metric calls.
        f_ref, f_left, f_right = self._features(torch.cat([ref, left, right])).chunk(3)
        return cosine_distance(f_ref, f_left).cpu(), cosine_distance(f_ref, f_right).cpu()

    def pairwise_distances(self, im1, im2, im3) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(d12, d13, d23)`` of an odd-one-out triplet, each image embedded once."""
        f1, f2, f3 = self._features(torch.cat([im1, im2, im3])).chunk(3)
        return cosine_distance(f1, f2).cpu(), cosine_distance(f1, f3).cpu(), cosine_distance(f2, f3).cpu()


def load_distances(model: Optional[str] = None, device=None, amp: Optional[bool] = None, counterattack=None,
                   preprocess: Optional[str] = None):
    """:class:`PixelL2` for ``model`` ``"l2"`` (RGB) or ``"l2-lab"`` (lpips' Lab L2), else
    :class:`EncoderDistances` on ``RobustDistance(model)`` (with an optional test-time
    ``counterattack``, see :class:`rpmetric.Counterattack`).

    Args:
        preprocess: a resize convention of :data:`rpmetric.models.spec.PREPROCESS_CONVENTIONS`
            (``"model"``, ``"paper"``, ``"dreamsim"``) the encoder sees images through; None keeps
            the model's own. :data:`DEFAULT_PREPROCESS` names each dataset's published one.
            Pixel baselines compare the images as loaded and take none.

    Example:
        >>> load_distances("l2-lab").name
        'l2-lab'
    """
    if model in PIXEL_BASELINES:
        if counterattack is not None:
            raise ValueError(f"A counterattack needs a model with an encoder, but model={model!r} is a pixel baseline.")
        if preprocess is not None:
            raise ValueError(f"Argument `preprocess` applies to a model with an encoder, but model={model!r} is a "
                             "pixel baseline, which compares the images as loaded; pass preprocess=None.")
        return PixelL2(PIXEL_BASELINES[model])
    from .metric import RobustDistance
    from .models import load_encoder
    from .models.encoder import Encoder
    from .models.spec import with_convention

    encoder = load_encoder(model)
    if preprocess is not None:  # the same backbone, seeing images resized by the convention
        spec = replace(encoder.spec, preprocessing=with_convention(encoder.spec.preprocessing, preprocess))
        encoder = Encoder(encoder.backbone, spec, resize=encoder.resize)
    return EncoderDistances(RobustDistance(encoder, device=device, counterattack=counterattack), amp=amp)


# -- tasks ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """How one kind of judgement is loaded, measured and scored."""

    name: str
    dataset: type
    images: Tuple[str, ...]  # image fields of a record, in the order `measure` takes them
    target: str  # the human judgement field
    outputs: Tuple[str, ...]  # the distance fields of a per-sample record
    measure: Callable  # (distances, *image batches) -> tuple of [B] tensors, one per output
    score: Callable[[List[dict]], float]
    unit: str  # what a record is, for messages
    # Optional parts of a task kind with settings of its own (rpmetric.attacks.certify's, the correlation's):
    keyed: bool = False  # measure also takes keys=[the records' "group/id" keys], e.g. to seed noise per record
    # Further figures of a group beside n and its score (the correlation task's KRCC, PLCC...), or None.
    summary: Optional[Callable[[List[dict]], dict]] = None
    config: Optional[Mapping] = None  # settings that define the measurement, recorded in (and checked by) the log
    label: Optional[str] = None  # the running score's name on the progress bar (default: TASK_LABELS)
    percent: bool = True  # the progress bar shows the running score as a percentage (False: as it is, e.g. an SRCC)


def _score_2afc(records: List[dict]) -> float:
    return twoafc_score([r["d0"] for r in records], [r["d1"] for r in records], [r["p"] for r in records])


def _score_jnd(records: List[dict]) -> float:
    return jnd_map([r["d"] for r in records], [r["same"] for r in records])


TASKS: Dict[str, Task] = {
    "2afc": Task("2afc", TripletImages, ("ref", "left", "right"), "p", ("d0", "d1"),
                 lambda dist, ref, left, right: dist.triplet_distances(ref, left, right), _score_2afc, "triplet"),
    "jnd": Task("jnd", PairImages, ("p0", "p1"), "same", ("d",),
                lambda dist, p0, p1: (dist.pair_distances(p0, p1),), _score_jnd, "pair"),
}


def _score_odd_one_out(records: List[dict]) -> float:
    return odd_one_out_accuracy(*([r[k] for r in records] for k in ("d12", "d13", "d23", "odd")))


# One kind per decision type: which of three images people set apart (THINGS), scored as accuracy.
TASKS["odd-one-out"] = Task("odd-one-out", OddOneOutImages, ("im1", "im2", "im3"), "odd", ("d12", "d13", "d23"),
                            lambda dist, im1, im2, im3: dist.pairwise_distances(im1, im2, im3), _score_odd_one_out,
                            "triplet")
# What the progress bar calls each task's running score.
TASK_LABELS = {"2afc": "2AFC", "jnd": "mAP", "odd-one-out": "acc"}
def _correlation_task(name: str, higher_is_better: bool) -> Task:
    """A correlation task: the per-sample measurement is the distance ``d`` of a scored pair, the
    score of a group its oriented SRCC (:func:`rpmetric.scoring.correlations`), with the KRCC and
    the PLCC (after the logistic fit, and raw) beside it. ``higher_is_better`` says which way the
    pairs' ``score`` runs; the two directions are two task names, so a run log records it."""
    def figures(records: List[dict]) -> dict:
        return correlations([r["d"] for r in records], [r["score"] for r in records], higher_is_better)

    def score(records: List[dict]) -> float:  # the SRCC alone: the progress bar shows it every second
        d, target = np.array([r["d"] for r in records]), np.array([r["score"] for r in records])
        return srcc(-d, target if higher_is_better else -target) if len(records) > 1 else math.nan

    return Task(name, ScoredPairImages, ("ref", "dist"), "score", ("d",),
                lambda dist, ref, other: (dist.pair_distances(ref, other),), score, "pair",
                summary=figures, label="SRCC", percent=False)


# Full-reference IQA and pair files: "correlation" where a higher score means better (MOS) or more
# similar, "correlation-inverse" where it means worse (DMOS) or more different.
TASKS["correlation"] = _correlation_task("correlation", True)
TASKS["correlation-inverse"] = _correlation_task("correlation-inverse", False)


def correlation_task(higher_is_better: bool) -> str:
    """The name of the correlation task for scores that run this way.

    Example:
        >>> correlation_task(False)
        'correlation-inverse'
    """
    return "correlation" if higher_is_better else "correlation-inverse"


def pooled_result(task: str, records: Sequence[dict]) -> Dict[str, float]:
    """``{"n", "score", ...}`` of ``records`` pooled, as :func:`evaluate` reports a group: the overall
    correlation over all distortion types, which is not a mean of the types' figures.

    Example:
        >>> rows = [{"d": 0.1, "score": 3.0}, {"d": 0.2, "score": 2.0}, {"d": 0.3, "score": 2.5}]
        >>> pooled_result("correlation", rows)["score"]
        0.5
    """
    spec = TASKS[task]
    result = {"n": len(records), "score": spec.score(list(records))}
    if spec.summary is not None:
        result.update(spec.summary(list(records)))
    return result


# -- the engine -------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """What :func:`evaluate` returns.

    Attributes:
        results: ``{group: {"n": int, "score": float in [0, 1]}}``, empty unless ``complete``.
        records: per-sample records in dataset order: ``group, id, d0, d1, p`` (2AFC) or
            ``group, id, d, same`` (JND); skipped ones are left out.
        skipped: ``{"group", "id", "reason"}`` of every skipped triplet or pair.
        complete: False when ``max_batches`` stopped the run early (resume to finish).
        total, done: how many records the groups hold and how many are finished.
    """

    task: str
    results: Dict[str, Dict[str, float]] = field(default_factory=dict)
    records: List[dict] = field(default_factory=list)
    skipped: List[dict] = field(default_factory=list)
    complete: bool = False
    total: int = 0
    done: int = 0


def evaluate(distances, task: str | Task, groups: Mapping[str, Sequence], *, batch_size: int = 32, workers: int = 0,
             log: Union[str, Path, None] = None, resume: bool = False, run_config: Optional[dict] = None,
             skip_bad: bool = False, skipped: Optional[Mapping[str, Sequence[BadItem]]] = None,
             progress: bool = False, max_batches: Optional[int] = None) -> Evaluation:
    """Measure and score every record of every group.

    Args:
        distances: :class:`EncoderDistances` or :class:`PixelL2` (see :func:`load_distances`).
        task: ``"2afc"`` (records are :class:`~rpmetric.datasets.Triplet`) or ``"jnd"`` (:class:`~rpmetric.datasets.JNDPair`),
            or a :class:`Task` built elsewhere (e.g. :func:`rpmetric.attacks.certify.certify_task`).
        groups: ``{name: records}``, e.g. ``{"test_imagenet": read_nights(root, "test_imagenet")}``.
        batch_size: records per batch (3 or 2 images each).
        workers: DataLoader worker processes decoding images (0: in this process).
        log: run-log file for per-sample results (JSON lines); None keeps them in memory only.
        resume: continue the run in ``log``. It must have the same configuration, model files and
            records: the log records the model's resolved location and file digests and a hash of
            the records (ids, paths, targets; see :mod:`rpmetric.fingerprint`), and a resume that
            differs in any of them is refused, naming what differs.
        run_config: extra entries that define the run (e.g. dataset root), checked on resume.
        skip_bad: skip triplets with missing or unreadable images and report them, instead of raising.
        skipped: records the readers already skipped, ``{group: [BadItem]}``, to include in the report.
        progress: show a tqdm bar with the running score (on rank 0).
        max_batches: stop after this many batches (the result is then incomplete; resume to finish).

    Under torchrun (see :mod:`rpmetric.distributed`) every process must call this with the same
    arguments; each measures its share of batches and all return the same Evaluation.

    Raises:
        ValueError: a bad image (without ``skip_bad``), duplicate ids, an empty group, or a log
            written for another configuration, other model files or other records.
        FileExistsError: ``log`` exists and ``resume`` is False.

    Example:
        >>> from rpmetric.datasets import read_nights
        >>> result = evaluate(PixelL2(), "2afc", {"test": read_nights("/data/nights", "test")})  # doctest: +SKIP
        >>> result.results  # doctest: +SKIP
        {'test': {'n': 2120, 'score': 0.73}}
    """
    if not isinstance(task, Task) and task not in TASKS:
        raise ValueError(f"Argument `task` must be one of {tuple(TASKS)}, but got {task!r}.")
    if batch_size < 1:
        raise ValueError(f"Argument `batch_size` must be at least 1, but got {batch_size}.")
    if workers < 0:
        raise ValueError(f"Argument `workers` must be at least 0, but got {workers}.")
    spec = task if isinstance(task, Task) else TASKS[task]
    items = [(group, record) for group, records in groups.items() for record in records]
    for group, records in groups.items():
        if not records:
            raise ValueError(f"Group {group!r} has no {spec.unit}s to evaluate.")
    keys = [f"{group}/{record.id}" for group, record in items]
    if len(set(keys)) != len(keys):
        seen = set()
        duplicate = next(k for k in keys if k in seen or seen.add(k))
        raise ValueError(f"Duplicate {spec.unit} id {duplicate!r}: ids must be unique within a group.")

    config = None
    if log is not None:
        config = {"task": spec.name, **(spec.config or {}), "batch_size": batch_size,
                  "groups": {g: len(r) for g, r in groups.items()},
                  **distances.describe(), **_identity(distances),
                  "records": records_fingerprint(record for _, record in items), **(run_config or {})}
    runlog, done = _open_log(log, config, resume, spec)
    for key in keys:
        if key in done and "error" in done[key] and not skip_bad:
            raise ValueError(f"{done[key]['error']}; pass `skip_bad=True` to skip it")

    # Batches are fixed slices of the dataset order; only unfinished ones run, dealt out to ranks.
    batches = [list(range(s, min(s + batch_size, len(items)))) for s in range(0, len(items), batch_size)]
    pending = [b for b in batches if any(keys[i] not in done for i in b)]
    if max_batches is not None:
        pending = pending[:max_batches]
    rank, world = rank_and_world()
    mine = shard(pending, rank, world)
    steps = math.ceil(len(pending) / world)

    dataset = spec.dataset([record for _, record in items], transform=distances.transform)
    loader = data_loader(
        dataset, batch_sampler=mine, num_workers=workers, collate_fn=collate_images,
        pin_memory=distances.device.type == "cuda",
    )
    key_set = set(keys)
    finished = {k: r for k, r in done.items() if k in key_set}
    bar = _progress_bar(progress and rank == 0, len(keys), len(finished), spec.unit)
    running = _RunningScore(bar, spec)
    try:
        batch_iter = iter(loader)
        for step in range(steps):
            batch = next(batch_iter) if step < len(mine) else None
            new = gather_records(_measure(spec, distances, batch, items, keys) if batch is not None else [])
            good = [r for r in new if "error" not in r]
            bad = [r for r in new if "error" in r]
            if runlog is not None:
                runlog.append(good if bad and not skip_bad else new)  # finished work is kept either way
            if bad and not skip_bad:
                raise ValueError(f"{bad[0]['error']}; pass `skip_bad=True` to skip bad {spec.unit}s")
            fresh = sum(r["key"] not in finished for r in new)  # a batch after a torn line has finished ones
            finished.update((r["key"], r) for r in new)
            bar.update(fresh)
            running.update(finished, final=step == steps - 1)
    finally:
        bar.close()
        if runlog is not None:
            runlog.close()  # releases the log for the next run

    return _summarise(spec, groups, items, keys, finished, skipped)


def _identity(distances) -> dict:
    """The model as a run log records it: its resolved location and file digests (see
    :func:`rpmetric.fingerprint.model_identity`), in place of the name it was given by; a pixel
    baseline has no files, and its name is its identity."""
    metric = getattr(distances, "metric", None)
    return model_identity(metric.spec) if metric is not None else {}


def _open_log(path, config: Optional[dict], resume: bool, spec: Optional[Task] = None
              ) -> Tuple[Optional[RunLog], Dict[str, dict]]:
    """Rank 0 opens the log; every rank gets its records (and rank 0's error, if it failed)."""
    if path is None:
        return None, {}
    rank, _ = rank_and_world()
    runlog, outcome = None, None
    if rank == 0:
        try:
            spec = spec or TASKS[config["task"]]
            check = record_check([*spec.outputs, spec.target], present=["group", "id"])
            runlog = RunLog(path, config, resume, check=check)
            outcome = ("ok", runlog.done)
        except (ValueError, FileExistsError) as err:
            outcome = ("error", type(err), str(err))
    outcome = broadcast_object(outcome)
    if outcome[0] == "error":
        raise outcome[1](outcome[2])
    return runlog, dict(outcome[1])


def _measure(spec: Task, distances, batch: dict, items, keys) -> List[dict]:
    """Per-sample records of one collated batch: distances for the good items, errors for the bad."""
    errors = list(batch["errors"])
    index = list(batch["index"])
    images = [batch.get(f) for f in spec.images]
    values = batch.get(spec.target)
    if distances.needs_equal_sizes and index:
        # Each item's own images must agree. A field stacks whenever its sizes agree across the
        # batch, mismatched or not, so check every item (im[j] reads a stacked tensor and a list).
        bad = [j for j in range(len(index)) if len({tuple(im[j].shape) for im in images}) > 1]
        if bad:
            keep = [j for j in range(len(index)) if j not in bad]
            errors += [(index[j], _size_error(spec, [im[j] for im in images])) for j in bad]
            index = [index[j] for j in keep]
            images = [[im[j] for j in keep] for im in images]
            values = values[keep]
    records = []
    if index:
        keyed = {"keys": [keys[i] for i in index]} if spec.keyed else {}
        outputs = spec.measure(distances, *images, **keyed)
        for j, i in enumerate(index):
            group, record = items[i]
            row = {"key": keys[i], "group": group, "id": record.id}
            row.update((name, float(out[j])) for name, out in zip(spec.outputs, outputs))
            row[spec.target] = float(values[j])
            records.append(row)
    for i, message in errors:
        group, record = items[i]
        records.append({"key": keys[i], "group": group, "id": record.id,
                        "error": f"bad {spec.unit} {group}/{record.id}: {message}"})
    return records


def _size_error(spec: Task, images: Sequence[torch.Tensor]) -> str:
    sizes = ", ".join(f"{name} {tuple(im.shape[-2:])}" for name, im in zip(spec.images, images))
    return (f"images differ in size ({sizes}); the l2 baseline compares pixels as loaded, so they must match "
            "(use a model, which resizes)")


def _summarise(spec: Task, groups, items, keys, finished: Dict[str, dict], skipped) -> Evaluation:
    report = Evaluation(task=spec.name, total=len(keys), done=sum(k in finished for k in keys))
    report.complete = report.done == report.total
    for group, bad_items in (skipped or {}).items():
        report.skipped += [{"group": group, "id": b.id, "reason": b.reason} for b in bad_items]
    ordered = [finished[k] for k in keys if k in finished]
    report.skipped += [{"group": r["group"], "id": r["id"], "reason": r["error"]} for r in ordered if "error" in r]
    report.records = [{k: v for k, v in r.items() if k != "key"} for r in ordered if "error" not in r]
    if report.complete:
        for group in groups:
            rows = [r for r in report.records if r["group"] == group]
            if not rows:
                raise ValueError(f"Group {group!r} has no {spec.unit}s left after skipping bad ones.")
            report.results[group] = {"n": len(rows), "score": spec.score(rows),
                                     **(spec.summary(rows) if spec.summary is not None else {})}
    return report


def _progress_bar(enabled: bool, total: int, initial: int, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


class _RunningScore:
    """The score so far, on the progress bar. Scoring is O(records), so it is redone at most once per
    ``interval`` seconds: after every batch it would add up to quadratic time over a long run."""

    def __init__(self, bar, spec: Task, interval: float = 1.0):
        self.bar, self.spec, self.interval = bar, spec, interval
        self.shown_at = -math.inf

    def update(self, finished: Dict[str, dict], final: bool = False) -> None:
        now = time.monotonic()
        if self.bar.disable or (now - self.shown_at < self.interval and not final):
            return
        self.shown_at = now
        scored = [r for r in finished.values() if "error" not in r]
        if not scored:
            return
        try:
            score = self.spec.score(scored)
        except ValueError:  # e.g. no pair judged the same yet: mAP undefined so far
            return
        label = self.spec.label or TASK_LABELS.get(self.spec.name, self.spec.name)
        self.bar.set_postfix_str(f"{label} {100 * score:.2f}%" if self.spec.percent else f"{label} {score:.4f}")


# -- datasets ---------------------------------------------------------------------------------
def load_groups(dataset: str, root, names: Sequence[str], subset: str = "val",
                skip_bad: bool = False, allow_outside_root: bool = False
                ) -> Tuple[str, Dict[str, list], Dict[str, List[BadItem]]]:
    """``(task, {group: records}, {group: skipped})`` for a dataset and its splits or categories.

    ``allow_outside_root`` lets NIGHTS' data.csv name images outside ``root`` (see :func:`read_nights`).

    NIGHTS split ``test`` is evaluated as its two parts, ``test_imagenet`` and ``test_no_imagenet``,
    whose size-weighted mean is the NIGHTS total (see :func:`nights_total`).

    Example:
        >>> task, groups, skipped = load_groups("nights", "/data/nights", ["test"])  # doctest: +SKIP
        >>> list(groups)  # doctest: +SKIP
        ['test_imagenet', 'test_no_imagenet']
    """
    if dataset not in DATASETS:
        raise ValueError(f"Argument `dataset` must be one of {DATASETS}, but got {dataset!r}.")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"Dataset folder not found: {root}")
    expanded: List[str] = []
    for name in names:
        parts = ["test_imagenet", "test_no_imagenet"] if dataset == "nights" and name == "test" else [name]
        expanded += [p for p in parts if p not in expanded]
    groups, skipped = {}, {}
    reported = set()  # a NIGHTS row too short to name its split is bad in every split read: report it once
    for name in expanded:
        bad: Optional[List[BadItem]] = [] if skip_bad else None
        if dataset == "nights":
            groups[name] = read_nights(root, name, skipped=bad, allow_outside_root=allow_outside_root)
        elif dataset == "bapps":
            groups[name] = read_bapps_2afc(root, name, subset, skipped=bad)
        else:
            groups[name] = read_bapps_jnd(root, name, skipped=bad)
        bad = [b for b in bad or [] if (b.id, b.reason) not in reported]
        reported.update((b.id, b.reason) for b in bad)
        if bad:
            skipped[name] = bad
    return ("2afc" if dataset in ("nights", "bapps") else "jnd"), groups, skipped


def nights_total(results: Dict[str, Dict[str, float]]) -> Optional[Dict[str, float]]:
    """The NIGHTS total, the size-weighted mean of ``test_imagenet`` and ``test_no_imagenet``
    (None unless both were evaluated).

    Example:
        >>> nights_total({"test_imagenet": {"n": 3, "score": 1.0}, "test_no_imagenet": {"n": 1, "score": 0.0}})
        {'n': 4, 'score': 0.75}
    """
    parts = [results.get("test_imagenet"), results.get("test_no_imagenet")]
    if any(p is None for p in parts):
        return None
    n = sum(p["n"] for p in parts)
    return {"n": n, "score": sum(p["n"] * p["score"] for p in parts) / n}


# -- datasets of one file ---------------------------------------------------------------------
# Datasets read from one file (or one folder with its list), evaluated as one group.
FILE_DATASETS = ("things", "triplets")
DEFAULT_PREPROCESS.update({
    "things": "dreamsim",  # DreamSim evaluates THINGS through its bicubic squash to 224x224
    "triplets": "model",
})


def load_file_groups(dataset: str, root, *, triplets=None, skip_bad: bool = False
                     ) -> Tuple[str, Dict[str, list], Dict[str, List[BadItem]]]:
    """``(task, {group: records}, {group: skipped})`` for a dataset of :data:`FILE_DATASETS`: one group,
    named by its file's stem.

    - ``"things"``: ``root`` is THINGS' image folder, ``triplets`` the triplet file (None:
      ``root/things_valset.txt``; see :func:`~rpmetric.datasets.read_things`); task ``odd-one-out``.
    - ``"triplets"``: ``root`` is a ``ref,left,right,p`` CSV file (see
      :func:`~rpmetric.datasets.read_triplets_csv`); task ``2afc``.

    Example:
        >>> task, groups, _ = load_file_groups("triplets", "/data/mine/triplets.csv")  # doctest: +SKIP
        >>> task, list(groups)  # doctest: +SKIP
        ('2afc', ['triplets'])
    """
    if dataset not in FILE_DATASETS:
        raise ValueError(f"Argument `dataset` must be one of {FILE_DATASETS}, but got {dataset!r}.")
    bad: Optional[List[BadItem]] = [] if skip_bad else None
    if dataset == "things":
        from .datasets import THINGS_TRIPLETS

        name = Path(triplets).stem if triplets is not None else Path(THINGS_TRIPLETS).stem
        task, records = "odd-one-out", read_things(root, triplets, skipped=bad)
    else:
        if triplets is not None:
            raise ValueError("Argument `triplets` applies to THINGS only; a triplet CSV is its own list.")
        name = Path(root).stem
        task, records = "2afc", read_triplets_csv(root, skipped=bad)
    return task, {name: records}, ({name: bad} if bad else {})
