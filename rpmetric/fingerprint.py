"""Fingerprints of what a run reads, so that a resume can tell that it reads the same things.

Names do not tell it: ``--model model`` is another folder from another directory, weights can be
replaced in place, and votes in a ``data.csv`` can be edited between a run and its resume. Run logs
and training checkpoints therefore record

- :func:`model_identity` (built on :func:`model_fingerprint`): where the model's files are (the
  resolved folder, or the Hub repo at its commit) and a digest of each file's size, modification
  time and first and last MB, so that fingerprinting a multi-GB checkpoint reads 2 MB;
- :func:`records_fingerprint`: a hash of the records' ids, paths and targets, in order;

and refuse a resume whose fingerprints differ. The same folder spelled another way (``./model``,
``model/``, an absolute path, a symlink to it) has the same fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import os
from pathlib import Path
from typing import Iterable, Optional

__all__ = ["file_fingerprint", "model_fingerprint", "model_identity", "records_fingerprint", "HASHED_BYTES"]

HASHED_BYTES = 1 << 20  # hashed at each end of a file: the first and the last MB


def file_fingerprint(path, *, mtime: bool = True) -> dict:
    """``{"size", "mtime_ns", "blake2b"}`` of a file; the hash covers its first and last
    :data:`HASHED_BYTES` only (the whole file when it is at most twice that).

    Args:
        mtime: record the modification time; off for Hub files, whose content a commit fixes (a
            re-download changes their times, not their bytes).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "w.bin")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(b"weights")
        >>> fp = file_fingerprint(path, mtime=False)
        >>> fp["size"], fp["blake2b"] == hashlib.blake2b(b"weights", digest_size=16).hexdigest()
        (7, True)
    """
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        digest.update(f.read(HASHED_BYTES))
        if stat.st_size > HASHED_BYTES:
            f.seek(max(HASHED_BYTES, stat.st_size - HASHED_BYTES))
            digest.update(f.read(HASHED_BYTES))
    out = {"size": stat.st_size, "blake2b": digest.hexdigest()}
    if mtime:
        out["mtime_ns"] = stat.st_mtime_ns
    return out


def model_fingerprint(model) -> dict:
    """Where a model's files are and the :func:`file_fingerprint` of each.

    Args:
        model: a model argument (zoo name, ``hf-hub:ORG/NAME[@REV]``, folder) or a
            :class:`~rpmetric.models.spec.ModelSpec` whose files are in a folder or the Hub cache.

    Returns:
        ``{"location": ..., "files": {name: file_fingerprint}}``, plus ``"base"`` (the base
        model's fingerprint) for a trained head. The location is the folder's absolute, resolved
        path, or ``"hf-hub:ORG/NAME@COMMIT"`` with the commit of the cached snapshot. Hub files
        are read from the cache only: this never touches the network for a plain checkpoint.

    Raises:
        ValueError: the spec names no folder and no Hub repo (a model built in memory).

    Example:
        >>> model_fingerprint("heads/mlp")  # doctest: +SKIP
        {'location': '/abs/heads/mlp', 'files': {'rpmetric_config.json': {...}, 'head.safetensors': {...}},
         'base': {'location': 'hf-hub:chs20/FARE4-ViT-B-32-laion2B-s34B-b79K@2f1c...', 'files': {...}}}
    """
    from .models import hub
    from .models.spec import CONFIG_NAME, WEIGHTS_NAME

    spec = hub.parse(model)
    if not (spec.local_path or spec.hub_id):
        raise ValueError(f"Model {spec.name!r} has no files to fingerprint (it names no folder and no Hub repo).")
    head = hub.fetch_head(spec)
    out = _source_fingerprint(spec, (CONFIG_NAME, WEIGHTS_NAME) if head is not None else hub.MODEL_FILES)
    if head is not None:
        base, _ = hub.read_head_config(spec, head[0])
        out["base"] = model_fingerprint(base)
    return out


def model_identity(model) -> dict:
    """What a run's configuration records of its model, compact enough to read in a refusal:
    ``{"model": location, "model_files": {file name: digest}}`` (see :func:`model_fingerprint`).

    A head's base model adds ``"base"`` (its location) and ``"base/NAME"`` entries. A model built in
    memory, without files, is recorded by its spec's name and ``"model_files": None``.

    Example:
        >>> model_identity("./model") == model_identity("model/")  # doctest: +SKIP
        True
    """
    from .models import hub

    spec = hub.parse(model)
    if not (spec.local_path or spec.hub_id):
        return {"model": spec.name, "model_files": None}
    found = model_fingerprint(spec)
    files = {name: _digest(fp) for name, fp in found["files"].items()}
    if "base" in found:
        files["base"] = found["base"]["location"]
        files.update((f"base/{name}", _digest(fp)) for name, fp in found["base"]["files"].items())
    return {"model": found["location"], "model_files": files}


def records_fingerprint(records: Iterable) -> str:
    """A hash (32 hex digits) of records in order: every field of each, such as the id, the image
    paths and the human target (NIGHTS ``p``, a BAPPS judge value, JND ``same``).

    Args:
        records: dataclass instances (:class:`~rpmetric.datasets.Triplet`, ``JNDPair``), tuples or
            single values. Fields may be ``str``, numbers, ``None`` and paths; a path
            (``os.PathLike``) is hashed relative to the folder that holds all of them, so that the
            dataset root spelled another way, or moved, gives the same hash.

    Raises:
        TypeError: a field of another type.

    Example:
        >>> from rpmetric.datasets import Triplet
        >>> a = [Triplet("t0", Path("/d/ref/0.png"), Path("/d/a/0.png"), Path("/d/b/0.png"), 0.25)]
        >>> b = [Triplet("t0", Path("/e/f/ref/0.png"), Path("/e/f/a/0.png"), Path("/e/f/b/0.png"), 0.25)]
        >>> records_fingerprint(a) == records_fingerprint(b)
        True
        >>> records_fingerprint(a) == records_fingerprint([dataclasses.replace(a[0], p=0.5)])
        False
    """
    rows = [_fields(record) for record in records]
    paths = [value for row in rows for value in row if isinstance(value, str) and value.startswith(_PATH)]
    folder = os.path.commonpath([os.path.dirname(p[len(_PATH):]) for p in paths]) if paths else ""
    cut = len(_PATH) + len(folder.rstrip(os.sep)) + 1
    digest = hashlib.blake2b(digest_size=16)
    for row in rows:
        row = [_PATH + v[cut:] if isinstance(v, str) and v.startswith(_PATH) else v for v in row]
        digest.update(json.dumps(row, separators=(",", ":")).encode() + b"\n")
    return digest.hexdigest()


_PATH = "\0path:"  # marks a path among a record's canonical fields (no str field starts with NUL)


def _fields(record) -> list:
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        values = [getattr(record, f.name) for f in dataclasses.fields(record)]
    elif isinstance(record, (tuple, list)):
        values = list(record)
    else:
        values = [record]
    return [_canonical(value) for value in values]


def _canonical(value):
    if isinstance(value, os.PathLike):
        return _PATH + os.path.abspath(os.fspath(value))
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value).hex()  # exact, NaN included
    if isinstance(value, str):
        return value.replace("\0", "\\0")
    raise TypeError(f"A record field must be a str, number, None or path to be fingerprinted, but got "
                    f"{type(value).__name__}.")


def _source_fingerprint(spec, names) -> dict:
    if spec.local_path:
        folder = Path(spec.local_path)
        files = {name: file_fingerprint(folder / name) for name in names if (folder / name).is_file()}
        # A sharded checkpoint's shards, which its index names: a shard replaced in place is a new model.
        for shard in _shards(folder, [name for name in files if name.endswith(".index.json")]):
            if (folder / shard).is_file():
                files[shard] = file_fingerprint(folder / shard)
        return {"location": str(folder), "files": files}
    import huggingface_hub as hf

    cached = {}
    for name in names:
        path = hf.try_to_load_from_cache(spec.hub_id, name, revision=spec.revision)
        if isinstance(path, str):
            cached[name] = Path(path)
    for index in [name for name in cached if name.endswith(".index.json")]:
        for shard in _shards(cached[index].parent, [index]):
            path = hf.try_to_load_from_cache(spec.hub_id, shard, revision=spec.revision)
            if isinstance(path, str):
                cached[shard] = Path(path)
    # Cached files live in snapshots/COMMIT/NAME: the folder names the commit the revision points to.
    commits = sorted({path.parent.name for path in cached.values()})
    commit: Optional[str] = commits[0] if len(commits) == 1 else spec.revision or "main"
    return {"location": f"hf-hub:{spec.hub_id}@{commit}",
            "files": {name: file_fingerprint(path, mtime=False) for name, path in cached.items()}}


def _shards(folder: Path, indexes) -> list:
    """The shard names the indexes in ``folder`` list (each index was checked by loading the model)."""
    from .models.hub import read_index

    names = []
    for index in indexes:
        try:
            names.extend(read_index(folder / index))
        except ValueError:  # not a valid index: loading refuses it, naming the file
            continue
    return names


def _digest(fp: dict) -> str:
    return hashlib.blake2b(json.dumps(fp, sort_keys=True).encode(), digest_size=8).hexdigest()
