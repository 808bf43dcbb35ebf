"""Embedding stores: a folder of L2-normalised image embeddings that can be built, resumed and read.

Layout of a store folder::

    manifest.json        what the store is: model spec, package version, dim, dtype, root, the
                         row count, the skipped files with reasons, the shard list, and the
                         model's weight files (sizes, mtimes); its size grows with the shards,
                         not with the rows
    rows.jsonl           one line per row: ``[path or key, url, caption]`` (see
    rows-index.npy       :mod:`rpmetric.stores.rowtable`), read per row when asked for
    stats.json           the size and mtime of every input file (read by builds only)
    emb-00000.npy        [n, dim] float16 or float32 embeddings of shard 0 (readable files only)
    shard-00000.json     shard 0's embedded paths and skipped files with their sizes and mtimes, the
                         plan it belongs to, and the shape, dtype and blake2b checksum of its .npy
                         file; written last, so its presence marks the shard complete
    ...
    reuse.json           only while an update runs: the rows of the previous store that are still
    reuse-emb.npy        valid (same path, size and mtime), gathered before its shards are replaced

The input files (sorted) are cut into fixed shards of ``shard_size`` files before any work starts,
and that plan is saved in the manifest. Each shard is written atomically (temporary file, then
rename, each flushed to disk), so an interrupted run keeps every finished shard; running the same
build again resumes automatically and embeds only the missing shards. It first checks every
finished shard against its record (shape, dtype, length, checksum) and embeds damaged ones again,
with a warning each; readers name a damaged shard and the command that repairs it. The plan also
records the model's weight files (size, mtime, a hash of their first and last MB): a resume or
update with weights replaced in place is refused. Under ``torchrun`` rank r takes shards r, r+W,
r+2W, ...; because shards are fixed by the plan, the result is the same store as a single process
writes, and rank 0 finishes the manifest once every rank is done (``--out`` must be on a filesystem
all ranks share).

A WebDataset or Parquet source (:mod:`rpmetric.stores.sources`) is planned as its list of input shards
("inputs"), one store shard each, so a resume re-reads only the input shards without a finished
record; its rows are named by the samples' keys, and the shard records and the manifest keep each
row's URL and caption ("urls", "captions"). Each DataLoader worker reads and decodes whole input
shards; the main process embeds, and writes a shard once all its rows are in (shards finish in any
order; the manifest puts them in the plan's).

A rerun on a source whose files were added, removed or changed (size or mtime) since the plan was
made is refused, or with ``update=True`` re-planned: the still valid rows are first gathered into
``reuse-emb.npy``, then a new plan is saved and only new and changed files are embedded. That run
resumes like any other, as its shard records name the plan they belong to.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import stat
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import distributed
from . import sources
from .._version import __version__
from ..datasets.loading import data_loader
from ..errors import WorkerDiedError
from ..files import atomic_path, atomic_write, read_csv_columns, write_json
from ..images import DECODE_ERRORS, decode_failure, read_pixels, read_pixels_bytes, unit_float
from ..preprocess import resize_and_crop
from ..spec import default_model
from ..unique import embed_unique
from .rowtable import RowTable, RowWriter

__all__ = ["EmbeddingStore", "StoreSelection", "build_store", "embed_images", "list_files", "model_input", "DTYPES",
           "EMBEDDINGS_LIMIT"]

FORMAT = "rpmetric-embeddings"
FORMAT_VERSION = 4  # 2: file sizes and mtimes ("stats"), shard records name their plan; 3: shard
# checksums and shapes, the model's weight files ("model_identity"), entries that are no files ("special");
# 4: a finished store's rows in ROWS / ROWS_INDEX and its "stats" in STATS, out of the manifest (a
# 10 M-row manifest took about 5 GB to parse). Stores of formats 1-3 are read as they are.
MANIFEST = "manifest.json"
ROWS, ROWS_INDEX, STATS = "rows.jsonl", "rows-index.npy", "stats.json"
REUSE, REUSE_EMBEDDINGS = "reuse.json", "reuse-emb.npy"
DTYPES = ("float16", "float32")
# Largest store that EmbeddingStore.embeddings() materialises (bytes of the float32 result). Above
# it, read the store with blocks() / take(), or pass the store itself to search, near_pairs,
# group_duplicates, find_near and knn_classify, which stream it shard by shard.
EMBEDDINGS_LIMIT = 2 << 30
DEFAULT_DTYPE, DEFAULT_SHARD_SIZE = "float16", 1024
# Settings that must match for a rerun to resume an existing store rather than start a new one.
_PLAN_KEYS = ("model", "dtype", "shard_size", "source", "kind", "image_column", "key_column")


def spec_dict(spec) -> dict:
    """``spec.to_dict()`` as it reads back from JSON (tuples become lists), so saved and live specs compare."""
    return json.loads(json.dumps(spec.to_dict()))


def _same_model(a: dict, b: dict) -> bool:
    """Whether two :func:`spec_dict` are the same model: a folder counts by its resolved path, not
    by how it was spelled (``./m``, ``m/`` and ``/abs/m`` give different names)."""
    def key(d: dict) -> dict:
        return {k: v for k, v in d.items() if not (k == "name" and d.get("local_path"))}

    return key(a) == key(b)


def _model_identity(spec) -> Optional[dict]:
    """Where the model's files are and their fingerprints (:func:`rpmetric.fingerprint.model_fingerprint`:
    size, mtime and a hash of the first and last MB), enough to tell weights replaced in place. None
    for an encoder built in memory, whose spec names no files."""
    from ..fingerprint import model_fingerprint

    if not (spec.local_path or spec.hub_id):
        return None
    return model_fingerprint(spec)


_FINGERPRINT_PARTS = (("size", "size"), ("mtime_ns", "mtime_ns"), ("blake2b", "first and last MB"))


def _identity_change(saved: Optional[dict], current: Optional[dict]) -> Optional[str]:
    """What differs between two :func:`_model_identity` (None if nothing, or if either is unknown:
    a store from before format 3, or an encoder built in memory); a head's base model is compared too."""
    if not (saved and current):
        return None
    if saved.get("location") != current.get("location"):
        return f"the model was {saved.get('location')}, now it is {current.get('location')}"
    old_files, new_files = saved.get("files") or {}, current.get("files") or {}
    for name in sorted(set(old_files) | set(new_files)):
        old, new = old_files.get(name), new_files.get(name)
        if old == new:
            continue
        if old is None or new is None:
            what = "added" if old is None else "removed"
        else:
            what = ", ".join(f"{label} {old.get(key)} -> {new.get(key)}" if key != "blake2b" else label
                             for key, label in _FINGERPRINT_PARTS if old.get(key) != new.get(key))
        return f"{name} of {current['location']} differs ({what})"
    if saved.get("base") or current.get("base"):
        return _identity_change(saved.get("base") or {"location": None}, current.get("base") or {"location": None})
    return None


# -- input files -------------------------------------------------------------------------------
def list_files(source: Union[str, Path], exclude: Optional[Path] = None) -> Tuple[Path, List[str]]:
    """The files to embed: ``(root, paths relative to root)``, sorted.

    Args:
        source: a folder (walked recursively, following symlinked folders and files; hidden files
            and folders are left out) or a text file listing one path per line (relative paths are
            relative to the list file's folder, not to the working directory; blank lines and lines
            starting with ``#`` are ignored).
        exclude: a folder to leave out of the walk (the store itself, when it lies inside).

    Every regular file is listed, images or not: a file that cannot be decoded is reported as
    skipped later, with the reason, rather than silently ignored. Entries that are no regular
    files (dangling symlinks, FIFOs, devices) are not listed and never opened; :func:`build_store`
    reports them as skipped, with the reason. Each real folder is walked once,
    so a symlink loop ends, and a folder that two symlinks reach is listed under the first of them
    in sorted order.

    Raises:
        FileNotFoundError: ``source`` does not exist, or a list names a file that does not (the
            message names the list, the line and the resolved path).
        ValueError: a list names no files or is not UTF-8 text, a folder cannot be listed, or
            ``source`` is neither a folder nor a file (``/dev/null``, a named pipe).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("b.png", "a/c.jpg", ".hidden"): (d / name).parent.mkdir(exist_ok=True); (d / name).touch()
        >>> list_files(d)[1]
        ['a/c.jpg', 'b.png']
    """
    root, paths, _, _ = _listing(source, exclude)
    return root, paths


