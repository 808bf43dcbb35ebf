"""Dataset sources of embedding stores: WebDataset tar shards and Parquet files, read as streams of samples.

A SOURCE naming ``.tar`` or ``.parquet`` files (after brace expansion: ``shards/{00000..00127}.tar``)
is a dataset; anything else is a folder or a list of paths (:func:`rpmetric.stores.store.list_files`).
Shards are local paths or URLs that fsspec opens (``file://``, ``s3://``, ``https://``, ...).

- **WebDataset**, as img2dataset writes it: ``{key}.jpg|jpeg|png|webp`` with ``{key}.json`` (its
  ``url`` and ``caption``) and ``{key}.txt`` (the caption) beside each image. Read with
  ``webdataset``'s tar iterators, one member at a time.
- **Parquet**, as img2dataset writes it (``jpg`` bytes, ``key``, ``url``, ``caption``) or as a
  Hugging Face ``datasets`` Image column (a struct ``{"bytes", "path"}``). Read with ``pyarrow``
  in batches of a few rows (pyarrow reads a row group's column chunk at a time).

Each sample comes out as a :class:`Sample`; a sample that cannot be read, and a shard that cannot be
opened or is cut short, come out as a Sample with ``error`` set, so the store lists them and goes on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from ..errors import MissingDependencyError

__all__ = ["Sample", "is_dataset", "plan_inputs", "read_shard", "IMAGE_EXTENSIONS", "IMAGE_COLUMNS"]

KINDS = {".tar": "webdataset", ".parquet": "parquet"}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # a WebDataset sample's image, first found
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img")  # Parquet: the first present, else the first bytes column
KEY_COLUMN = "key"
CAPTION_FIELDS = ("caption", "text")
_ROWS_PER_BATCH = 16  # Parquet rows decoded from Arrow at a time


@dataclass
class Sample:
    """One sample of a dataset shard: its key, the image file's bytes, and metadata where known.
    ``error`` is why it (or, with ``data`` None and ``key`` the shard, the rest of its shard) cannot be read."""

    key: str
    data: Optional[bytes] = None
    url: Optional[str] = None
    caption: Optional[str] = None
    error: Optional[str] = None


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"Reading WebDataset and Parquet sources needs {module.split('.')[0]}: "
                                     'pip install "rpmetric[data]"') from None


def _is_url(name: str) -> bool:
    return "://" in name


def _expand(source: str) -> List[str]:
    if "{" not in source:
        return [source]
    return list(_require("braceexpand").braceexpand(source))


def is_dataset(source) -> bool:
    """Whether ``source`` names WebDataset or Parquet shards rather than a folder or a list of paths."""
    name = str(source)
    if not _is_url(name) and Path(name).expanduser().is_dir():
        return False
    return name.endswith(tuple(KINDS))


def _kind(names: List[str], source: str) -> str:
    kinds = {KINDS.get(os.path.splitext(n)[1]) for n in names}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(f"Input {source} mixes or names files other than .tar and .parquet shards; give one "
                         "kind of shard (WebDataset .tar or Parquet .parquet) per store.")
    return kinds.pop()


def _stat(name: str) -> Optional[list]:
    """``[size, mtime_ns]`` of a shard (mtime None for a URL), or None if it does not exist."""
    if not _is_url(name):
        try:
            st = os.stat(name)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns] if os.path.isfile(name) else None
    fsspec = _require("fsspec")
    try:
        fs, path = fsspec.core.url_to_fs(name)
        return [fs.info(path).get("size"), None]
    except (OSError, ValueError):  # FileNotFoundError is an OSError
        return None


def plan_inputs(source, image_column: Optional[str] = None,
                key_column: Optional[str] = None) -> Tuple[str, List[str], Dict[str, list], List[dict]]:
    """The shards of a dataset source: ``(kind, shard names in order, {shard: [size, mtime_ns]},
    [{"path", "reason"}] of listed shards that do not exist)``.

    Local shards become absolute paths. The first Parquet shard's columns are checked against
    ``image_column`` and ``key_column`` (see :func:`parquet_columns`).

    Raises:
        ValueError: no listed shard exists, the shards are of two kinds, or a column is unknown.
        MissingDependencyError: webdataset, pyarrow or fsspec is not installed.
    """
    names = _expand(str(source))
    kind = _kind(names, str(source))
    _require("webdataset" if kind == "webdataset" else "pyarrow.parquet")
    _require("fsspec")
    names = [n if _is_url(n) else str(Path(n).expanduser().resolve()) for n in names]
    stats, missing = {}, []
    for n in names:
        st = _stat(n)
        if st is None:
            missing.append({"path": n, "reason": f"shard {n} does not exist"})
        else:
            stats[n] = st
    present = [n for n in names if n in stats]
    if not present:
        raise ValueError(f"Input {source} matches no shards ({len(names)} named, e.g. {names[0]}, none exists); "
                         "check the path or the brace pattern, e.g. shards/{00000..00127}.tar.")
    if kind == "parquet":
        with _open(present[0]) as f:
            parquet_columns(_require("pyarrow.parquet").ParquetFile(f).schema_arrow, present[0], image_column, key_column)
    elif image_column is not None or key_column is not None:
        raise ValueError(f"Arguments `image_column` and `key_column` name Parquet columns, but {source} is a "
                         "WebDataset; drop them (a sample's key is its file name, its image the first "
                         f"{'|'.join(IMAGE_EXTENSIONS)} file).")
    return kind, present, stats, missing


def _open(name: str):
    return _require("fsspec").open(name, "rb")


def parquet_columns(schema, name: str, image_column: Optional[str] = None,
                    key_column: Optional[str] = None) -> Tuple[str, Optional[str], Optional[str], Optional[str]]:
    """``(image, key, url, caption)`` column names of a Parquet schema (None where absent).

    The image column defaults to the first of :data:`IMAGE_COLUMNS` present, else the first
    binary column or struct with a ``bytes`` field; the key column to ``key`` if present (else a
    sample's key is ``{file stem}/{row}``).

    Raises:
        ValueError: a named column is missing, or no column holds image bytes.
    """
    pa = _require("pyarrow")
    names = list(schema.names)

    def holds_bytes(field) -> bool:
        t = field.type
        if pa.types.is_struct(t):
            return any(t.field(i).name == "bytes" for i in range(t.num_fields))
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    for arg, col in (("image_column", image_column), ("key_column", key_column)):
        if col is not None and col not in names:
            raise ValueError(f"Argument `{arg}={col!r}` is not a column of {name} (columns: {', '.join(names)}); "
                             "name one of them.")
    if image_column is None:
        image_column = next((c for c in IMAGE_COLUMNS if c in names), None) or next(
            (f.name for f in schema if holds_bytes(f)), None)
        if image_column is None:
            raise ValueError(f"No column of {name} holds image bytes (columns: {', '.join(names)}); name it with "
                             "`image_column`.")
    elif not holds_bytes(schema.field(image_column)):
        raise ValueError(f"Argument `image_column={image_column!r}` of {name} holds {schema.field(image_column).type}, "
                         "not image bytes (binary, or a struct with a `bytes` field); name the image column.")
    if key_column is None and KEY_COLUMN in names:
        key_column = KEY_COLUMN
    caption = next((c for c in CAPTION_FIELDS if c in names and c != image_column), None)
    return image_column, key_column, "url" if "url" in names else None, caption


def read_shard(kind: str, name: str, image_column: Optional[str] = None,
               key_column: Optional[str] = None) -> Iterator[Sample]:
    """Stream the samples of one shard, in order; the last Sample has ``error`` set (and ``key``
    the shard) if the shard cannot be opened or ends early, and the samples before it are kept."""
    reader = _tar_samples if kind == "webdataset" else _parquet_samples
    try:
        yield from reader(name, image_column, key_column)
    except (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError) as err:
        yield Sample(key=name, error=f"shard {name} cannot be read to its end ({type(err).__name__}: {err})")


def _text(value) -> Optional[str]:
    return value if isinstance(value, str) and value else None


def _tar_samples(name: str, image_column, key_column) -> Iterator[Sample]:
    import tarfile

    tariterators = _require("webdataset.tariterators")
    errors: List[BaseException] = []

    def stop(exn) -> bool:  # webdataset's handler: keep the error, end the shard
        errors.append(exn)
        return False

    with _open(name) as stream:
        try:
            members = ({**m, "__url__": name} for m in tariterators.tar_file_iterator(stream, handler=stop))
            for sample in tariterators.group_by_keys(members, handler=stop):
                yield _tar_sample(sample)
        except tarfile.TarError as err:
            errors.append(err)
    if errors:
        err = errors[0]
        text = str(err).split(" @ <")[0]  # webdataset appends the file object's repr, which differs per run
        yield Sample(key=name, error=f"shard {name} cannot be read to its end ({type(err).__name__}: {text})")


def _tar_sample(sample: dict) -> Sample:
    key = sample["__key__"]
    meta: dict = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
    caption = _text(meta.get("caption"))
    if caption is None and "txt" in sample:
        caption = _text(sample["txt"].decode("utf-8", "replace").strip())
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        return Sample(key=key, url=_text(meta.get("url")), caption=caption,
                      error=f"{key} holds no image ({', '.join('.' + e for e in IMAGE_EXTENSIONS)}) in {sample['__url__']}")
    return Sample(key=key, data=sample[ext], url=_text(meta.get("url")), caption=caption)


def _parquet_samples(name: str, image_column, key_column) -> Iterator[Sample]:
    pq = _require("pyarrow.parquet")
    with _open(name) as f:
        pf = pq.ParquetFile(f)
        image, key, url, caption = parquet_columns(pf.schema_arrow, name, image_column, key_column)
        columns = [c for c in dict.fromkeys((image, key, url, caption)) if c is not None]
        stem, row = Path(name.rstrip("/")).stem, 0
        for batch in pf.iter_batches(batch_size=_ROWS_PER_BATCH, columns=columns):
            values = {c: batch.column(c).to_pylist() for c in columns}
            for i in range(batch.num_rows):
                k = values[key][i] if key is not None and values[key][i] is not None else f"{stem}/{row}"
                data = values[image][i]
                if isinstance(data, dict):  # a Hugging Face Image struct
                    data = data.get("bytes")
                meta = {"url": _text(values[url][i]) if url else None,
                        "caption": _text(values[caption][i]) if caption else None}
                if not isinstance(data, (bytes, bytearray)) or not data:
                    yield Sample(key=str(k), error=f"{k} of {name} has no image bytes in column {image!r}", **meta)
                else:
                    yield Sample(key=str(k), data=bytes(data), **meta)
                row += 1
