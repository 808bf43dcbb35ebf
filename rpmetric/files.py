"""Small file helpers shared by the store, the evaluators and the command line: writes that readers
never see half done, and CSV files read by column name."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Union

__all__ = ["atomic_path", "atomic_write", "write_json", "read_csv_columns", "write_csv", "read_csv", "extra_fields",
           "check_writable", "read_utf8"]


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """A new empty temporary file beside ``path`` to write into; on success it is put in place.

    Missing parent folders are created. The file is created with the umask's mode (as ``open``
    gives, not ``mkstemp``'s 0600), flushed to disk, renamed over ``path``, and the folder is
    flushed too, so that a power loss leaves the old file or the new one, never an empty one.
    On an error the temporary file is removed and ``path`` is untouched.

    Raises:
        OSError: the write failed (a folder in the way, no permission, a full disk); the error's
            ``filename`` is ``path``, not the temporary file.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where a parent folder should be
            raise NotADirectoryError(errno.ENOTDIR, "a part of the path is a file, not a folder", str(path)) from None
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 & ~umask
        yield tmp
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as err:
        if err.errno is None or err.filename == str(path):
            raise
        raise type(err)(err.errno, err.strerror, str(path)) from None  # name the file asked for
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. the parent is a file
            pass


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

    Readers see the old file or the new one, never half of it; missing parent folders are created
    (see :func:`atomic_path`, which also says what it raises).
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_json(path: Union[str, Path], data, indent: Optional[int] = 1) -> None:
    """``data`` as indented JSON (``indent=None``: on one line, by json's much faster C encoder),
    written atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=indent) + "\n").encode()))


def read_csv(path: Union[str, Path]) -> csv.DictReader:
    """A ``csv.DictReader`` over a UTF-8 file (a byte-order mark is dropped, as Excel writes one).

    A row with more fields than the header has the extras under the key None (see
    :func:`extra_fields`).

    Raises:
        ValueError: the file is not UTF-8; the message names it and the line.
    """
    return csv.DictReader(io.StringIO(read_utf8(path), newline=""))


def read_utf8(path: Union[str, Path], fix: str = "save the file as UTF-8") -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped).

    Raises:
        ValueError: the file is not UTF-8; the message names it, the line and the byte, then ``fix``.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte {data[err.start]:#04x}); {fix}.") from None


def extra_fields(row: dict, reader: csv.DictReader) -> Optional[str]:
    """Why ``row`` has more fields than the header, or None when it has not."""
    if None not in row:
        return None
    given = len(reader.fieldnames) + len(row[None])
    return (f"the row has more fields ({given}) than the header ({len(reader.fieldnames)}); a value holding a comma "
            "(e.g. in a path) must be quoted")


def read_csv_columns(path: Union[str, Path], columns: Sequence[str]) -> List[dict]:
    """Rows of a UTF-8 CSV file whose header has at least ``columns`` (extra columns are kept).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not UTF-8, the header lacks one of ``columns``, or a row has no value
            in one (e.g. a short row) or more fields than the header; the message names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    reader = read_csv(path)
    if not reader.fieldnames or not set(columns) <= set(reader.fieldnames):
        raise ValueError(f"{path} must have a header with columns {','.join(columns)} (found: {reader.fieldnames}).")
    rows = []
    for row in reader:
        extra = extra_fields(row, reader)
        if extra:
            raise ValueError(f"{path}, line {reader.line_num}: {extra}.")
        empty = [c for c in columns if not (row[c] or "").strip()]  # DictReader fills short rows with None
        if empty:
            raise ValueError(f"{path}, line {reader.line_num}: no value in column {', '.join(empty)}; every row "
                             f"needs {','.join(columns)}.")
        rows.append(row)
    return rows


def check_writable(path: Union[str, Path], what: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: a folder where a file goes (or a
    file where a folder goes), a file in a parent's place, or a location that refuses a new file
    (permissions, a read-only filesystem, /proc). Nothing is created.

    Args:
        path: the output file (or folder, with ``folder=True``).
        what: how the message names the output, e.g. ``"--out"`` or ``"the head folder"``.

    Raises:
        ValueError: the output cannot be written; the message names the path and the fix.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"Cannot write {what} {path}: it is a file, not a folder; choose a folder.")
    if not folder and path.is_dir():
        raise ValueError(f"Cannot write {what} {path}: it is a folder; give a file name.")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"Cannot write {what} {path}: {existing} is a file, not a folder; choose another location.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ValueError(f"Cannot write {what} {path}: {existing} does not accept new files ({err.strerror}); "
                         "choose a writable location.") from None


def write_csv(path: Optional[Union[str, Path]], header: Sequence[str], rows) -> None:
    """Rows under ``header`` to ``path`` (atomically), or to stdout when ``path`` is None.

    ``rows`` may be any iterable, a generator included: it is written in chunks as it is consumed,
    so a table of millions of rows (a dedup of a 10 M store) is never held as one string.
    """
    import sys

    if path is None:
        for chunk in _csv_chunks(header, rows):
            sys.stdout.write(chunk)
    else:
        atomic_write(path, lambda f: [f.write(chunk.encode()) for chunk in _csv_chunks(header, rows)])


def _csv_chunks(header: Sequence[str], rows, every: int = 8192):
    import io

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for k, row in enumerate(rows, start=1):
        writer.writerow(row)
        if k % every == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