def _listing(source: Union[str, Path],
             exclude: Optional[Path] = None) -> Tuple[Path, List[str], Dict[str, list], List[dict]]:
    """:func:`list_files`, ``{path: [size, mtime_ns]}`` of each listed file, and ``{"path", "reason"}``
    of each entry that is not a file (a dangling symlink, a FIFO, a device), which is never opened."""
    source = Path(source).expanduser()
    if source.is_dir():
        root = source.resolve()
        found, special = _walk(root, exclude.resolve() if exclude is not None else None)
        paths = sorted(found)
        return root, paths, {p: found[p] for p in paths}, special
    if source.is_file():
        return _read_list(source)
    raise missing_source(source)


def missing_source(source) -> Exception:
    """The error for a SOURCE that is neither a folder nor a file (the command line checks it before
    loading a model): FileNotFoundError if it does not exist, else ValueError naming what it is."""
    hint = "give a folder of images or a text file listing image paths."
    try:
        mode = Path(source).expanduser().stat().st_mode
    except OSError:
        return FileNotFoundError(f"Input {source} does not exist; {hint}")
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
             (stat.S_ISSOCK, "a socket"))
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return ValueError(f"Input {source} exists but is neither a folder nor a file ({kind}); {hint}")


def _file_stats(st: os.stat_result) -> list:
    return [st.st_size, st.st_mtime_ns]


def _not_a_file(path: str, st: Optional[os.stat_result] = None) -> Optional[str]:
    """Why ``path`` is skipped without being opened (it is no regular file), or None if it is one
    or is gone (removed while walking)."""
    if st is None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return f"{path} is a symlink to {os.readlink(path)}, which does not exist" if os.path.islink(path) else None
        except OSError as err:  # e.g. a symlink loop
            return f"{path} cannot be read ({err.strerror or err})"
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))
    kind = next((name for test, name in kinds if test(st.st_mode)), None)
    return None if stat.S_ISREG(st.st_mode) else f"{path} is {kind or 'not a regular file'}, not an image file"


def _walk(root: Path, skip: Optional[Path]) -> Tuple[Dict[str, list], List[dict]]:
    """``{path relative to root: [size, mtime_ns]}`` of the non-hidden files under ``root`` (see
    :func:`list_files`), and ``{"path", "reason"}`` of the entries that are no files, in sorted order."""
    found: Dict[str, list] = {}
    special: List[dict] = []
    seen = set()  # (device, inode) of every folder walked: the loop protection
    stack = [(root, "")]
    while stack:  # depth first, in sorted order, without recursion (trees may be deep)
        folder, prefix = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)  # the stack pops them in order
        except OSError as err:
            raise ValueError(f"Folder {folder} cannot be listed ({err.strerror or err}); fix its permissions "
                             "or leave it out of the source.") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():  # follows symlinks, as is_file below does
                    real = Path(os.path.realpath(entry.path))
                    if skip is None or not (real == skip or skip in real.parents):
                        stack.append((folder / entry.name, f"{prefix}{entry.name}/"))
                elif entry.is_file():
                    found[prefix + entry.name] = _file_stats(entry.stat())
                else:  # never opened: reading a FIFO would wait for a writer forever
                    reason = _not_a_file(entry.path)
                    if reason is not None:
                        special.append({"path": prefix + entry.name, "reason": reason})
            except OSError:  # a file removed while walking
                continue
    return found, special


def _read_list(source: Path) -> Tuple[Path, List[str], Dict[str, list], List[dict]]:
    root = source.resolve().parent
    paths, stats, missing, special = [], {}, [], []
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"Input {source} is not a text file listing image paths (it is not UTF-8 text; an image "
                         "file?); give a folder of images, or a text file naming one image path per line.") from None
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        resolved = root / name  # an absolute path stays as it is
        try:
            st = resolved.stat()
        except OSError:
            missing.append((number, name, resolved))
        else:
            reason = _not_a_file(str(resolved), st)
            if reason is not None:
                special.append({"path": name, "reason": reason})
                continue
            stats[name] = _file_stats(st)
        paths.append(name)
    if missing:
        number, name, resolved = missing[0]
        more = f" ({len(missing) - 1} more listed file{' is' if len(missing) == 2 else 's are'} missing)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"{source}, line {number}: {name!r} resolves to {resolved}, which does not exist{more}; paths in a "
            f"list file are relative to its folder ({root}), not to the working directory, unless absolute."
        )
    if not paths and not special:
        raise ValueError(f"The file list {source} names no files; give one path per line.")
    return root, paths, stats, special


# -- decoding in DataLoader workers ------------------------------------------------------------
def model_input(path: Union[str, Path], pp) -> torch.Tensor:
    """One image file as the store embeds it: ``[3, S, S]`` uint8 at the model's input size.

    Resized and cropped in 8 bits (see :mod:`rpmetric.datasets.loading`), so an image embedded
    later from this tensor (after :func:`rpmetric.images.unit_float`) gets the stored embedding.

    Args:
        path: the image file.
        pp: the model's :class:`~rpmetric.spec.Preprocessing` (``metric.spec.preprocessing``).

    Raises:
        ValueError, FileNotFoundError: the file cannot be read as an image.
    """
    return resize_and_crop(read_pixels(path)[None], pp)[0].contiguous()


def sample_input(data: bytes, name: str, pp) -> torch.Tensor:
    """:func:`model_input` of an image file's bytes (a dataset sample named ``name``)."""
    return resize_and_crop(read_pixels_bytes(data, name)[None], pp)[0].contiguous()


class _ImageFiles(torch.utils.data.Dataset):
    """:func:`model_input` of each file; a file that cannot be decoded or resized (any of
    ``rpmetric.images.DECODE_ERRORS``) yields its reason instead, and is listed as skipped."""

    def __init__(self, files: Sequence[str], pp):
        self.files = list(files)
        self.pp = pp  # a picklable dataclass, so spawn-started workers get it too

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, model_input(self.files[i], self.pp), None
        except DECODE_ERRORS as err:
            return i, None, decode_failure(self.files[i], err)


def _collate(items):
    good = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, reason) for i, x, reason in items if x is None]
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, failed


def _loader(files: Sequence[str], batches: List[List[int]], pp, num_workers: int, pin_memory: bool):
    dataset = _ImageFiles(files, pp)
    return data_loader(
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate, pin_memory=pin_memory,
    )


class _DatasetShards(torch.utils.data.IterableDataset):
    """Decoded batches of a dataset plan's input shards, each shard read whole by one DataLoader
    worker (worker w of W takes ``shards[w::W]``), so its samples stay in order and one slow or
    truncated shard holds up no other.

    Yields per batch ``(k, part, images, rows, skipped, last)``: ``images`` up to ``batch_size``
    :func:`sample_input` of store shard ``k`` (``[b, 3, S, S]`` uint8, None if b is 0), ``rows`` their
    ``(key, url, caption)``, ``skipped`` the ``{"path", "reason"}`` of the samples read since the
    previous batch that could not be decoded (or the shard's end that could not be read), ``part``
    the batch's number within its shard, and ``last`` whether it ends the shard. Batches of a shard
    are those a single process makes (``batch_size`` decoded images each, never crossing shards), so
    the rows and their embeddings do not depend on the number of workers.

    Args:
        kind, image_column, key_column: the plan's (see :func:`rpmetric.stores.sources.read_shard`).
        shards: ``(store shard number, input shard name)`` to read, in order.
        pp: the model's :class:`~rpmetric.spec.Preprocessing` (picklable, for spawn-started workers).
    """

    def __init__(self, kind: str, shards: Sequence[Tuple[int, str]], pp, batch_size: int,
                 image_column: Optional[str] = None, key_column: Optional[str] = None):
        self.kind, self.shards, self.pp, self.batch_size = kind, list(shards), pp, batch_size
        self.image_column, self.key_column = image_column, key_column

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        mine = self.shards if info is None else self.shards[info.id::info.num_workers]
        for k, name in mine:
            yield from self._batches(k, name)

    def _batches(self, k: int, name: str):
        part, images, rows, skipped = 0, [], [], []
        for sample in sources.read_shard(self.kind, name, self.image_column, self.key_column):
            reason = sample.error
            if reason is None:
                try:
                    images.append(sample_input(sample.data, sample.key, self.pp))
                    rows.append((sample.key, sample.url, sample.caption))
                except DECODE_ERRORS as err:
                    reason = decode_failure(sample.key, err)
            if reason is not None:
                skipped.append({"path": sample.key, "reason": reason})
            if len(images) == self.batch_size:
                yield k, part, torch.stack(images), rows, skipped, False
                part, images, rows, skipped = part + 1, [], [], []
        yield k, part, torch.stack(images) if images else None, rows, skipped, True


