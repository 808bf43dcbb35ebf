"""Every bad input gets an error that says how to fix it."""

import pytest
import torch


@pytest.mark.parametrize("x,exc,match", [
    ([[0.0]], TypeError, r"`x` must be a torch.Tensor of shape \[N, 3, H, W\], but got list"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError, r"floating-point.*uint8.*x.float\(\) / 255"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.int64), TypeError, r"floating-point.*int64"),
    (torch.rand(3, 8, 8), ValueError, r"4 dimensions.*\(3, 8, 8\).*x.unsqueeze\(0\)"),
    (torch.rand(8, 8), ValueError, r"4 dimensions.*\(8, 8\)"),
    (torch.rand(2, 1, 8, 8), ValueError, r"3 \(RGB\) channels.*grayscale.*x.repeat\(1, 3, 1, 1\)"),
    (torch.rand(2, 4, 8, 8), ValueError, r"RGBA.*x\[:, :3\]"),
    (torch.rand(2, 8, 8, 3), ValueError, r"channels-last.*x.permute\(0, 3, 1, 2\)"),
    (torch.rand(0, 3, 8, 8), ValueError, r"empty batch"),
    (torch.rand(1, 3, 0, 8), ValueError, r"empty spatial size"),
    (torch.full((1, 3, 8, 8), float("nan")), ValueError, r"NaN"),
    (torch.tensor([float("inf")]).expand(1, 3, 8, 8), ValueError, r"infinite"),
    (torch.rand(1, 3, 8, 8) * 2 - 1, ValueError, r"outside value_range=\(0, 1\).*looks like \[-1, 1\]: pass value_range=\(-1, 1\)"),
    (torch.rand(1, 3, 8, 8) * 255, ValueError, r"looks like \[0, 255\]: divide by 255 or pass value_range=\(0, 255\)"),
    (torch.rand(1, 3, 8, 8) * 1000, ValueError, r"outside value_range.*pass the range they are in"),
])
def test_bad_images(tiny_metric, x, exc, match):
    with pytest.raises(exc, match=match):
        tiny_metric(x, torch.rand(1, 3, 8, 8))
    with pytest.raises(exc, match=match):
        tiny_metric.embed(x)


def test_bad_y_is_named(tiny_metric):
    with pytest.raises(ValueError, match=r"`y` must have 3 \(RGB\) channels"):
        tiny_metric(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8))


def test_batches_that_do_not_broadcast(tiny_metric):
    with pytest.raises(ValueError, match=r"Batch sizes of `x` \(3\) and `y` \(2\) do not match.*batch of 1"):
        tiny_metric(torch.rand(3, 3, 8, 8), torch.rand(2, 3, 8, 8))


def test_tiny_rounding_overshoot_is_tolerated(tiny_metric):
    x = torch.rand(1, 3, 32, 32)
    x[0, 0, 0, 0] = 1.0004
    assert tiny_metric(x, x).item() == 0.0


@pytest.mark.parametrize("value_range,exc,match", [
    ((1, 0), ValueError, r"low < high"), ((0, 0), ValueError, r"low < high"), (("a", "b"), TypeError, r"must be a pair"), (5, TypeError, r"must be a pair"),
])
def test_bad_value_range(vit_folder, value_range, exc, match):
    import rpmetric

    with pytest.raises(exc, match=match):
        rpmetric.RobustDistance(str(vit_folder), device="cpu", value_range=value_range)


def test_shared_number_checks_accept_numpy_and_name_the_argument():
    import numpy as np

    from rpmetric.validation import check_int, check_real

    assert check_int("steps", np.int64(5), low=1) == 5 and type(check_int("steps", np.int64(5))) is int
    with pytest.raises(TypeError, match="`steps` must be an integer, but got True"):
        check_int("steps", True)
    with pytest.raises(TypeError, match="`steps` must be an integer, but got 2.5"):
        check_int("steps", 2.5)
    assert check_real("eps", np.float32(0.5), 0.0, 1.0) == 0.5
    with pytest.raises(TypeError, match="`eps` must be a real number, but got nan"):
        check_real("eps", float("nan"))
    with pytest.raises(ValueError, match=r"`eps` must be in \[0, 1\], but got 2. Hint."):
        check_real("eps", 2, 0.0, 1.0, " Hint.")
