"""An append-only, on-disk log of per-sample results, so that a long run can be resumed.

The file is JSON lines: a header ``{"config": {...}}``, then one record per line. Each append is
flushed and fsynced, so an interruption loses at most the batch being computed; a torn last
line (the process died mid-write) is dropped on resume. Floats round-trip exactly through JSON,
so a resumed run reproduces the uninterrupted result bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Union

__all__ = ["RunLog", "remove_if_empty"]


class RunLog:
    """Per-sample results of one run, keyed by ``record["key"]``.

    Args:
        path: the log file (JSON lines); its folder is created.
        config: what defines the run (JSON-serialisable); a resume must match it exactly.
        resume: continue an existing log. Without it, an existing file is an error, so a run
            never mixes its results with another's by accident.

    Attributes:
        done: ``{key: record}`` read back from the file (on resume) plus everything appended since.

    Raises:
        FileExistsError: the file exists and ``resume`` is False.
        ValueError: ``resume`` with a log written for a different config (the message names the keys).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "run.jsonl")
        >>> log = RunLog(path, {"model": "l2"}, resume=False)
        >>> log.append([{"key": "a", "d": 0.5}])
        >>> RunLog(path, {"model": "l2"}, resume=True).done
        {'a': {'key': 'a', 'd': 0.5}}
    """

    def __init__(self, path: Union[str, Path], config: dict, resume: bool):
        self.path = Path(path)
        self.config = json.loads(json.dumps(config))  # what the file will hold, e.g. tuples as lists
        self.done: Dict[str, dict] = {}
        if self.path.exists():
            if not resume:
                raise FileExistsError(
                    f"Run log {self.path} already exists; pass `resume=True` to continue that run, "
                    "or delete the file to start over."
                )
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_lines([{"config": self.config}])

    def append(self, records: List[dict]) -> None:
        """Add records (each with a ``"key"``) and make them durable before returning."""
        for record in records:
            if "key" not in record:
                raise ValueError(f"Every record needs a 'key' field, but got {record!r}.")
        self._write_lines(records)
        for record in records:
            self.done[str(record["key"])] = record

    def _write_lines(self, lines: List[dict]) -> None:
        if not lines:
            return
        text = "".join(json.dumps(line, allow_nan=False) + "\n" for line in lines)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def _read(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            # The last line has no newline: the writer died mid-line. Drop it from the file too,
            # so the next append starts on a fresh line.
            torn = lines.pop()
            with open(self.path, "r+b") as f:
                f.truncate(len(data) - len(torn))
        if not lines:
            raise ValueError(f"Run log {self.path} is empty (no config line); delete it to start over.")
        try:
            header = json.loads(lines[0])
            saved = header["config"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{self.path} is not a rpmetric run log (no config on line 1); delete it or "
                             "choose another file.") from None
        if saved != self.config:
            keys = sorted(k for k in set(saved) | set(self.config) if saved.get(k, _MISSING) != self.config.get(k, _MISSING))
            diffs = "; ".join(f"{k}: log has {saved.get(k, '<missing>')!r}, this run has {self.config.get(k, '<missing>')!r}"
                              for k in keys)
            raise ValueError(f"Cannot resume from {self.path}: it was written with a different configuration "
                             f"({diffs}). Use the same settings, or delete the log to start over.")
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
                key = str(record["key"])
            except (ValueError, KeyError, TypeError):  # not JSON, no "key", not an object
                raise ValueError(f"{self.path}, line {number} is corrupt (not a JSON record with a 'key'); delete the "
                                 "log to start over.") from None
            self.done[key] = record


def remove_if_empty(path: Union[str, Path]) -> bool:
    """Delete a run log that holds its config line only (its run stopped before finishing a batch),
    so that the same run can start again without ``resume``; True if it was deleted.

    A torn last line counts as no record, as on resume. Anything that is not a run log is kept.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "run.jsonl")
        >>> _ = RunLog(path, {"model": "l2"}, resume=False)
        >>> remove_if_empty(path), os.path.exists(path)
        (True, False)
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    if not data.startswith(b'{"config"') or data.count(b"\n") > 1:
        return False
    path.unlink()
    return True


_MISSING = object()
