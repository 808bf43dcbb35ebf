"""Ray Data as the embedding engine beyond one machine (``rpmetric embed --engine ray``, ``pip install "rpmetric[ray]"``).

:func:`build_store` writes the same store as :func:`rpmetric.stores.store.build_store`: it makes the
same plan, writes each shard with the same writer and finishes the same manifest, so the shard
files, the manifest and the row order are those one process writes (the embeddings agree to float
rounding, about 1e-7, as batches are composed differently), and a resume keeps the finished shards.
Only the work in between is Ray's:

1. **Work rows.** The driver lists what is left to embed, one row per file (a folder or a list)
   or per input shard (WebDataset, Parquet), each keyed by its store shard and its position there.
2. **Reading and decoding** run as Ray tasks: a file is decoded and resized to the model's input
   size in 8 bits, as the DataLoader workers of one process do; an input shard is streamed sample
   by sample (:func:`rpmetric.stores.sources.read_shard`) in batches, and ends with a marker row
   that says how many samples it held. A file or sample that cannot be read keeps its reason.
3. **The model** lives in an actor pool, one actor per worker, each loading the model once, from
   the reference the store records (``manifest["model_ref"]``; a model built in memory is shipped
   to the actors instead). Ray restarts an actor that dies and retries its batch (Ray Data's
   actor pools set ``max_restarts=-1`` and ``max_task_retries=-1``), and retries a decoding task
   whose worker died (Ray's ``max_retries=3`` for tasks). Actors are retried without limit: a batch
   that kills its process every time is retried until Ctrl-C. A Python exception is not retried
   (``retry_exceptions`` stays off): it would recur, so the run stops with it.
4. **The driver** collects the rows by (shard, position), so a retried batch can neither drop nor
   duplicate a row, and writes a shard as soon as all its rows are in. Ctrl-C or a failed run
   keeps every shard written; running it again resumes.

:func:`embed_dataset` is the same actor pool for a Ray Dataset of the user's own (``read_images``,
``read_parquet``, ``read_webdataset``, ``from_items``), for use inside other Ray pipelines.

Folder and list sources are read by the Ray workers from their paths, so every node must see them
at the same path (a shared filesystem, as torchrun needs); dataset shards may be any URL fsspec
opens. The store itself is written by the driver alone.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..errors import MissingDependencyError

__all__ = ["build_store", "embed_dataset", "require_ray"]

_PIXELS, _REASON = "__rpmetric_pixels", "__rpmetric_reason"  # embed_dataset's inner columns
_BATCHES_PER_TASK = 8  # a folder's work: batches per decoding task (fewer if that leaves workers idle)

ModelArg = Union[str, Any, Callable[[], Any]]  # a model reference, a RobustDistance, or a factory of one


def require_ray():
    """The ``ray`` module with ``ray.data``.

    Raises:
        MissingDependencyError: ray is not installed (the message names the pip extra).
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError('The Ray engine needs ray[data]: pip install "rpmetric[ray]"') from None
    return ray


# -- the cluster -------------------------------------------------------------------------------
def _connect(address: Optional[str]) -> bool:
    """Connect to the cluster at ``address`` (None: ``RAY_ADDRESS`` if set, else a new local one),
    unless Ray is initialised already; returns whether this call started the connection."""
    ray = require_ray()
    if ray.is_initialized():
        if address is not None:
            raise ValueError(f"Argument `address={address!r}` cannot be used: Ray is already initialised in this "
                             "process; drop it, or call ray.shutdown() first.")
        return False
    # The workers' own log lines stay in Ray's session logs: an error in them reaches the driver as
    # the exception that ends the run, and Ray's shutdown chatter would cover rpmetric's progress.
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    return True


