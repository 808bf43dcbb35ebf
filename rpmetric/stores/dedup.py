"""Near-duplicate pairs and groups, and rows near a reference set: exact, or FAISS candidates
(k-means cells or an IVF range search) that the exact ``1 - cos`` confirms.

Every function takes ``[N, D]`` tensors or stores. A store is streamed, never materialised:

- ``exact`` scans it in chunks of ``STREAM_BYTES`` (:mod:`rpmetric.stores.rows`), each against
  the shards from its own on;
- ``cluster`` trains k-means on a sample (at most 64 rows per cell), assigns every row to its
  ``probes`` nearest cells in one pass, then scans the cells in groups whose rows (the cells'
  members and visitors, in the store's dtype, with a float32 unit copy) fit ``STREAM_BYTES``;
  near cells are grouped together (k-means of the centroids), so a row is gathered about once
  per group it visits. A store that fits is gathered at once;
- ``ivf`` adds the rows to a FAISS IndexIVFScalarQuantizer that holds them as float16.

Candidates are confirmed with :func:`rpmetric.functional.cosine_distance` on the stored values,
so a store gives the same pairs and distances as its embeddings in memory.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..functional import DISTANCE_TOLERANCE, cosine_distance
from ..validation import check_int
from . import rows as _rows
from .index import (_QUERY_BLOCK, _DB_BLOCK, _check_choice, _check_dims, _faiss, _faiss_available, _train_rows, _unit32,
                    search)
from .rows import as_rows, pair_distances, unit32

__all__ = ["DEDUP_METHODS", "AUTO_APPROX_MIN", "DEFAULT_PROBES", "near_pairs", "group_duplicates", "find_near"]

_SLACK = 1e-4  # candidate margin on the similarity, before the exact distance decides
DEDUP_METHODS = ("auto", "exact", "ivf", "cluster")
# near_pairs' "auto": the exact scan costs N^2/2 products, "cluster" about N * probes * N/K plus the
# k-means. On 512-d vectors (2-core CPU) cluster overtakes exact between 5,000 and 10,000 vectors and
# is 2-5x faster at 20,000 (README's Benchmarks); below that it saves at most about a second, so auto
# keeps the exact answer there.
AUTO_APPROX_MIN = 20_000  # vectors
# Cells each vector visits: at 200,000 x 512, recall 0.9999 in 3.1 s (0.9998 with 2 in 2.6 s, 0.9991
# with 1 in 1.8 s) against 156 s for exact (evals/bench_scale.py --part dedup).
DEFAULT_PROBES = 3
_FP16_SLACK = 1e-3  # extra candidate margin where FAISS holds the vectors as float16 (rounding ~1e-5)
_ASSIGN_BLOCK = 65536  # rows per k-means assignment search
_UNIT_BLOCK = 16384  # rows per conversion to unit vectors in the scan's dtype (two float32 temporaries)
_TILE_ROWS, _TILE_COLS = 2048, 512  # the one shape of the cluster scan's similarity blocks (see _scan_cells)
# The cluster method's per-cell scans (most of its time) run in bfloat16 where the CPU multiplies
# it natively (AMX or AVX512-BF16). Unit inputs rounded to bfloat16 move a dot product by at most
# 2^-8 and its bfloat16 result by 2^-9 more, so a candidate margin of 0.01 still proposes every pair
# that float32 would, and the exact float32 test then decides: the pairs found are the float32
# scan's on any CPU. The cell assignment stays float32 (see _assign).
_BF16_SLACK = 0.01


def _scan_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.bfloat16 if x.device.type == "cpu" and _cpu_bf16() else torch.float32


def _cpu_bf16() -> bool:
    global _BF16
    if _BF16 is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            flags = []
        _BF16 = "amx_bf16" in flags or "avx512_bf16" in flags
    return _BF16


_BF16: Optional[bool] = None


def _unit_as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`unit32` in ``dtype``, converted in blocks (no float32 copy of the whole)."""
    if dtype == torch.float32:
        return unit32(x)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    for a in range(0, len(x), _UNIT_BLOCK):
        out[a:a + _UNIT_BLOCK] = unit32(x[a:a + _UNIT_BLOCK])
    return out


