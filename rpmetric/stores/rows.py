"""Row sources for search, dedup and kNN: embeddings held in memory, or streamed from a store.

A tensor (or array) is read in place. An :class:`~rpmetric.stores.store.EmbeddingStore` (or a
:class:`~rpmetric.stores.store.StoreSelection`) is read shard by shard through its ``blocks()``
and ``take()``, so it is never materialised: besides one shard, the callers hold at most
``STREAM_BYTES`` of gathered rows (in the store's dtype) at a time.

Example:
    >>> import torch
    >>> rows = as_rows(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), "embeddings")
    >>> [(start, len(block)) for start, block in rows.blocks(2)]
    [(0, 2), (2, 1)]
    >>> [round(d, 4) for d in pair_distances(rows, rows, torch.tensor([0, 0]), torch.tensor([1, 2])).tolist()]
    [1.0, 0.2929]
"""

from __future__ import annotations

from typing import Iterator, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..functional import cosine_distance

__all__ = ["STREAM_BYTES", "TensorRows", "StreamRows", "as_rows", "unit32", "pair_distances"]

# Bytes of rows a streaming pass gathers at once: chunks of the exact scan and of the queries, one
# group of cells of the cluster method (its rows and their float32 unit copy: 700,000 512-d float16
# rows), a batch of pairs. Tests lower it to make small stores take the paths of large ones.
STREAM_BYTES = 2 << 30
_BLOCK = 16384  # rows per block of an in-memory tensor
# float32 bytes of one side of one cosine_distance call: it makes about six arrays of that size (a
# float32 copy and a unit copy of each side, their difference, its square), so about 100 MB in all.
_PAIR_BYTES = 16 << 20


def pair_block(dim: int) -> int:
    """Pairs per :func:`~rpmetric.functional.cosine_distance` call: about 16 MB a side in float32
    (a million 512-d pairs would take 2 GB a side, and the call makes several temporaries)."""
    return max(1, _PAIR_BYTES // (4 * max(1, dim)))


class TensorRows:
    """Embeddings in memory: ``blocks`` are slices and ``take`` is indexing, both without copies
    of the whole."""

    in_memory = True

    def __init__(self, x: torch.Tensor):
        self.x, self.dim = x, int(x.shape[1])
        self.itemsize = x.element_size()

    def __len__(self) -> int:
        return len(self.x)

    def blocks(self, min_rows: int = _BLOCK, first: int = 0) -> Iterator[Tuple[int, torch.Tensor]]:
        step = max(min_rows, 1)
        for a in range(first, len(self.x), step):
            yield a, self.x[a:a + step]

    def take(self, rows) -> torch.Tensor:
        return self.x[torch.as_tensor(np.asarray(rows, dtype=np.int64))]


class StreamRows:
    """A store (or a selection of its rows) read shard by shard; ``blocks`` joins consecutive
    shards up to ``min_rows`` rows, so matrix products stay large enough to be efficient."""

    in_memory = False

    def __init__(self, source):
        self.source, self.dim = source, int(source.dim)
        self.itemsize = np.dtype(source.dtype).itemsize

    def __len__(self) -> int:
        return len(self.source)

    def blocks(self, min_rows: int = 1, first: int = 0) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(first row, rows)`` from row ``first`` on, consecutive shards joined up to ``min_rows``."""
        starts = getattr(self.source, "shard_starts", None)
        if first and starts is not None:  # a store: skip the shards before ``first`` unread
            shards = range(int(np.searchsorted(starts, first, side="right")) - 1, len(starts) - 1)
            source = self.source.blocks(shards)
        else:
            source = self.source.blocks()
        parts, begin, held = [], 0, 0
        for start, rows in source:
            if start + len(rows) <= first:
                continue
            if start < first:
                rows, start = rows[first - start:], first
            if not parts:
                begin = start
            parts.append(rows)
            held += len(rows)
            if held >= min_rows:
                yield begin, torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0])
                parts, held = [], 0
        if parts:
            yield begin, torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0])

    def take(self, rows) -> torch.Tensor:
        return torch.from_numpy(self.source.take(rows))


Rows = Union[TensorRows, StreamRows]


def as_rows(x, name: str) -> Rows:
    """``x`` as a row source: a store or selection streams, a tensor or array is read in place.

    Raises:
        ValueError: ``x`` is neither an ``[N, D]`` tensor nor a store.
    """
    if hasattr(x, "blocks") and hasattr(x, "take") and hasattr(x, "dim"):
        return StreamRows(x)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"Argument `{name}` must be an [N, D] tensor of embeddings or an EmbeddingStore, but got {shape}.")
    return TensorRows(x)


def chunk_rows(rows: Rows, itemsize: int = 0) -> int:
    """Rows of ``rows`` that fit ``STREAM_BYTES`` (at ``itemsize`` bytes a value; default the source's)."""
    return max(1, STREAM_BYTES // (rows.dim * (itemsize or rows.itemsize)))


def unit32(x: torch.Tensor) -> torch.Tensor:
    """Rows as float32 unit vectors (row by row, so a row's value does not depend on its block)."""
    return F.normalize(x.float(), dim=-1)


def pair_distances(a: Rows, b: Rows, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``cosine_distance(a[i], b[j])`` per pair, the metric's own ``1 - cos``. Streamed sources
    are read in batches of pairs whose rows fit ``STREAM_BYTES``, each batch one pass over the
    shards that hold them."""
    block = pair_block(a.dim)
    if a.in_memory and b.in_memory:
        parts = [cosine_distance(a.x[i[s:s + block]], b.x[j[s:s + block]]) for s in range(0, len(i), block)]
        return torch.cat(parts) if parts else torch.zeros(0)
    step = max(1, chunk_rows(a) // 2)
    parts = []
    for s in range(0, len(i), step):
        ii, jj = i[s:s + step].numpy(), j[s:s + step].numpy()
        if a is b:  # one read of the rows both sides need
            rows, where = np.unique(np.concatenate([ii, jj]), return_inverse=True)
            got_a = got_b = a.take(rows)
            wa, wb = torch.from_numpy(where[:len(ii)]), torch.from_numpy(where[len(ii):])
        else:
            ua, wa = np.unique(ii, return_inverse=True)
            ub, wb = np.unique(jj, return_inverse=True)
            got_a, got_b, wa, wb = a.take(ua), b.take(ub), torch.from_numpy(wa), torch.from_numpy(wb)
        parts.extend(cosine_distance(got_a[wa[p:p + block]], got_b[wb[p:p + block]]) for p in range(0, len(wa), block))
        del got_a, got_b
    return torch.cat(parts) if parts else torch.zeros(0)