def _quiet_ray_data() -> None:
    """rpmetric shows its own progress; Ray Data's bars and per-run log lines would interleave with it."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled"


def _resources(num_workers: Optional[int], num_gpus_per_worker: float) -> Tuple[int, float, float]:
    """``(workers, CPUs per actor, CPUs per decoding task)`` for the connected cluster.

    Actors and decoding tasks share the CPUs: each actor reserves at most one, and together they
    leave a share for decoding, so that on a small cluster the pool cannot starve the tasks that
    feed it (which would stop the pipeline). A decoding task reserves at most half a CPU, and never
    as much as an actor: Ray Data fuses a task stage into the actor stage after it when both
    reserve the same, which would decode inside the actors.
    """
    import ray

    _check_count("num_workers", num_workers, allow_none=True)
    if not (isinstance(num_gpus_per_worker, (int, float)) and math.isfinite(num_gpus_per_worker)
            and num_gpus_per_worker >= 0):
        raise ValueError(f"Argument `num_gpus_per_worker` must be a number >= 0, but got {num_gpus_per_worker!r}.")
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 1.0)), float(total.get("GPU", 0.0))
    if num_gpus_per_worker and gpus < num_gpus_per_worker * (num_workers or 1):
        raise ValueError(f"Argument `num_gpus_per_worker={num_gpus_per_worker}` asks for "
                         f"{num_gpus_per_worker * (num_workers or 1):g} GPU(s), but the Ray cluster has {gpus:g}; "
                         "lower `num_workers` or `num_gpus_per_worker`, or use `num_gpus_per_worker=0` for the CPUs.")
    if num_workers is None:
        num_workers = int(gpus // num_gpus_per_worker) if num_gpus_per_worker else max(1, int(cpus) // 2)
    actor_cpus = min(1.0, cpus / (num_workers + 1))
    task_cpus = min(0.5, cpus - num_workers * actor_cpus)
    return num_workers, actor_cpus, task_cpus / 2 if task_cpus == actor_cpus else task_cpus


def _check_count(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Argument `{name}` must be an integer >= 1, but got {value!r}.")


# -- the actors --------------------------------------------------------------------------------
def _load_model(model: ModelArg, device: str):
    """A RobustDistance on ``device`` from a reference, a metric, or a zero-argument factory of one."""
    from ..metric import RobustDistance

    if isinstance(model, (str, Path)):
        return RobustDistance(str(model), device=device)
    if not isinstance(model, RobustDistance):
        model = model()
    return model.to(device)


def _shippable(metric):
    """A copy of ``metric`` on the CPU, to pickle into the actors (which may have no GPU); the
    caller's metric stays where it is."""
    import copy

    return metric if metric.device.type == "cpu" else copy.deepcopy(metric).cpu()


