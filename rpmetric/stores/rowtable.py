"""A store's per-row names and metadata (path or key, URL, caption), kept on disk and read per row.

A finished store of format 4 keeps them out of its manifest, in two files:

- ``rows.jsonl``: one line per row, the JSON array ``[path, url, caption]`` (ASCII: anything else
  is escaped, so a line break never occurs inside a row);
- ``rows-index.npy``: ``[N + 1]`` int64 byte offsets of the lines (row i is bytes
  ``offsets[i]:offsets[i + 1]``, its newline included).

Opening a store then costs O(shards), not O(rows) Python objects: 10 M paths parsed from one
JSON document took about 5 GB. A row is read when it is asked for (one ``pread``), a whole column
by one sequential pass over the file.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with RowWriter(folder / "rows.jsonl", folder / "rows-index.npy") as w:
    ...     w.add(["a.png", "b.png"], [None, "http://x/b"], [None, "a cat"])
    >>> table = RowTable(folder / "rows.jsonl", folder / "rows-index.npy", 2)
    >>> paths = table.column(0)
    >>> paths[1], list(paths), table.column(1)[1], table.decoded  # row 1, then a pass; row 1 is kept
    ('b.png', ['a.png', 'b.png'], 'http://x/b', 3)
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np

from ..files import atomic_path

__all__ = ["RowTable", "RowColumn", "RowWriter"]

COLUMNS = ("path", "url", "caption")


class RowWriter:
    """Writes ``rows.jsonl`` and ``rows-index.npy`` shard by shard (each file atomically, the index
    last), holding only the offsets (8 bytes a row) between shards."""

    def __init__(self, rows_path: Path, index_path: Path):
        self.rows_path, self.index_path = Path(rows_path), Path(index_path)
        self._ends: List[np.ndarray] = []
        self._size = 0

    def __enter__(self) -> "RowWriter":
        self._tmp = atomic_path(self.rows_path)
        self._file = open(self._tmp.__enter__(), "wb")
        return self

    def add(self, paths: Sequence, urls: Optional[Sequence] = None, captions: Optional[Sequence] = None) -> None:
        """Append rows: ``paths`` and, where known, their ``urls`` and ``captions`` (None: unknown)."""
        n = len(paths)
        urls, captions = urls or [None] * n, captions or [None] * n
        if not (len(urls) == len(captions) == n):
            raise ValueError(f"rows of {self.rows_path}: {n} paths but {len(urls)} urls and {len(captions)} captions")
        lines = [json.dumps(row) + "\n" for row in zip(paths, urls, captions)]  # ASCII: len() counts bytes
        self._file.write("".join(lines).encode("ascii"))
        self._ends.append(self._size + np.cumsum(np.fromiter(map(len, lines), dtype=np.int64, count=n)))
        self._size = int(self._ends[-1][-1]) if n else self._size

    def __exit__(self, kind, value, tb) -> None:
        self._file.close()
        self._tmp.__exit__(kind, value, tb)  # renames into place, or removes on error
        if kind is None:
            offsets = np.concatenate([np.zeros(1, np.int64)] + self._ends)
            with atomic_path(self.index_path) as tmp, open(tmp, "wb") as f:
                np.save(f, offsets, allow_pickle=False)


class RowTable:
    """The rows of ``rows.jsonl``, found by ``rows-index.npy`` (see the module's notes).

    Args:
        rows_path, index_path: the two files.
        count: the rows the store holds (checked against the index when it is opened).
        fix: what the error messages tell the user to do about a damaged file.

    Attributes:
        decoded: rows parsed so far (one per random access; a column pass counts its rows).

    Raises:
        ValueError: a file is missing or does not match the other or ``count``.
    """

    def __init__(self, rows_path: Path, index_path: Path, count: int, fix: str = "rebuild the store"):
        self.rows_path, self.index_path, self.count, self.fix = Path(rows_path), Path(index_path), int(count), fix
        self.decoded = 0
        self._offsets, self._file, self._last = None, None, (-1, None)
        self._open()

    def _bad(self, path: Path, reason: str) -> ValueError:
        return ValueError(f"{path} {reason}; {self.fix}.")

    def _open(self) -> None:
        """Map the index (its header and last entry are read, nothing else) and check the rows file's size."""
        try:
            offsets = np.load(self.index_path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise self._bad(self.index_path, "is missing") from None
        except (ValueError, OSError) as err:
            raise self._bad(self.index_path, f"is not a valid .npy file ({err})") from None
        if offsets.shape != (self.count + 1,) or offsets.dtype != np.int64:
            raise self._bad(self.index_path, f"holds {offsets.dtype} {offsets.shape}, but the store has {self.count} "
                                             f"rows (expected int64 ({self.count + 1},))")
        try:
            size = self.rows_path.stat().st_size
        except FileNotFoundError:
            raise self._bad(self.rows_path, "is missing") from None
        if size != int(offsets[-1]):
            raise self._bad(self.rows_path, f"is {size} bytes, but {self.index_path.name} says {int(offsets[-1])}")
        self._offsets = offsets

    def __getstate__(self) -> dict:  # picklable: the file and the mapping are opened again
        return {k: v for k, v in self.__dict__.items() if k not in ("_offsets", "_file", "_last")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._offsets, self._file, self._last = None, None, (-1, None)
        self._open()

    def row(self, i: int) -> list:
        """Row ``i`` as ``[path, url, caption]`` (one read of its line)."""
        if self._last[0] == i:  # a row's columns are often asked for one after another
            return self._last[1]
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        if self._file is None:
            self._file = open(self.rows_path, "rb")
        data = os.pread(self._file.fileno(), b - a, a)
        try:
            row = json.loads(data)
            if not (isinstance(row, list) and len(row) == len(COLUMNS)):
                raise ValueError(f"not a [{', '.join(COLUMNS)}] array")
        except ValueError as err:
            raise self._bad(self.rows_path, f"is damaged at row {i} ({err})") from None
        self.decoded += 1
        self._last = (i, row)
        return row

    def column(self, k: int) -> "RowColumn":
        """Column ``k`` (0 path, 1 url, 2 caption) as a read-only sequence."""
        return RowColumn(self, k)

    def values(self, k: int) -> Iterator:
        """Column ``k`` in row order, by one sequential read of the file."""
        n = 0
        with open(self.rows_path, "rb") as f:
            for line in f:
                n += 1
                self.decoded += 1
                yield json.loads(line)[k]
        if n != self.count:
            raise self._bad(self.rows_path, f"holds {n} rows, but the store has {self.count}")


class RowColumn(Sequence):
    """One column of a :class:`RowTable`: indexing reads one row, iterating reads the file once;
    equal to a list (or another column) with the same values."""

    def __init__(self, table: RowTable, k: int):
        self.table, self.k = table, k

    def __len__(self) -> int:
        return self.table.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} is out of range for a store of {len(self)} rows")
        return self.table.row(i)[self.k]

    def __iter__(self) -> Iterator:
        return self.table.values(self.k)

    def __eq__(self, other) -> bool:
        if not isinstance(other, (list, tuple, RowColumn)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # mutable-looking sequences (lists) are unhashable too

    def __repr__(self) -> str:
        return f"RowColumn({COLUMNS[self.k]!r} of {self.table.rows_path}, n={len(self)})"
