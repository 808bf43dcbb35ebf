"""The store's row table (format 4): rows kept out of the manifest and read lazily, old manifests
still read; and the cluster scan's working memory held to STREAM_BYTES by construction."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from planted import planted_vectors
from rpmetric.cli import main
from rpmetric.stores import dedup
from rpmetric.stores import rows as rows_mod
from rpmetric.stores.store import EmbeddingStore
from synthstore import chunks, write_store

DIM = 16


def store_of(tmp_path, n: int, shard: int, name: str = "store"):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return write_store(tmp_path / name, chunks(x / np.linalg.norm(x, axis=1, keepdims=True), shard))


def name(row: int) -> str:  # what tests/synthstore.py names row ``row``, written out independently
    return "img/" + str(row).rjust(9, "0") + ".jpg"


def test_opening_a_store_reads_no_rows_and_its_manifest_grows_with_shards_not_rows(tmp_path):
    small, large = store_of(tmp_path, 50, 10, "small"), store_of(tmp_path, 5000, 2500, "large")
    store = EmbeddingStore(large)
    assert len(store) == 5000 and store._rows.decoded == 0  # nothing per row was parsed
    manifest = json.loads((large / "manifest.json").read_text())
    assert not {"paths", "urls", "captions", "stats"} & manifest.keys() and manifest["count"] == 5000
    # 100x the rows in 2 shards instead of 5: a smaller manifest (it holds one entry per shard).
    assert (large / "manifest.json").stat().st_size < (small / "manifest.json").stat().st_size
    assert store.file(4321) == str(store.root / name(4321)) and store._rows.decoded == 1
    assert store.paths[-1] == name(4999) and store.urls[7] is None and store.captions[7] is None
    assert store.paths[10:13] == [name(10), name(11), name(12)]
    assert list(store.paths) == [name(r) for r in range(5000)]  # one sequential pass
    assert name(17) in store.paths and store.paths.index(name(17)) == 17
    with pytest.raises(IndexError):
        store.paths[5000]
    again = pickle.loads(pickle.dumps(store))  # e.g. to a worker process
    assert again.paths[3] == name(3) and again.paths == store.paths


def test_a_store_with_an_old_manifest_still_opens_and_dedups_alike(tmp_path):
    path = store_of(tmp_path, 300, 64)
    new = EmbeddingStore(path)
    i, j, d = dedup.near_pairs(new, 0.9)
    # Format 3: every row's path (and url, caption, stats) in the manifest, no row files.
    manifest = json.loads((path / "manifest.json").read_text())
    for key in ("rows", "rows_index", "stats_file"):
        manifest.pop(key)
    paths = [name(r) for r in range(300)]
    manifest.update(format_version=3, paths=paths, stats={p: [1000, 1] for p in paths})
    (path / "manifest.json").write_text(json.dumps(manifest))
    for stale in ("rows.jsonl", "rows-index.npy", "stats.json"):
        (path / stale).unlink()
    old = EmbeddingStore(path)
    assert old.paths == paths and old.urls == [None] * 300 and len(old) == 300
    assert old.file(299) == str(old.root / name(299)) and "stats" not in old.manifest
    oi, oj, od = dedup.near_pairs(old, 0.9)
    assert torch.equal(oi, i) and torch.equal(oj, j) and torch.allclose(od, d)


@pytest.mark.parametrize("damage", ["truncate", "remove index", "other count"])
def test_a_damaged_row_table_is_named_on_opening(tmp_path, damage):
    path = store_of(tmp_path, 100, 30)
    if damage == "truncate":
        data = (path / "rows.jsonl").read_bytes()
        (path / "rows.jsonl").write_bytes(data[:-7])
    elif damage == "remove index":
        (path / "rows-index.npy").unlink()
    else:
        np.save(path / "rows-index.npy", np.arange(50, dtype=np.int64))
    with pytest.raises(ValueError, match=r"rows(\.jsonl|-index\.npy) .*rebuild it with `rpmetric embed"):
        EmbeddingStore(path)
    assert main(["dedup", str(path), "--threshold", "0.1", "--out", str(tmp_path / "g.csv")]) == 2


def test_cluster_groups_hold_to_stream_bytes_and_scan_in_one_block_shape(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    n, dim, t = 3000, 32, 0.05
    x = planted_vectors(n, dim, t, centres=12, seed=7)
    store = EmbeddingStore(write_store(tmp_path / "store", chunks(x, 100)))
    per_row = dim * (2 + 4)  # float16 rows and their unit copy (float32 at most)
    monkeypatch.setattr(rows_mod, "STREAM_BYTES", 500 * per_row)
    groups, shapes = [], set()
    scan, mm = dedup._scan_cells, torch.mm

    def record_scan(found, cells, q_x, *args):
        groups.append((len(q_x), int(cells.sum()) if cells is not None else None))
        return scan(found, cells, q_x, *args)

    def record_mm(a, b, *, out=None):
        shapes.add(tuple(out.shape) if out is not None else None)
        return mm(a, b, out=out)

    monkeypatch.setattr(dedup, "_scan_cells", record_scan)
    monkeypatch.setattr(torch, "mm", record_mm)
    i, j, _ = dedup.near_pairs(store, t, method="cluster", clusters=30)
    assert len(groups) > 3  # the store took the streaming path, in several groups
    # Every group's rows fit the budget, unless the group is one cell that alone passes it.
    assert all(rows <= 500 or cells == 1 for rows, cells in groups), groups
    assert shapes == {(dedup._TILE_ROWS, dedup._TILE_COLS)}  # one shape: one oneDNN primitive
    # Precision 1 and the recall bound against float64 numpy on the stored values.
    v = np.concatenate([b for _, b in store.blocks()]).astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ti, tj = np.nonzero(np.triu(1.0 - v @ v.T <= t, 1))
    truth, got = set(zip(ti.tolist(), tj.tolist())), set(zip(i.tolist(), j.tolist()))
    assert got <= truth and len(got) >= 0.99 * len(truth) and len(truth) > 100
