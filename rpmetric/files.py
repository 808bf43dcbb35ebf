"""Small file helpers shared by the store, the evaluators and the command line: writes that readers
never see half done, and CSV files read by column name."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import secrets
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Union

__all__ = ["atomic_path", "atomic_write", "write_json", "read_csv_columns", "write_csv"]


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """A new empty temporary file beside ``path`` to write into; on success it is put in place.

    Missing parent folders are created. The file is created with the umask's mode (as ``open``
    gives, not ``mkstemp``'s 0600), flushed to disk, renamed over ``path``, and the folder is
    flushed too, so that a power loss leaves the old file or the new one, never an empty one.
    On an error the temporary file is removed and ``path`` is untouched.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 & ~umask
    try:
        yield tmp
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems cannot sync a folder: the rename is still atomic
        if not (path.is_dir() and err.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def atomic_write(path: Union[str, Path], write: Callable) -> None:
    """``write(binary_file)`` into a temporary file beside ``path``, then rename it into place.

    Readers see the old file or the new one, never half of it (see :func:`atomic_path`).
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_json(path: Union[str, Path], data) -> None:
    """``data`` as indented JSON, written atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=1) + "\n").encode()))


def read_csv_columns(path: Union[str, Path], columns: Sequence[str]) -> List[dict]:
    """Rows of a CSV file whose header has at least ``columns`` (extra columns are kept).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the header lacks one of ``columns``, or a row has no value in one (e.g. a short
            row); the message names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not set(columns) <= set(reader.fieldnames):
            raise ValueError(f"{path} must have a header with columns {','.join(columns)} (found: {reader.fieldnames}).")
        rows = []
        for row in reader:
            empty = [c for c in columns if not (row[c] or "").strip()]  # DictReader fills short rows with None
            if empty:
                raise ValueError(f"{path}, line {reader.line_num}: no value in column {', '.join(empty)}; every row "
                                 f"needs {','.join(columns)}.")
            rows.append(row)
        return rows


def write_csv(path: Optional[Union[str, Path]], header: Sequence[str], rows) -> None:
    """Rows under ``header`` to ``path`` (atomically), or to stdout when ``path`` is None."""
    import io
    import sys

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    if path is None:
        sys.stdout.write(buffer.getvalue())
    else:
        atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))
