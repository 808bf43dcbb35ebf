"""Clustered unit vectors with planted near-duplicate groups, and their true pairs in plain numpy.

Shared by tests/test_dedup_methods.py and evals/bench_scale.py, so that the benchmark's recall
bound is measured on the same kind of set the tests check. Nothing here calls rpmetric.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def planted_vectors(n: int, dim: int, threshold: float, *, centres: int = 100, group_size: int = 3,
                    groups: int = 0, spread: float = 1.0, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """``[n, dim]`` unit vectors around ``centres`` random centres, in which ``groups`` groups
    (default n / 20) of ``group_size`` rows are copies of a base row at cosine distances drawn from
    [0.1, 0.9] x threshold (near-duplicates), and as many again at [1.2, 3] x threshold (near, but
    not within the threshold). ``spread`` scales the noise around the centres (1: points of one
    centre lie about 0.5 apart)."""
    rng = np.random.default_rng(seed)
    groups = groups or n // 20
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, 65536):
        m = min(65536, n - a)
        block = c[rng.integers(0, centres, m)] + spread * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        x[a:a + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    rows = rng.permutation(n)[: 2 * groups * group_size].reshape(2 * groups, group_size)
    for g, members in enumerate(rows):
        low, high = (0.1, 0.9) if g < groups else (1.2, 3.0)
        base = x[members[0]]
        for m in members[1:]:
            x[m] = _at_distance(base, threshold * rng.uniform(low, high), rng)
    return x.astype(dtype)


def _at_distance(base: np.ndarray, distance: float, rng) -> np.ndarray:
    """A unit vector whose cosine distance to the unit vector ``base`` is ``distance``."""
    u = rng.standard_normal(base.shape).astype(np.float64)
    u -= u.dot(base) * base
    u /= np.linalg.norm(u)
    cos = 1.0 - distance
    return (cos * base + np.sqrt(1.0 - cos * cos) * u).astype(np.float32)


def true_pairs(x: np.ndarray, threshold: float, margin: float = 1e-3, block: int = 2048
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, distance)`` of every pair ``i < j`` with ``1 - cos <= threshold + margin``, by a
    float64 scan in blocks. The caller decides what to make of pairs within rounding of the
    threshold (member-to-member distances of a group can fall anywhere)."""
    x = x.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    found_i, found_j, found_d = [], [], []
    for a in range(0, len(x), block):
        d = 1.0 - x[a:a + block] @ x[a:].T  # the upper triangle: columns from row a on
        ii, jj = np.nonzero(d <= threshold + margin)
        keep = ii + a < jj + a
        found_i.append(ii[keep] + a)
        found_j.append(jj[keep] + a)
        found_d.append(d[ii[keep], jj[keep]])
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)


def planted_shards(n: int, dim: int, threshold: float, *, centres: int = 1000, group_size: int = 3, spread: float = 1.0,
                   seed: int = 0, shard_size: int = 1024, dtype=np.float16):
    """:func:`planted_vectors`' kind of set, made shard by shard for stores larger than memory.

    Returns ``(shards, inside)``: ``shards`` yields ``[shard_size, dim]`` arrays of ``dtype`` in
    row order; ``inside`` is the ``[n / 20, group_size]`` row numbers of the groups planted within
    the threshold (as many are planted at [1.2, 3] x threshold). Once ``shards`` is exhausted,
    ``inside_values()`` gives those rows' stored values ``[groups, group_size, dim]``, from which
    the planted pairs' exact distances follow.
    """
    rng = np.random.default_rng(seed)
    groups = n // 20
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)

    def clustered(m: int) -> np.ndarray:
        block = c[rng.integers(0, centres, m)] + spread * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        return block / np.linalg.norm(block, axis=1, keepdims=True)

    members = rng.permutation(n)[: 2 * groups * group_size].reshape(2 * groups, group_size)
    bases = np.concatenate([clustered(min(65536, 2 * groups - a)) for a in range(0, 2 * groups, 65536)]
                           or [np.zeros((0, dim), np.float32)]).astype(dtype)
    owner = np.full(n, -1, dtype=np.int64)
    owner[members.ravel()] = np.arange(members.size)  # group * group_size + position
    inside_values = np.zeros((groups, group_size, dim), dtype=dtype)

    def shards():
        for a in range(0, n, shard_size):
            x = clustered(min(shard_size, n - a))
            where = np.nonzero(owner[a:a + len(x)] >= 0)[0]
            g, pos = np.divmod(owner[a + where], group_size)
            base = bases[g].astype(np.float32)
            base /= np.linalg.norm(base, axis=1, keepdims=True)
            low, high = np.where(g < groups, 0.1, 1.2), np.where(g < groups, 0.9, 3.0)
            cos = 1.0 - threshold * rng.uniform(low, high)
            u = rng.standard_normal(base.shape).astype(np.float64)
            u -= (u * base).sum(1, keepdims=True) * base
            u /= np.linalg.norm(u, axis=1, keepdims=True)
            moved = cos[:, None] * base + np.sqrt(1.0 - cos * cos)[:, None] * u
            x[where] = np.where((pos == 0)[:, None], base, moved)
            x = x.astype(dtype)
            ins = g < groups
            inside_values[g[ins], pos[ins]] = x[where[ins]]
            yield x

    return shards(), members[:groups], lambda: inside_values
