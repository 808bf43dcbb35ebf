"""Generic 2AFC triplets from a CSV file: ``ref,left,right,p`` (and an optional ``id``).

For data of one's own or UniSim-Bench's 2AFC tasks, without new code. ``p`` is the share of people
who judged ``right`` closer to ``ref`` (as NIGHTS' ``right_vote`` and BAPPS' ``judge``), in [0, 1];
a hard label is 0 or 1. Paths are relative to the CSV's folder and must stay inside it (symlinks
resolved). Without an ``id`` column a triplet's id is its line number; with one, ids must be unique.
Columns are read by header name; other columns are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

from ..files import extra_fields, read_csv
from .nights import _number
from .records import BadItem, Triplet

__all__ = ["TRIPLET_COLUMNS", "read_triplets_csv"]

TRIPLET_COLUMNS = ("ref", "left", "right", "p")


def read_triplets_csv(path: Union[str, Path], *, skipped: Optional[List[BadItem]] = None) -> List[Triplet]:
    """The triplets of a ``ref,left,right,p`` CSV file, in file order.

    Args:
        path: the CSV file; image paths in it are relative to its folder.
        skipped: if given, bad rows (a missing image, a path outside the folder, a non-numeric or
            out-of-range ``p``, a duplicated id, a short or long row) are appended here as
            :class:`BadItem` and left out, instead of raising.

    Raises:
        FileNotFoundError: no such file; an image missing (unless ``skipped``).
        ValueError: a folder, not UTF-8, wrong column names, no usable row, or a bad row (unless
            ``skipped``); the message names the file and the line.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("r", "a", "b"):
        ...     Image.new("RGB", (4, 4)).save(folder / f"{name}.png")
        >>> _ = (folder / "t.csv").write_text("ref,left,right,p\\nr.png,a.png,b.png,0.25\\n")
        >>> t = read_triplets_csv(folder / "t.csv")[0]
        >>> t.id, t.right.name, t.p
        ('2', 'b.png', 0.25)
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the triplet CSV file (header {','.join(TRIPLET_COLUMNS)}).")
    if not path.is_file():
        raise FileNotFoundError(f"Triplet CSV file not found: {path}")
    folder = path.parent
    real_folder = folder.resolve()
    reader = read_csv(path)
    header = reader.fieldnames or []
    missing = [c for c in TRIPLET_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}; a triplet CSV needs the header "
                         f"{','.join(TRIPLET_COLUMNS)} (and optionally id) (found: {','.join(header) or 'no header'}).")
    has_id = "id" in header
    triplets, seen = [], {}
    for row in reader:
        line = reader.line_num
        ident = (row.get("id") or "").strip() if has_id else str(line)
        try:
            longer = extra_fields(row, reader)
            if longer:
                raise ValueError(longer)
            if None in row.values():
                given = sum(v is not None for v in row.values())
                raise ValueError(f"the row has fewer fields ({given}) than the header ({len(header)})")
            if has_id and not ident:
                raise ValueError("no value in column id")
            if ident in seen:
                raise ValueError(f"the id {ident!r} is also the id of line {seen[ident]}; ids must be unique")
            p = _number(row, "p")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"`p` must be a share in [0, 1] (of people who chose right), but got {row['p']!r}")
            paths = [_inside(folder, real_folder, column, (row[column] or "").strip())
                     for column in ("ref", "left", "right")]
        except (ValueError, FileNotFoundError) as err:
            message = f"{path}, line {line}" + (f" (id {ident!r})" if has_id and ident else "") + f": {err}"
            if skipped is None:
                raise type(err)(message + "; fix the row or pass `skipped=[]` to skip it") from None
            skipped.append(BadItem(ident or f"line {line}", message))
            continue
        seen[ident] = line
        triplets.append(Triplet(ident, *paths, p))
    if not triplets:
        raise ValueError(f"Triplet CSV file {path} holds no usable row.")
    return triplets


def _inside(folder: Path, real_folder: Path, column: str, value: str) -> Path:
    if not value:
        raise ValueError(f"no value in column {column}")
    image = folder / value
    if not image.resolve().is_relative_to(real_folder):
        raise ValueError(f"`{column}` {value!r} leads outside the CSV's folder {folder} (to {image.resolve()}); "
                         "paths must be relative to the CSV's folder and stay inside it")
    if not image.is_file():
        raise FileNotFoundError(f"image file not found: {image}")
    return image
