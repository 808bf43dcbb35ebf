"""Near-duplicate pairs and groups, and rows near a reference set: exact, or FAISS candidates
(k-means cells or an IVF range search) that the exact ``1 - cos`` confirms.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..functional import DISTANCE_TOLERANCE, cosine_distance
from ..validation import check_int
from .index import _QUERY_BLOCK, _DB_BLOCK, _as_matrix, _check_choice, _check_dims, _faiss, _faiss_available, _unit32, search

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
_PAIR_BLOCK = 1 << 20  # candidate pairs confirmed per cosine_distance call
_SIM_ELEMENTS = 1 << 24  # entries of one similarity block (64 MB of float32)


def _check_threshold(threshold: float) -> float:
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 2.0:
        raise ValueError(f"Argument `threshold` must be a cosine distance in [0, 2], but got {threshold!r}.")
    return float(threshold)


def near_pairs(embeddings, threshold: float, *, method: str = "exact", clusters: Optional[int] = None,
               probes: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs ``i < j`` with ``1 - cos <= threshold`` (plus ``DISTANCE_TOLERANCE``, for rounding):
    ``(i, j, distance)`` tensors, each pair once.

    Args:
        embeddings: ``[N, D]`` embeddings (or an EmbeddingStore).
        threshold: largest cosine distance that counts, in [0, 2].
        method: ``"exact"``: blockwise over the upper triangle, quadratic in N. ``"cluster"``:
            FAISS spherical k-means into ``clusters`` cells (SemDeDup, Abbas et al. 2023); each
            vector is compared exactly with the members of its ``probes`` nearest cells, so a
            vector near a border meets its neighbours' members too. ``"ivf"``: a FAISS
            IndexIVFFlat with ``clusters`` cells, range search visiting ``probes`` cells. Both
            approximate methods only propose candidates; every pair returned passes the exact
            test, so they may miss pairs but never add one. ``"auto"``: exact below
            ``AUTO_APPROX_MIN`` vectors (or without FAISS), cluster above.
        clusters: cells of the approximate methods, at least 1; None picks ``sqrt(N)`` (at most
            N/39, FAISS's minimum of training points per cell).
        probes: cells each vector visits, at least 1 (more: slower, higher recall); None picks
            ``DEFAULT_PROBES``.

    Example:
        >>> e = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])
        >>> i, j, d = near_pairs(e, 0.001)
        >>> i.tolist(), j.tolist()
        ([0], [1])
    """
    emb = _as_matrix(embeddings, "embeddings")
    threshold = _check_threshold(threshold)
    method = _dedup_method(method, len(emb))
    clusters, probes = _check_knobs(clusters, probes)
    if method == "exact":
        i, j = _exact_candidates(emb, threshold)
    else:
        x = _unit32(emb)
        nlist = _nlist(len(x), clusters)
        probes = min(DEFAULT_PROBES if probes is None else probes, nlist)
        scan = _cluster_candidates if method == "cluster" else _ivf_candidates
        i, j = scan(x, x, threshold, nlist, probes, self_pairs=True)
    return _confirm(emb, emb, i, j, threshold)


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


