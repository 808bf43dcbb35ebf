"""NIGHTS (DreamSim's 2AFC benchmark): ``ROOT/data.csv`` with paths relative to ROOT.

The paths must stay inside ROOT (symlinks resolved): ``../`` or an absolute path makes a bad row,
unless ``allow_outside_root=True``.

Columns are read by header name; rows with fewer than 6 votes (not unanimous) are dropped, as
in DreamSim's loader. The target p is ``right_vote``, the share of people who chose the right image.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

from ..files import extra_fields, read_csv
from .records import BadItem, Triplet
from .scored import number

__all__ = ["NIGHTS_SPLITS", "NIGHTS_COLUMNS", "MIN_VOTES", "read_nights"]

NIGHTS_SPLITS = ("train", "val", "test", "test_imagenet", "test_no_imagenet")
NIGHTS_COLUMNS = ("id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split", "is_imagenet")
MIN_VOTES = 6  # DreamSim keeps only the unanimous triplets, which all had at least 6 raters

_TRUE = {"true", "1", "1.0", "yes"}
_FALSE = {"false", "0", "0.0", "no"}


def read_nights(root: Union[str, Path], split: str, *, skipped: Optional[List[BadItem]] = None,
                allow_outside_root: bool = False) -> List[Triplet]:
    """The triplets of one NIGHTS split, in csv order.

    Args:
        root: folder holding ``data.csv``, ``ref/`` and ``distort/``.
        split: one of ``train, val, test, test_imagenet, test_no_imagenet``; the last two divide
            ``test`` by the ``is_imagenet`` column.
        skipped: if given, rows with bad values or missing image files are appended here as
            :class:`BadItem` and left out, instead of raising.
        allow_outside_root: accept image paths that lead out of ``root`` (``../``, absolute
            paths, symlinks to elsewhere); by default such a row is bad.

    Raises:
        ValueError: unknown split, a csv that is not UTF-8 or lacks the needed columns, a bad value
            (a row longer than the header, a path outside ``root``), an empty split.
        FileNotFoundError: no ``data.csv``, or an image file missing (unless ``skipped`` is given).

    Example:
        >>> triplets = read_nights("/data/nights", "test")  # doctest: +SKIP
        >>> triplets[0].p  # doctest: +SKIP
        1.0
    """
    if split not in NIGHTS_SPLITS:
        raise ValueError(f"Argument `split` must be one of {NIGHTS_SPLITS}, but got {split!r}.")
    root = Path(root)
    csv_path = root / "data.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"NIGHTS csv not found: {csv_path}; ROOT must hold data.csv, ref/ and distort/.")
    base_split = "test" if split.startswith("test") else split
    want_imagenet = {"test_imagenet": True, "test_no_imagenet": False}.get(split)
    triplets = []
    real_root = root.resolve()
    reader = read_csv(csv_path)
    missing = [c for c in NIGHTS_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{csv_path} lacks the column(s) {', '.join(missing)}; a NIGHTS csv needs "
                         f"{', '.join(NIGHTS_COLUMNS)} (found: {', '.join(reader.fieldnames or [])}).")
    for line, row in enumerate(reader, start=2):
        # DictReader fills the columns a short (e.g. torn) row lacks with None, and puts a long row's
        # extra fields under None. Such a row's split cannot be trusted: it is reported whichever
        # split is read.
        longer = extra_fields(row, reader)
        if longer is None and row["split"] is not None and row["split"].strip() != base_split:
            continue
        ident = None if row["id"] is None else row["id"].strip()
        try:
            if longer:
                raise ValueError(longer)
            if None in row.values():
                given = sum(v is not None for v in row.values())
                raise ValueError(f"the row has fewer fields ({given}) than the header ({len(reader.fieldnames)})")
            votes = _number(row, "votes")
            if votes < MIN_VOTES:
                continue
            if want_imagenet is not None and _flag(row, "is_imagenet") != want_imagenet:
                continue
            p = _number(row, "right_vote")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"`right_vote` must be a share in [0, 1], but got {row['right_vote']!r}")
            paths = [root / row[c].strip() for c in ("ref_path", "left_path", "right_path")]
            for column, path in zip(("ref_path", "left_path", "right_path"), paths):
                if not allow_outside_root and not path.resolve().is_relative_to(real_root):
                    raise ValueError(f"`{column}` {row[column].strip()!r} leads outside the dataset root {root} (to "
                                     f"{path.resolve()}); paths must stay inside ROOT, or pass "
                                     "`allow_outside_root=True`")
                if not path.is_file():
                    raise FileNotFoundError(f"image file not found: {path}")
        except (ValueError, FileNotFoundError) as err:
            where = f"line {line}" if ident is None else f"line {line} (id {ident!r})"
            message = f"{csv_path}, {where}: {err}"
            if skipped is None:
                raise type(err)(message + "; fix the row or pass `skipped=[]` to skip it") from None
            skipped.append(BadItem(f"line {line}" if ident is None else ident, message))
            continue
        triplets.append(Triplet(ident, *paths, p))
    if not triplets:
        raise ValueError(f"NIGHTS split {split!r} is empty in {csv_path}: no usable row with split={base_split!r} "
                         f"and votes >= {MIN_VOTES}.")
    return triplets


def _number(row, column: str) -> float:
    return number(row[column], column)


def _flag(row, column: str) -> bool:
    value = (row[column] or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"`{column}` must be True or False, but got {row[column]!r}")
