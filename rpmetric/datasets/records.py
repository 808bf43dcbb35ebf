"""What the readers return: one human judgement per record, with image paths only (no pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Triplet", "JNDPair", "BadItem"]


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
class BadItem:
    """An entry a reader or loader skipped (with ``skip_bad``), and why."""

    id: str
    reason: str
