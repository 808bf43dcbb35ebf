"""The README's example of `rpmetric plot`: two tiny random-weight models (the tests' tiny ViT and
ConvNeXt, not real metrics), a generated NIGHTS folder, a robustness curve for each, and the figure.

Every triplet's left or right image is the reference itself and people chose it (p = 0 or 1), so
the clean accuracy is 100% by construction; the curves show how quickly APGD moves each model's
embedding of the reference away from its copy.

    python evals/figure_tiny.py [--out docs/plot-tiny-models.png] [--triplets 24] [--steps 10]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _common  # noqa: F401  (puts tests/ on sys.path)
import datagen
import tinymodels

from rpmetric.cli import main


def nights(root: Path, n: int) -> Path:
    """``n`` test triplets, alternately ImageNet and not, each with its true answer."""
    rows = [dict(id=f"t{i}", kind="left" if i % 2 else "right", p=0.0 if i % 2 else 1.0, votes=6, split="test",
                 is_imagenet=i % 4 < 2) for i in range(n)]
    return datagen.write_nights(root, rows, size=(40, 48))


def run(out: Path, n: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = nights(tmp / "nights", n)
        results = []
        for name, cfg in (("tiny-vit", tinymodels.TINY_VIT_CFG), ("tiny-convnext", tinymodels.TINY_CONVNEXT_CFG)):
            model = tinymodels.save_open_clip(tmp / name, cfg)
            results.append(tmp / f"{name}.json")
            argv = ["eval", "nights", str(root), "--model", str(model), "--workers", "0", "--device", "cpu",
                    "--attack", "linf", "--eps", "0", "1", "2", "3", "4", "--steps", str(steps),
                    "--out", str(results[-1])]
            assert main(argv) == 0
        labels = ["tiny ViT (random weights)", "tiny ConvNeXt (random weights)"]
        assert main(["plot", *map(str, results), "--out", str(out), "--labels", *labels]) == 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "plot-tiny-models.png")
    parser.add_argument("--triplets", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    run(args.out, args.triplets, args.steps)
