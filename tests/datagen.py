"""Generators of NIGHTS and BAPPS folders in their exact layouts, with answers known by hand.

Every triplet is built from two images: a reference A and a very different image B (its colour
negative, on a different pattern). Which file is a copy of which decides the distances exactly,
for any metric with d(x, x) = 0 < d(A, B):

- ``"left"``:  left = A = ref, right = B  -> d0 = 0 < d1, per-triplet 2AFC score ``1 - p``
- ``"right"``: right = A = ref, left = B  -> d1 = 0 < d0, score ``p``
- ``"tie"``:   left = right = B           -> d0 == d1,    score ``0.5``

JND pairs use ``p1 = p0 + amplitude * noise`` with no clipping, so pixel L2 grows with the
amplitude and ``amplitude == 0`` gives identical images.

Used by the evaluation tests and reusable by other test modules (``import datagen``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

NIGHTS_HEADER = ["id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split",
                 "is_imagenet", "prompt"]


def pattern(seed: int, size: Tuple[int, int] = (32, 32), low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """A smooth random RGB image ``H x W x 3`` float in [low, high] (smooth, so resizing keeps it distinct)."""
    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.random((4, 4, 3))
    ys = np.linspace(0, 3, h)[:, None]
    xs = np.linspace(0, 3, w)[None, :]
    y0, x0 = np.floor(ys).astype(int).clip(0, 2), np.floor(xs).astype(int).clip(0, 2)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    img = (coarse[y0, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1, x0] * fy * (1 - fx)
           + coarse[y0, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1, x0 + 1] * fy * fx)
    return low + (high - low) * img


def save_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def _pair_images(seed: int, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    a = pattern(seed, size)
    b = 1.0 - pattern(seed + 100_000, size)  # a different pattern, and negated: far from A for any encoder
    return a, b


def _triplet_images(kind: str, seed: int, size: Tuple[int, int]):
    a, b = _pair_images(seed, size)
    if kind == "left":
        return a, a, b
    if kind == "right":
        return a, b, a
    if kind == "tie":
        return a, b, b
    raise ValueError(f"kind must be one of ('left', 'right', 'tie'), but got {kind!r}")


# -- NIGHTS -----------------------------------------------------------------------------------
def write_nights(root: Path, rows: Sequence[Dict], size: Tuple[int, int] = (32, 32)) -> Path:
    """Write ``root/data.csv``, ``root/ref/...`` and ``root/distort/...`` like the NIGHTS release.

    Args:
        rows: dicts with ``id``, ``kind`` ("left" | "right" | "tie"), ``p`` (right_vote),
            ``votes``, ``split`` and ``is_imagenet`` (bool).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(NIGHTS_HEADER)
        for n, row in enumerate(rows):
            folder = f"{n // 4:03d}"
            stem = f"{n:03d}"
            ref, left, right = _triplet_images(row["kind"], seed=n, size=size)
            paths = [f"ref/{folder}/{stem}.png", f"distort/{folder}/{stem}_0.png", f"distort/{folder}/{stem}_1.png"]
            for rel, img in zip(paths, (ref, left, right)):
                save_png(root / rel, img)
            writer.writerow([row["id"], 1.0 - row["p"], row["p"], row["votes"], *paths, row["split"],
                             row["is_imagenet"], "a photo"])
    return root


