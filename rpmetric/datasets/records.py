"""What the readers return: one human judgement per record, with image paths only (no pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["Triplet", "JNDPair", "ScoredPair", "BadItem", "OddOneOut", "ODD_POSITIONS"]


@dataclass(frozen=True)
class Triplet:
    """One 2AFC judgement: which of ``left`` and ``right`` looks more like ``ref``.

    Attributes:
        id: the dataset's own id (NIGHTS ``id`` column, BAPPS file stem).
        ref, left, right: image files; ``left`` is NIGHTS' left / BAPPS' p0, ``right`` is right / p1.
        p: share of people who preferred ``right`` (NIGHTS ``right_vote``, BAPPS ``judge``), in [0, 1].
    """

    id: str
    ref: Path
    left: Path
    right: Path
    p: float


@dataclass(frozen=True)
class JNDPair:
    """One just-noticeable-difference judgement: are ``p0`` and ``p1`` the same image?

    Attributes:
        id: BAPPS file stem.
        p0, p1: image files.
        same: share of people who judged the pair identical, in [0, 1].
    """

    id: str
    p0: Path
    p1: Path
    same: float


@dataclass(frozen=True)
class ScoredPair:
    """One opinion score of a pair: how good ``dist`` looks next to ``ref`` (full-reference IQA), or how
    similar two images are (a pair file).

    Attributes:
        id: the dataset's own id (the distorted image's file name; a pair file's line).
        ref, dist: image files (a pair file's ``a`` and ``b``).
        score: the score as published; whether higher means better is the reader's to state
            (see :data:`rpmetric.datasets.iqa.IQA_DATASETS`).
        kind: the distortion type, where the dataset has types; None otherwise.
    """

    id: str
    ref: Path
    dist: Path
    score: float
    kind: Optional[str] = None


@dataclass(frozen=True)
class BadItem:
    """An entry a reader or loader skipped (with ``skip_bad``), and why."""

    id: str
    reason: str


ODD_POSITIONS = (1, 2, 3)  # the 1-based position of an image within an odd-one-out triplet


@dataclass(frozen=True)
class OddOneOut:
    """One odd-one-out judgement: which of three images fits least with the other two.

    Attributes:
        id: the record's id (THINGS: the line number in the triplet file).
        im1, im2, im3: image files, in the order the dataset lists them.
        odd: the position (1, 2 or 3) of the image people chose as the odd one out; in DreamSim's
            THINGS file it is always 3, the last image.
    """

    id: str
    im1: Path
    im2: Path
    im3: Path
    odd: int