def _cat(parts: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _train_sample(x: np.ndarray, nlist: int) -> np.ndarray:
    """At most 64 points per cell train k-means (FAISS would subsample too, printing a warning);
    a fixed seed keeps the cells, and so the candidates, the same from run to run."""
    if len(x) <= 64 * nlist:
        return x
    rows = np.sort(np.random.default_rng(0).choice(len(x), 64 * nlist, replace=False))
    return np.ascontiguousarray(x[rows])


def _cluster_candidates(queries: np.ndarray, db: np.ndarray, threshold: float, nlist: int, probes: int,
                        self_pairs: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs (query row, db row) with cosine >= 1 - threshold - slack among the db members of each
    query's ``probes`` nearest k-means cells; with ``self_pairs`` (queries is db), pairs i < j."""
    faiss = _faiss()
    if nlist == 1:  # one cell: every pair (k-means would only warn about too few points)
        home, visits = np.zeros(len(db), dtype=np.int64), np.zeros((len(queries), 1), dtype=np.int64)
    else:
        kmeans = faiss.Kmeans(db.shape[1], nlist, niter=10, spherical=True, seed=1234, verbose=False)
        kmeans.train(_train_sample(db, nlist))
        home = _nearest_cells(kmeans.index, db, 1)[:, 0]
        visits = home[:, None] if self_pairs and probes == 1 else _nearest_cells(kmeans.index, queries, probes)
    members, member_start = _inverted(home, nlist)
    visitors, visitor_start = _inverted(visits.ravel(), nlist)
    visitors //= visits.shape[1]  # flat position -> query row
    db_t, q_t = torch.from_numpy(db), torch.from_numpy(queries)
    cut = 1.0 - threshold - _SLACK
    found: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for c in range(nlist):
        m = torch.from_numpy(members[member_start[c]:member_start[c + 1]])
        v = torch.from_numpy(visitors[visitor_start[c]:visitor_start[c + 1]])
        if len(m) == 0 or len(v) == 0:
            continue
        step = max(1, _SIM_ELEMENTS // len(m))
        cols = db_t[m]
        for a in range(0, len(v), step):
            rows = v[a:a + step]
            ii, jj = torch.nonzero(q_t[rows] @ cols.T >= cut, as_tuple=True)
            _add_pairs(found, rows[ii], m[jj], self_pairs)
    return _unique_pairs(found, len(db))


def _nearest_cells(index, x: np.ndarray, probes: int) -> np.ndarray:
    return np.concatenate([index.search(x[a:a + 65536], probes)[1] for a in range(0, len(x), 65536)]
                          or [np.zeros((0, probes), dtype=np.int64)])


def _inverted(cells: np.ndarray, nlist: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(positions sorted by cell, start of each cell's run)``: cell c holds
    ``positions[start[c]:start[c + 1]]``."""
    order = np.argsort(cells, kind="stable")
    start = np.searchsorted(cells[order], np.arange(nlist + 1))
    return order.astype(np.int64), start


def _ivf_candidates(queries: np.ndarray, db: np.ndarray, threshold: float, nlist: int, probes: int,
                    self_pairs: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The same candidates from a FAISS IndexIVFFlat's range search (inner product on unit vectors)."""
    faiss = _faiss()
    dim = db.shape[1]
    if nlist == 1:  # one cell is a flat index (IVF training would only warn about too few points)
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(_train_sample(db, nlist))
        index.nprobe = probes
    index.add(db)
    radius = 1.0 - threshold - _SLACK  # FAISS keeps inner products above the radius
    found: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for a in range(0, len(queries), 65536):
        lims, _, hits = index.range_search(queries[a:a + 65536], radius)
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


def _confirm(emb: torch.Tensor, ref: torch.Tensor, i: torch.Tensor, j: torch.Tensor, threshold: float
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidates that pass the exact test, with their distances."""
    # The metric's own distance decides (the similarity only proposed candidates), with the slack
    # for rounding across batches: the same image stored twice is within a threshold of 0.
    d = _cat_float([cosine_distance(emb[i[a:a + _PAIR_BLOCK]], ref[j[a:a + _PAIR_BLOCK]])
                    for a in range(0, len(i), _PAIR_BLOCK)])
    keep = d <= threshold + DISTANCE_TOLERANCE
    return i[keep], j[keep], d[keep]


def _cat_float(parts: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0)


def _connected_groups(n: int, i: Sequence[int], j: Sequence[int]) -> List[List[int]]:
    """Components of size >= 2 of the graph with edges (i, j), each sorted, ordered by first member."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving keeps the trees flat
            x = parent[x]
        return x

    for a, b in zip(i, j):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the root stays the group's first member
    groups: dict = {}
    for x in range(n):
        groups.setdefault(find(x), []).append(x)
    return [members for _, members in sorted(groups.items()) if len(members) > 1]


def group_duplicates(embeddings, threshold: float, *, method: str = "exact", clusters: Optional[int] = None,
                     probes: Optional[int] = None) -> List[List[int]]:
    """Groups of near-duplicates: connected components of the pairs with ``1 - cos <= threshold``
    (``method``, ``clusters``, ``probes``: see :func:`near_pairs`).

    Groups chain (a~b and b~c put a, b, c together even if a and c are further apart). Each group
    is sorted, and groups are ordered by their first member.

    Example:
        >>> e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.01, 1.0], [-1.0, 0.0]])
        >>> group_duplicates(e, 0.001)
        [[0, 2], [1, 3]]
    """
    emb = _as_matrix(embeddings, "embeddings")
    i, j, _ = near_pairs(emb, threshold, method=method, clusters=clusters, probes=probes)
    return _connected_groups(len(emb), i.tolist(), j.tolist())


def find_near(embeddings, reference, threshold: float, *, index: str = "auto", nprobe: Optional[int] = None,
              method: Optional[str] = None, clusters: Optional[int] = None
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of ``embeddings`` within ``threshold`` of some row of ``reference``.

    For filtering a training set against test or protected images: returns ``(rows, nearest
    reference rows, distances)`` for every flagged row, in row order.

    Args:
        embeddings, reference: ``[N, D]`` and ``[M, D]`` embeddings (or EmbeddingStores).
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
        emb, ref = _as_matrix(embeddings, "embeddings"), _as_matrix(reference, "reference")
        _check_dims(emb, ref)
        method = _dedup_method(method, int((len(emb) * len(ref)) ** 0.5))
        clusters, nprobe = _check_knobs(clusters, nprobe)
        if method == "exact":
            index = "exact"
        else:
            nlist = _nlist(len(ref), clusters)
            scan = _cluster_candidates if method == "cluster" else _ivf_candidates
            i, j = scan(_unit32(emb), _unit32(ref), threshold, nlist,
                        min(DEFAULT_PROBES if nprobe is None else nprobe, nlist), self_pairs=False)
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

