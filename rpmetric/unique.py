"""Embedding each distinct image of a batch once.

A CPU GEMM's rounding depends on a row's position in the batch and on the thread count (about
1e-7 on AMD EPYC with MKL), so the same image embedded twice need not give the same bits. Where
a result depends on two embeddings being *equal* (a 2AFC tie when left and right are the same
image, a distance of exactly 0), rpmetric embeds every distinct image once and reuses the row:
the equality then holds by construction, on any machine.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Tuple

import torch

__all__ = ["unique_images", "embed_unique"]


def unique_images(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(distinct, inverse)`` with ``distinct[inverse] == x``: the distinct images of ``x`` ``[N, ...]``,
    compared bit for bit (same shape, dtype and values), in order of first occurrence.

    Example:
        >>> x = torch.tensor([[3, 1], [2, 2], [3, 1]], dtype=torch.uint8)
        >>> distinct, inverse = unique_images(x)
        >>> distinct.tolist(), inverse.tolist()
        ([[3, 1], [2, 2]], [0, 1, 0])
    """
    if len(x) < 2:
        return x, torch.arange(len(x), device=x.device)
    if x.device.type == "cpu" and not x.requires_grad:
        return _unique_by_digest(x)
    # torch.unique sorts rows; map its groups back to first occurrences so the order is the input's
    # (the first image of a batch stays first, for readers of the encoder's inputs).
    _, groups = torch.unique(x.reshape(len(x), -1), dim=0, return_inverse=True)
    positions = torch.arange(len(x), device=x.device)
    first = torch.full((int(groups.max()) + 1,), len(x), device=x.device, dtype=torch.long)
    first = first.scatter_reduce(0, groups, positions, reduce="amin")
    keep = first.sort().values
    rank = torch.empty_like(first)
    rank[first.argsort()] = torch.arange(len(first), device=x.device)
    return x[keep], rank[groups]


def _unique_by_digest(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`unique_images` of a CPU tensor: rows grouped by a blake2b digest of their bytes, and a
    claimed duplicate confirmed bit for bit. torch.unique(dim=0) sorts whole rows, comparing them
    element by element on one thread: about 1 s for 32 images of 224 px on a busy 2-core machine,
    a tenth of the encoder's time for the batch; the digests take milliseconds."""
    rows = x.reshape(len(x), -1).contiguous()
    data = rows.view(torch.uint8) if rows.dtype != torch.bool else rows.to(torch.uint8)
    data = data.numpy()
    by_digest: dict = {}  # digest -> the distinct images (indices into keep) with it
    keep, inverse = [], []
    for i in range(len(x)):
        same = by_digest.setdefault(hashlib.blake2b(memoryview(data[i]), digest_size=16).digest(), [])
        j = next((j for j in same if torch.equal(rows[keep[j]], rows[i])), None)
        if j is None:
            j = len(keep)
            same.append(j)
            keep.append(i)
        inverse.append(j)
    if len(keep) == len(x):
        return x, torch.arange(len(x))
    return x[keep], torch.tensor(inverse)


def embed_unique(embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``embed(x)``, with each distinct image of ``x`` embedded once: identical images get identical rows.

    Example:
        >>> calls = []
        >>> def embed(x):
        ...     calls.append(len(x))
        ...     return x.float().flatten(1)
        >>> embed_unique(embed, torch.tensor([[1, 2], [1, 2], [0, 5]])).tolist(), calls
        ([[1.0, 2.0], [1.0, 2.0], [0.0, 5.0]], [2])
    """
    distinct, inverse = unique_images(x)
    if len(distinct) == len(x):
        return embed(x)
    features = embed(distinct)
    return features[inverse.to(features.device)]
