import pytest
import torch

import rpmetric
from rpmetric import metric as metric_module


def test_forward_shape_and_range(tiny_metric):
    d = tiny_metric(torch.rand(5, 3, 32, 32), torch.rand(5, 3, 32, 32))
    assert d.shape == (5,) and d.dtype == torch.float32
    assert (d >= 0).all() and (d <= 2).all()


def test_batch_of_one_keeps_its_dimension(tiny_metric):
    assert tiny_metric(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)).shape == (1,)


def test_identical_images_have_distance_exactly_zero(tiny_metric):
    x = torch.rand(3, 3, 40, 48)
    assert torch.equal(tiny_metric(x, x.clone()), torch.zeros(3))


def test_a_batch_of_one_broadcasts_on_either_side(tiny_metric):
    x, y = torch.rand(4, 3, 32, 32), torch.rand(1, 3, 32, 32)
    expected = torch.stack([tiny_metric(x[i:i + 1], y)[0] for i in range(4)])
    torch.testing.assert_close(tiny_metric(x, y), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny_metric(y, x), expected, atol=1e-6, rtol=0)


def test_batch_invariance(tiny_metric):
    x, y = torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)
    full = tiny_metric(x, y)
    for idx in ([3], [0, 5], [7, 1, 2]):
        torch.testing.assert_close(tiny_metric(x[idx], y[idx]), full[idx], atol=1e-5, rtol=0)


def test_inputs_of_different_sizes(tiny_metric):
    x, y = torch.rand(2, 3, 64, 48), torch.rand(2, 3, 32, 32)
    d = tiny_metric(x, y)
    prepared = tiny_metric.encoder.prepare(x)
    torch.testing.assert_close(d, tiny_metric(prepared, y), atol=1e-6, rtol=0)


def test_embed_is_unit_norm_and_raw_is_not(tiny_metric):
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(tiny_metric.embed(x).norm(dim=-1), torch.ones(3))
    raw = tiny_metric.embed(x, normalize=False)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), tiny_metric.embed(x))


def test_gradients_reach_input_not_weights(tiny_metric):
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = x.detach().clone()
    y[1] = torch.rand(3, 32, 32)
    tiny_metric(x, y).mean().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[1].abs().sum() > 0  # differing pair pulls the input
    assert all(p.grad is None and not p.requires_grad for p in tiny_metric.parameters())


def test_gradient_is_finite_at_identical_inputs(tiny_metric):
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    tiny_metric(x, x.detach().clone()).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_stays_in_eval_mode(tiny_metric):
    tiny_metric.train()
    assert not any(m.training for m in tiny_metric.modules())


def test_value_range_minus_one_to_one(vit_folder, tiny_metric):
    metric = rpmetric.RobustDistance(str(vit_folder), device="cpu", value_range=(-1, 1))
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(metric(x * 2 - 1, y * 2 - 1), tiny_metric(x, y), atol=1e-6, rtol=0)


def test_resize_false_requires_model_size(vit_folder):
    metric = rpmetric.RobustDistance(str(vit_folder), device="cpu", resize=False)
    assert metric(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)).shape == (1,)
    with pytest.raises(ValueError, match=r"With resize=False the images must be 32x32, but got \(40, 40\).*resize=True"):
        metric(torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 40))


def test_an_encoder_keeps_its_own_resize_setting(vit_folder):
    from rpmetric.models import load_encoder

    encoder = load_encoder(str(vit_folder), resize=False)
    metric = rpmetric.RobustDistance(encoder, device="cpu")
    assert metric.encoder.resize is False  # not flipped to True behind the caller's back
    with pytest.raises(ValueError, match=r"With resize=False the images must be 32x32"):
        metric(torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 40))
    rpmetric.RobustDistance(encoder, device="cpu", resize=True)  # an explicit choice is applied
    assert encoder.resize is True
    assert rpmetric.RobustDistance(str(vit_folder), device="cpu").encoder.resize is True  # loaded: True


def test_autocast_bfloat16_close_to_float32(tiny_metric):
    x, y = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d16 = tiny_metric(x, y)
    assert d16.dtype == torch.float32
    torch.testing.assert_close(d16, tiny_metric(x, y), atol=2e-2, rtol=0)


def test_half_precision_inputs_accepted(tiny_metric):
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(tiny_metric(x.bfloat16(), y.bfloat16()), tiny_metric(x.bfloat16().float(), y.bfloat16().float()))


