"""rpmetric.integrations.torchmetrics: the Metrics against the module API and numpy, a two-process
gloo run against one process, reset, and states that never keep a graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rpmetric
from rpmetric.integrations.torchmetrics import RobustPerceptualSimilarity, TwoAFCAccuracy


def _pairs(seed: int = 0, sizes=(3, 2, 4)):
    """Batches of (img1, img2) in [0, 1], 32 px (the tiny ViT's input size)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, 3, 32, 32, generator=g), torch.rand(n, 3, 32, 32, generator=g)) for n in sizes]


def _triplets(seed: int = 1, sizes=(4, 3)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        ref, left, right = (torch.rand(n, 3, 32, 32, generator=g) for _ in range(3))
        right[0] = left[0]  # a tie: scores 0.5 whatever people said
        p = torch.rand(n, generator=g)
        out.append((ref, left, right, p))
    return out


@pytest.fixture(scope="module")
def distances(vit_folder):
    """The module API's distances of _pairs(), per batch (float64 numpy)."""
    metric = rpmetric.RobustDistance(str(vit_folder), device="cpu")
    with torch.no_grad():
        return [metric(a, b).double().numpy() for a, b in _pairs()]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_equal_the_module_api_reduced_by_numpy(vit_folder, distances, reduction):
    metric = RobustPerceptualSimilarity(str(vit_folder), reduction=reduction)
    for a, b in _pairs():
        metric.update(a, b)
    every = np.concatenate(distances)
    expected = {"mean": every.mean(), "sum": every.sum(), "none": every}[reduction]
    got = metric.compute()
    assert got.dtype == torch.float32 and got.shape == (() if reduction != "none" else (9,))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_functional_api_agrees(vit_folder):
    a, b = _pairs()[0]
    metric = RobustPerceptualSimilarity(str(vit_folder), reduction="none")
    metric.update(a, b)
    torch.testing.assert_close(metric.compute(), rpmetric.distance(a, b, model=str(vit_folder)), atol=1e-6, rtol=0)


def test_value_range_minus_one_to_one_maps_to_unit_pixels(vit_folder, distances):
    metric = RobustPerceptualSimilarity(str(vit_folder), reduction="none", value_range=(-1, 1))
    a, b = _pairs()[0]
    metric.update(a * 2 - 1, b * 2 - 1)
    np.testing.assert_allclose(metric.compute().numpy(), distances[0], atol=1e-6)
    with pytest.raises(ValueError, match=r"`img1` has values in .*, outside value_range=\(-1, 1\)"):
        metric.update(a * 3, b)


def test_reset_forgets_and_a_second_epoch_repeats(vit_folder, distances):
    metric = RobustPerceptualSimilarity(str(vit_folder))
    for a, b in _pairs():
        metric.update(a, b)
    first = metric.compute()
    metric.reset()
    assert metric.count.item() == 0 and metric.total.item() == 0.0
    a, b = _pairs()[1]
    metric.update(a, b)
    np.testing.assert_allclose(metric.compute().item(), distances[1].mean(), rtol=1e-6)
    metric.reset()
    for a, b in _pairs():
        metric.update(a, b)
    torch.testing.assert_close(metric.compute(), first)


def test_empty_metric_gives_nan_zero_and_empty(vit_folder):
    with pytest.warns(UserWarning, match="before the ``update`` method"):
        assert torch.isnan(RobustPerceptualSimilarity(str(vit_folder)).compute())
    with pytest.warns(UserWarning):
        assert RobustPerceptualSimilarity(str(vit_folder), reduction="sum").compute().item() == 0.0
    with pytest.warns(UserWarning):
        assert RobustPerceptualSimilarity(str(vit_folder), reduction="none").compute().shape == (0,)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_states_keep_no_graph_but_forward_is_a_loss(vit_folder, reduction):
    metric = RobustPerceptualSimilarity(str(vit_folder), reduction=reduction)
    a, b = _pairs()[0]
    x = a.clone().requires_grad_(True)
    metric.update(x, b)
    loss = metric(x, b)  # forward: this batch's value, differentiable
    if reduction == "none":
        loss = loss.mean()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    states = [getattr(metric, name) for name in metric._defaults]
    tensors = [t for s in states for t in (s if isinstance(s, list) else [s])]
    assert tensors and all(not t.requires_grad and t.grad_fn is None for t in tensors)
    # Nothing in the metric's weights learns: gradients reach the pixels only.
    assert all(p.grad is None for p in metric.parameters())
    # Both the update and the forward count, once each.
    assert len(metric.compute().reshape(-1)) == (1 if reduction == "mean" else 2 * len(a))


def test_forward_returns_the_batch_and_accumulates_the_epoch(vit_folder, distances):
    metric = RobustPerceptualSimilarity(str(vit_folder), reduction="sum")
    batch_values = [metric(a, b).item() for a, b in _pairs()]
    np.testing.assert_allclose(batch_values, [d.sum() for d in distances], rtol=1e-6)
    np.testing.assert_allclose(metric.compute().item(), np.concatenate(distances).sum(), rtol=1e-6)


def test_metric_is_a_submodule_that_moves_with_to(vit_folder):
    metric = RobustPerceptualSimilarity(str(vit_folder))
    assert isinstance(metric.metric, rpmetric.RobustDistance)
    assert dict(metric.named_children())["metric"] is metric.metric
    metric = metric.to(torch.float32).to("cpu")
    assert metric.metric.device == torch.device("cpu") and metric.total.device == torch.device("cpu")
    assert RobustPerceptualSimilarity.is_differentiable and not RobustPerceptualSimilarity.higher_is_better
    assert RobustPerceptualSimilarity.full_state_update is False


def test_a_robust_distance_passed_in_is_shared_and_its_range_checked(vit_folder):
    module = rpmetric.RobustDistance(str(vit_folder), device="cpu", value_range=(-1, 1))
    assert RobustPerceptualSimilarity(module, value_range=(-1, 1)).metric is module
    with pytest.raises(ValueError, match=r"Argument `value_range` is \(0.0, 1.0\), but the RobustDistance"):
        RobustPerceptualSimilarity(module)
    with pytest.raises(ValueError, match=r"Argument `reduction` must be one of \('mean', 'sum', 'none'\), but got 'avg'"):
        RobustPerceptualSimilarity(module, reduction="avg", value_range=(-1, 1))


# -- 2AFC -----------------------------------------------------------------------------------------
def _twoafc_by_hand(metric, triplets) -> float:
    """The 2AFC score written out (lpips' formula), from the module API's distances."""
    total, n = 0.0, 0
    with torch.no_grad():
        for ref, left, right, p in triplets:
            d0, d1 = metric(ref, left).tolist(), metric(ref, right).tolist()
            for a, b, q in zip(d0, d1, p.tolist()):
                total += 0.5 if abs(a - b) < 1e-7 else (1 - q if a < b else q)
                n += 1
    return total / n


def test_twoafc_equals_the_formula_by_hand(vit_folder):
    triplets = _triplets()
    score = TwoAFCAccuracy(str(vit_folder))
    for t in triplets:
        score.update(*t)
    expected = _twoafc_by_hand(score.metric, triplets)
    assert score.count.item() == 7
    assert score.compute().item() == pytest.approx(expected, abs=1e-6)
    assert TwoAFCAccuracy.higher_is_better and not TwoAFCAccuracy.is_differentiable
    score.reset()
    ref, left, _, _ = triplets[0]
    score.update(ref, left, left.clone(), [0.9] * len(ref))  # every triplet a tie
    assert score.compute().item() == 0.5


def test_twoafc_names_the_bad_argument(vit_folder):
    score = TwoAFCAccuracy(str(vit_folder))
    ref, left, right, p = _triplets()[0]
    with pytest.raises(ValueError, match="`right` must have 4 dimensions"):
        score.update(ref, left, right[0], p)
    with pytest.raises(ValueError, match="same number of elements"):
        score.update(ref, left, right, p[:2])


# -- two processes --------------------------------------------------------------------------------
def _worker(rank: int, world: int, init: str, folder: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        pairs, triplets = _pairs(), _triplets()
        # Uneven shards: rank 0 gets 2 of 3 pair batches, rank 1 the rest, in order.
        mine = pairs[:2] if rank == 0 else pairs[2:]
        results = {}
        for reduction in ("mean", "sum", "none"):
            metric = RobustPerceptualSimilarity(folder, reduction=reduction)
            for a, b in mine:
                metric.update(a, b)
            results[reduction] = metric.compute()
        score = TwoAFCAccuracy(folder)
        score.update(*triplets[rank])
        results["2afc"] = score.compute()
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one(vit_folder, tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "result")
    init = (tmp_path / "rendezvous").as_uri()  # file:// on this machine: no port to pick
    mp.spawn(_worker, args=(2, init, str(vit_folder), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    one = {}
    for reduction in ("mean", "sum", "none"):
        metric = RobustPerceptualSimilarity(str(vit_folder), reduction=reduction)
        for a, b in _pairs():
            metric.update(a, b)
        one[reduction] = metric.compute()
    score = TwoAFCAccuracy(str(vit_folder))
    for t in _triplets():
        score.update(*t)
    one["2afc"] = score.compute()
    for result in ranks:  # each rank holds the synced value
        for key, value in one.items():
            torch.testing.assert_close(result[key], value, atol=1e-6, rtol=1e-6, msg=key)
    assert ranks[0]["none"].shape == (9,)