def _batches(indices: Sequence[int], batch_size: int) -> List[List[int]]:
    indices = list(indices)
    return [indices[s:s + batch_size] for s in range(0, len(indices), batch_size)]


def _embed_loader(encoder, loader, device: torch.device) -> Iterator[Tuple[List[int], np.ndarray, list]]:
    """Yields ``(indices, float32 unit embeddings, [(index, reason), ...])`` per batch."""
    with _inference(device):
        for indices, images, failed in loader:
            if images is None:
                yield [], np.zeros((0, 0), np.float32), failed
                continue
            yield indices, _embed_batch(encoder, images, device), failed


@contextlib.contextmanager
def _inference(device: torch.device):
    """The context the store's encoder runs in: no autograd, and float16 autocast on CUDA."""
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        yield


def _embed_batch(encoder, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """Float32 unit embeddings of a ``[B, 3, S, S]`` uint8 batch (inside :func:`_inference`)."""
    # Identical images of a batch get one embedding (see rpmetric.unique).
    f = embed_unique(lambda x: encoder(unit_float(x.to(device, non_blocking=True))), images).float()
    return torch.nn.functional.normalize(f, dim=-1).cpu().numpy()


@contextlib.contextmanager
def _worker_deaths(out: Path):
    """Turn torch's report of a dead DataLoader worker into one line that says what is kept and how to
    resume. Torch raises it from its SIGCHLD handler, wherever the main process is at that moment
    (inside the encoder too), so it wraps the whole loop, not the loader's ``next``; a shard being
    written then is lost whole, as its files are written atomically."""
    try:
        yield
    except RuntimeError as err:
        text = str(err).strip()
        if not text.startswith("DataLoader worker"):
            raise
        first = text.split(". ")[0].rstrip(". ")  # the rest suggests num_workers=0 in torch's words
        raise WorkerDiedError(f"A worker decoding images for store {out} died ({first}); the finished shards are "
                              "kept: run the same build again to resume it, with `num_workers=0` to decode in this "
                              "process if it recurs.") from None


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"Argument `{name}` must be an integer >= {minimum}, but got {value!r}.")