@pytest.mark.gpu
def test_cuda_matches_cpu(vit_folder, tiny_metric):
    gpu = rpmetric.RobustDistance(str(vit_folder), device="cuda")
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.autocast("cuda", dtype=torch.float16):
        d = gpu(x.cuda(), y.cuda())
    torch.testing.assert_close(d.cpu(), tiny_metric(x, y), atol=1e-2, rtol=0)


def test_functional_distance_caches_the_model(vit_folder, tiny_metric):
    metric_module._CACHE.clear()
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    d1 = rpmetric.distance(x, y, model=str(vit_folder))
    cached = list(metric_module._CACHE.values())
    d2 = rpmetric.distance(x, y, model=str(vit_folder))
    assert len(metric_module._CACHE) == 1 and list(metric_module._CACHE.values())[0] is cached[0]
    torch.testing.assert_close(d1, tiny_metric(x, y))
    torch.testing.assert_close(d1, d2)


def test_cosine_distance_hand_values():
    a = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 5.0], [6.0, 8.0], [-2.0, -2.0]])
    torch.testing.assert_close(rpmetric.cosine_distance(a, b), torch.tensor([1.0, 0.0, 2.0]))


def test_repr_names_model(tiny_metric):
    assert "value_range=(0.0, 1.0)" in repr(tiny_metric)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_inputs_are_computed_in_float32(tiny_metric, vit_folder, dtype):
    # 40x40: the resize to the model's 32 px has no half-precision kernel on the CPU.
    x, y = torch.rand(2, 3, 40, 40).to(dtype), torch.rand(2, 3, 40, 40).to(dtype)
    d = tiny_metric(x, y)
    assert d.dtype == torch.float32
    assert torch.equal(d, tiny_metric(x.float(), y.float()))  # the same pixels, given in float32
    assert torch.equal(tiny_metric.embed(x), tiny_metric.embed(x.float()))
    assert torch.equal(rpmetric.distance(x, y, model=str(vit_folder), device="cpu"), d)
    x.requires_grad_(True)
    tiny_metric(x, y).sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def drifted(n=2, seed=0):
    """Images an unclamped optimisation loop drifted to [-0.05, 1.05]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 40, 40, generator=g) * 1.1 - 0.05
    x[0, 0, 0, :2] = torch.tensor([-0.05, 1.05])
    return x


def test_out_of_range_error_names_the_clamp_option(tiny_metric):
    with pytest.raises(ValueError, match=r"`x` has values in \[-0.05, 1.05\], outside value_range=\(0, 1\)\..*"
                                         r"pass clamp=True to RobustDistance or rpmetric.distance"):
        tiny_metric(drifted(), torch.rand(2, 3, 40, 40))


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_clamp_lets_a_drifted_input_through_and_gradients_reach_it(vit_folder, tiny_metric, value_range):
    low, high = value_range
    metric = rpmetric.RobustDistance(str(vit_folder), device="cpu", value_range=value_range, clamp=True)
    assert "clamp=True" in repr(metric)
    y = torch.rand(2, 3, 40, 40)
    x = (drifted() * (high - low) + low).requires_grad_(True)
    d = metric(x, y * (high - low) + low)
    # Independently: clamp by hand, map to [0, 1], and use the unclamped [0, 1] metric.
    x_in = ((x.detach().clamp(low, high) - low) / (high - low)).requires_grad_(True)
    expected = tiny_metric(x_in, y)
    torch.testing.assert_close(d, expected, atol=1e-6, rtol=0)
    d.sum().backward()
    expected.sum().backward()
    # The clamp passes gradients straight through, so pixels outside the range still get them.
    outside = (x.detach() < low) | (x.detach() > high)
    assert outside.any() and x.grad[outside].abs().sum() > 0
    torch.testing.assert_close(x.grad, x_in.grad / (high - low), atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="NaN"):
        metric(torch.full((1, 3, 40, 40), float("nan")), y)


def test_functional_distance_takes_clamp(vit_folder, tiny_metric):
    x, y = drifted(), torch.rand(2, 3, 40, 40)
    with pytest.raises(ValueError, match="clamp=True"):
        rpmetric.distance(x, y, model=str(vit_folder), device="cpu")
    torch.testing.assert_close(rpmetric.distance(x, y, model=str(vit_folder), device="cpu", clamp=True),
                               tiny_metric(x.clamp(0, 1), y), atol=1e-6, rtol=0)
