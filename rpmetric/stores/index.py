"""Nearest-neighbour search over embeddings: exact blockwise torch, or a FAISS flat/IVF index.

Every function takes embeddings as ``[N, D]`` tensors (or an :class:`~rpmetric.stores.store.EmbeddingStore`).
Neighbours are ranked by cosine similarity (matrix products), and the distances returned are then
computed with :func:`rpmetric.functional.cosine_distance`, the metric's own ``1 - cos``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MissingDependencyError
from ..functional import cosine_distance
from ..validation import check_int
from .rows import StreamRows, TensorRows, as_rows, chunk_rows, unit32

__all__ = ["INDEXES", "Neighbours", "search"]

INDEXES = ("auto", "exact", "faiss", "ivf")
# "auto" builds a FAISS IVF index only when it pays for itself: search() builds its index per call,
# and at 100,000 stored vectors exact torch search beats both FAISS indexes (evals/bench_retrieval.py;
# timings in the README's Benchmarks). Exact costs N*Q, an IVF build about 25*N*sqrt(N) (mostly
# k-means training) plus Q*N/8 for the queries, so IVF wins only for very large N and Q.
AUTO_IVF_MIN = 1_000_000  # stored vectors
AUTO_IVF_MIN_QUERIES = 10_000
_QUERY_BLOCK = 1024  # queries x database rows per matrix product stay near 64 MB of float32
_DB_BLOCK = 16384


@dataclass
class Neighbours:
    """Result of :func:`search`: row q holds query q's neighbours, nearest first.

    ``indices`` are database rows (-1 where an approximate index found fewer than k; the
    distance there is inf); ``distances`` are ``1 - cos``; ``index`` names the index used.
    """

    distances: torch.Tensor
    indices: torch.Tensor
    index: str


def _check_dims(a, b) -> None:
    da, db = (x.dim if isinstance(x, (TensorRows, StreamRows)) else x.shape[1] for x in (a, b))
    if da != db:
        raise ValueError(f"Embedding sizes differ ({da} vs {db}); both sides must come from the same model.")


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"Argument `k` must be an integer >= 1, but got {k!r}.")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"Argument `{name}` must be one of {tuple(choices)}, but got {value!r}.")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError(
            "FAISS search needs the faiss package: `pip install faiss-cpu` (or `pip install rpmetric[faiss]`); "
            "or use the exact torch search (index 'exact')."
        ) from None
    return faiss


def _unit32(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(unit32(x).numpy())


def _sample_rows(n: int, nlist: int) -> Optional[np.ndarray]:
    """The rows that train k-means: at most 64 per cell (FAISS would subsample too, printing a
    warning), None for all; a fixed seed keeps the cells, and so the candidates, the same from run
    to run, and the same whether the vectors are in memory or streamed from a store."""
    if n <= 64 * nlist:
        return None
    return np.sort(np.random.default_rng(0).choice(n, 64 * nlist, replace=False))


def _train_rows(rows, nlist: int) -> np.ndarray:
    """:func:`_sample_rows` of a row source as float32 unit vectors (streamed: one pass over the
    shards that hold them)."""
    pick = _sample_rows(len(rows), nlist)
    if rows.in_memory:
        x = rows.x if pick is None else rows.x[torch.from_numpy(pick)]
    else:
        x = rows.take(np.arange(len(rows)) if pick is None else pick)
    return _unit32(x)


# -- search ------------------------------------------------------------------------------------
def search(database, queries, k: int = 10, *, index: str = "auto", nprobe: Optional[int] = None) -> Neighbours:
    """The ``k`` nearest database rows of every query, by cosine.

    Args:
        database: ``[N, D]`` embeddings, or an EmbeddingStore (or a selection of its rows), which
            is streamed shard by shard: ``"exact"`` and ``"faiss"`` merge each block's best rows,
            ``"ivf"`` builds an IndexIVFScalarQuantizer that holds the vectors as float16.
        queries: ``[Q, D]`` embeddings from the same model, or a store (searched in chunks).
        k: neighbours per query (at most N are returned).
        index: ``"exact"`` (torch, matrix products in blocks), ``"faiss"`` (FAISS IndexFlatIP,
            also exact), ``"ivf"`` (FAISS IndexIVFFlat with sqrt(N) cells: approximate, built
            per call), or ``"auto"``: IVF when FAISS is installed and there are at least
            ``AUTO_IVF_MIN`` stored vectors and ``AUTO_IVF_MIN_QUERIES`` queries, else exact.
        nprobe: IVF cells visited per query, at least 1 (more: slower, higher recall); None picks
            1/8 of them.

    Example:
        >>> db = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> hits = search(db, torch.tensor([[1.0, 0.1]]), k=2)
        >>> hits.indices.tolist(), [round(d, 4) for d in hits.distances[0].tolist()]
        ([[0, 2]], [0.005, 0.226])
    """
    db_rows, q_rows = as_rows(database, "database"), as_rows(queries, "queries")
    _check_dims(db_rows, q_rows)
    _check_k(k)
    _check_choice("index", index, INDEXES)
    if nprobe is not None:  # FAISS itself fails on 0 with a C++ error and on negatives with OverflowError
        nprobe = check_int("nprobe", nprobe, low=1)
    if len(db_rows) == 0:
        raise ValueError("Argument `database` holds no embeddings; there is nothing to search.")
    if index == "auto":
        large = len(db_rows) >= AUTO_IVF_MIN and len(q_rows) >= AUTO_IVF_MIN_QUERIES
        index = "ivf" if large and _faiss_available() else "exact"
    k = min(k, len(db_rows))
    if not (db_rows.in_memory and q_rows.in_memory):
        return _stream_search(db_rows, q_rows, k, index, nprobe)
    database, queries = db_rows.x, q_rows.x
    if index == "exact":
        idx = _exact_topk(database, queries, k)
    else:
        idx = _faiss_topk(database, queries, k, ivf=index == "ivf", nprobe=nprobe)
    return _with_distances(database, queries, idx, index)


def _faiss_available() -> bool:
    try:
        _faiss()
    except MissingDependencyError:
        return False
    return True


def _exact_topk(database: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    out = []
    for qs in range(0, len(queries), _QUERY_BLOCK):
        q = F.normalize(queries[qs:qs + _QUERY_BLOCK].float(), dim=-1)
        best_sim = best_idx = None
        for ds in range(0, len(database), _DB_BLOCK):
            sim = q @ F.normalize(database[ds:ds + _DB_BLOCK].float(), dim=-1).T
            sim, idx = sim.topk(min(k, sim.shape[1]), dim=1)
            if best_sim is not None:  # merge this block's winners with the running best
                sim, idx = torch.cat([best_sim, sim], 1), torch.cat([best_idx, idx + ds], 1)
                sim, pick = sim.topk(k, dim=1)
                idx = idx.gather(1, pick)
            best_sim, best_idx = sim, idx
        out.append(best_idx)
    return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)


def _faiss_topk(database: torch.Tensor, queries: torch.Tensor, k: int, ivf: bool, nprobe: Optional[int]) -> torch.Tensor:
    faiss = _faiss()
    db = _unit32(database)
    dim = db.shape[1]
    if ivf:
        nlist = max(1, min(int(len(db) ** 0.5), len(db) // 39))  # FAISS wants ~39 training points per cell
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(db)
        index.nprobe = max(1, nlist // 8) if nprobe is None else nprobe
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(db)
    _, idx = index.search(_unit32(queries), k)
    return torch.from_numpy(idx).long()


def _with_distances(database: torch.Tensor, queries: torch.Tensor, idx: torch.Tensor, index: str) -> Neighbours:
    missing = idx < 0
    rows = database[idx.clamp(min=0)]  # [Q, k, D]
    d = cosine_distance(queries.unsqueeze(1), rows)
    d = d.masked_fill(missing, float("inf"))
    # Re-sort by the reported distance so the order and the numbers always agree.
    d, order = d.sort(dim=1, stable=True)
    return Neighbours(d, idx.gather(1, order).masked_fill(d.isinf(), -1), index)


def _nlist(n: int) -> int:
    return max(1, min(int(n ** 0.5), n // 39))  # FAISS wants ~39 training points per cell


def _merge_topk(best, sim: torch.Tensor, idx: torch.Tensor, k: int):
    """The running best ``(sim, idx)`` of each query merged with a block's."""
    if best is not None:
        sim, idx = torch.cat([best[0], sim], 1), torch.cat([best[1], idx], 1)
        sim, pick = sim.topk(min(k, sim.shape[1]), dim=1)
        idx = idx.gather(1, pick)
    return sim, idx