def default_workers() -> int:
    """DataLoader workers by default: up to 4, never more than the CPUs beyond the main process."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def embed_images(metric, files: Sequence[Union[str, Path]], *, batch_size: int = 32,
                 num_workers: int = 0) -> Tuple[torch.Tensor, List[str], List[dict]]:
    """Embed image files with a metric's encoder, in memory (for queries; use :func:`build_store` for datasets).

    Args:
        metric: a :class:`~rpmetric.RobustDistance`.
        files: image paths.
        batch_size: images per forward pass.
        num_workers: DataLoader workers decoding the files.

    Returns:
        ``(embeddings [n, D] float32 L2-normalised, the n embedded paths, skipped)`` where
        ``skipped`` lists ``{"path", "reason"}`` for the files that could not be read.

    Example:
        >>> emb, paths, skipped = embed_images(metric, ["a.png", "b.jpg"])  # doctest: +SKIP
    """
    _check_positive("batch_size", batch_size)
    _check_positive("num_workers", num_workers, 0)
    files = [str(f) for f in files]
    loader = _loader(files, _batches(range(len(files)), batch_size), metric.spec.preprocessing, num_workers,
                     metric.device.type == "cuda")
    order, parts, skipped = [], [], []
    for indices, emb, failed in _embed_loader(metric.encoder, loader, metric.device):
        order.extend(indices)
        parts.append(emb)
        skipped.extend({"path": files[i], "reason": reason} for i, reason in failed)
    # The width of an empty result needs a dummy forward: only then, not on every call.
    emb = np.concatenate([p for p in parts if len(p)]) if order else np.zeros((0, _output_dim(metric)), np.float32)
    return torch.from_numpy(emb), [files[i] for i in order], skipped


def _output_dim(metric) -> int:
    size = metric.spec.preprocessing.image_size
    with torch.inference_mode():
        return int(metric.encoder(torch.zeros(1, 3, size, size, device=metric.device)).shape[-1])


# -- writing -----------------------------------------------------------------------------------
def _shard_names(k: int) -> Tuple[str, str]:
    return f"emb-{k:05d}.npy", f"shard-{k:05d}.json"


def _shard_done(out: Path, k: int, plan_id: Optional[str]) -> bool:
    """Shard ``k`` of the plan ``plan_id`` is written (a shard of an earlier plan is not).

    Its files are not checked here: a resume first removes damaged shards (:func:`_drop_bad_shards`).
    """
    emb_name, meta_name = _shard_names(k)
    if not ((out / meta_name).is_file() and (out / emb_name).is_file()):
        return False
    return json.loads((out / meta_name).read_text()).get("plan") == plan_id


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _write_shard(out: Path, k: int, emb: np.ndarray, paths: List[str], skipped: List[dict],
                 plan_id: Optional[str] = None, stats: Optional[dict] = None, meta: Optional[dict] = None) -> None:
    emb_name, meta_name = _shard_names(k)
    buffer = io.BytesIO()
    np.save(buffer, emb, allow_pickle=False)
    data = buffer.getvalue()
    atomic_write(out / emb_name, lambda f: f.write(data))
    # The shard's record comes last: its presence is what marks the shard complete. The sizes and
    # mtimes of its files let a later update reuse its rows; shape, dtype and checksum let a resume
    # and the readers tell a damaged embeddings file.
    names = paths + [s["path"] for s in skipped]
    # Not indented: json's C encoder only runs without indent (a 1024-row record: 5x faster).
    write_json(out / meta_name, {"embeddings": emb_name, "count": len(paths), "paths": paths, "skipped": skipped,
                                 "plan": plan_id, "stats": {p: (stats or {}).get(p) for p in names},
                                 "shape": list(emb.shape), "dtype": str(emb.dtype), "blake2b": _digest(data),
                                 **(meta or {})}, indent=None)


class _BadShard(Exception):
    """What is wrong with an embeddings file (a resume re-embeds it, a reader names it)."""


def _read_shard(path: Path, count: int, dim: Optional[int], dtype: str, digest: Optional[str] = None,
                read: bool = True) -> Optional[np.ndarray]:
    """The ``[count, dim]`` array of ``dtype`` in the .npy file ``path``, checked against its record.

    The header, shape, dtype and length are checked from the header alone; with ``read`` the
    values are read and checked against ``digest`` (the blake2b of the whole file; None for
    records written before format 3) and returned. ``dim`` None accepts any width.

    Raises:
        _BadShard: the file is missing, torn, truncated, of another shape or dtype, or changed.
    """
    if not path.is_file():
        raise _BadShard("is missing")
    if not path.stat().st_size:
        raise _BadShard("is empty (0 bytes)")
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if header is None:
                raise ValueError(f"unknown .npy version {version}")
            shape, fortran, found = header(f)
        except (ValueError, SyntaxError, EOFError) as err:
            raise _BadShard(f"has no valid .npy header ({err})") from None
        offset = f.tell()
        want = (count, dim if dim is not None else (shape[1] if len(shape) == 2 else -1))
        if tuple(shape) != want or fortran:
            raise _BadShard(f"holds an array of shape {tuple(shape)}{' in Fortran order' if fortran else ''}, "
                            f"but its record says {want}")
        if found != np.dtype(dtype):
            raise _BadShard(f"holds {found} values, but the store is {dtype}")
        size, expected = os.fstat(f.fileno()).st_size, offset + count * want[1] * found.itemsize
        if size != expected:
            raise _BadShard(f"is {'truncated' if size < expected else 'too long'}: {size} bytes, but a {want} "
                            f"{dtype} array takes {expected}")
        if not read:
            return None
        f.seek(0)
        data = bytearray(size)  # an explicit read, not a mapping: nothing of the file stays resident
        if f.readinto(data) != size:
            raise _BadShard("changed while it was read")
    if digest is not None and _digest(data) != digest:
        raise _BadShard("does not match the checksum written with it (its values were changed)")
    return np.frombuffer(data, dtype=found, count=count * want[1], offset=offset).reshape(want)  # writable


def _drop_bad_shards(out: Path, dtype: str, expected: int = 0) -> int:
    """Check every shard on disk (of any plan) and remove the damaged ones, with a warning each, so
    that they count as not done and are embedded again. Shards ``0 .. expected-1`` must exist
    (those of a finished store). Returns how many were removed."""
    removed = 0
    numbers = {int(p.stem.split("-")[1]) for p in out.glob("shard-*.json") if p.stem.split("-")[1].isdigit()}
    for k in sorted(numbers | set(range(expected))):
        emb_name, meta_name = _shard_names(k)
        try:
            record = json.loads((out / meta_name).read_text())
            if not (isinstance(record, dict) and record.get("embeddings") == emb_name):
                raise ValueError("it does not name its embeddings file")
            shape = record.get("shape") or [None, None]
            _read_shard(out / emb_name, record["count"], shape[1], dtype, record.get("blake2b"))
            continue
        except FileNotFoundError:
            name, reason = meta_name, "is missing"
        except (ValueError, KeyError, TypeError, IndexError) as err:  # JSONDecodeError is a ValueError
            name, reason = meta_name, f"is unreadable ({err})"
        except _BadShard as err:
            name, reason = emb_name, str(err)
        warnings.warn(f"store {out}: shard {k} ({name}) {reason}; re-embedding it.", stacklevel=5)
        for stale in (emb_name, meta_name):
            (out / stale).unlink(missing_ok=True)
        removed += 1
    return removed


def _plan_id(files: List[str], stats: dict, shard_size: int) -> str:
    """A digest of what a plan embeds: equal listings give equal ids, so an unchanged rerun resumes."""
    text = json.dumps([shard_size, [[f, stats.get(f)] for f in files]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _changes(saved: dict, current: dict) -> Tuple[List[str], List[str], List[str]]:
    """``(added, removed, changed)`` paths between two ``{path: [size, mtime_ns]}`` listings."""
    added = sorted(current.keys() - saved.keys())
    removed = sorted(saved.keys() - current.keys())
    changed = sorted(p for p in current.keys() & saved.keys() if list(current[p]) != list(saved[p]))
    return added, removed, changed


def _change_message(source, out: Path, added, removed, changed, dataset: bool = False) -> str:
    example = (added or changed or removed)[0]
    if dataset:
        return (f"The shards of {source} have changed since store {out} was built: {len(added)} added, "
                f"{len(removed)} removed, {len(changed)} changed, e.g. {example!r}; pass `overwrite=True` to "
                "rebuild the store, or choose another output folder.")
    return (f"{source} has changed since store {out} was built: {len(added)} added, {len(removed)} removed, "
            f"{len(changed)} changed file(s), e.g. {example!r}; pass `update=True` to embed the new and "
            "changed files and drop the removed ones, or `overwrite=True` to rebuild the store.")


def _prepare_out(out: Path, plan: dict, overwrite: bool, update: bool = False) -> dict:
    """Create ``out`` or validate it for resuming; returns the plan to follow (the saved one when resuming).

    A source that changed since the saved plan is refused, or with ``update`` re-planned: the
    still valid rows are gathered into the reuse files first, then the new plan is saved.
    """
    manifest = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise ValueError(f"Output {out} is a file; the embedding store's output must be a folder.")
    if manifest.is_file() and not overwrite:
        saved = _read_manifest(manifest, f"pass `overwrite=True` to rebuild store {out}")
        changed = [key for key in _PLAN_KEYS if (not _same_model(saved.get(key) or {}, plan[key]) if key == "model"
                                                 else saved.get(key) != plan[key])]
        if changed:
            raise ValueError(
                f"{out} already holds a store built with different {', '.join(changed)}; rerun with the same "
                f"settings to resume it, pass `overwrite=True` to rebuild it, or choose another output folder."
            )
        other_weights = _identity_change(saved.get("model_identity"), plan["model_identity"])
        if other_weights:
            raise ValueError(f"{out} was built with other weights: {other_weights}; load the model it was built "
                             "with to resume it, or pass `overwrite=True` to rebuild it.")
        finished = bool(saved.get("complete"))
        damaged = _drop_bad_shards(out, saved["dtype"], len(saved.get("shards", ())) if finished else 0)
        # A store from before format 2 recorded no sizes or mtimes: every file counts as new.
        added, removed, changed = _changes(_saved_stats(out, saved), plan["stats"])
        if not (added or removed or changed):
            if damaged and finished:  # the same plan (same files, same plan id), to be finished again
                write_json(manifest, plan)
                return plan
            return saved
        if not update:
            raise ValueError(_change_message(plan["source"], out, added, removed, changed, bool(plan.get("kind"))))
        _gather_reusable(out, plan)
        write_json(manifest, plan)  # from here on, the old plan's shards are not done: they are replaced
        return plan
    if manifest.is_file():
        _remove_store_files(out)
    elif out.is_dir() and any(out.iterdir()):
        raise ValueError(f"Output folder {out} is not empty and holds no {MANIFEST}; choose a new or empty folder.")
    out.mkdir(parents=True, exist_ok=True)
    write_json(manifest, plan)
    return plan


def _saved_stats(out: Path, saved: dict) -> dict:
    """``{path: [size, mtime_ns]}`` a saved plan or finished store recorded: in the manifest, or
    (a finished store of format 4) in its stats file."""
    if saved.get("stats_file"):
        name = saved["stats_file"]
        try:
            stats = json.loads((out / Path(name).name).read_text()) if Path(name).name == name else None
        except (OSError, ValueError):
            stats = None
        if not isinstance(stats, dict):
            raise ValueError(f"{out / name} is missing or unreadable; pass `overwrite=True` to rebuild store {out}.")
        return stats
    return saved.get("stats") or {}


def _read_manifest(path: Path, fix: str) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {fix}.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not an rpmetric embedding manifest (format "
                         f"{manifest.get('format') if isinstance(manifest, dict) else None!r}); {fix}.")
    return manifest


def _remove_store_files(out: Path) -> None:
    # Only what a store writes: an --out pointed at the wrong folder must not wipe unrelated files.
    for pattern in (MANIFEST, ROWS, ROWS_INDEX, STATS, "emb-*.npy", "shard-*.json", REUSE, REUSE_EMBEDDINGS, ".*.tmp-*"):
        for path in out.glob(pattern):
            path.unlink()


def _records(out: Path) -> Iterator[dict]:
    """The records on disk that hold rows: the reuse record, then every shard record (of any plan)."""
    for path in [out / REUSE] + sorted(out.glob("shard-*.json")):
        if path.is_file():
            record = json.loads(path.read_text())
            if record.get("stats") and (record.get("embeddings") is None or (out / record["embeddings"]).is_file()):
                yield record


def _gather_reusable(out: Path, plan: dict) -> None:
    """Copy into the reuse files every row and skip reason on disk whose file is unchanged (same
    path, size and mtime as in ``plan``). Streams one record at a time; the reuse record comes last."""
    stats = plan["stats"]
    rows: Dict[str, Tuple[str, int]] = {}  # path -> (embeddings file, row)
    skipped: Dict[str, str] = {}
    for record in _records(out):
        def unchanged(path):
            return path in stats and record["stats"].get(path) == stats[path]

        for i, path in enumerate(record["paths"]):
            if path not in rows and unchanged(path):
                rows[path] = (record["embeddings"], i)
        for entry in record["skipped"]:
            if entry["path"] not in skipped and unchanged(entry["path"]):
                skipped[entry["path"]] = entry["reason"]
    paths = [p for p in plan["files"] if p in rows]
    name = None
    if paths:
        by_file: Dict[str, List[Tuple[int, int]]] = {}  # embeddings file -> [(reuse row, its row)]
        for j, p in enumerate(paths):
            by_file.setdefault(rows[p][0], []).append((j, rows[p][1]))
        name = REUSE_EMBEDDINGS
        with atomic_path(out / name) as tmp:  # replaces the reuse file it may have read from
            target = None
            for f, pairs in by_file.items():  # one source file open at a time
                source_rows = np.load(out / f, mmap_mode="r", allow_pickle=False)
                if target is None:
                    target = np.lib.format.open_memmap(tmp, mode="w+", dtype=source_rows.dtype,
                                                       shape=(len(paths), source_rows.shape[1]))
                target[[j for j, _ in pairs]] = source_rows[[i for _, i in pairs]]
                del source_rows
            target.flush()
            del target
    write_json(out / REUSE, {"embeddings": name, "paths": paths,
                             "skipped": [{"path": p, "reason": r} for p, r in skipped.items()],
                             "stats": {p: stats[p] for p in paths + list(skipped)}})


def _reusable(out: Path, plan: dict) -> Dict[str, tuple]:
    """``{path: (embedding row or None, skip reason or None)}`` of the reuse files, for files unchanged in ``plan``."""
    path = out / REUSE
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    stats = plan.get("stats") or {}
    emb = np.load(out / record["embeddings"], mmap_mode="r", allow_pickle=False) if record["embeddings"] else None
    reuse = {p: (emb[i], None) for i, p in enumerate(record["paths"]) if record["stats"].get(p) == stats.get(p)}
    reuse.update({e["path"]: (None, e["reason"]) for e in record["skipped"]
                  if record["stats"].get(e["path"]) == stats.get(e["path"])})
    return reuse


def build_store(source: Union[str, Path], out: Union[str, Path], metric, *, dtype: str = DEFAULT_DTYPE,
                shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 32, num_workers: Optional[int] = None,
                overwrite: bool = False, update: bool = False, progress: bool = True,
                max_shards: Optional[int] = None, image_column: Optional[str] = None,
                key_column: Optional[str] = None) -> Optional["EmbeddingStore"]:
    """Embed every file of ``source`` into the store folder ``out``, resuming an interrupted build.

    Under ``torchrun`` call it on every rank (after :func:`rpmetric.distributed.init_from_env`):
    each rank embeds its shards, and rank 0 writes the finished manifest.

    Args:
        source: a folder of images or a text file listing image paths (see :func:`list_files`), or
            WebDataset ``.tar`` or Parquet ``.parquet`` shards: a path, a URL that fsspec opens or a
            brace pattern (``shards/{00000..00127}.tar``; see :mod:`rpmetric.stores.sources`). A dataset's
            store has one shard per input shard, whose rows are named by the samples' keys
            (``store.paths``) and keep their ``store.urls`` and ``store.captions``; a rerun
            resumes at the first unfinished input shard.
        out: the store folder; created if missing. If it holds an unfinished store with the same
            settings, the build resumes; a finished one is returned as is. Either is refused if
            files of ``source`` were added, removed or changed (size or mtime) since, unless
            ``update``.
        metric: a :class:`~rpmetric.RobustDistance` whose encoder embeds the images.
        dtype: ``"float16"`` (half the disk) or ``"float32"``.
        shard_size: files per shard, the unit of work that an interruption can lose (a dataset's
            shards are its input shards).
        batch_size: images per forward pass.
        num_workers: DataLoader workers decoding images (a dataset's: each reads whole input
            shards); 0 decodes in this process; None for :func:`default_workers`.
        overwrite: delete an existing store in ``out`` and start again.
        update: bring an existing store in ``out`` up to date with a changed ``source``: embed only
            the new and changed files, keep the rows of unchanged ones, drop removed ones. An
            interrupted update resumes like any build.
        progress: show a tqdm progress bar (rank 0 only).
        max_shards: stop after writing this many new shards on this rank, leaving the store
            unfinished (for time-boxed runs; a later call continues).
        image_column, key_column: the Parquet columns of the image bytes (a binary column or a
            ``{"bytes", "path"}`` struct; default: the first of ``jpg``, ``jpeg``, ``png``, ``webp``,
            ``image``, ``img``, else the first bytes column) and of the sample keys (default ``key``
            if present, else ``{file stem}/{row}``).

    Returns:
        The finished :class:`EmbeddingStore`, or None when the build stopped early (``max_shards``)
        or on ranks other than 0.

    Raises:
        ValueError: bad settings, a store in ``out`` that does not match them or ``source``, or a
            store in which not one file could be read as an image.
        rpmetric.errors.WorkerDiedError: a DataLoader worker died (finished shards are kept).

    Example:
        >>> store = build_store("images/", "store/", rpmetric.RobustDistance())  # doctest: +SKIP
        >>> len(store), store.dim  # doctest: +SKIP
        (1000, 640)
    """
    if dtype not in DTYPES:
        raise ValueError(f"Argument `dtype` must be one of {DTYPES}, but got {dtype!r}.")
    _check_positive("shard_size", shard_size)
    _check_positive("batch_size", batch_size)
    num_workers = default_workers() if num_workers is None else num_workers
    _check_positive("num_workers", num_workers, 0)
    if update and overwrite:
        raise ValueError("Arguments `update` and `overwrite` exclude each other: pass update or overwrite, not both.")
    out = Path(out).expanduser().resolve()
    rank, world = distributed.rank_and_world()

    plan = _make_plan(source, out, metric, dtype, shard_size, overwrite, update, image_column,
                      key_column) if rank == 0 else None
    plan = distributed.broadcast_object(plan)
    if isinstance(plan, str):  # rank 0 failed to prepare: every rank stops with its message
        raise ValueError(plan)
    if plan.get("complete"):
        if rank != 0:
            return None
        _remove_reuse(out)  # left by an update stopped after it finished the manifest
        return _not_empty(EmbeddingStore(out), source)

    files, plan_id = plan["files"], plan.get("plan_id")
    n_shards = len(plan["inputs"]) if plan.get("kind") else -(-len(files) // shard_size)
    mine = [k for k in distributed.shard(range(n_shards), rank, world) if not _shard_done(out, k, plan_id)]
    if max_shards is not None:
        mine = mine[:max_shards]
    _embed_shards(metric, out, plan, mine, batch_size, num_workers, progress and rank == 0)

    distributed.barrier()
    if rank != 0:
        return None
    if not all(_shard_done(out, k, plan_id) for k in range(n_shards)):
        return None  # stopped early by max_shards: the saved plan lets the next call resume
    _finish_manifest(out, plan, n_shards)
    return _not_empty(EmbeddingStore(out), source)


def _not_empty(store: "EmbeddingStore", source) -> "EmbeddingStore":
    if not len(store):
        example = f" (e.g. {store.skipped[0]['reason']})" if store.skipped else ""
        raise ValueError(f"None of the {len(store.skipped)} files of {source} could be read as an image{example}; "
                         f"the store {store.path} is empty. Give a folder or list of images that Pillow reads.")
    return store


def _remove_reuse(out: Path) -> None:
    for name in (REUSE, REUSE_EMBEDDINGS):
        (out / name).unlink(missing_ok=True)


def _make_plan(source, out: Path, metric, dtype: str, shard_size: int, overwrite: bool, update: bool,
               image_column: Optional[str] = None, key_column: Optional[str] = None):
    """Rank 0's part: list the files (or a dataset's shards) and prepare ``out``; a user error comes
    back as its message."""
    try:
        dataset = {"kind": None, "image_column": None, "key_column": None}
        if sources.is_dataset(source):
            if update:
                raise ValueError(f"Argument `update` applies to folders and file lists, not to the shards of {source}; "
                                 "pass `overwrite=True` to rebuild the store.")
            kind, inputs, stats, special = sources.plan_inputs(source, image_column, key_column)
            dataset = {"kind": kind, "image_column": image_column, "key_column": key_column, "inputs": inputs}
            root, files, where = "", [], str(source) if "://" in str(source) else str(Path(source).expanduser().resolve())
            shard_size = 1  # one store shard per input shard; "shard_size" stays a plan key, fixed at 1
        else:
            if image_column is not None or key_column is not None:
                raise ValueError(f"Arguments `image_column` and `key_column` name columns of Parquet shards, but {source} "
                                 "is a folder or a file list; drop them.")
            root, files, stats, special = _listing(source, exclude=out)
            where = str(Path(source).expanduser().resolve())
            if not files:
                raise ValueError(f"Input {source} holds no files to embed (hidden files and folders are left out); "
                                 "give a folder of images or a text file listing image paths.")
        plan = {**dataset,
            "format": FORMAT, "format_version": FORMAT_VERSION, "rpmetric_version": __version__,
            "model": spec_dict(metric.spec), "model_ref": metric.spec.local_path or metric.spec.name,
            "model_identity": _model_identity(metric.spec),
            "dtype": dtype, "normalized": True, "shard_size": shard_size,
            "source": where, "root": str(root), "complete": False,
            "files": files, "stats": stats, "special": special,
            "plan_id": _plan_id(dataset.get("inputs", files), stats, shard_size),
        }
        return _prepare_out(out, plan, overwrite, update)
    except (ValueError, FileNotFoundError, ImportError) as err:  # ImportError: MissingDependencyError
        if distributed.is_distributed():
            return str(err)
        raise


def _embed_shards(metric, out: Path, plan: dict, shards: List[int], batch_size: int, num_workers: int,
                  progress: bool) -> None:
    """Write ``shards`` of ``plan``: rows of unchanged files come from the reuse files, the rest are embedded."""
    from tqdm.auto import tqdm

    if not shards:
        return
    if plan.get("kind"):
        return _embed_dataset_shards(metric, out, plan, shards, batch_size, num_workers, progress)
    files, dtype, shard_size = plan["files"], plan["dtype"], plan["shard_size"]
    spans = {k: range(k * shard_size, min((k + 1) * shard_size, len(files))) for k in shards}
    reuse = _reusable(out, plan)
    todo = {k: [i for i in spans[k] if files[i] not in reuse] for k in shards}
    # Batches never cross a shard boundary, so each shard can be written as soon as its last batch is in.
    # (Smaller first batches to start the encoder sooner were tried and lost: on a busy CPU every encoder
    # call pays a large fixed cost in thread synchronisation.)
    batches = [b for k in shards for b in _batches(todo[k], batch_size)]
    absolute = [str(Path(plan["root"]) / f) for f in files]
    loader = _loader(absolute, batches, metric.spec.preprocessing, num_workers, metric.device.type == "cuda") if batches else []
    bar = tqdm(total=sum(len(todo[k]) for k in shards), unit="img", desc="embed", disable=not progress)
    pending = iter(shards)
    dim = None  # known from the first row; a dummy forward only if no shard has a readable file
    got: dict = {}  # file index -> embedding row
    reasons: dict = {}  # file index -> why it was skipped

    def start(k):
        for i in spans[k]:
            if files[i] in reuse:
                row, reason = reuse[files[i]]
                if row is None:
                    reasons[i] = reason
                else:
                    got[i] = row
        return k

    def write_finished(k):
        """Write shard ``k`` and the ones after it while they are complete; returns the shard to fill next."""
        nonlocal dim
        while k is not None and len(got) + len(reasons) == len(spans[k]):
            kept = [i for i in spans[k] if i in got]
            if kept:
                rows = np.stack([got[i] for i in kept])
                dim = rows.shape[1]
            else:
                dim = _output_dim(metric) if dim is None else dim
                rows = np.zeros((0, dim), np.float32)
            _write_shard(out, k, rows.astype(dtype), [files[i] for i in kept],
                         [{"path": files[i], "reason": reasons[i]} for i in spans[k] if i in reasons],
                         plan.get("plan_id"), plan.get("stats"))
            got.clear()
            reasons.clear()
            k = next(pending, None)
            if k is not None:
                start(k)
        return k

    with bar, _worker_deaths(out):
        k = write_finished(start(next(pending)))
        for indices, emb, failed in _embed_loader(metric.encoder, loader, metric.device):
            got.update(zip(indices, emb))
            dim = emb.shape[1] if len(indices) else dim
            reasons.update(failed)
            bar.update(len(indices) + len(failed))
            k = write_finished(k)


def _embed_dataset_shards(metric, out: Path, plan: dict, shards: List[int], batch_size: int, num_workers: int,
                          progress: bool) -> None:
    """Write ``shards`` of a dataset plan, one store shard per input shard, decoded by
    :class:`_DatasetShards` in ``num_workers`` DataLoader workers (0: in this process) and embedded
    here. A shard is written as soon as its last batch is in, so shards finish in any order; the
    rows of each keep their order within it, and the manifest puts the shards in the plan's order.

    Held at a time: each worker's prefetched batches, and the embeddings of the shards in progress."""
    from tqdm.auto import tqdm

    dataset = _DatasetShards(plan["kind"], [(k, plan["inputs"][k]) for k in shards], metric.spec.preprocessing,
                             batch_size, plan.get("image_column"), plan.get("key_column"))
    # Workers beyond the shards would have nothing to read: each shard is one worker's.
    loader = data_loader(dataset, batch_size=None, num_workers=min(num_workers, len(shards)),
                         pin_memory=metric.device.type == "cuda")
    in_progress: Dict[int, list] = {}  # shard -> [(part, embeddings or None, rows, skipped)]
    dim = None
    with tqdm(unit="img", desc="embed", disable=not progress) as bar, _worker_deaths(out), _inference(metric.device):
        for k, part, images, rows, skipped, last in loader:
            emb = None if images is None else _embed_batch(metric.encoder, images, metric.device)
            dim = dim if emb is None else emb.shape[1]
            in_progress.setdefault(k, []).append((part, emb, rows, skipped))
            bar.update(len(rows) + len(skipped))
            if last:
                parts = sorted(in_progress.pop(k), key=lambda p: p[0])
                if dim is None:  # no readable image yet: one dummy forward for the width of an empty shard
                    dim = _output_dim(metric)
                _write_dataset_shard(out, plan, k, parts, dim)