def _check_threshold(threshold: float) -> float:
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 2.0:
        raise ValueError(f"Argument `threshold` must be a cosine distance in [0, 2], but got {threshold!r}.")
    return float(threshold)


def near_pairs(embeddings, threshold: float, *, method: str = "exact", clusters: Optional[int] = None,
               probes: Optional[int] = None, progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs ``i < j`` with ``1 - cos <= threshold`` (plus ``DISTANCE_TOLERANCE``, for rounding):
    ``(i, j, distance)`` tensors, each pair once.

    Args:
        embeddings: ``[N, D]`` embeddings, or an EmbeddingStore, streamed (see the module's notes).
        threshold: largest cosine distance that counts, in [0, 2].
        method: ``"exact"``: blockwise over the upper triangle, quadratic in N. ``"cluster"``:
            FAISS spherical k-means into ``clusters`` cells (SemDeDup, Abbas et al. 2023); each
            vector is compared exactly with the members of its ``probes`` nearest cells, so a
            vector near a border meets its neighbours' members too. ``"ivf"``: a FAISS
            IndexIVFFlat with ``clusters`` cells (float16 IndexIVFScalarQuantizer for a store),
            range search visiting ``probes`` cells. Both
            approximate methods only propose candidates; every pair returned passes the exact
            test, so they may miss pairs but never add one. ``"auto"``: exact below
            ``AUTO_APPROX_MIN`` vectors (or without FAISS), cluster above.
        clusters: cells of the approximate methods, at least 1; None picks ``sqrt(N)`` (at most
            N/39, FAISS's minimum of training points per cell).
        probes: cells each vector visits, at least 1 (more: slower, higher recall); None picks
            ``DEFAULT_PROBES``.
        progress: show progress bars of the cluster method's passes on stderr (on a terminal).

    Example:
        >>> e = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])
        >>> i, j, d = near_pairs(e, 0.001)
        >>> i.tolist(), j.tolist()
        ([0], [1])
    """
    rows = as_rows(embeddings, "embeddings")
    threshold = _check_threshold(threshold)
    method = _dedup_method(method, len(rows))
    clusters, probes = _check_knobs(clusters, probes)
    if method == "exact":
        if not rows.in_memory:
            return _exact_stream(rows, threshold)
        i, j = _exact_candidates(rows.x, threshold)
        return _confirm(rows, rows, i, j, threshold)
    nlist = _nlist(len(rows), clusters)
    probes = min(DEFAULT_PROBES if probes is None else probes, nlist)
    if method == "cluster":
        return _cluster_pairs(rows, rows, threshold, nlist, probes, self_pairs=True, progress=progress)
    i, j = _ivf_candidates(rows, rows, threshold, nlist, probes, self_pairs=True)
    return _confirm(rows, rows, i, j, threshold)


def _dedup_method(method: str, n: int) -> str:
    _check_choice("method", method, DEDUP_METHODS)
    if method == "auto":
        return "cluster" if n >= AUTO_APPROX_MIN and _faiss_available() else "exact"
    if method != "exact":
        _faiss()  # the missing package is named before any work
    return method


def _check_knobs(clusters: Optional[int], probes: Optional[int]) -> Tuple[Optional[int], Optional[int]]:
    return tuple(None if v is None else check_int(name, v, low=1) for name, v in (("clusters", clusters), ("probes", probes)))


def _nlist(n: int, clusters: Optional[int]) -> int:
    if clusters is None:
        clusters = int(n ** 0.5)
    return max(1, min(clusters, n // 39))


def _exact_candidates(emb: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    found_i, found_j = [], []
    for a in range(0, len(emb), _QUERY_BLOCK):
        rows = F.normalize(emb[a:a + _QUERY_BLOCK].float(), dim=-1)
        for b in range(a, len(emb), _DB_BLOCK):
            sim = rows @ F.normalize(emb[b:b + _DB_BLOCK].float(), dim=-1).T
            ii, jj = torch.nonzero(sim >= 1.0 - threshold - _SLACK, as_tuple=True)
            ii, jj = ii + a, jj + b
            keep = ii < jj
            found_i.append(ii[keep])
            found_j.append(jj[keep])
    return _cat(found_i), _cat(found_j)


def _exact_stream(rows, threshold: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact scan of a store: each chunk of ``STREAM_BYTES`` against the shards from its own
    on, candidates confirmed block by block (one pass over the store per chunk)."""
    cut = 1.0 - threshold - _SLACK
    found: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for c0, chunk in rows.blocks(_rows.chunk_rows(rows, rows.itemsize + 4)):
        chunk_unit = unit32(chunk)
        for b0, block in rows.blocks(_DB_BLOCK, first=c0):
            block_unit = unit32(block)
            for a in range(0, len(chunk), _QUERY_BLOCK):
                ii, jj = torch.nonzero(chunk_unit[a:a + _QUERY_BLOCK] @ block_unit.T >= cut, as_tuple=True)
                keep = ii + (c0 + a) < jj + b0
                ii, jj = ii[keep] + a, jj[keep]
                _keep_close(found, ii + c0, jj + b0, cosine_distance(chunk[ii], block[jj]), threshold)
    return _sorted_pairs(found, len(rows))


def _keep_close(found, i: torch.Tensor, j: torch.Tensor, d: torch.Tensor, threshold: float) -> None:
    """Append the pairs that pass the exact test: the metric's own distance decides (the similarity
    only proposed them), with the slack for rounding across batches."""
    keep = d <= threshold + DISTANCE_TOLERANCE
    found.append((i[keep], j[keep], d[keep]))


def _sorted_pairs(found, n: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(i, j, d)`` ordered by ``(i, j)``, each pair once (a pair met in several cells is kept once)."""
    if not found:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0)
    i, j, d = (torch.cat([f[k] for f in found]) for k in range(3))
    key, first = np.unique((i.long() * n + j.long()).numpy(), return_index=True)
    key = torch.from_numpy(key)
    return key // n, key % n, d[torch.from_numpy(first)]


def _cat(parts: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


# -- cluster: k-means cells, scanned in groups --------------------------------------------------
def _assign(index, centroids: np.ndarray, rows, probes: int, bar=None) -> np.ndarray:
    """``[len(rows), probes]`` int32: the nearest cells of every row, nearest first (one pass)."""
    # Always float32, on every CPU: the cells decide which pairs are candidates at all, so a
    # machine-dependent precision here would make the found pairs depend on the machine.
    out = np.zeros((len(rows), probes), dtype=np.int32)
    for start, block in rows.blocks(_ASSIGN_BLOCK):
        if bar is not None:
            bar.update(len(block))
        out[start:start + len(block)] = index.search(_unit32(block), probes)[1]
    return out


def _cluster_pairs(queries, db, threshold: float, nlist: int, probes: int, self_pairs: bool, progress: bool = False
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Confirmed pairs (query row, db row) among the db members of each query's ``probes`` nearest
    k-means cells; with ``self_pairs`` (queries is db), pairs i < j."""
    from tqdm.auto import tqdm

    faiss = _faiss()
    quiet = None if progress else True  # None: bars on a terminal only
    if nlist == 1:  # one cell: every pair (k-means would only warn about too few points)
        home, visits = np.zeros(len(db), dtype=np.int32), np.zeros((len(queries), 1), dtype=np.int32)
        centroids = np.zeros((1, db.dim), dtype=np.float32)
    else:
        kmeans = faiss.Kmeans(db.dim, nlist, niter=10, spherical=True, seed=1234, verbose=False)
        kmeans.train(_train_rows(db, nlist))
        centroids = kmeans.centroids
        total = len(queries) + (0 if self_pairs else len(db))
        with tqdm(total=total, unit="row", desc="dedup: nearest cells", disable=quiet) as bar:
            visits = _assign(kmeans.index, centroids, queries, probes, bar)
            home = visits[:, 0] if self_pairs else _assign(kmeans.index, centroids, db, 1, bar)[:, 0]
    found: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with tqdm(total=nlist, unit="cell", desc="dedup: scan cells", disable=quiet) as bar:
        for cells, q_x, q_ids, d_x, d_ids in _groups(queries, db, home, visits, centroids, self_pairs):
            _scan_cells(found, cells, q_x, q_ids, d_x, d_ids, visits, home, nlist, threshold, self_pairs)
            bar.update(nlist if cells is None else int(cells.sum()))
            del q_x, d_x  # before the next group is gathered
    return _sorted_pairs(found, len(db))


def _scan_cells(found, cells: Optional[np.ndarray], q_x, q_ids, d_x, d_ids, visits: np.ndarray, home: np.ndarray,
                nlist: int, threshold: float, self_pairs: bool) -> None:
    """Each cell of ``cells`` (a mask; None: all), whose members are all in ``d_x`` (rows
    ``d_ids``, None: all) and visitors all in ``q_x``: its visitors against its members, exactly,
    and the candidates confirmed."""
    d_home = home if d_ids is None else home[d_ids]
    q_visits = visits if q_ids is None else visits[q_ids]
    members, member_start = _inverted(d_home, nlist)
    visitors, visitor_start = _inverted(q_visits.ravel(), nlist)
    visitors //= q_visits.shape[1]  # flat position -> query row
    dtype = _scan_dtype(q_x)
    q_unit = _unit_as(q_x, dtype)
    d_unit = q_unit if d_x is q_x else _unit_as(d_x, dtype)
    q_glob = None if q_ids is None else torch.from_numpy(q_ids.astype(np.int64))
    d_glob = None if d_ids is None else torch.from_numpy(d_ids.astype(np.int64))
    cut = 1.0 - threshold - _SLACK - (_BF16_SLACK if dtype == torch.bfloat16 else 0.0)
    candidates: List[Tuple[torch.Tensor, torch.Tensor]] = []
    busy = (np.diff(member_start) > 0) & (np.diff(visitor_start) > 0)
    if cells is not None:  # the group's own cells: its rows' other cells are scanned in their groups
        busy &= cells
    # Every similarity block has one shape, [_TILE_ROWS, _TILE_COLS] (tiles padded with zero rows,
    # masked out below): oneDNN, which runs the bfloat16 products, caches a primitive with its own
    # buffers for every new shape, and the cells' ever-different sizes grew that cache by GBs per
    # group at 10 M rows, outside STREAM_BYTES. One shape keeps one primitive.
    dim = q_unit.shape[1]
    q_tile = torch.zeros((_TILE_ROWS, dim), dtype=dtype)
    sim = torch.empty((_TILE_ROWS, _TILE_COLS), dtype=dtype)
    for c in np.nonzero(busy)[0]:
        m = torch.from_numpy(members[member_start[c]:member_start[c + 1]])
        v = torch.from_numpy(visitors[visitor_start[c]:visitor_start[c + 1]])
        cols = torch.zeros((-(-len(m) // _TILE_COLS) * _TILE_COLS, dim), dtype=dtype)
        cols[:len(m)] = d_unit[m]
        for a in range(0, len(v), _TILE_ROWS):
            rows = v[a:a + _TILE_ROWS]
            q_tile[:len(rows)] = q_unit[rows]
            q_tile[len(rows):] = 0
            for b in range(0, len(cols), _TILE_COLS):
                torch.mm(q_tile, cols[b:b + _TILE_COLS].T, out=sim)
                ii, jj = torch.nonzero(sim >= cut, as_tuple=True)
                keep = (ii < len(rows)) & (jj < len(m) - b)  # not the padding (a cut <= 0 would take it)
                candidates.append((rows[ii[keep]], m[jj[keep] + b]))
    # Confirmed once per group, not per cell: few large calls (small torch calls cost milliseconds
    # each on a loaded machine).
    qi, dj = _cat([c[0] for c in candidates]), _cat([c[1] for c in candidates])
    if self_pairs:  # q_x is d_x: a row meets itself in its home cell
        keep = qi != dj
        qi, dj = qi[keep], dj[keep]
    block = _rows.pair_block(q_x.shape[1])
    for a in range(0, len(qi), block):
        qa, da = qi[a:a + block], dj[a:a + block]
        d = cosine_distance(q_x[qa], d_x[da])
        gi = qa if q_glob is None else q_glob[qa]
        gj = da if d_glob is None else d_glob[da]
        if self_pairs:
            gi, gj = torch.minimum(gi, gj), torch.maximum(gi, gj)
        _keep_close(found, gi, gj, d, threshold)


def _groups(queries, db, home: np.ndarray, visits: np.ndarray, centroids: np.ndarray, self_pairs: bool):
    """``(cell mask, query rows, their ids, db rows, their ids)`` per group of cells: in memory,
    the whole (mask and ids None); a store that fits ``STREAM_BYTES``, gathered at once; else one
    group at a time, each gathered by :meth:`~rpmetric.stores.store.EmbeddingStore.take` (which
    reads only the pages of the rows it needs, one shard mapped at a time). Nothing is written to
    disk, so an interruption leaves nothing behind."""
    if queries.in_memory and db.in_memory:
        yield None, queries.x, None, db.x, None
        return
    per_row = queries.dim * (max(queries.itemsize, db.itemsize) + 4)  # the rows, and their unit copy
    budget = max(1, _rows.STREAM_BYTES // per_row)
    total = len(queries) + (0 if self_pairs else len(db))
    if total <= budget:
        q_x = _gather(queries)
        yield None, q_x, None, (q_x if self_pairs else _gather(db)), None
        return
    cell_group = _pack_cells(home, visits, centroids, budget, self_pairs)
    q_groups = cell_group[visits]
    d_groups = q_groups if self_pairs else cell_group[home][:, None]
    for g in range(int(cell_group.max()) + 1):
        q_ids = np.nonzero(np.any(q_groups == g, axis=1))[0]
        d_ids = q_ids if self_pairs else np.nonzero(d_groups[:, 0] == g)[0]
        q_x = queries.take(q_ids)
        d_x = q_x if self_pairs else db.take(d_ids)
        yield cell_group == g, q_x, q_ids, d_x, d_ids
        del q_x, d_x
        _release_freed_memory()


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim). The scans' blocks vary in
    size around glibc's mmap threshold, so without it freed blocks stay resident group after group."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def _gather(rows) -> torch.Tensor:
    parts = [block for _, block in rows.blocks(_ASSIGN_BLOCK)]
    return torch.cat(parts) if parts else torch.zeros((0, rows.dim))


def _pack_cells(home: np.ndarray, visits: np.ndarray, centroids: np.ndarray, budget: int, self_pairs: bool) -> np.ndarray:
    """The group of every cell: cells in an order that keeps near cells together (by a k-means of
    the centroids), cut greedily where a group's distinct rows would pass ``budget``. A row lands
    in the group of each of its cells; keeping neighbours together keeps that to about one."""
    import faiss

    nlist = len(centroids)
    n_rows = len(visits) + (0 if self_pairs else len(home))
    coarse = max(1, min(nlist // 2, -(-2 * n_rows // budget)))
    if coarse > 1:
        km = faiss.Kmeans(centroids.shape[1], coarse, niter=20, spherical=True, seed=4321, verbose=False,
                          min_points_per_centroid=1)  # few centroids per coarse cell is expected
        km.train(np.ascontiguousarray(centroids, dtype=np.float32))
        label = km.index.search(np.ascontiguousarray(centroids, dtype=np.float32), 1)[1][:, 0]
        order = np.lexsort((np.arange(nlist), label))
    else:
        order = np.arange(nlist)
    visitors, v_start = _inverted(visits.ravel(), nlist)
    visitors //= visits.shape[1]
    members, m_start = (None, None) if self_pairs else _inverted(home, nlist)
    offset = len(visits)  # db rows are counted after the query rows
    seen = np.zeros(n_rows, dtype=bool)
    held: List[np.ndarray] = []
    group, count, g = np.zeros(nlist, dtype=np.int32), 0, 0
    for c in order:
        rows = visitors[v_start[c]:v_start[c + 1]]
        if members is not None:
            rows = np.concatenate([rows, members[m_start[c]:m_start[c + 1]] + offset])
        new = np.unique(rows[~seen[rows]])
        if count and count + len(new) > budget:  # start a new group (a single cell may pass the budget)
            for h in held:
                seen[h] = False
            held, count, g = [], 0, g + 1
            new = np.unique(rows)
        seen[new] = True
        held.append(new)
        count += len(new)
        group[c] = g
    return group


def _inverted(cells: np.ndarray, nlist: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(positions sorted by cell, start of each cell's run)``: cell c holds
    ``positions[start[c]:start[c + 1]]``."""
    order = np.argsort(cells, kind="stable")
    start = np.searchsorted(cells[order], np.arange(nlist + 1))
    return order.astype(np.int64), start


# -- ivf ------------------------------------------------------------------------------------------
def _ivf_candidates(queries, db, threshold: float, nlist: int, probes: int,
                    self_pairs: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Candidate pairs from a FAISS IVF index's range search (inner product on unit vectors): an
    IndexIVFFlat over vectors in memory, an IndexIVFScalarQuantizer (float16) over a store."""
    faiss = _faiss()
    dim = db.dim
    fp16 = not db.in_memory
    if nlist == 1:  # one cell is a flat index (IVF training would only warn about too few points)
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT) if fp16 \
            else faiss.IndexFlatIP(dim)
    else:
        quantizer = faiss.IndexFlatIP(dim)
        if fp16:
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                  faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(_train_rows(db, nlist))
        index.nprobe = probes
    unit = {}
    if db.in_memory:
        unit["db"] = _unit32(db.x)
        index.add(unit["db"])
    else:
        for _, block in db.blocks(_ASSIGN_BLOCK):
            index.add(_unit32(block))
    radius = 1.0 - threshold - _SLACK - (_FP16_SLACK if fp16 else 0.0)  # FAISS keeps inner products above it
    found: List[Tuple[torch.Tensor, torch.Tensor]] = []
    if queries.in_memory:
        q_unit = unit["db"] if queries is db and "db" in unit else _unit32(queries.x)
        blocks = ((a, q_unit[a:a + _ASSIGN_BLOCK]) for a in range(0, len(q_unit), _ASSIGN_BLOCK))
    else:
        blocks = ((a, _unit32(block)) for a, block in queries.blocks(_ASSIGN_BLOCK))
    for a, q in blocks:
        lims, _, hits = index.range_search(q, radius)
        qi = torch.from_numpy(np.repeat(np.arange(a, a + len(lims) - 1), np.diff(lims.astype(np.int64))))
        _add_pairs(found, qi, torch.from_numpy(hits.astype(np.int64)), self_pairs)
    return _unique_pairs(found, len(db))


def _add_pairs(found: List[Tuple[torch.Tensor, torch.Tensor]], qi: torch.Tensor, dj: torch.Tensor,
               self_pairs: bool) -> None:
    """Append candidate pairs (query row, db row); of one set's own pairs, keep each as i < j."""
    if self_pairs:
        keep = qi != dj
        qi, dj = torch.minimum(qi[keep], dj[keep]), torch.maximum(qi[keep], dj[keep])
    found.append((qi, dj))


def _unique_pairs(found: List[Tuple[torch.Tensor, torch.Tensor]], n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    key = torch.unique(_cat([i * n + j for i, j in found]))  # sorted, so pairs come out ordered by (i, j)
    return key // n, key % n


def _confirm(emb, ref, i: torch.Tensor, j: torch.Tensor, threshold: float
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidates that pass the exact test, with their distances."""
    # The metric's own distance decides (the similarity only proposed candidates), with the slack
    # for rounding across batches: the same image stored twice is within a threshold of 0.
    d = pair_distances(emb, ref, i, j)
    keep = d <= threshold + DISTANCE_TOLERANCE
    return i[keep], j[keep], d[keep]


def _connected_groups(n: int, i: Sequence[int], j: Sequence[int]) -> List[List[int]]:
    """Components of size >= 2 of the graph with edges (i, j), each sorted, ordered by first member.
    Only the rows that have a pair are visited, so it stays cheap for 10 M rows with few pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    if len(i) == 0:
        return []
    nodes, where = np.unique(np.concatenate([i, j]), return_inverse=True)
    m = len(nodes)
    edges = coo_matrix((np.ones(len(i), dtype=np.int8), (where[:len(i)], where[len(i):])), shape=(m, m))
    _, label = connected_components(edges, directed=False)
    order = np.argsort(label, kind="stable")  # nodes are sorted, so each group comes out sorted
    cuts = np.nonzero(np.diff(label[order]))[0] + 1
    groups = [nodes[part].tolist() for part in np.split(order, cuts)]
    groups.sort(key=lambda g: g[0])
    return groups


def group_duplicates(embeddings, threshold: float, *, method: str = "exact", clusters: Optional[int] = None,
                     probes: Optional[int] = None, progress: bool = False) -> List[List[int]]:
    """Groups of near-duplicates: connected components of the pairs with ``1 - cos <= threshold``
    (``method``, ``clusters``, ``probes``, ``progress``: see :func:`near_pairs`).

    Groups chain (a~b and b~c put a, b, c together even if a and c are further apart). Each group
    is sorted, and groups are ordered by their first member.

    Example:
        >>> e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.01, 1.0], [-1.0, 0.0]])
        >>> group_duplicates(e, 0.001)
        [[0, 2], [1, 3]]
    """
    n = len(as_rows(embeddings, "embeddings"))
    i, j, _ = near_pairs(embeddings, threshold, method=method, clusters=clusters, probes=probes, progress=progress)
    return _connected_groups(n, i.numpy(), j.numpy())


def find_near(embeddings, reference, threshold: float, *, index: str = "auto", nprobe: Optional[int] = None,
              method: Optional[str] = None, clusters: Optional[int] = None
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of ``embeddings`` within ``threshold`` of some row of ``reference``.

    For filtering a training set against test or protected images: returns ``(rows, nearest
    reference rows, distances)`` for every flagged row, in row order.

    Args:
        embeddings, reference: ``[N, D]`` and ``[M, D]`` embeddings, or EmbeddingStores (streamed).
        threshold: largest cosine distance that counts, in [0, 2].
        index, nprobe: without ``method``, the nearest reference row is found by :func:`search`.
        method: one of ``DEDUP_METHODS``, as in :func:`near_pairs` with ``reference`` as the
            cells' members and ``nprobe`` as the probes; the nearest reference row among the
            confirmed candidates is returned. ``"auto"`` is exact while ``N * M`` is below
            ``AUTO_APPROX_MIN ** 2``.
        clusters: cells of the approximate methods (see :func:`near_pairs`).

    Example:
        >>> train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> protected = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
        >>> rows, ref, d = find_near(train, protected, 0.01)
        >>> rows.tolist(), ref.tolist(), d.tolist()
        ([1], [0], [0.0])
    """
    threshold = _check_threshold(threshold)
    if method is not None:
        emb, ref = as_rows(embeddings, "embeddings"), as_rows(reference, "reference")
        _check_dims(emb, ref)
        method = _dedup_method(method, int((len(emb) * len(ref)) ** 0.5))
        clusters, nprobe = _check_knobs(clusters, nprobe)
        if method == "exact":
            index = "exact"
        else:
            nlist = _nlist(len(ref), clusters)
            probes = min(DEFAULT_PROBES if nprobe is None else nprobe, nlist)
            if method == "cluster":
                i, j, d = _cluster_pairs(emb, ref, threshold, nlist, probes, self_pairs=False)
            else:
                i, j = _ivf_candidates(emb, ref, threshold, nlist, probes, self_pairs=False)
                i, j, d = _confirm(emb, ref, i, j, threshold)
            order = torch.from_numpy(np.lexsort((d.numpy(), i.numpy())))  # by row, nearest first
            i, j, d = i[order], j[order], d[order]
            first = torch.ones(len(i), dtype=torch.bool)
            first[1:] = i[1:] != i[:-1]
            return i[first], j[first], d[first]
    hits = search(reference, embeddings, k=1, index=index, nprobe=nprobe)
    d, ref = hits.distances[:, 0], hits.indices[:, 0]
    rows = torch.nonzero(d <= threshold + DISTANCE_TOLERANCE, as_tuple=True)[0]
    return rows, ref[rows], d[rows]

