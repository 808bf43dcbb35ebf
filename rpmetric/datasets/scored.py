"""What the IQA and pair-file readers share: rows checked one by one, bad ones raised or skipped with
their file and line, ids kept unique, image names resolved inside the dataset's root."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

from .records import BadItem

__all__ = ["RowErrors", "number", "bare_name", "inside", "FolderIndex"]

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")


class RowErrors:
    """Collects what is wrong with rows of one score file: raised at once, or, with a ``skipped``
    list, appended to it as :class:`BadItem` (the row is left out).

    Every message names the file and the line, and the id where the row has one.
    """

    def __init__(self, source: Path, skipped: Optional[List[BadItem]]):
        self.source = source
        self.skipped = skipped
        self.seen: Dict[str, tuple] = {}

    def bad(self, line: int, ident: Optional[str], err: Exception) -> None:
        where = f"line {line}" if ident is None else f"line {line} (id {ident!r})"
        message = f"{self.source}, {where}: {err}"
        if self.skipped is None:
            raise type(err)(message + "; fix the row or pass `skipped=[]` to skip it") from None
        self.skipped.append(BadItem(f"line {line}" if ident is None else ident, message))

    def unique(self, ident: str, line: int) -> None:
        """Raise ValueError when ``ident`` was already read, naming where (share ``seen`` between the
        RowErrors of several files to keep ids unique across them)."""
        first = self.seen.setdefault(ident, (self.source, line))
        if first != (self.source, line):
            where = f"line {first[1]}" if first[0] == self.source else f"{first[0]}, line {first[1]}"
            raise ValueError(f"the id {ident!r} occurs twice (first on {where}); ids must be unique, remove one of "
                             "the rows")


def number(value, column: str) -> float:
    """``value`` as a finite float, or ValueError naming ``column``.

    Example:
        >>> number(" 4.5 ", "mos")
        4.5
    """
    try:
        result = float(str(value).strip())
    except (TypeError, ValueError):
        raise ValueError(f"`{column}` must be a number, but got {value!r}") from None
    if not math.isfinite(result):
        raise ValueError(f"`{column}` must be finite, but got {value!r}")
    return result


def bare_name(value, column: str) -> str:
    """A file name without folders (as the published score files give them), or ValueError.

    Example:
        >>> bare_name("i01_01_1.bmp", "name")
        'i01_01_1.bmp'
    """
    name = (value or "").strip() if isinstance(value, str) or value is None else str(value)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"`{column}` must be a file name without folders, but got {value!r}")
    return name


def inside(root: Path, relative: str, column: str, allow_outside_root: bool = False) -> Path:
    """``root / relative``, refused (ValueError) when it leads outside ``root`` (``../``, an absolute
    path, a symlink to elsewhere) unless ``allow_outside_root``; FileNotFoundError when it is no file."""
    text = (relative or "").strip()
    if not text:
        raise ValueError(f"`{column}` is empty")
    path = root / text
    if not allow_outside_root and not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"`{column}` {text!r} leads outside {root} (to {path.resolve()}); paths must stay inside "
                         "the folder, or pass `allow_outside_root=True`")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    return path


class FolderIndex:
    """The image files of a folder (optionally of its sub-folders too), looked up by name regardless
    of case: the published archives mix ``I01.BMP`` with ``i01_01_1.bmp``, which a case-sensitive
    file system would not pair up.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "I01.BMP").write_bytes(b"")
        >>> FolderIndex(folder).get("i01.bmp").name
        'I01.BMP'
    """

    def __init__(self, folder: Path, recursive: bool = False):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")
        self.folder = folder
        files = folder.rglob("*") if recursive else folder.iterdir()
        self.by_name: Dict[str, Path] = {}
        self.by_stem: Dict[str, Path] = {}
        for path in sorted(files):
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            self.by_name.setdefault(path.name.lower(), path)
            self.by_stem.setdefault(path.stem.lower(), path)

    def get(self, name: str) -> Path:
        """The file called ``name`` (any case), or FileNotFoundError naming the folder."""
        path = self.by_name.get(name.lower())
        if path is None:
            raise FileNotFoundError(f"image file not found: {self.folder / name}")
        return path

    def get_stem(self, stem: str) -> Path:
        """The image whose name without suffix is ``stem`` (any case, any image suffix)."""
        path = self.by_stem.get(stem.lower())
        if path is None:
            raise FileNotFoundError(f"image file not found: {self.folder / stem}.*")
        return path