def _write_dataset_shard(out: Path, plan: dict, k: int, parts: list, dim: int) -> None:
    if [p[0] for p in parts] != list(range(len(parts))):  # a worker's batches come in order, or not at all
        raise RuntimeError(f"shard {k} of store {out} got batches {[p[0] for p in parts]}, not 0..{len(parts) - 1}")
    embs = [emb for _, emb, _, _ in parts if emb is not None]
    emb = np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)
    rows = [row for _, _, part_rows, _ in parts for row in part_rows]
    _write_shard(out, k, emb.astype(plan["dtype"]), [key for key, _, _ in rows],
                 [s for _, _, _, part_skipped in parts for s in part_skipped], plan.get("plan_id"),
                 meta={"urls": [url for _, url, _ in rows], "captions": [c for _, _, c in rows]})


def _finish_manifest(out: Path, plan: dict, n_shards: int) -> None:
    """Write a finished store's row table, stats file and manifest (in that order: the manifest,
    written last, is what marks the store finished), reading the shard records one at a time."""
    manifest = {key: value for key, value in plan.items() if key not in ("files", "stats")}
    shards, skipped, shapes, count = [], [], [], 0
    with RowWriter(out / ROWS, out / ROWS_INDEX) as rows:
        for k in range(n_shards):
            meta = json.loads((out / _shard_names(k)[1]).read_text())
            rows.add(meta["paths"], meta.get("urls"), meta.get("captions"))
            shards.append({"embeddings": meta["embeddings"], "record": _shard_names(k)[1], "count": meta["count"],
                           "blake2b": meta.get("blake2b")})  # None in a shard written before format 3
            count += len(meta["paths"])
            skipped.extend(meta["skipped"])
            shapes.append(meta.get("shape"))
    skipped.extend(plan.get("special", []))  # never opened, so in no shard
    write_json(out / STATS, plan.get("stats") or {}, indent=None)  # every name: for a later update
    # Every shard is written [n, dim].
    dim = (shapes[0] or np.load(out / shards[0]["embeddings"], mmap_mode="r").shape)[1]
    manifest.update(format_version=FORMAT_VERSION, dim=int(dim), shards=shards, count=count, skipped=skipped,
                    rows=ROWS, rows_index=ROWS_INDEX, stats_file=STATS, complete=True)
    write_json(out / MANIFEST, manifest)
    # Left over by an update: the reuse files, and the shards of a larger earlier plan.
    _remove_reuse(out)
    for path in list(out.glob("emb-*.npy")) + list(out.glob("shard-*.json")):
        number = path.stem.split("-")[1]
        if number.isdigit() and int(number) >= n_shards:
            path.unlink()


