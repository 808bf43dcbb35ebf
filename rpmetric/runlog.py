"""An append-only, on-disk log of per-sample results, so that a long run can be resumed.

The file is JSON lines: a header ``{"config": {...}}``, then one record per line. Each append is
flushed and fsynced, so an interruption loses at most the batch being computed; a torn last
line (the process died mid-write) is dropped on resume. Floats round-trip exactly through JSON,
so a resumed run reproduces the uninterrupted result bit for bit.

One run at a time: a log appears with its header already written and locked (``fcntl.flock``, held
until :meth:`RunLog.close`), so a second run that creates or resumes the same log while the first
holds it is refused, whoever started first. What a power loss can leave is repaired on resume: a
tail of NUL bytes (blocks the file system had allocated but not written) is dropped like a torn
line, and a log with no complete header (0 bytes, or a torn header) starts afresh, as it holds no
record.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs are then not detected
    fcntl = None

__all__ = ["RunLog", "record_check", "remove_if_empty"]

_HEADER_START = b'{"config"'


class RunLog:
    """Per-sample results of one run, keyed by ``record["key"]``.

    Args:
        path: the log file (JSON lines); its folder is created.
        config: what defines the run (JSON-serialisable); a resume must match it exactly.
        resume: continue an existing log. Without it, an existing file is an error, so a run
            never mixes its results with another's by accident.
        check: ``check(record)`` returns what is wrong with a record read back on resume (e.g. a
            missing field), or None; see :func:`record_check`.

    Attributes:
        done: ``{key: record}`` read back from the file (on resume) plus everything appended since.

    The log stays locked against other processes until :meth:`close` (or the object is deleted,
    or used as a context manager). The same process may open it again.

    Raises:
        FileExistsError: the file exists and ``resume`` is False, or another process holds it.
        ValueError: ``resume`` with a log written for a different config (the message names the
            keys), a file that is not a run log, or a corrupt record (the message names the line).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "run.jsonl")
        >>> log = RunLog(path, {"model": "l2"}, resume=False)
        >>> log.append([{"key": "a", "d": 0.5}])
        >>> RunLog(path, {"model": "l2"}, resume=True).done
        {'a': {'key': 'a', 'd': 0.5}}
    """

    def __init__(self, path: Union[str, Path], config: dict, resume: bool,
                 check: Optional[Callable[[dict], Optional[str]]] = None):
        self.path = Path(path)
        self.config = json.loads(json.dumps(config))  # what the file will hold, e.g. tuples as lists
        self.done: Dict[str, dict] = {}
        self._file = None
        self._lock: Optional[Tuple[int, int]] = None
        if self.path.is_dir():
            raise ValueError(f"Run log {self.path} is a folder; give the path of a file (e.g. {self.path}/run.jsonl).")
        try:
            if not self.path.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self._create():
                    return
            if not resume:
                if not _is_free(self.path):
                    raise FileExistsError(_in_use(self.path))
                raise FileExistsError(
                    f"Run log {self.path} already exists; pass `resume=True` to continue that run, "
                    "or delete the file to start over."
                )
            self._file = open(self.path, "a+b")
            self._lock = _acquire(self._file.name)
            if self._lock is None:
                raise FileExistsError(_in_use(self.path))
            self._read(check)
        except BaseException as err:
            self.close()
            if isinstance(err, OSError) and not isinstance(err, (FileExistsError, FileNotFoundError)):
                # unwritable folder, read-only file, full disk: name the log, not a traceback
                raise ValueError(f"Cannot write the run log {self.path} ({err.strerror or err}); choose a writable "
                                 "location for the log.") from None
            raise

    def append(self, records: List[dict]) -> None:
        """Add records (each with a ``"key"``) and make them durable before returning."""
        for record in records:
            if "key" not in record:
                raise ValueError(f"Every record needs a 'key' field, but got {record!r}.")
        self._write_lines(records)
        for record in records:
            self.done[str(record["key"])] = record

    def close(self) -> None:
        """Release the lock and the file (appends are already durable)."""
        if self._lock is not None:
            _release(self._lock)
            self._lock = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # at interpreter exit modules may be gone; the OS releases the lock anyway
            pass

    def _create(self) -> bool:
        """Write the header into a locked temporary file and link it into place; False when another
        run created the log first (then this one goes on as if it had existed)."""
        tmp = self.path.with_name(f".{self.path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            with open(tmp, "x+b") as f:
                self._lock = _acquire(str(tmp))  # nobody else knows the file yet
                f.write(_lines([{"config": self.config}]))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)  # atomic: fails if the log appeared meanwhile
                linked = True
            except FileExistsError:
                linked = False
            except OSError:  # a file system without hard links
                linked = None
        finally:
            tmp.unlink(missing_ok=True)
        if not linked:
            _release(self._lock)
            self._lock = None
            return False if linked is False else self._create_in_place()
        self._file = open(self.path, "a+b")
        _sync_folder(self.path.parent)
        return True

    def _create_in_place(self) -> bool:
        """The log created exclusively where it belongs (a second run may see it empty for a moment,
        which it then repairs or refuses)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
        except FileExistsError:
            return False
        self._file = os.fdopen(fd, "a+b")
        self._lock = _acquire(str(self.path))
        if self._lock is None:
            raise FileExistsError(_in_use(self.path))
        self._write_lines([{"config": self.config}])
        return True

    def _write_lines(self, lines: List[dict]) -> None:
        if not lines:
            return
        self._file.write(_lines(lines))
        self._file.flush()
        os.fsync(self._file.fileno())

    def _read(self, check) -> None:
        f = self._file
        f.seek(0)
        data = f.read()
        nul = data.find(b"\0")
        head = data if nul < 0 else data[:nul]
        keep = head.rfind(b"\n") + 1  # complete lines only: a torn or NUL-filled last line is dropped
        lines = head[:keep].split(b"\n")[:-1]
        if not lines:
            if not (head.startswith(_HEADER_START) or _HEADER_START.startswith(head)):
                raise ValueError(f"{self.path} is not a rpmetric run log (no config on line 1); delete it or "
                                 "choose another file.")
            # 0 bytes, NULs or a torn header: the run died (or the power failed) as it created the log,
            # so it holds no record; start it afresh.
            f.truncate(0)
            self._write_lines([{"config": self.config}])
            if data:
                warnings.warn(f"Run log {self.path} had no complete header (a torn write or a power loss); "
                              "started it afresh.", stacklevel=3)
            return
        try:
            saved = json.loads(lines[0])["config"]
            if not isinstance(saved, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            raise ValueError(f"{self.path} is not a rpmetric run log (no config on line 1); delete it or "
                             "choose another file.") from None
        if saved != self.config:
            keys = sorted(k for k in set(saved) | set(self.config) if saved.get(k, _MISSING) != self.config.get(k, _MISSING))
            diffs = "; ".join(f"{k}: log has {saved.get(k, '<missing>')!r}, this run has {self.config.get(k, '<missing>')!r}"
                              for k in keys)
            raise ValueError(f"Cannot resume from {self.path}: it was written with a different configuration "
                             f"({diffs}). Use the same settings, or delete the log to start over.")
        fix = "delete the log to start over, or delete that line to compute its samples again"
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
                key = str(record["key"])
            except (ValueError, KeyError, TypeError, RecursionError):  # not JSON, no "key", not an object
                raise ValueError(f"{self.path}, line {number} is corrupt (not a JSON record with a 'key'); "
                                 f"{fix}.") from None
            problem = check(record) if check is not None else None
            if problem:
                raise ValueError(f"{self.path}, line {number}: record {key!r} {problem}; {fix}.")
            self.done[key] = record
        if keep < len(data):
            f.truncate(keep)  # so that the next append starts on a fresh line
            if nul >= 0:
                warnings.warn(f"Run log {self.path} ended in NUL bytes (a power loss); dropped its last "
                              f"{len(data) - keep} bytes, whose samples are computed again.", stacklevel=3)


def record_check(numbers: Sequence[str], present: Sequence[str] = (), unless: str = "error"
                 ) -> Callable[[dict], Optional[str]]:
    """A ``check`` for :class:`RunLog`: every record has the fields ``present``, and the fields
    ``numbers``, each a finite number, unless it has the field ``unless`` (a record of a bad sample).

    Example:
        >>> check = record_check(["d0", "p"], present=["id"])
        >>> check({"id": "a", "d0": 0.5}), check({"id": "a", "d0": "x", "p": 1}), check({"id": "a", "error": "?"})
        ("has no field 'p'", "has a field 'd0' that is not a finite number ('x')", None)
    """
    def check(record: dict) -> Optional[str]:
        required = [*present, *(numbers if unless not in record else ())]
        missing = [name for name in required if name not in record]
        if missing:
            return f"has no field {', '.join(map(repr, missing))}"
        for name in numbers if unless not in record else ():
            value = record[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"has a field {name!r} that is not a finite number ({value!r})"
        return None

    return check


def remove_if_empty(path: Union[str, Path]) -> bool:
    """Delete a run log that holds its config line only (its run stopped before finishing a batch),
    so that the same run can start again without ``resume``; True if it was deleted.

    A torn last line counts as no record, as on resume. Anything that is not a run log is kept, and
    so is a log that a running process holds.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "run.jsonl")
        >>> RunLog(path, {"model": "l2"}, resume=False).close()
        >>> remove_if_empty(path), os.path.exists(path)
        (True, False)
    """
    path = Path(path)
    try:
        lock = _acquire(str(path))
    except (FileNotFoundError, IsADirectoryError):
        return False
    if lock is None:
        return False  # another run holds it
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data.startswith(_HEADER_START) or data.count(b"\n") > 1:
            return False
        path.unlink()
        return True
    finally:
        _release(lock)


def _lines(records: List[dict]) -> bytes:
    return "".join(json.dumps(line, allow_nan=False) + "\n" for line in records).encode()


def _in_use(path: Path) -> str:
    return (f"Run log {path} is in use by another running process; wait for that run to finish, or choose "
            "another log file.")


def _sync_folder(folder: Path) -> None:
    """Make a new name in ``folder`` durable (where folders can be opened, as on POSIX)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- locks: one process at a time per log file, shared within a process --------------------------
_held: Dict[Tuple[int, int], list] = {}  # (device, inode) -> [locked descriptor, users]
_held_guard = threading.Lock()


def _acquire(path: str) -> Optional[Tuple[int, int]]:
    """Lock the file for this process; its identity, or None when another process holds it."""
    fd = os.open(path, os.O_RDONLY)
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    with _held_guard:
        if key in _held:
            os.close(fd)
            _held[key][1] += 1
            return key
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
        _held[key] = [fd, 1]
        return key


def _release(key: Tuple[int, int]) -> None:
    with _held_guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            os.close(entry[0])  # closing the descriptor releases the lock


def _forget_locks() -> None:
    """In a forked child (e.g. a DataLoader worker): drop the inherited descriptors, which would hold
    the parent's locks for as long as the child lives; the parent keeps its own."""
    global _held_guard
    for fd, _ in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()
    _held_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks)


def _is_free(path: Path) -> bool:
    """Whether no other process holds the log now."""
    try:
        key = _acquire(str(path))
    except OSError:
        return True
    if key is None:
        return False
    _release(key)
    return True


_MISSING = object()
