"""How much of each distance map falls in the one square where two images differ, on the tests'
two tiny random-weight models (not real metrics): the figures the README quotes.

The pair is the tests' (tests/test_interpret_maps.py): a smooth random 64 x 64 image A, and B = A
with other content in a 32 x 24 square (19 % of the area). Occlusion is run at three window sizes,
the gradient with its defaults (times the difference) and as the plain sensitivity
(``times_difference=False``, ``--sensitivity``).

    python evals/maps_square.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import _common  # noqa: F401  (puts tests/ on sys.path)
import numpy as np
import test_interpret_maps as pair
import tinymodels

import rpmetric
from rpmetric.interpret import distance_map


def main() -> None:
    a = pair._smooth(0)
    b = a.clone()
    b[..., pair.SQUARE[0], pair.SQUARE[1]] = pair._smooth(1)[..., pair.SQUARE[0], pair.SQUARE[1]]
    inside = np.zeros((pair.SIZE, pair.SIZE), bool)
    inside[pair.SQUARE] = True
    print(f"square: {inside.mean():.1%} of the area")
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in (("tiny ViT", tinymodels.TINY_VIT_CFG), ("tiny ConvNeXt", tinymodels.TINY_CONVNEXT_CFG)):
            metric = rpmetric.RobustDistance(str(tinymodels.save_open_clip(Path(tmp) / name, cfg)), device="cpu")
            for patch, stride in ((8, 4), (16, 8), (32, 16)):
                mass = distance_map(metric, a, b, patch=patch, stride=stride, progress=False)[0].abs().numpy()
                print(f"{name}: occlusion --patch {patch} --stride {stride}: {mass[inside].sum() / mass.sum():.1%} "
                      "of the mass in the square")
            for weighted in (True, False):
                g = distance_map(metric, a, b, "gradient", times_difference=weighted, progress=False)[0].numpy()
                label = "gradient" if weighted else "gradient --sensitivity"
                print(f"{name}: {label}: maximum {'inside' if inside.flat[g.argmax()] else 'outside'} the square, "
                      f"{g[inside].sum() / g.sum():.1%} of the mass in it")


if __name__ == "__main__":
    main()
