"""Generic pair files: ``FILE.csv`` with columns ``a,b,score`` (and an optional ``id``), one judged
pair of images per row, for data rpmetric has no reader for (UniSim-Bench tasks, your own).

Paths are relative to the CSV's folder and must stay inside it (symlinks resolved), unless
``allow_outside_root=True``. The id is the ``id`` column, else ``line N``. Which way the score runs
(higher = more similar, or more different) is the caller's to say; see
:func:`rpmetric.scoring.correlations`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

from .iqa import _csv_rows
from .records import BadItem, ScoredPair
from .scored import RowErrors, inside, number

__all__ = ["PAIR_COLUMNS", "read_pairs"]

PAIR_COLUMNS = ("a", "b", "score")


def read_pairs(path: Union[str, Path], *, skipped: Optional[List[BadItem]] = None,
               allow_outside_root: bool = False) -> List[ScoredPair]:
    """The pairs of a pair file, in file order (``ref`` is ``a``, ``dist`` is ``b``).

    Args:
        path: the CSV file.
        skipped: if given, bad rows (a missing image, a non-numeric score, a duplicated id, a path
            outside the folder) are appended here and left out instead of raising.
        allow_outside_root: accept paths that lead out of the CSV's folder.

    Raises:
        ValueError: no ``a,b,score`` header, a bad row (naming the file and line), no usable row.
        FileNotFoundError: no such file, or a missing image (without ``skipped``).

    Example:
        >>> pairs = read_pairs("/data/mine/pairs.csv")  # doctest: +SKIP
    """
    source = Path(path)
    if source.is_dir():
        raise ValueError(f"{source} is a folder; give the pair file (a CSV with columns a,b,score).")
    if not source.is_file():
        raise FileNotFoundError(f"Pair file not found: {source}")
    errors, pairs = RowErrors(source, skipped), []
    for line, row in _csv_rows(source, PAIR_COLUMNS, errors):
        ident = (row.get("id") or "").strip() or f"line {line}"
        try:
            score = number(row["score"], "score")
            errors.unique(ident, line)
            a = inside(source.parent, row["a"], "a", allow_outside_root)
            b = inside(source.parent, row["b"], "b", allow_outside_root)
            pairs.append(ScoredPair(ident, a, b, score))
        except (ValueError, FileNotFoundError) as err:
            errors.bad(line, ident, err)
    if not pairs:
        raise ValueError(f"{source} holds no usable pair.")
    return pairs
