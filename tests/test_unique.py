"""unique_images: the distinct images of a batch in order of first occurrence, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rpmetric.unique import embed_unique, unique_images


def numpy_unique(x: np.ndarray):
    """(indices of first occurrences in order, inverse) from np.unique over byte rows."""
    rows = x.reshape(len(x), -1)
    _, first, groups = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # np.unique sorts rows; renumber its groups by first occurrence
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[groups.reshape(-1)]


@pytest.mark.parametrize("seed", range(4))
def test_distinct_images_match_numpy(seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    base[5] = base[4]
    base[5, 2, 7, 7] ^= 1  # differs from image 4 in one bit of one pixel
    picks = rng.integers(0, 6, 20)
    x = torch.from_numpy(base[picks])
    distinct, inverse = unique_images(x)
    keep, expected = numpy_unique(base[picks])
    assert torch.equal(distinct, x[torch.from_numpy(keep)]) and inverse.tolist() == expected.tolist()
    assert torch.equal(distinct[inverse], x)


def test_cpu_and_sorting_paths_agree():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((5, 4)).astype(np.float32))[[0, 1, 0, 2, 1, 3]]
    fast = unique_images(x)
    slow = unique_images(x.clone().requires_grad_())  # the torch.unique path (as for CUDA tensors)
    assert torch.equal(fast[0], slow[0].detach()) and torch.equal(fast[1], slow[1])


def test_identical_images_get_identical_rows():
    x = torch.tensor([[1, 2], [3, 4], [1, 2]], dtype=torch.uint8)
    calls = []
    out = embed_unique(lambda t: calls.append(len(t)) or t.float() * 2, x)
    assert calls == [2] and out.tolist() == [[2.0, 4.0], [6.0, 8.0], [2.0, 4.0]]