def _stream_search(db, q, k: int, index: str, nprobe: Optional[int]) -> Neighbours:
    """:func:`search` where either side is a store: queries in chunks of ``STREAM_BYTES``, the
    database streamed past each chunk (exact, faiss) or added to one float16 IVF index."""
    faiss = _faiss() if index != "exact" else None
    ivf = None
    if index == "ivf":
        nlist = _nlist(len(db))
        if nlist == 1:
            ivf = faiss.IndexScalarQuantizer(db.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        else:
            ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(db.dim), db.dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                faiss.METRIC_INNER_PRODUCT)
            ivf.train(_train_rows(db, nlist))
            ivf.nprobe = max(1, nlist // 8) if nprobe is None else nprobe
        for _, block in db.blocks(_DB_BLOCK):
            ivf.add(_unit32(block))
    step = max(1, min(chunk_rows(q, 4), chunk_rows(db) // (2 * k)))  # a chunk's neighbour rows fit too
    chunks = [(0, q.x)] if q.in_memory and len(q) <= step else q.blocks(step)
    distances, indices = [], []
    for _, queries in chunks:
        qn = unit32(queries)
        if ivf is not None:
            idx = torch.from_numpy(ivf.search(qn.numpy(), k)[1]).long()
        else:
            best = None
            for start, block in db.blocks(_DB_BLOCK):
                bn = unit32(block)
                if faiss is None:
                    sim, idx = (qn @ bn.T).topk(min(k, len(bn)), dim=1)
                else:
                    flat = faiss.IndexFlatIP(db.dim)
                    flat.add(bn.numpy())
                    sim, idx = (torch.from_numpy(a) for a in flat.search(qn.numpy(), min(k, len(bn))))
                    idx = idx.long()
                best = _merge_topk(best, sim, idx + start, k)
            idx = best[1]
        missing = idx < 0
        rows, where = np.unique(idx.clamp(min=0).numpy(), return_inverse=True)
        near = db.take(rows)[torch.from_numpy(where.reshape(idx.shape))]  # [Q, k, D]
        d = cosine_distance(queries.unsqueeze(1), near).masked_fill(missing, float("inf"))
        d, order = d.sort(dim=1, stable=True)
        distances.append(d)
        indices.append(idx.gather(1, order).masked_fill(d.isinf(), -1))
    return Neighbours(torch.cat(distances), torch.cat(indices), index)