# -- reading -----------------------------------------------------------------------------------
class EmbeddingStore:
    """A finished store, read-only.

    Args:
        path: the store folder (as written by :func:`build_store` or ``rpmetric embed``).

    Attributes:
        paths: embedded file paths relative to ``root``, in store order (row i of the embeddings);
            for a WebDataset or Parquet source, the samples' keys.
        urls, captions: per row, the sample's URL and caption from its metadata (None where unknown,
            and for folders).
        kind: ``"webdataset"`` or ``"parquet"`` for a dataset's store, None for a folder's.
        files: the same as absolute paths.
        skipped: ``{"path", "reason"}`` of every file that could not be read.
        dim, dtype, model_spec (the spec dict), model_ref (what loads the model), version.

    Example:
        >>> store = EmbeddingStore("store/")  # doctest: +SKIP
        >>> emb = store.embeddings()  # [len(store), store.dim] float32  # doctest: +SKIP
    """

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path).expanduser()
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{self.path} is not an embedding store (no {MANIFEST}); create one with `rpmetric embed`.")
        manifest = _read_manifest(manifest_path, "rebuild the store with `rpmetric embed SOURCE --out STORE "
                                                 "--overwrite`")
        if not manifest.get("complete"):
            raise ValueError(
                f"Store {self.path} is unfinished (interrupted build); rerun `rpmetric embed` with the same "
                "arguments to resume and finish it."
            )
        self.manifest = manifest
        self.root = Path(manifest["root"])
        self.skipped: List[dict] = list(manifest["skipped"])
        self.dim: int = int(manifest["dim"])
        self.dtype: str = manifest["dtype"]
        self.model_spec: dict = manifest["model"]
        self.model_ref: str = manifest["model_ref"]
        self.version: str = manifest["rpmetric_version"]
        self.kind: Optional[str] = manifest.get("kind")
        self.paths: Sequence[str]
        self.urls: Sequence[Optional[str]]
        self.captions: Sequence[Optional[str]]
        if manifest.get("rows"):  # format 4: the rows stay on disk until asked for
            names = [manifest[key] for key in ("rows", "rows_index")]
            if any(Path(name).name != name for name in names):
                raise ValueError(f"Store {self.path}: its manifest names row files outside the store folder; "
                                 "rebuild it with `rpmetric embed ... --overwrite`.")
            self._rows: Optional[RowTable] = RowTable(
                self.path / names[0], self.path / names[1], int(manifest["count"]),
                fix=f"store {self.path} is damaged: rebuild it with `rpmetric embed ... --overwrite`")
            self.paths, self.urls, self.captions = (self._rows.column(k) for k in range(3))
        else:  # formats 1-3: every row in the manifest
            self._rows = None
            self.paths = list(manifest.pop("paths"))
            self.urls = list(manifest.pop("urls", None) or [None] * len(self.paths))
            self.captions = list(manifest.pop("captions", None) or [None] * len(self.paths))
        manifest.pop("stats", None)  # only builds need every file's size and mtime (10 M entries: GBs)
        for shard in manifest["shards"]:  # the headers only (cheap); reading a shard checks its values
            self._shard_rows(shard, read=False)
        counts = [int(shard["count"]) for shard in manifest["shards"]]
        self.shard_starts: np.ndarray = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        if self.shard_starts[-1] != len(self.paths):
            raise ValueError(f"Store {self.path} is inconsistent: its shards hold {self.shard_starts[-1]} rows, the "
                             f"manifest names {len(self.paths)}; rebuild it with `rpmetric embed ... --overwrite`.")
        self._verified: Dict[int, Tuple[int, int]] = {}  # shard -> (size, mtime_ns) when its checksum passed

    def _shard_rows(self, shard: dict, read: bool = True, number: Optional[int] = None) -> Optional[np.ndarray]:
        """One shard's rows, checked against the manifest (see :func:`_read_shard`). The checksum is
        computed the first time shard ``number`` is read; later reads of the unchanged file (same
        size and mtime) skip it, so a streaming pass over a store does not hash it again.

        Raises:
            ValueError: the shard is damaged; the message names it and the command that repairs it.
        """
        name = shard["embeddings"]
        try:
            if Path(name).name != name:  # a store's own file, never a path elsewhere
                raise _BadShard("is not a file name in the store folder")
            path = self.path / name
            stamp = None
            if read and number is not None:
                st = path.stat()
                stamp = (st.st_size, st.st_mtime_ns)
            digest = None if stamp is not None and self._verified.get(number) == stamp else shard.get("blake2b")
            rows = _read_shard(path, shard["count"], self.dim, self.dtype, digest, read)
            if stamp is not None:
                self._verified[number] = stamp
            return rows
        except (_BadShard, FileNotFoundError) as err:
            reason = err if isinstance(err, _BadShard) else "is missing"
            raise ValueError(f"{name} of store {self.path} {reason}; rerun `{self._repair_command()}` to re-embed "
                             "it.") from None

    def blocks(self, shards: Optional[Sequence[int]] = None) -> Iterator[Tuple[int, np.ndarray]]:
        """The stored rows shard by shard: ``(first row, [n, dim] array of the store's dtype)``.

        Each shard is read with one explicit read (no memory mapping, so nothing of it stays
        resident once the caller drops the array) and checked against its checksum, so at most one
        shard is held at a time however large the store.

        Args:
            shards: read only these shard numbers, in this order (default: all, in store order).

        Raises:
            ValueError: a shard is damaged (the message names it and the command that repairs it).

        Example:
            >>> for start, rows in EmbeddingStore("store/").blocks():  # doctest: +SKIP
            ...     print(start, rows.shape, rows.dtype)
            0 (1024, 512) float16
        """
        numbers = range(len(self.manifest["shards"])) if shards is None else shards
        for k in numbers:
            yield int(self.shard_starts[k]), self._shard_rows(self.manifest["shards"][k], number=k)

    def take(self, rows) -> np.ndarray:
        """The stored rows ``rows`` (any order, repeats allowed) as a ``[len(rows), dim]`` array of
        the store's dtype, reading only the shards that hold them, one at a time.

        Example:
            >>> EmbeddingStore("store/").take([5, 0]).shape  # doctest: +SKIP
            (2, 512)
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"Rows must lie in [0, {len(self)}), but got {rows.min()}..{rows.max()}.")
        out = np.empty((len(rows), self.dim), dtype=self.dtype)
        shard_of = np.searchsorted(self.shard_starts, rows, side="right") - 1
        order = np.argsort(shard_of, kind="stable")
        bounds = np.searchsorted(shard_of[order], np.arange(len(self.shard_starts)))
        for k in range(len(self.shard_starts) - 1):
            if bounds[k + 1] > bounds[k]:
                pick = order[bounds[k]:bounds[k + 1]]
                out[pick] = self._shard_subset(k, rows[pick] - self.shard_starts[k])
        return out

    def _shard_subset(self, k: int, local: np.ndarray) -> np.ndarray:
        """Rows ``local`` of shard ``k``. A shard whose checksum passed in this process (and whose
        file is unchanged) is mapped only for this read, so only the pages of those rows are
        touched and none stay resident; any other is read whole and checked first."""
        shard = self.manifest["shards"][k]
        path = self.path / shard["embeddings"]
        try:
            st = path.stat()
        except OSError:
            st = None
        if st is not None and self._verified.get(k) == (st.st_size, st.st_mtime_ns):
            mapped = np.load(path, mmap_mode="r")
            if mapped.shape == (shard["count"], self.dim):
                try:
                    return np.array(mapped[local])  # a copy in memory
                finally:
                    del mapped  # unmapped here: touched pages leave this process's resident set
        return self._shard_rows(shard, number=k)[local]

    def select(self, rows: Sequence[int]) -> "StoreSelection":
        """A read-only view of some rows (e.g. the labelled ones), streamed like the store itself:
        pass it to :func:`~rpmetric.stores.knn.knn_classify` or :func:`~rpmetric.stores.index.search`."""
        return StoreSelection(self, rows)

    def file(self, i: int) -> str:
        """``files[i]`` without building the whole list (10 M absolute paths take about a GB)."""
        return self.paths[i] if self.kind else str(self.root / self.paths[i])

    def _repair_command(self) -> str:
        """The ``rpmetric embed`` command that resumes this store (options only where not the default)."""
        m = self.manifest
        words = ["rpmetric", "embed", m["source"], "--out", str(self.path)]
        if m["model_ref"] != default_model():
            words += ["--model", m["model_ref"]]
        if self.dtype != DEFAULT_DTYPE:
            words += ["--dtype", self.dtype]
        if m["shard_size"] != DEFAULT_SHARD_SIZE and not m.get("kind"):
            words += ["--shard-size", str(m["shard_size"])]
        for key in ("image_column", "key_column"):
            if m.get(key):
                words += ["--" + key.replace("_", "-"), m[key]]
        return shlex.join(words)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, n={len(self)}, dim={self.dim}, model={self.model_ref!r})"

    @property
    def files(self) -> List[str]:
        if self.kind:  # a dataset's samples are named by their keys
            return list(self.paths)
        return [str(self.root / p) for p in self.paths]

    def embeddings(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All embeddings ``[len(store), dim]`` as one CPU tensor (unit vectors, store order).

        For stores up to :data:`EMBEDDINGS_LIMIT` bytes in ``dtype``; larger ones are read with
        :meth:`blocks` or :meth:`take`, or passed as they are to the search, dedup and kNN
        functions, which stream them.

        Raises:
            ValueError: the result would exceed :data:`EMBEDDINGS_LIMIT`.
        """
        size = len(self) * self.dim * torch.empty((), dtype=dtype).element_size()
        if size > EMBEDDINGS_LIMIT:
            raise ValueError(
                f"Store {self.path} holds {len(self):,} x {self.dim} embeddings, {size / 2**30:.1f} GiB as {dtype}, "
                f"above rpmetric.stores.store.EMBEDDINGS_LIMIT ({EMBEDDINGS_LIMIT / 2**30:.1f} GiB); stream it "
                "instead: pass the store itself to search/near_pairs/group_duplicates/find_near/knn_classify, or "
                "read it with store.blocks() or store.take(rows).")
        parts = [self._shard_rows(s, number=k) for k, s in enumerate(self.manifest["shards"])]
        emb = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)  # a copy: writable
        if emb.shape != (len(self), self.dim):
            raise ValueError(f"Store {self.path} is inconsistent: shards hold {emb.shape}, the manifest says "
                             f"({len(self)}, {self.dim}); rebuild it with `overwrite=True`.")
        return torch.from_numpy(emb).to(dtype)

    def load_metric(self, model=None, device=None):
        """The :class:`~rpmetric.RobustDistance` that built this store, to embed queries alike.

        Args:
            model: load this model instead (e.g. the store's local model folder moved); a warning
                is given when its spec differs from the store's, as the embeddings would not compare.
            device: where to run.
        """
        from ..metric import RobustDistance

        metric = RobustDistance(self.model_ref if model is None else model, device=device)
        if model is not None and not _same_model(spec_dict(metric.spec), self.model_spec):
            warnings.warn(
                f"Model {model!r} differs from the model that built store {self.path} ({self.model_ref!r}); "
                "distances are only meaningful if it is the same network.", stacklevel=2,
            )
        return metric

    def read_labels(self, labels_csv: Union[str, Path]) -> List[Optional[str]]:
        """Per store row, its label from a CSV with columns ``path,label`` (None where unlabelled).

        Paths are resolved by :meth:`locate` (relative to the CSV's folder, absolute, or as the
        store records them); rows naming files the store skipped as unreadable are ignored.
        """
        rows = read_csv_columns(labels_csv, ("path", "label"))
        labels: List[Optional[str]] = [None] * len(self)
        found = self.locate([r["path"] for r in rows], Path(labels_csv).resolve().parent, source=labels_csv)
        for i, r in zip(found, rows):
            if i is not None:
                labels[i] = r["label"]
        return labels

    def labelled(self, labels_csv: Union[str, Path]) -> Tuple[List[int], List[str]]:
        """The store rows that ``labels_csv`` labels, and their labels (see :meth:`read_labels`).

        Raises:
            ValueError: the CSV labels none of the store's images (or as for :meth:`read_labels`).
        """
        labels = self.read_labels(labels_csv)
        rows = [i for i, label in enumerate(labels) if label is not None]
        if not rows:
            raise ValueError(f"{labels_csv} labels none of the images of store {self.path}: it lists no rows, or "
                             "only files the store skipped as unreadable.")
        return rows, [labels[i] for i in rows]

    def locate(self, names: Sequence[str], base: Union[str, Path], source="the input") -> List[Optional[int]]:
        """Store rows of file names: each relative to ``base``, absolute, or as the store records it
        (relative to ``root``). None for files the store skipped as unreadable.

        Raises:
            ValueError: names of files the store does not hold (the first few are quoted).
        """
        by_file = {os.path.normpath(f): i for i, f in enumerate(self.files)}
        by_file.update({p: i for i, p in enumerate(self.paths)})
        skipped = {s["path"] for s in self.skipped} | {os.path.normpath(self.root / s["path"]) for s in self.skipped}
        rows: List[Optional[int]] = []
        unknown = []
        for name in names:
            absolute = os.path.normpath(Path(base) / name)
            i = by_file.get(absolute, by_file.get(name))
            if i is None and absolute not in skipped and name not in skipped:
                unknown.append(name)
            rows.append(i)
        if unknown:
            raise ValueError(
                f"{source} names {len(unknown)} file(s) that store {self.path} does not hold, e.g. "
                f"{', '.join(repr(u) for u in unknown[:3])}; paths must be relative to {base} or to {self.root}."
            )
        return rows

    def check_same_model(self, other: "EmbeddingStore") -> None:
        """Raise ValueError unless ``other`` was built with the same model (so distances compare)."""
        if not _same_model(self.model_spec, other.model_spec):
            raise ValueError(
                f"Stores {self.path} ({self.model_ref!r}) and {other.path} ({other.model_ref!r}) were built with "
                "different models, so their embeddings do not compare; embed both with the same model."
            )


