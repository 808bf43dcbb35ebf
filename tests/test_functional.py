"""rpmetric.functional.rgb_to_lab against published CIELAB values and skimage, which lpips calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rpmetric.functional import rgb_to_lab

# sRGB (8-bit) -> CIELAB (D65, 2-degree observer). Pure white and black are L* = 100 and 0 by the
# definition of L*; the primaries are the published sRGB values (Bruce Lindbloom's calculator,
# Wikipedia's sRGB page); sRGB 119 grey is the well-known L* = 50 grey and 128 the L* = 53.59 one.
# The rest (below the cube-root knee, and two colours) are skimage 0.26's rgb2lab, run once outside
# the suite. skimage's white is (0.95047, 1, 1.08883), so white's a, b are a few thousandths off 0.
LAB_TABLE = [
    ((255, 255, 255), (100.0, 0.0, 0.0)),
    ((0, 0, 0), (0.0, 0.0, 0.0)),
    ((255, 0, 0), (53.2408, 80.0925, 67.2032)),
    ((0, 255, 0), (87.7347, -86.1827, 83.1793)),
    ((0, 0, 255), (32.2970, 79.1875, -107.8602)),
    ((119, 119, 119), (50.03, 0.0, 0.0)),
    ((128, 128, 128), (53.59, 0.0, 0.0)),
    ((5, 5, 5), (1.3709, -0.0001, 0.0002)),  # linear part of both sRGB's gamma and L*
    ((10, 20, 30), (5.9485, -0.6693, -8.1364)),
    ((200, 150, 50), (65.2198, 9.3304, 57.0323)),
]


@pytest.mark.parametrize("rgb, lab", LAB_TABLE)
def test_rgb_to_lab_matches_published_values(rgb, lab):
    x = torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1) / 255
    got = rgb_to_lab(x)[0, :, 0, 0].tolist()
    assert got == pytest.approx(lab, abs=0.01)


def test_rgb_to_lab_keeps_shape_and_is_per_pixel():
    x = torch.tensor([c for c, _ in LAB_TABLE], dtype=torch.float64).T.reshape(1, 3, 2, 5) / 255
    lab = rgb_to_lab(x)
    assert lab.shape == (1, 3, 2, 5) and lab.dtype == torch.float64
    expected = torch.tensor([v for _, v in LAB_TABLE], dtype=torch.float64).T.reshape(1, 3, 2, 5)
    assert torch.allclose(lab, expected, atol=0.01)


def test_rgb_to_lab_agrees_with_skimage():
    from skimage import color  # lpips' own Lab conversion; a test dependency only
    rgb = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    expected = color.rgb2lab(rgb)
    got = rgb_to_lab(torch.tensor(rgb).permute(2, 0, 1)[None].double() / 255)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() < 1e-9
