"""The README's examples of `rpmetric invert` and `rpmetric explain`, made with two tiny
random-weight models (the tests' tiny ViT and ConvNeXt, not real metrics) on three drawn images.

Random weights carry no semantics, so the inversions reach a high cosine while looking like
noise; the figures show what the commands write, not what a robust encoder sees.

    python evals/figure_invert.py [--docs docs] [--steps 300]

writes docs/invert-tiny-models.png (the grid; the per-inversion PNGs stay in a temporary folder)
and docs/explain-tiny-model.png (occlusion and gradient maps of a pair that differs in one square).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import _common  # noqa: F401  (puts tests/ on sys.path)
import tinymodels
from PIL import Image, ImageDraw

from rpmetric.cli import main

SIZE = 64


def drawings(folder: Path) -> list:
    """Three 64 x 64 pictures: a disc, a triangle, stripes."""
    folder.mkdir(parents=True, exist_ok=True)
    disc = Image.new("RGB", (SIZE, SIZE), (40, 70, 160))
    ImageDraw.Draw(disc).ellipse((14, 14, 50, 50), fill=(230, 60, 40))
    triangle = Image.new("RGB", (SIZE, SIZE), (235, 225, 200))
    ImageDraw.Draw(triangle).polygon([(32, 8), (58, 56), (6, 56)], fill=(30, 130, 60))
    stripes = Image.new("RGB", (SIZE, SIZE), (250, 250, 250))
    for x in range(0, SIZE, 16):
        ImageDraw.Draw(stripes).rectangle((x, 0, x + 7, SIZE), fill=(20, 20, 20))
    paths = []
    for name, image in (("disc", disc), ("triangle", triangle), ("stripes", stripes)):
        paths.append(folder / f"{name}.png")
        image.save(paths[-1])
    return paths


def run(docs: Path, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = drawings(tmp / "images")
        models = [tinymodels.save_open_clip(tmp / name, cfg) for name, cfg in
                  (("tiny-vit", tinymodels.TINY_VIT_CFG), ("tiny-convnext", tinymodels.TINY_CONVNEXT_CFG))]
        grid = tmp / "out" / "grid.png"
        argv = ["invert", *map(str, images), "--out", str(grid), "--steps", str(steps), "--device", "cpu", "--quiet"]
        for model in models:
            argv += ["--model", str(model)]
        assert main(argv) == 0
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(grid, docs / "invert-tiny-models.png")
        changed = Image.open(images[0]).copy()
        ImageDraw.Draw(changed).rectangle((36, 8, 55, 27), fill=(250, 230, 40))  # one square differs
        changed.save(tmp / "images" / "disc-square.png")
        assert main(["explain", str(images[0]), str(tmp / "images" / "disc-square.png"), "--model", str(models[0]),
                     "--out", str(docs / "explain-tiny-model.png"), "--method", "both", "--patch", "8", "--stride",
                     "4", "--device", "cpu", "--quiet"]) == 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    run(args.docs, args.steps)
