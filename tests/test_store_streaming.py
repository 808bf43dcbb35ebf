"""Stores larger than the limits a test sets are streamed, never materialised, by search, dedup,
dedup --against and classify, in Python and on the command line; results against plain numpy."""

from __future__ import annotations

import csv
import json
import tempfile

import numpy as np
import pytest
import torch

from planted import planted_vectors
from rpmetric.cli import main
from rpmetric.stores import rows as rows_mod
from rpmetric.stores import store as store_mod
from rpmetric.stores.dedup import find_near, group_duplicates, near_pairs
from rpmetric.stores.index import search
from rpmetric.stores.knn import knn_classify
from rpmetric.stores.store import EmbeddingStore
from synthstore import chunks, write_store

N, DIM, T, SHARD = 2400, 32, 0.05, 100
pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A store (24 float16 shards) and a reference store of some of its rows, moved a little."""
    root = tmp_path_factory.mktemp("streaming")
    x = planted_vectors(N, DIM, T, centres=12, seed=3)
    rng = np.random.default_rng(5)
    ref = x[rng.choice(N, 300, replace=False)] + 0.01 * rng.standard_normal((300, DIM)).astype(np.float32)
    ref = np.concatenate([ref, rng.standard_normal((200, DIM)).astype(np.float32)])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    return write_store(root / "store", chunks(x, SHARD)), write_store(root / "ref", chunks(ref, 128))


def stored(path) -> np.ndarray:
    """The stored values, read back with numpy alone (float64 unit rows)."""
    manifest = json.loads((path / "manifest.json").read_text())
    x = np.concatenate([np.load(path / s["embeddings"]) for s in manifest["shards"]]).astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_pairs(x: np.ndarray, threshold: float):
    d = 1.0 - x @ x.T
    i, j = np.nonzero(np.triu(d <= threshold, 1))
    # The planted set keeps every distance well away from T, so rounding cannot decide a pair.
    assert not np.any(np.abs(d[np.triu_indices(len(x), 1)] - threshold) < 1e-4)
    return i, j, d[i, j]


def numpy_groups(n, i, j):
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for a, b in zip(i, j):
        parent[max(find(a), find(b))] = min(find(a), find(b))
    groups = {}
    for a in range(n):
        groups.setdefault(find(a), []).append(a)
    return sorted(g for g in groups.values() if len(g) > 1)


@pytest.fixture
def big(monkeypatch, tmp_path):
    """Limits far below the stores' size: embeddings() refuses, and every pass streams in chunks
    and groups; embeddings() is then also made to fail outright, so nothing may call it."""
    monkeypatch.setattr(store_mod, "EMBEDDINGS_LIMIT", 4096)
    monkeypatch.setattr(rows_mod, "STREAM_BYTES", 400 * DIM * 6)  # 400 rows and their float32 copy
    spill = tmp_path / "tmp"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))

    def refuse(self, *args, **kwargs):
        raise AssertionError("embeddings() was called on a store above the limit")

    monkeypatch.setattr(EmbeddingStore, "embeddings", refuse)
    return spill


def test_embeddings_refuses_a_store_above_the_limit_and_names_the_streaming_apis(stores, monkeypatch):
    store = EmbeddingStore(stores[0])
    assert store.embeddings().shape == (N, DIM)
    monkeypatch.setattr(store_mod, "EMBEDDINGS_LIMIT", N * DIM * 4 - 1)
    with pytest.raises(ValueError, match=r"EMBEDDINGS_LIMIT.*pass the store itself to search.*store.blocks\(\)"):
        store.embeddings()


def test_blocks_and_take_read_the_stored_rows(stores):
    store = EmbeddingStore(stores[0])
    x = np.concatenate([np.load(stores[0] / s["embeddings"]) for s in store.manifest["shards"]])
    starts = [start for start, _ in store.blocks()]
    assert starts == list(range(0, N, SHARD))
    rows = np.array([2399, 0, 150, 150, 99, 100])
    np.testing.assert_array_equal(store.take(rows), x[rows])
    picked = store.select([3, 140, 2000])
    np.testing.assert_array_equal(np.concatenate([b for _, b in picked.blocks()]), x[[3, 140, 2000]])


@pytest.mark.parametrize("method", ["exact", "cluster", "ivf", "auto"])
def test_dedup_streams_a_store_and_matches_numpy(stores, big, method):
    x = stored(stores[0])
    ti, tj, td = numpy_pairs(x, T)
    store = EmbeddingStore(stores[0])
    i, j, d = near_pairs(store, T, method=method, clusters=8 if method != "exact" else None)
    truth = set(zip(ti.tolist(), tj.tolist()))
    got = set(zip(i.tolist(), j.tolist()))
    assert got <= truth  # precision 1 by construction
    assert len(got) >= 0.99 * len(truth) if method != "exact" else got == truth
    found = {p: k for k, p in enumerate(zip(ti.tolist(), tj.tolist()))}
    np.testing.assert_allclose(d.numpy(), td[[found[p] for p in zip(i.tolist(), j.tolist())]], atol=1e-5)
    # The same vectors in memory give the same pairs.
    mem = torch.from_numpy(np.concatenate([b for _, b in store.blocks()]).astype(np.float32))
    mi, mj, md = near_pairs(mem, T, method=method, clusters=8 if method != "exact" else None)
    assert torch.equal(mi, i) and torch.equal(mj, j)
    np.testing.assert_allclose(md.numpy(), d.numpy(), atol=1e-6)
    assert not any(big.iterdir())  # the temporary buckets are gone


def test_groups_of_a_streamed_store_match_numpy(stores, big):
    x = stored(stores[0])
    ti, tj, _ = numpy_pairs(x, T)
    assert group_duplicates(EmbeddingStore(stores[0]), T, method="exact") == numpy_groups(N, ti, tj)


def test_an_interrupted_cluster_pass_leaves_no_files(stores, big, monkeypatch):
    calls = []
    real = EmbeddingStore.take

    def take_then_die(self, rows):
        calls.append(len(rows))
        if len(calls) == 3:  # in the scan of the groups, after the k-means sample and a first group
            raise KeyboardInterrupt
        return real(self, rows)

    before = sorted(p.name for p in stores[0].iterdir())
    monkeypatch.setattr(EmbeddingStore, "take", take_then_die)
    with pytest.raises(KeyboardInterrupt):
        near_pairs(EmbeddingStore(stores[0]), T, method="cluster", clusters=8)
    assert len(calls) == 3
    assert not any(big.iterdir())
    assert sorted(p.name for p in stores[0].iterdir()) == before


@pytest.mark.parametrize("method", [None, "exact", "cluster", "ivf"])
def test_against_streams_both_stores_and_matches_numpy(stores, big, method):
    x, ref = stored(stores[0]), stored(stores[1])
    d = 1.0 - x @ ref.T
    want = np.nonzero(d.min(1) <= T)[0]
    rows, match, dist = find_near(EmbeddingStore(stores[0]), EmbeddingStore(stores[1]), T, method=method,
                                  clusters=4 if method in ("cluster", "ivf") else None)
    assert set(rows.tolist()) <= set(want.tolist())
    assert len(rows) >= 0.99 * len(want) if method in ("cluster", "ivf") else rows.tolist() == want.tolist()
    np.testing.assert_array_equal(match.numpy(), d[rows.numpy()].argmin(1))
    np.testing.assert_allclose(dist.numpy(), d[rows.numpy()].min(1), atol=1e-5)


@pytest.mark.parametrize("index", ["exact", "faiss", "ivf"])
def test_search_streams_the_store_and_matches_numpy(stores, big, index):
    x, ref = stored(stores[0]), stored(stores[1])
    hits = search(EmbeddingStore(stores[0]), EmbeddingStore(stores[1]), k=4, index=index, nprobe=1000)
    d = 1.0 - ref @ x.T
    np.testing.assert_allclose(hits.distances.numpy(), np.sort(d, 1)[:, :4], atol=1e-5)
    best = np.argsort(d, 1, kind="stable")[:, :4]
    clear = np.sort(d, 1)[:, 4] - np.sort(d, 1)[:, 3] > 1e-4  # no tie at the cut
    assert np.array_equal(np.sort(hits.indices.numpy(), 1)[clear], np.sort(best, 1)[clear])


def test_knn_classify_streams_the_labelled_rows(stores, big):
    x, ref = stored(stores[0]), stored(stores[1])
    labelled = np.arange(0, N, 3)
    labels = [f"c{r % 4}" for r in labelled]
    preds = knn_classify(EmbeddingStore(stores[0]).select(labelled), labels, EmbeddingStore(stores[1]), k=3)
    d = 1.0 - ref @ x[labelled].T
    for p, row in zip(preds, d):
        near = np.argsort(row, kind="stable")[:3]
        assert sorted(p.neighbours) == sorted(near.tolist())
        votes = [labels[n] for n in near]
        assert votes.count(p.label) == max(votes.count(v) for v in votes)


@pytest.mark.parametrize("method", ["exact", "cluster", "ivf"])
def test_cli_dedup_streams_the_store(stores, big, tmp_path, method):
    x = stored(stores[0])
    ti, tj, td = numpy_pairs(x, T)
    out = tmp_path / "groups.csv"
    args = ["dedup", str(stores[0]), "--threshold", str(T), "--method", method, "--out", str(out)]
    assert main(args + (["--clusters", "8"] if method != "exact" else [])) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    groups = {}
    for r in rows:
        groups.setdefault(int(r["group"]), []).append(r)
    want = numpy_groups(N, ti, tj)
    got = [[int(r["path"].rsplit("/", 1)[1][:-4]) for r in g] for _, g in sorted(groups.items())]
    assert got == want if method == "exact" else sum(map(len, got)) >= 0.99 * sum(map(len, want))
    for g in groups.values():
        first = int(g[0]["path"].rsplit("/", 1)[1][:-4])
        for r in g:
            row = int(r["path"].rsplit("/", 1)[1][:-4])
            assert abs(float(r["distance_to_first"]) - (1.0 - x[first] @ x[row])) < 1e-5


def test_cli_against_search_and_classify_stream_the_stores(stores, big, tmp_path, capsys):
    x, ref = stored(stores[0]), stored(stores[1])
    out = tmp_path / "near.csv"
    assert main(["dedup", str(stores[0]), "--against", str(stores[1]), "--threshold", str(T), "--method", "exact",
                 "--out", str(out)]) == 0
    with open(out, newline="") as f:
        flagged = [int(r["path"].rsplit("/", 1)[1][:-4]) for r in csv.DictReader(f)]
    assert flagged == np.nonzero((1.0 - x @ ref.T).min(1) <= T)[0].tolist()
    capsys.readouterr()
    assert main(["search", str(stores[0]), "--query-store", str(stores[1]), "--k", "2", "--index", "exact",
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    d = 1.0 - ref @ x.T
    np.testing.assert_allclose([[n["distance"] for n in r["neighbours"]] for r in results], np.sort(d, 1)[:, :2],
                               atol=1e-5)
    labels = tmp_path / "labels.csv"
    labelled = list(range(0, N, 2))
    labels.write_text("path,label\n" + "".join(f"img/{r:09d}.jpg,c{r % 3}\n" for r in labelled))
    assert main(["classify", str(stores[0]), "--query-store", str(stores[1]), "--labels", str(labels), "--k", "1",
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    nearest = np.array(labelled)[np.argmin(1.0 - ref @ x[labelled].T, 1)]
    assert [r["label"] for r in results] == [f"c{r % 3}" for r in nearest]
