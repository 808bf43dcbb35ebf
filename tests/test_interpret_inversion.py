"""rpmetric.interpret.invert on the tiny random-weight models: it reaches the target embedding,
lands nearer the image it inverts than another, is reproducible from its seed, and refuses bad
arguments with messages that name them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rpmetric
from rpmetric.interpret import cosine, invert, total_variation


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Smooth random images (upsampled 4x4 noise) in [0.1, 0.9]: unlike one another, far from the bounds."""
    coarse = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return 0.1 + 0.8 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def inverted(tiny_metric):
    """(x, inversions of x's embeddings from noise): two images, 100 steps with the default regularisers."""
    x = _images(2, seed=0)
    target = tiny_metric.embed(x, normalize=False)
    return x, invert(tiny_metric, target, steps=100, init="noise", seed=0, progress=False)


def test_inversion_from_noise_reaches_the_target(tiny_metric, inverted):
    x, images = inverted
    assert images.shape == x.shape and images.min() >= 0 and images.max() <= 1
    target = tiny_metric.embed(x, normalize=False)
    # the cosine from the raw embeddings, not the function under test's
    got = F.cosine_similarity(tiny_metric.embed(images, normalize=False), target, dim=-1)
    assert got.min() >= 0.99, got
    assert torch.allclose(cosine(tiny_metric, images, target), got, atol=1e-5)
    assert torch.allclose(cosine(tiny_metric, images, x), got, atol=1e-5)  # a target given as images


def test_inverting_x_lands_nearer_x_than_y(tiny_metric, inverted):
    x, images = inverted
    for k in range(2):
        own, other = float(tiny_metric(images[k:k + 1], x[k:k + 1])), float(tiny_metric(images[k:k + 1], x[1 - k:2 - k]))
        assert own < other and own < 0.5 * float(tiny_metric(x[:1], x[1:])), (k, own, other)


def test_same_seed_same_images_and_the_global_rng_is_untouched(tiny_metric):
    target = tiny_metric.embed(_images(1, seed=2))
    state = torch.get_rng_state()
    first = invert(tiny_metric, target, steps=5, seed=3, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    again = invert(tiny_metric, target, steps=5, seed=3, progress=False)
    other = invert(tiny_metric, target, steps=5, seed=4, progress=False)
    assert torch.allclose(first, again, atol=1e-6)
    assert (first - other).abs().max() > 0.1  # another noise start


def test_total_variation_against_numpy():
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    a = x.numpy().astype(np.float64)
    expected = np.abs(np.diff(a, axis=2)).mean(axis=(1, 2, 3)) + np.abs(np.diff(a, axis=3)).mean(axis=(1, 2, 3))
    assert np.allclose(total_variation(x).numpy(), expected, atol=1e-6)


def test_the_regularisers_do_what_they_say(tiny_metric):
    target = tiny_metric.embed(_images(1, seed=6))
    plain = invert(tiny_metric, target, steps=15, tv=0.0, jitter=0, seed=0, progress=False)
    smooth = invert(tiny_metric, target, steps=15, tv=1.0, jitter=0, seed=0, progress=False)
    assert float(total_variation(smooth)) < 0.5 * float(total_variation(plain))
    grey = invert(tiny_metric, target, steps=15, l2=100.0, tv=0.0, seed=0, progress=False)
    assert float((grey - 0.5).abs().mean()) < 0.5 * float((plain - 0.5).abs().mean())


def test_init_image_size_and_value_range(vit_folder):
    metric = rpmetric.RobustDistance(str(vit_folder), device="cpu", value_range=(-1, 1))
    start = _images(1, seed=7, size=24) * 2 - 1
    target = metric.embed(_images(2, seed=8) * 2 - 1)
    images = invert(metric, target, steps=3, init=start, progress=False)
    assert images.shape == (2, 3, 24, 24)  # the init's size, broadcast to both targets
    assert images.min() >= -1 and images.max() <= 1 and images.min() < 0  # handed back in value_range
    assert invert(metric, target, steps=1, init="gray", size=(20, 28), jitter=0, progress=False).shape == (2, 3, 20, 28)
    # no size and embeddings as the target: the model's input size
    assert invert(metric, target, steps=1, progress=False).shape[-2:] == (32, 32)


BAD = [
    (dict(init="zeros"), ValueError, "`init` must be one of 'noise', 'gray'"),
    (dict(init=torch.rand(3, 3, 32, 32)), ValueError, "holds 3 images for 2 targets"),
    (dict(init=torch.rand(1, 3, 32, 32), size=16), ValueError, "`size` (16, 16) differs"),
    (dict(jitter=32), ValueError, "`jitter` must be less than"),
    (dict(steps=0), ValueError, "`steps` must be at least 1"),
    (dict(tv=-1.0), ValueError, "`tv` must be in"),
    (dict(seed=-1), ValueError, "`seed` must be at least 0"),
    (dict(target=torch.rand(2, 3, 4)), ValueError, "`target` must be embeddings [N, D]"),
    (dict(target=torch.zeros(2, 24)), ValueError, "all-zero embedding"),
    (dict(target=[1.0, 2.0]), TypeError, "`target` must be a tensor"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments(tiny_metric, kwargs, error, match):
    kwargs = {"target": torch.rand(2, 24), "steps": 1, "progress": False, **kwargs}
    with pytest.raises(error, match=match.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        invert(tiny_metric, **kwargs)


@pytest.mark.gpu
def test_inversion_runs_on_the_metric_s_cuda_device(vit_folder):
    metric = rpmetric.RobustDistance(str(vit_folder), device="cuda")
    x = _images(2, seed=9)
    images = invert(metric, x, steps=20, seed=0, progress=False)  # x on the CPU: moved to the metric's device
    assert images.device.type == "cuda"
    assert float(cosine(metric, images, x).min()) > 0.9
