"""rpmetric.interpret.distance_map on the tiny random-weight ViT: occlusion against distances
computed window by window, its mass inside the one square where two images differ, exact zeros
for identical images; gradient (times difference, and the plain sensitivity) against finite
differences, its peak in that square and its zeros outside it, and bad arguments."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rpmetric
from rpmetric.interpret import distance_map, window_starts

SIZE = 64
SQUARE = (slice(16, 48), slice(28, 52))  # rows, columns: off-centre and not square-symmetric


def _smooth(seed: int, size: int = SIZE) -> torch.Tensor:
    coarse = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    return 0.2 + 0.6 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def pair():
    """(A, B, inside): B is A except inside SQUARE, where it holds other (smooth) content."""
    a = _smooth(0)
    b = a.clone()
    b[..., SQUARE[0], SQUARE[1]] = _smooth(1)[..., SQUARE[0], SQUARE[1]]
    inside = np.zeros((SIZE, SIZE), bool)
    inside[SQUARE] = True
    return a, b, inside


def test_occlusion_mass_lies_in_the_square_that_differs(tiny_metric, pair):
    a, b, inside = pair
    m = distance_map(tiny_metric, a, b, "occlusion", patch=8, stride=4, progress=False)[0].numpy()
    mass = np.abs(m)
    assert mass[inside].sum() >= 0.8 * mass.sum(), mass[inside].sum() / mass.sum()
    # windows that do not reach the square score exactly 0: nothing beyond patch - 1 pixels of it
    assert not mass[:16 - 7].any() and not mass[:, :28 - 7].any() and not mass[48 + 7:].any()


def test_occlusion_is_the_mean_change_of_the_covering_windows(tiny_metric, pair):
    a, b, _ = pair
    patch, stride = 8, 4
    m = distance_map(tiny_metric, a, b, "occlusion", patch=patch, stride=stride, batch_size=7, progress=False)[0]
    with torch.no_grad():
        base = float(tiny_metric(a, b))
        for row, col in [(20, 30), (47, 51), (17, 40)]:
            changes = []  # every window covering (row, col), occluded and measured one at a time
            for top in window_starts(SIZE, patch, stride):
                for left in window_starts(SIZE, patch, stride):
                    if top <= row < top + patch and left <= col < left + patch:
                        occluded = b.clone()
                        occluded[..., top:top + patch, left:left + patch] = a[..., top:top + patch, left:left + patch]
                        changes.append(base - float(tiny_metric(a, occluded)))
            assert len(changes) == 4
            assert float(m[row, col]) == pytest.approx(np.mean(changes), abs=1e-6)


def _embedded_batch_sizes(vit_folder):
    """A fresh metric on the tiny ViT, and the list of batch sizes its encoder is run on."""
    metric = rpmetric.RobustDistance(str(vit_folder), device="cpu")
    sizes = []
    metric.encoder.register_forward_hook(lambda module, inputs, output: sizes.append(output.shape[0]))
    return metric, sizes


def test_each_batch_embeds_a_once(vit_folder, pair):
    a, b, _ = pair
    metric, sizes = _embedded_batch_sizes(vit_folder)
    distance_map(metric, a, b, "occlusion", patch=8, stride=4, batch_size=7, progress=False)
    starts = window_starts(SIZE, 8, 4)
    differing = sum(1 for top in starts for left in starts  # the windows that overlap SQUARE
                    if top < 48 and top + 8 > 16 and left < 52 and left + 8 > 28)
    full, rest = divmod(differing, 7)
    assert sizes == [1, 1] + [1, 7] * full + ([1, rest] if rest else [])  # d(A, B), then each batch against one A
    sizes.clear()
    distance_map(metric, a, b, "gradient", samples=5, batch_size=2, progress=False)
    assert sizes == [1, 2, 1, 2, 1, 1]
    sizes.clear()
    distance_map(metric, torch.cat([a, b]), torch.cat([b, a]), "gradient", samples=3, batch_size=4, progress=False)
    assert sizes == [4, 4, 1, 2]  # a batch of two pairs' copies needs both As; then one pair's


def test_identical_images_give_an_all_zero_occlusion_map(tiny_metric, pair):
    a, b, _ = pair
    both = torch.cat([a, b])
    m = distance_map(tiny_metric, both, both, "occlusion", patch=16, stride=8, progress=False)
    assert m.shape == (2, SIZE, SIZE) and torch.equal(m, torch.zeros_like(m))


@pytest.mark.parametrize("model", ["vit", "convnext"])
def test_gradient_map_peaks_in_the_square(request, model, tiny_metric, pair):
    a, b, inside = pair
    metric = tiny_metric if model == "vit" else rpmetric.RobustDistance(
        str(request.getfixturevalue("convnext_folder")), device="cpu")
    m = distance_map(metric, a[0], b[0], "gradient", samples=4, progress=False).numpy()  # the defaults otherwise
    assert m.shape == (SIZE, SIZE)
    assert inside[np.unravel_index(np.argmax(m), m.shape)]


def test_gradient_map_is_zero_where_the_images_agree(tiny_metric, pair):
    a, b, inside = pair
    m = distance_map(tiny_metric, a, b, "gradient", samples=2, smooth=0.0, progress=False)[0].numpy()
    assert not m[~inside].any()  # exactly: the weight |B - A| is 0 there, whatever the gradient
    assert (m[inside] > 0).mean() > 0.9
    plain = distance_map(tiny_metric, a, b, "gradient", samples=2, smooth=0.0, times_difference=False,
                         progress=False)[0].numpy()
    assert (plain[~inside] > 0).mean() > 0.9  # a sensitivity: it does not vanish where they agree


@pytest.mark.parametrize("times_difference", [False, True])
def test_gradient_matches_finite_differences(tiny_metric, pair, times_difference):
    a, b, inside = pair
    m = distance_map(tiny_metric, a, b, "gradient", samples=1, noise=0.0, smooth=0.0, times_difference=times_difference,
                     progress=False)[0]
    # central differences through the forward pass only, on a float64 copy of the encoder
    exact = copy.deepcopy(tiny_metric).double()
    h = 1e-2
    peak = tuple(int(v) for v in np.unravel_index(int(m.argmax()), m.shape))
    for row, col in [peak, (30, 40), (20, 50)] + ([] if times_difference else [(5, 60)]):
        assert inside[row, col] or not times_difference
        total = 0.0
        for channel in range(3):
            up, down = b.double().clone(), b.double().clone()
            up[0, channel, row, col] += h
            down[0, channel, row, col] -= h
            with torch.no_grad():
                f = F.normalize(exact.embed(a.double(), normalize=False).double(), dim=-1)
                d = [0.5 * (f - F.normalize(exact.embed(x, normalize=False).double(), dim=-1)).pow(2).sum()
                     for x in (up, down)]
            weight = float(b[0, channel, row, col] - a[0, channel, row, col]) if times_difference else 1.0
            total += abs(float(d[0] - d[1]) / (2 * h) * weight)
        assert float(m[row, col]) == pytest.approx(total, rel=0.05, abs=1e-7), (row, col)


def test_gradient_noise_is_seeded(tiny_metric, pair):
    a, b, _ = pair
    first = distance_map(tiny_metric, a, b, "gradient", samples=3, seed=1, batch_size=2, progress=False)
    again = distance_map(tiny_metric, a, b, "gradient", samples=3, seed=1, batch_size=3, progress=False)
    other = distance_map(tiny_metric, a, b, "gradient", samples=3, seed=2, progress=False)
    assert torch.allclose(first, again, rtol=1e-4, atol=1e-9)  # the same noise whatever the batch size
    assert not torch.allclose(first, other, rtol=1e-2)


def test_value_range_is_the_metric_s(vit_folder, tiny_metric, pair):
    a, b, _ = pair
    signed = rpmetric.RobustDistance(str(vit_folder), device="cpu", value_range=(-1, 1))
    unit = distance_map(tiny_metric, a, b, patch=16, stride=16, progress=False)
    both = distance_map(signed, a * 2 - 1, b * 2 - 1, patch=16, stride=16, progress=False)
    assert torch.allclose(unit, both, atol=1e-6)


BAD = [
    (dict(method="lime"), ValueError, "`method` must be one of 'occlusion', 'gradient'"),
    (dict(patch=65), ValueError, "`patch` (65) must be at most the image's shorter side (64 px"),
    (dict(stride=0), ValueError, "`stride` must be at least 1"),
    (dict(b=torch.rand(1, 3, 64, 48)), ValueError, "`a` is 64 x 64 pixels but `b` is 48 x 64"),
    (dict(b=torch.rand(3, 3, 64, 64), a=torch.rand(2, 3, 64, 64)), ValueError, "Batch sizes of `a` (2) and `b` (3)"),
    (dict(method="gradient", noise=2.0), ValueError, "`noise` must be in [0, 1]"),
    (dict(method="gradient", times_difference=1), TypeError, "`times_difference` must be True or False"),
    (dict(b=torch.rand(1, 3, 64, 64) * 255), ValueError, "outside value_range"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments(tiny_metric, kwargs, error, match):
    kwargs = {"a": torch.rand(1, 3, 64, 64), "b": torch.rand(1, 3, 64, 64), "progress": False, **kwargs}
    with pytest.raises(error, match=match.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        distance_map(tiny_metric, **kwargs)


@pytest.mark.gpu
def test_maps_run_on_the_metric_s_cuda_device(vit_folder, pair):
    a, b, inside = pair
    metric = rpmetric.RobustDistance(str(vit_folder), device="cuda")
    for method in ("occlusion", "gradient"):
        m = distance_map(metric, a, b, method, patch=8, stride=4, progress=False)  # inputs on the CPU
        assert m.device.type == "cuda" and m.shape == (1, SIZE, SIZE)