def nights_known(root: Path, size: Tuple[int, int] = (32, 32)) -> Dict[str, Dict]:
    """A small NIGHTS folder and its expected results ``{split: {"n", "score"}}`` (plus ``"total"``).

    Includes rows with fewer than 6 votes (which must be dropped: counting them would change every
    expected score), imagenet and non-imagenet test rows, fractional p and ties. Worked by hand:

    - test_imagenet: left p=0 (1), right p=1 (1), tie (0.5), right p=0.75 (0.75)  -> 3.25 / 4 = 0.8125
    - test_no_imagenet: left p=1 (0), left p=0.25 (0.75)                         -> 0.75 / 2 = 0.375
    - total = (4 * 0.8125 + 2 * 0.375) / 6 = 4.0 / 6
    - val: right p=0 (0), tie (0.5)                                               -> 0.25
    - train: left p=0 (1)                                                         -> 1.0
    - dropped (votes < 6): test left p=1, test_no_imagenet right p=0, val left p=0
    """
    rows = [
        dict(id="ti-left-0", kind="left", p=0.0, votes=6, split="test", is_imagenet=True),
        dict(id="ti-right-1", kind="right", p=1.0, votes=7, split="test", is_imagenet=True),
        dict(id="tn-left-1", kind="left", p=1.0, votes=6, split="test", is_imagenet=False),
        dict(id="ti-tie", kind="tie", p=1.0, votes=6, split="test", is_imagenet=True),
        dict(id="drop-ti", kind="left", p=1.0, votes=5, split="test", is_imagenet=True),
        dict(id="tn-left-q", kind="left", p=0.25, votes=8, split="test", is_imagenet=False),
        dict(id="ti-right-3q", kind="right", p=0.75, votes=6, split="test", is_imagenet=True),
        dict(id="drop-tn", kind="right", p=0.0, votes=3, split="test", is_imagenet=False),
        dict(id="val-right-0", kind="right", p=0.0, votes=6, split="val", is_imagenet=False),
        dict(id="val-tie", kind="tie", p=0.0, votes=6, split="val", is_imagenet=True),
        dict(id="drop-val", kind="left", p=0.0, votes=2, split="val", is_imagenet=False),
        dict(id="train-left", kind="left", p=0.0, votes=6, split="train", is_imagenet=True),
    ]
    write_nights(root, rows, size=size)
    return {
        "test_imagenet": {"n": 4, "score": 0.8125},
        "test_no_imagenet": {"n": 2, "score": 0.375},
        "total": {"n": 6, "score": 4.0 / 6.0},
        "test": {"n": 6, "score": 4.0 / 6.0},
        "val": {"n": 2, "score": 0.25},
        "train": {"n": 1, "score": 1.0},
    }


# -- BAPPS ------------------------------------------------------------------------------------
def write_bapps_2afc(root: Path, category: str, entries: Sequence[Tuple[str, float]], subset: str = "val",
                     size: int = 64) -> Path:
    """``root/2afc/SUBSET/CATEGORY/{ref,p0,p1,judge}/NNNNNN.{png,npy}``; entries are ``(kind, p)``.

    judge files hold float32 arrays of shape (1,), as in the BAPPS release.
    """
    folder = Path(root) / "2afc" / subset / category
    for n, (kind, p) in enumerate(entries):
        stem = f"{n:06d}"
        ref, left, right = _triplet_images(kind, seed=1000 + n, size=(size, size))
        for sub, img in (("ref", ref), ("p0", left), ("p1", right)):
            save_png(folder / sub / f"{stem}.png", img)
        (folder / "judge").mkdir(parents=True, exist_ok=True)
        np.save(folder / "judge" / f"{stem}.npy", np.array([p], dtype=np.float32))
    return folder


BAPPS_2AFC_KNOWN = {
    # category: entries, expected score (hand-worked; judge fractions from 5 raters)
    "traditional": ([("left", 0.2), ("right", 0.6), ("tie", 0.8)], (0.8 + 0.6 + 0.5) / 3),
    "cnn": ([("right", 1.0), ("left", 0.4)], (1.0 + 0.6) / 2),
}


def write_bapps_jnd(root: Path, category: str, entries: Sequence[Tuple[float, float]], size: int = 64) -> Path:
    """``root/jnd/val/CATEGORY/{p0,p1,same}``; entries are ``(amplitude, same)``.

    p1 = p0 + amplitude * noise with p0 in [0.25, 0.75] and |noise| <= 1, amplitude <= 0.25, so no
    pixel clips and pixel L2 grows with the amplitude.
    """
    folder = Path(root) / "jnd" / "val" / category
    for n, (amplitude, same) in enumerate(entries):
        if not 0 <= amplitude <= 0.25:
            raise ValueError(f"amplitude must be in [0, 0.25] so that no pixel clips, but got {amplitude}")
        stem = f"{n:06d}"
        p0 = pattern(2000 + n, (size, size), 0.25, 0.75)
        noise = np.sign(np.random.default_rng(n).standard_normal(p0.shape))
        save_png(folder / "p0" / f"{stem}.png", p0)
        save_png(folder / "p1" / f"{stem}.png", p0 + amplitude * noise)
        (folder / "same").mkdir(parents=True, exist_ok=True)
        np.save(folder / "same" / f"{stem}.npy", np.array([same], dtype=np.float32))
    return folder


# Entries in an order different from the distance order, so a scorer that forgets to sort fails.
# Sorted by amplitude: same = 1, 0.6, 0.2, 0.8, 0.
#   TP = 1, 1.6, 1.8, 2.6, 2.6   FP = 0, 0.4, 1.2, 1.4, 2.4   sum(same) = 2.6
#   recall = 1/2.6, 1.6/2.6, 1.8/2.6, 1, 1;  precision = 1, 0.8, 0.6, 0.65, 0.52
#   envelope = 1, 0.8, 0.65, 0.65, 0.52
#   AP = (1 * 1 + 0.6 * 0.8 + 0.2 * 0.65 + 0.8 * 0.65) / 2.6 = 2.13 / 2.6
JND_KNOWN: Tuple[List[Tuple[float, float]], float] = (
    [(0.2, 0.8), (0.0, 1.0), (0.25, 0.0), (0.1, 0.6), (0.15, 0.2)],
    2.13 / 2.6,
)