class _Embedder:
    """One actor of the pool: the model, loaded once, embeds batches of pixels.

    A batch holds the decoded images in column ``_PIXELS`` (``[n, 3, S, S]`` uint8 at the model's
    input size) and in ``_REASON`` why a row has none (empty where it has one), which comes out as
    column ``reason``; the other columns pass through. Rows without an image get a row of NaN.
    """

    def __init__(self, model: ModelArg, use_gpu: bool, reason: str):
        import torch

        self.metric = _load_model(model, "cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.dim: Optional[int] = None
        self.reason = reason

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import torch

        from .store import _embed_loader, _output_dim

        pixels = batch.pop(_PIXELS)
        good = np.flatnonzero(batch[_REASON] == "")
        emb = None
        if len(good):
            images = torch.from_numpy(np.ascontiguousarray(pixels[good]))
            _, emb, _ = next(_embed_loader(self.metric.encoder, [(list(range(len(good))), images, [])],
                                           self.metric.device))
            self.dim = emb.shape[1]
        elif self.dim is None:
            self.dim = _output_dim(self.metric)
        out = np.full((len(pixels), self.dim), np.nan, np.float32)
        if emb is not None:
            out[good] = emb
        batch["embedding"] = out
        batch[self.reason] = batch.pop(_REASON)
        return batch


def _embed_stage(ds, model: ModelArg, batch_size: int, workers: int, actor_cpus: float, gpus: float,
                 reason: str = _REASON):
    """``ds`` (with the decoded columns) through the actor pool."""
    import ray.data

    return ds.map_batches(
        _Embedder, fn_constructor_args=(model, gpus > 0, reason), batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=actor_cpus, num_gpus=gpus or None,
    )


# -- decoding tasks ----------------------------------------------------------------------------
def _empty_pixels(n: int, pp) -> np.ndarray:
    return np.zeros((n, 3, pp.image_size, pp.image_size), np.uint8)


def _decode_files(batch: Dict[str, np.ndarray], pp) -> Dict[str, np.ndarray]:
    """A folder's work rows (``shard``, ``position``, ``path``): decoded and resized as
    :func:`rpmetric.stores.store.model_input` does, or the reason they cannot be."""
    from ..images import DECODE_ERRORS, decode_failure
    from .store import model_input

    paths = batch.pop("path")
    pixels, reasons = _empty_pixels(len(paths), pp), []
    for i, path in enumerate(paths):
        try:
            pixels[i] = model_input(path, pp).numpy()
            reasons.append("")
        except DECODE_ERRORS as err:
            reasons.append(decode_failure(path, err))
    return {**batch, _PIXELS: pixels, _REASON: np.array(reasons, dtype=object)}


def _read_shards(batch: Dict[str, np.ndarray], source: Tuple[str, Optional[str], Optional[str]], pp,
                 batch_size: int) -> Iterator[Dict[str, np.ndarray]]:
    """Stream the samples of input shards (rows ``shard``, ``name``) in batches of ``batch_size``,
    decoded as one process decodes them; each shard ends with a row ``end=True`` whose position
    is the number of samples the shard held. ``source``: the plan's kind, image and key columns."""
    from ..images import DECODE_ERRORS, decode_failure
    from . import sources
    from .store import sample_input

    kind, image_column, key_column = source
    for k, name in zip(batch["shard"].tolist(), batch["name"].tolist()):
        rows: List[tuple] = []  # (position, key, meta, pixels or None, reason, end)
        position = 0

        def flush():
            pixels = _empty_pixels(len(rows), pp)
            for i, row in enumerate(rows):
                if row[3] is not None:
                    pixels[i] = row[3]
            out = {"shard": np.full(len(rows), k, np.int64), "position": np.array([r[0] for r in rows], np.int64),
                   "key": np.array([r[1] for r in rows], dtype=object), "meta": np.array([r[2] for r in rows], dtype=object),
                   _PIXELS: pixels, _REASON: np.array([r[4] for r in rows], dtype=object),
                   "end": np.array([r[5] for r in rows], bool)}
            rows.clear()
            return out

        for sample in sources.read_shard(kind, name, image_column, key_column):
            meta = json.dumps([sample.url, sample.caption])  # one string column, whatever is missing
            reason, pixels = sample.error, None
            if reason is None:
                try:
                    pixels = sample_input(sample.data, sample.key, pp).numpy()
                except DECODE_ERRORS as err:
                    reason = decode_failure(sample.key, err)
            rows.append((position, sample.key, meta, pixels, reason or "", False))
            position += 1
            if len(rows) == batch_size:
                yield flush()
        rows.append((position, "", "", None, "end of shard", True))
        yield flush()


# -- the store ---------------------------------------------------------------------------------
def build_store(source, out, metric, *, address: Optional[str] = None, num_workers: Optional[int] = None,
                num_gpus_per_worker: float = 0, dtype: Optional[str] = None, shard_size: Optional[int] = None,
                batch_size: int = 32, overwrite: bool = False, update: bool = False, progress: bool = True,
                image_column: Optional[str] = None, key_column: Optional[str] = None,
                model: Optional[ModelArg] = None):
    """:func:`rpmetric.stores.store.build_store` with the work done by a Ray Data pipeline.

    The store is the same as one process writes: shard files, manifest and row order (embeddings
    to float rounding); a rerun resumes it, keeping finished shards, whichever engine wrote them.

    Args:
        source, out, metric, dtype, shard_size, batch_size, overwrite, update, progress,
            image_column, key_column: as for :func:`rpmetric.stores.store.build_store`; ``metric``
            plans the store (its spec and weight files) and tells the decoding tasks the model's
            preprocessing.
        address: the Ray cluster (``ray.init(address=...)``): None connects to ``RAY_ADDRESS`` if
            set, else starts a local cluster. If Ray is already initialised in this process, its
            cluster is used (and ``address`` must be None).
        num_workers: actors in the pool, each holding the model once; None: the cluster's GPUs
            divided by ``num_gpus_per_worker``, or half its CPUs.
        num_gpus_per_worker: GPUs each actor reserves (fractions share a GPU); 0 runs on the CPUs.
        model: what each actor loads instead of ``metric``'s own reference: a reference string, a
            :class:`~rpmetric.RobustDistance` (shipped to the actors), or a picklable zero-argument
            callable returning one. It must be the same network as ``metric``.

    Returns:
        The finished :class:`~rpmetric.stores.store.EmbeddingStore`.

    Raises:
        MissingDependencyError: ray is not installed.
        ValueError: as for the single-process build, or resources the cluster lacks.

    Example:
        >>> store = build_store("images/", "store/", rpmetric.RobustDistance(), num_workers=2)  # doctest: +SKIP
    """
    from . import store as single

    require_ray()
    dtype = single.DEFAULT_DTYPE if dtype is None else dtype
    shard_size = single.DEFAULT_SHARD_SIZE if shard_size is None else shard_size
    if dtype not in single.DTYPES:
        raise ValueError(f"Argument `dtype` must be one of {single.DTYPES}, but got {dtype!r}.")
    single._check_positive("shard_size", shard_size)
    single._check_positive("batch_size", batch_size)
    if update and overwrite:
        raise ValueError("Arguments `update` and `overwrite` exclude each other: pass update or overwrite, not both.")
    out = Path(out).expanduser().resolve()
    plan = single._make_plan(source, out, metric, dtype, shard_size, overwrite, update, image_column, key_column)
    if plan.get("complete"):
        single._remove_reuse(out)
        return single._not_empty(single.EmbeddingStore(out), source)
    plan_id = plan.get("plan_id")
    n_shards = len(plan["inputs"]) if plan.get("kind") else -(-len(plan["files"]) // plan["shard_size"])
    pending = [k for k in range(n_shards) if not single._shard_done(out, k, plan_id)]
    if pending:
        if model is None:  # the reference the store records, unless the model exists only in memory
            model = plan["model_ref"] if (metric.spec.local_path or metric.spec.hub_id) else _shippable(metric)
        started = _connect(address)
        try:
            _quiet_ray_data()
            _Run(out, plan, metric, pending, batch_size, progress).run(model, num_workers, num_gpus_per_worker)
        finally:
            if started:
                import ray

                ray.shutdown()
    single._finish_manifest(out, plan, n_shards)
    return single._not_empty(single.EmbeddingStore(out), source)


class _Run:
    """The driver's side of one build: the work rows, and the shards filled from the pipeline's output."""

    def __init__(self, out: Path, plan: dict, metric, pending: List[int], batch_size: int, progress: bool):
        from .store import _reusable

        self.out, self.plan, self.metric, self.pending, self.batch_size = out, plan, metric, pending, batch_size
        self.progress = progress
        self.dataset = bool(plan.get("kind"))
        self.rows: Dict[int, Dict[int, tuple]] = {k: {} for k in pending}  # shard -> position -> (emb, reason, key, meta)
        self.expected: Dict[int, Optional[int]] = {}
        self.dim: Optional[int] = None
        if not self.dataset:
            files, size = plan["files"], plan["shard_size"]
            self.reuse = _reusable(out, plan)
            self.spans = {k: range(k * size, min((k + 1) * size, len(files))) for k in pending}
            self.todo = {k: [i for i in self.spans[k] if files[i] not in self.reuse] for k in pending}
            self.expected = {k: len(self.todo[k]) for k in pending}
        else:
            self.expected = {k: None for k in pending}  # known from each shard's end marker

    def work(self, ray, workers: int):
        """The work rows as a Ray Dataset, decoded by tasks."""
        pp = self.metric.spec.preprocessing
        if self.dataset:
            items = [{"shard": k, "name": self.plan["inputs"][k]} for k in self.pending]
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            source = (self.plan["kind"], self.plan.get("image_column"), self.plan.get("key_column"))
            return ds, dict(fn=_read_shards, fn_kwargs=dict(source=source, pp=pp, batch_size=self.batch_size),
                            batch_size=1)
        root, files = Path(self.plan["root"]), self.plan["files"]
        items = [{"shard": k, "position": i, "path": str(root / files[i])} for k in self.pending for i in self.todo[k]]
        batches = -(-len(items) // self.batch_size)
        blocks = min(batches, max(4 * workers, -(-batches // _BATCHES_PER_TASK)))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        return ds, dict(fn=_decode_files, fn_kwargs=dict(pp=pp), batch_size=self.batch_size)

    def run(self, model: ModelArg, num_workers: Optional[int], num_gpus_per_worker: float) -> None:
        from tqdm.auto import tqdm

        import ray

        total = None if self.dataset else sum(self.expected.values())
        with tqdm(total=total, unit="img", desc="embed (ray)", disable=not self.progress) as bar:
            self.write_finished()  # shards made of reused rows only
            if not self.rows or total == 0:
                return
            workers, actor_cpus, task_cpus = _resources(num_workers, num_gpus_per_worker)
            if total is not None:  # no more actors than batches: the others would wait idle
                workers = min(workers, -(-total // self.batch_size))
            ds, decode = self.work(ray, workers)
            ds = ds.map_batches(decode.pop("fn"), **decode, batch_format="numpy", num_cpus=task_cpus)
            ds = _embed_stage(ds, model, self.batch_size, workers, actor_cpus, num_gpus_per_worker)
            with warnings.catch_warnings():
                # A dataset source with fewer batches than actors leaves some idle, which Ray warns
                # of in its own terms (override_num_blocks); the store is the same.
                warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    bar.update(self.take(batch))
                    self.write_finished()
        if self.rows:
            k = min(self.rows)
            raise RuntimeError(f"The Ray pipeline ended with shard {k} of store {self.out} incomplete "
                               f"({len(self.rows[k])} of {self.expected[k]} rows); the finished shards are kept, "
                               "run the same build again to resume.")

    def take(self, batch: Dict[str, np.ndarray]) -> int:
        """File the rows of one output batch under (shard, position); a row seen twice (a retried
        batch) replaces itself. Returns the number of images it holds."""
        shards, positions = batch["shard"].tolist(), batch["position"].tolist()
        reasons = batch[_REASON]
        emb = np.array(batch["embedding"])  # a copy: views would pin Ray's shared memory until the shard is written
        ends = batch["end"].tolist() if "end" in batch else [False] * len(shards)
        keys = batch["key"] if "key" in batch else None
        metas = batch["meta"] if "meta" in batch else None
        count = 0
        for j, (k, i, end) in enumerate(zip(shards, positions, ends)):
            if k not in self.rows:  # written already (a late copy of a retried batch)
                continue
            if end:
                self.expected[k] = i
                continue
            count += i not in self.rows[k]
            self.rows[k][i] = (emb[j] if not reasons[j] else None, reasons[j],
                               keys[j] if keys is not None else None, metas[j] if metas is not None else None)
        if emb.shape[0] and self.dim is None and emb.shape[1]:
            self.dim = emb.shape[1]
        return count

    def write_finished(self) -> None:
        for k in [k for k in self.rows if self.expected[k] is not None and len(self.rows[k]) == self.expected[k]]:
            self.write(k, self.rows.pop(k))

    def write(self, k: int, rows: Dict[int, tuple]) -> None:
        """Shard ``k`` exactly as one process writes it (:func:`rpmetric.stores.store._embed_shards`)."""
        from .store import _output_dim, _write_shard

        plan, dtype = self.plan, self.plan["dtype"]
        if self.dataset:
            order = sorted(rows)
            kept = [i for i in order if rows[i][0] is not None]
            skipped = [{"path": rows[i][2], "reason": rows[i][1]} for i in order if rows[i][0] is None]
            names = [rows[i][2] for i in kept]
            metas = [json.loads(rows[i][3]) for i in kept]
            meta = {"urls": [m[0] for m in metas], "captions": [m[1] for m in metas]}
            vectors = [rows[i][0] for i in kept]
        else:
            files, vectors, names, skipped, meta = plan["files"], [], [], [], None
            for i in self.spans[k]:
                row, reason = self.reuse[files[i]] if files[i] in self.reuse else rows[i][:2]
                if row is None:
                    skipped.append({"path": files[i], "reason": reason})
                else:
                    vectors.append(row)
                    names.append(files[i])
        if vectors:
            emb = np.stack(vectors)
            self.dim = emb.shape[1]
        else:
            self.dim = _output_dim(self.metric) if self.dim is None else self.dim
            emb = np.zeros((0, self.dim), np.float32)
        _write_shard(self.out, k, emb.astype(dtype), names, skipped, plan.get("plan_id"),
                     None if self.dataset else plan.get("stats"), meta=meta)


# -- users' own pipelines ----------------------------------------------------------------------
def _pixels_of(value, name: str, pp):
    """``[3, S, S]`` uint8 of one image value: image file bytes, a ``{"bytes", ...}`` struct (a
    Hugging Face Image), or an ``H x W``, ``H x W x 1|3|4`` uint8 array (what ``read_images``
    and ``read_webdataset`` decode to; alpha is dropped, grey repeated)."""
    import torch

    from ..images import read_pixels_bytes
    from ..preprocess import resize_and_crop

    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        t = read_pixels_bytes(bytes(value), name)
    elif isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[2] not in (1, 3, 4)):
            raise ValueError(f"{name} is a {value.dtype} array of shape {value.shape}; give image file bytes or an "
                             "H x W x 3 uint8 array (H x W or H x W x 1 grey, H x W x 4 with alpha).")
        a = value[..., None] if value.ndim == 2 else value
        a = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[..., :3]
        t = torch.tensor(a).permute(2, 0, 1)  # a copy: Ray hands batches over read-only
    else:
        raise ValueError(f"{name} holds a {type(value).__name__}; give image file bytes or an H x W x 3 uint8 array.")
    return resize_and_crop(t[None], pp)[0].numpy()


def _decode_column(batch: Dict[str, np.ndarray], column: str, pp) -> Dict[str, np.ndarray]:
    from ..images import DECODE_ERRORS, decode_failure

    if column not in batch:
        raise ValueError(f"Argument `image_column={column!r}` is not a column of the dataset (columns: "
                         f"{', '.join(batch)}); name the column that holds the images.")
    values = batch[column]
    names = batch.get("path", batch.get("key", batch.get("__key__")))
    pixels, reasons = _empty_pixels(len(values), pp), []
    for i, value in enumerate(values):
        name = str(names[i]) if names is not None else f"an image of column {column!r}"
        try:
            pixels[i] = _pixels_of(value, name, pp)
            reasons.append("")
        except DECODE_ERRORS as err:
            reasons.append(decode_failure(name, err))
    return {**batch, _PIXELS: pixels, _REASON: np.array(reasons, dtype=object)}


def embed_dataset(dataset, model: ModelArg, *, image_column: str = "image", batch_size: int = 32,
                  num_workers: Optional[int] = None, num_gpus_per_worker: float = 0):
    """Add an ``embedding`` column to a Ray Dataset: the model's L2-normalised embedding of each image.

    Each image is decoded and resized in a Ray task, as ``rpmetric embed`` does (8 bits, the
    model's resize and centre crop), then embedded by an actor pool with one actor per worker, each
    holding the model once; Ray restarts an actor that dies and retries its batch. The result is
    lazy, like any Ray Dataset: nothing runs until it is consumed (``take``, ``iter_batches``,
    ``write_parquet``, ...).

    Args:
        dataset: a ``ray.data.Dataset``. Its column ``image_column`` holds per row image file bytes
            (``read_binary_files``' ``bytes``, an img2dataset ``read_parquet``'s ``jpg``), a Hugging
            Face Image struct ``{"bytes", "path"}``, or an ``H x W x 3`` uint8 array (``read_images``'
            ``image``, ``read_webdataset``'s decoded ``jpg``; grey and alpha are accepted).
        model: a model reference (zoo name, ``hf-hub:ORG/NAME``, a folder every node sees) that each
            actor loads, a :class:`~rpmetric.RobustDistance` (shipped to the actors), or a
            picklable zero-argument callable returning one. The driver loads it once too, on the
            CPU, to read its preprocessing.
        image_column: the column of the images.
        batch_size: images per forward pass.
        num_workers: actors; None: the cluster's GPUs divided by ``num_gpus_per_worker``, or half its CPUs.
        num_gpus_per_worker: GPUs per actor (fractions share one); 0 for the CPUs.

    Returns:
        The dataset with every input column, plus ``embedding`` (float32 ``[D]``) and
        ``embedding_error`` (``""``, or why the row's image could not be read, whose ``embedding``
        is then NaN). Rows may come out in another order unless the dataset's
        ``DataContext.execution_options.preserve_order`` is set; keep a key column to join on.

    Raises:
        MissingDependencyError: ray is not installed.

    Example:
        >>> import ray, rpmetric
        >>> from rpmetric.scale import embed_dataset
        >>> ds = ray.data.read_images("images/", include_paths=True)  # doctest: +SKIP
        >>> ds = embed_dataset(ds, "r-clip-f-convnext", num_workers=2).drop_columns(["image"])  # doctest: +SKIP
        >>> ds.write_parquet("embeddings/")  # columns path, embedding, embedding_error  # doctest: +SKIP
    """
    from ..metric import RobustDistance

    ray = require_ray()
    _check_count("batch_size", batch_size)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    if isinstance(model, RobustDistance):
        pp = model.spec.preprocessing
        model = _shippable(model)
    else:  # a reference or a factory: loaded once here, for its preprocessing
        pp = _load_model(model, "cpu").spec.preprocessing
    workers, actor_cpus, task_cpus = _resources(num_workers, num_gpus_per_worker)
    ds = dataset.map_batches(_decode_column, fn_kwargs=dict(column=image_column, pp=pp),
                             batch_size=batch_size, batch_format="numpy", num_cpus=task_cpus)
    return _embed_stage(ds, model, batch_size, workers, actor_cpus, num_gpus_per_worker, reason="embedding_error")
