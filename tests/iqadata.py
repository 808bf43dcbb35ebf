"""IQA datasets generated in each published layout, with distances known by construction.

Every distorted image is its reference plus a constant offset of ``k`` grey levels (no clipping:
references lie in [50, 200]), so the ``l2`` pixel baseline's distance is exactly ``(k / 255)^2`` and
the metric's ranking of the pairs is the ranking of ``k``.

An entry is ``(k, score, type)``: the offset, the published score and the distortion type code.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image

Entry = Tuple[int, float, str]


def reference(seed: int, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(50, 201, size=(size, size, 3), dtype=np.uint8)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def shifted(ref: np.ndarray, k: int) -> np.ndarray:
    return (ref.astype(np.int16) + k).astype(np.uint8)


def l2_distance(k: int) -> float:
    return (k / 255) ** 2


def write_tid2013(root: Path, entries: Sequence[Entry]) -> List[str]:
    """``reference_images/I01.BMP`` (upper case, as published), ``distorted_images/i01_TT_L.bmp``."""
    ref = reference(1)
    save(root / "reference_images" / "I01.BMP", ref)
    lines, names = [], []
    for level, (k, score, kind) in enumerate(entries, start=1):
        name = f"i01_{kind}_{level}.bmp"
        save(root / "distorted_images" / name, shifted(ref, k))
        lines.append(f"{score} {name}")
        names.append(name)
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    return names


def write_kadid10k(root: Path, entries: Sequence[Entry]) -> List[str]:
    ref = reference(2)
    save(root / "images" / "I01.png", ref)
    rows, names = [], []
    for level, (k, score, kind) in enumerate(entries, start=1):
        name = f"I01_{kind}_{level:02d}.png"
        save(root / "images" / name, shifted(ref, k))
        rows.append([name, "I01.png", score, 0.1])
        names.append(name)
    _csv(root / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], rows)
    return names


CSIQ_FOLDERS = {1: ("awgn", "AWGN"), 2: ("jpeg", "JPEG"), 5: ("blur", "BLUR")}


def write_csiq(root: Path, entries: Sequence[Tuple[int, float, int]]) -> List[str]:
    """Entries ``(k, dmos, dst_idx)``; ``csiq.DMOS.csv`` is the all_by_image sheet saved as CSV."""
    ref = reference(3)
    save(root / "src_imgs" / "1600.png", ref)
    rows, names = [], []
    for level, (k, dmos, idx) in enumerate(entries, start=1):
        folder, suffix = CSIQ_FOLDERS[idx]
        name = f"1600.{suffix}.{level}.png"
        save(root / "dst_imgs" / folder / name, shifted(ref, k))
        rows.append(["1600", idx, folder, level, 0.05, dmos])
        names.append(name)
    _csv(root / "csiq.DMOS.csv", ["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"], rows)
    return names


def write_pipal(root: Path, entries: Sequence[Entry], split: str = "Train") -> List[str]:
    ref = reference(4)
    save(root / f"{split}_Ref" / "A0001.bmp", ref)
    lines, names = [], []
    for n, (k, elo, kind) in enumerate(entries):
        name = f"A0001_{kind}_{n:02d}.bmp"
        save(root / f"{split}_Dis" / name, shifted(ref, k))
        lines.append(f"{name},{elo}")
        names.append(name)
    (root / f"{split}_Label").mkdir(parents=True, exist_ok=True)
    (root / f"{split}_Label" / "A0001.txt").write_text("\n".join(lines) + "\n")
    return names


def write_pieapp(root: Path, entries: Sequence[Entry], preferences: Sequence[Tuple[int, int, float]],
                 split: str = "test") -> List[str]:
    """Per-image scores of ``entries`` and pairwise labels ``(i, j, P(i preferred))`` between them."""
    ref = reference(5)
    save(root / "reference_images" / split / "ref_001.png", ref)
    names = []
    for n, (k, score, kind) in enumerate(entries):
        name = f"distort_001_{kind}_inter_{n}.png"
        save(root / "distorted_images" / split / "distort_001" / name, shifted(ref, k))
        names.append(name)
    labels = root / "labels" / split
    header = ["ref. image", "distorted image A", "distorted image B", "raw probability of preference for A"]
    _csv(labels / "ref_001_pairwise_labels.csv", header,
         [["ref_001.png", names[i], names[j], p] for i, j, p in preferences])
    if split == "test":
        _csv(labels / "ref_001_per_image_score.csv", ["ref. image", "distorted image", "score for distorted image"],
             [["ref_001.png", name, score] for name, (_, score, _) in zip(names, entries)])
    return names


def write_iqa_csv(root: Path, entries: Sequence[Entry], name: str = "scores.csv", splits=None) -> Path:
    ref = reference(6)
    save(root / "ref" / "r.png", ref)
    rows = []
    for n, (k, score, kind) in enumerate(entries):
        save(root / "dist" / f"{n}.png", shifted(ref, k))
        rows.append(["ref/r.png", f"dist/{n}.png", score, kind, splits[n] if splits else "test"])
    return _csv(root / name, ["ref", "dist", "mos", "type", "split"], rows)


def write_pairs(root: Path, entries: Sequence[Tuple[int, float]], name: str = "pairs.csv") -> Path:
    ref = reference(7)
    save(root / "img" / "a.png", ref)
    rows = []
    for n, (k, score) in enumerate(entries):
        save(root / "img" / f"b{n}.png", shifted(ref, k))
        rows.append(["img/a.png", f"img/b{n}.png", score])
    return _csv(root / name, ["a", "b", "score"], rows)


def _csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_csiq_xlsx(root: Path, entries: Sequence[Tuple[int, float, int]]) -> Path:
    """CSIQ as published: the scores in ``csiq.DMOS.xlsx``, whose ``all_by_image`` sheet has a title
    row above its header (the reader looks for the header), after a first sheet of notes."""
    import openpyxl

    write_csiq(root, entries)
    csv_path = root / "csiq.DMOS.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    csv_path.unlink()
    book = openpyxl.Workbook()
    book.active.title = "notes"
    book.active.append(["CSIQ DMOS"])
    sheet = book.create_sheet("all_by_image")
    sheet.append(["DMOS of each image"])
    sheet.append(rows[0])
    for row in rows[1:]:  # numbers as numbers, as Excel holds them
        sheet.append([int(row[0]), int(row[1]), row[2], int(row[3]), float(row[4]), float(row[5])])
    path = root / "csiq.DMOS.xlsx"
    book.save(path)
    return path