# -- THINGS odd-one-out ----------------------------------------------------------------------------
# Each line's three images, by kind (the people's odd one out is always the third, as in DreamSim's file):
# - "right": im1 = im2 = A, im3 = B  -> d12 = 0 is the smallest alone: the metric picks 3, credit 1
# - "wrong": im1 = im3 = A, im2 = B  -> d13 = 0 alone: the metric picks 2, credit 0
# - "tie3":  im1 = im2 = im3 = A     -> all three distances 0: three candidates, credit 1/3
# - "tie2":  im1 black, im2 white on the left half, im3 white on the right half: pixel L2 gives
#            d12 = d13 = 1/2 < d23 = 1, sums of 0s and 1s, so exact: 3 and 2 tie, credit 1/2. For pixel
#            baselines only.
# Identical images are embedded once, so the zero distances and the three-way tie are exact for any metric.
def _odd_images(kind: str, seed: int, size: Tuple[int, int]):
    a, b = _pair_images(seed, size)
    if kind == "right":
        return a, a, b
    if kind == "wrong":
        return a, b, a
    if kind == "tie3":
        return a, a, a
    if kind == "tie2":
        black, left = np.zeros((*size, 3)), np.zeros((*size, 3))
        left[:, :size[1] // 2] = 1.0
        return black, left, left[:, ::-1]
    raise ValueError(f"kind must be one of ('right', 'wrong', 'tie3', 'tie2'), but got {kind!r}")


def write_things(root: Path, kinds: Sequence[str], size: Tuple[int, int] = (32, 32), name: str = "things_valset.txt",
                 suffix: str = ".png") -> Path:
    """``root/{id}.png`` and ``root/things_valset.txt`` (three ids a line), one line per kind; line n's ids
    are ``t{n}a``, ``t{n}b``, ``t{n}c``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, kind in enumerate(kinds, start=1):
        ids = [f"t{n}{c}" for c in "abc"]
        for ident, img in zip(ids, _odd_images(kind, seed=3000 + n, size=size)):
            save_png(root / f"{ident}{suffix}", img)
        lines.append(" ".join(ids))
    (root / name).write_text("\n".join(lines) + "\n")
    return root


# Hand-worked: 1 + 0 + 1/3 + 1/2 + 1 over 5 lines. DreamSim's rule (d12 <= d13 and d12 <= d23) would count
# both ties right: 4/5.
THINGS_KNOWN = (["right", "wrong", "tie3", "tie2", "right"], (1 + 0 + 1 / 3 + 1 / 2 + 1) / 5)
# For any encoder (no tie2): 1 + 0 + 1/3 + 1 over 4 lines.
THINGS_KNOWN_ANY_METRIC = (["right", "wrong", "tie3", "right"], (1 + 0 + 1 / 3 + 1) / 4)


# -- triplet CSV files ---------------------------------------------------------------------------------
def write_triplets_csv(path: Path, entries: Sequence[Tuple[str, float]], size: Tuple[int, int] = (32, 32),
                       ids: bool = False) -> Path:
    """``path`` (header ``[id,]ref,left,right,p``) and its images in ``img/`` beside it; entries are
    ``(kind, p)`` with the kinds of NIGHTS (left, right, tie)."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow((["id"] if ids else []) + ["ref", "left", "right", "p"])
        for n, (kind, p) in enumerate(entries):
            rel = [f"img/{n:03d}_{part}.png" for part in ("ref", "left", "right")]
            for r, img in zip(rel, _triplet_images(kind, seed=4000 + n, size=size)):
                save_png(folder / r, img)
            writer.writerow(([f"row-{n}"] if ids else []) + rel + [p])
    return path


# Hand-worked 2AFC: 0.75 + 0.9 + 0.5 + 0 = 2.15 over 4; binary accuracy (label right when p > 0.5):
# left p=0.25 right, right p=0.9 right, tie 0.5, left p=1 wrong: 2.5 over 4.
TRIPLETS_KNOWN = ([("left", 0.25), ("right", 0.9), ("tie", 0.3), ("left", 1.0)], 2.15 / 4, 2.5 / 4)