class StoreSelection:
    """Some rows of an :class:`EmbeddingStore`, in store order, read as the store is (see
    :meth:`EmbeddingStore.select`): row ``i`` of the selection is store row ``rows[i]``.

    Example:
        >>> labelled = EmbeddingStore("store/").select([0, 2, 7])  # doctest: +SKIP
        >>> len(labelled), labelled.take([1]).shape  # doctest: +SKIP
        (3, (1, 512))
    """

    def __init__(self, store: EmbeddingStore, rows: Sequence[int]):
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= len(store)):
            raise ValueError(f"The rows of a selection must be increasing store rows in [0, {len(store)}).")
        self.store, self.rows = store, rows
        self.dim, self.dtype, self.path = store.dim, store.dtype, store.path

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"StoreSelection({str(self.path)!r}, n={len(self)} of {len(self.store)})"

    def blocks(self) -> Iterator[Tuple[int, np.ndarray]]:
        """``(first selected row, [n, dim] array)`` per shard that holds selected rows."""
        starts = self.store.shard_starts
        cut = np.searchsorted(self.rows, starts)  # selection rows of each shard
        wanted = [k for k in range(len(starts) - 1) if cut[k + 1] > cut[k]]
        for k, (start, block) in zip(wanted, self.store.blocks(wanted)):
            yield int(cut[k]), block[self.rows[cut[k]:cut[k + 1]] - start]

    def take(self, rows) -> np.ndarray:
        return self.store.take(self.rows[np.asarray(rows, dtype=np.int64)])
