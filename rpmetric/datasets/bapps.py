"""BAPPS (LPIPS' benchmark): 2AFC triplets and JND pairs, files paired by sorted name.

Layouts: ``ROOT/2afc/{train,val}/CATEGORY/{ref,p0,p1,judge}`` and ``ROOT/jnd/val/CATEGORY/{p0,p1,same}``.
lpips zips four sorted file lists without checking them; here every set must share the same
file stems, so a missing or extra file is reported by name instead of silently shifting pairs.
Hidden files (``.DS_Store``, macOS' AppleDouble ``._000001.png``) are not entries; two files of one
stem in a folder (``000001.png`` and ``000001.jpg``) are refused, naming both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .records import BadItem, JNDPair, Triplet

__all__ = ["BAPPS_2AFC_CATEGORIES", "BAPPS_2AFC_TRAIN_CATEGORIES", "BAPPS_JND_CATEGORIES", "BAPPS_SUBSETS",
           "bapps_2afc_categories", "read_bapps_2afc", "read_bapps_jnd"]

BAPPS_2AFC_CATEGORIES = ("traditional", "cnn", "superres", "deblur", "color", "frameinterp")  # 2afc/val
BAPPS_2AFC_TRAIN_CATEGORIES = ("traditional", "cnn", "mix")  # 2afc/train, which lpips trains on
BAPPS_JND_CATEGORIES = ("traditional", "cnn")
BAPPS_SUBSETS = ("train", "val")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_bapps_2afc(root: Union[str, Path], category: str, subset: str = "val", *,
                    skipped: Optional[List[BadItem]] = None) -> List[Triplet]:
    """The 2AFC triplets of one BAPPS category, sorted by file name.

    Args:
        root: the BAPPS folder (holding ``2afc/``).
        category: one of ``traditional, cnn, superres, deblur, color, frameinterp``, or ``mix``
            (in ``train`` only).
        subset: ``val`` (5 raters per triplet) or ``train`` (2).
        skipped: if given, incomplete or bad entries are appended here and left out instead of raising.

    Example:
        >>> triplets = read_bapps_2afc("/data/bapps", "cnn")  # doctest: +SKIP
    """
    allowed = bapps_2afc_categories(subset, every=True)
    if category not in allowed and category in bapps_2afc_categories("train", every=True):
        raise ValueError(f"BAPPS category {category!r} exists in the train subset only (2afc/train/{category}); "
                         f"pass `subset='train'`, or choose one of {allowed}.")
    _check_choice("category", category, allowed)
    folder = Path(root) / "2afc" / subset / category
    kinds = {"ref": IMAGE_SUFFIXES, "p0": IMAGE_SUFFIXES, "p1": IMAGE_SUFFIXES, "judge": (".npy",)}
    triplets = [Triplet(stem, f["ref"], f["p0"], f["p1"], p)
                for stem, f, p in _entries(folder, kinds, "judge", skipped)]
    return _nonempty(triplets, folder)


def bapps_2afc_categories(subset: str = "val", every: bool = False) -> Tuple[str, ...]:
    """The 2AFC categories of a subset as BAPPS ships them; ``every=True`` adds every name the other
    subset has too, which a custom layout may hold (``mix`` exists in ``train`` only).

    Example:
        >>> bapps_2afc_categories("train")
        ('traditional', 'cnn', 'mix')
    """
    _check_choice("subset", subset, BAPPS_SUBSETS)
    if subset == "val":
        return BAPPS_2AFC_CATEGORIES
    if every:
        return BAPPS_2AFC_CATEGORIES + tuple(c for c in BAPPS_2AFC_TRAIN_CATEGORIES if c not in BAPPS_2AFC_CATEGORIES)
    return BAPPS_2AFC_TRAIN_CATEGORIES


def read_bapps_jnd(root: Union[str, Path], category: str, *, skipped: Optional[List[BadItem]] = None) -> List[JNDPair]:
    """The JND pairs of one BAPPS category (``traditional`` or ``cnn``), sorted by file name.

    Args:
        root: the BAPPS folder (holding ``jnd/``).
        category: ``traditional`` or ``cnn``.
        skipped: as in :func:`read_bapps_2afc`.

    Example:
        >>> pairs = read_bapps_jnd("/data/bapps", "traditional")  # doctest: +SKIP
    """
    _check_choice("category", category, BAPPS_JND_CATEGORIES)
    folder = Path(root) / "jnd" / "val" / category
    kinds = {"p0": IMAGE_SUFFIXES, "p1": IMAGE_SUFFIXES, "same": (".npy",)}
    pairs = [JNDPair(stem, f["p0"], f["p1"], same) for stem, f, same in _entries(folder, kinds, "same", skipped)]
    return _nonempty(pairs, folder)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"Argument `{name}` must be one of {tuple(choices)}, but got {value!r}.")


def _bad(stem: str, reason: str, skipped: Optional[List[BadItem]]) -> None:
    if skipped is None:
        raise ValueError(f"{reason}; fix it or pass `skipped=[]` to skip it")
    skipped.append(BadItem(stem, reason))


def _entries(folder: Path, kinds: Dict[str, Sequence[str]], value_kind: str,
             skipped: Optional[List[BadItem]]) -> Iterator[Tuple[str, Dict[str, Path], float]]:
    """``(stem, {kind: path}, share)`` of every complete entry whose ``value_kind`` file reads;
    the others are raised or skipped (see :func:`_bad`)."""
    for stem, files in _paired_files(folder, kinds, value_kind, skipped).items():
        try:
            share = _read_share(files[value_kind])
        except ValueError as err:
            _bad(stem, str(err), skipped)
            continue
        yield stem, files, share


def _paired_files(folder: Path, kinds: Dict[str, Sequence[str]], value_kind: str,
                  skipped: Optional[List[BadItem]]) -> Dict[str, Dict[str, Path]]:
    """``{stem: {kind: path}}`` for the stems present in every sub-folder, sorted by stem."""
    listing, ambiguous = {}, {}
    for kind, suffixes in kinds.items():
        sub = folder / kind
        if not sub.is_dir():
            raise FileNotFoundError(f"BAPPS folder not found: {sub}; expected {folder}/{{{','.join(kinds)}}}.")
        listing[kind] = {}
        for p in sorted(sub.iterdir()):
            if p.name.startswith(".") or p.suffix.lower() not in suffixes:  # .DS_Store, ._000001.png
                continue
            if p.stem in listing[kind]:
                ambiguous.setdefault(p.stem, []).append(f"{listing[kind][p.stem]} and {p}")
            listing[kind][p.stem] = p
    for stem, pairs in ambiguous.items():
        _bad(stem, f"{'; '.join(pairs)} share the stem {stem!r}, so which one pairs up is ambiguous; keep one", skipped)
        for files in listing.values():
            files.pop(stem, None)
    stems = sorted(set().union(*(set(v) for v in listing.values())))
    complete = [s for s in stems if all(s in listing[k] for k in kinds)]
    if len(complete) != len(stems):
        counts = ", ".join(f"{k}/ {len(v)}" for k, v in listing.items())
        example = next(s for s in stems if s not in complete)
        lacking = [k for k in kinds if example not in listing[k]]
        reason = (f"{folder}: the {value_kind} count does not match the images ({counts} files); "
                  f"e.g. {example!r} has no file in {', '.join(lacking)}/")
        if skipped is None:
            raise ValueError(f"{reason}; every sub-folder needs one file per stem, or pass `skipped=[]` to skip "
                             "incomplete entries")
        for s in stems:
            if s not in complete:
                skipped.append(BadItem(s, f"{folder}: {s!r} has no file in "
                                          f"{', '.join(k for k in kinds if s not in listing[k])}/"))
    return {s: {k: listing[k][s] for k in kinds} for s in complete}


def _read_share(path: Path) -> float:
    """The single fraction stored in a judge/same .npy file (never unpickled).

    The header is checked before the data are read, so a file claiming a huge array costs nothing.
    """
    try:
        f = open(path, "rb")
    except OSError as err:
        raise ValueError(f"{path} cannot be read as a .npy array: {err.strerror}") from None
    with f:
        if f.read(4) == b"PK\x03\x04":
            raise ValueError(f"{path} is an .npz archive; it must be a .npy array holding one number")
        f.seek(0)
        shape, dtype = _npy_header(path, f)
        if int(np.prod(shape, dtype=object)) != 1 or dtype.kind not in "iufO":  # O: np.load refuses it
            kind = " (a complex number is not a share)" if dtype.kind == "c" else ""
            raise ValueError(f"{path} must hold one number, but holds an array of shape {shape} and dtype "
                             f"{dtype}{kind}")
        f.seek(0)
        try:
            value = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{path} cannot be read as a .npy array: {err}") from None
    share = float(value.reshape(-1)[0])
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{path} must hold a share in [0, 1], but holds {share}")
    return share


def _npy_header(path: Path, f) -> Tuple[tuple, np.dtype]:
    """``(shape, dtype)`` from a .npy header, without reading the data."""
    try:
        if not f.read(1):
            raise EOFError("No data left in file")  # an empty (torn) file, as np.load says it
        f.seek(0)
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path} cannot be read as a .npy array: {err}") from None
    return shape, dtype


def _nonempty(items: list, folder: Path) -> list:
    if not items:
        raise ValueError(f"BAPPS category folder {folder} holds no usable entries.")
    return items
