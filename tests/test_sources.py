"""Dataset sources: WebDataset tar shards and Parquet files, made here, with a corrupt sample and a
truncated shard; keys and metadata in the store, resume per input shard, CLI errors."""

from __future__ import annotations

import csv
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from rpmetric.stores import sources
from rpmetric.cli import main
from rpmetric.errors import MissingDependencyError
from rpmetric.stores.store import EmbeddingStore, build_store, embed_images
from test_store import ORIGINALS, PLANTED, make_image_folder

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("webdataset")

NAMES = ORIGINALS + list(PLANTED)  # 10 readable images


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images") / "imgs")


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, samples) -> None:
    """samples: (key, ext, image bytes, json dict or None, txt or None), written as img2dataset does."""
    with tarfile.open(path, "w") as tar:
        for key, ext, data, meta, txt in samples:
            add_member(tar, f"{key}.{ext}", data)
            if meta is not None:
                add_member(tar, f"{key}.json", json.dumps(meta).encode())
            if txt is not None:
                add_member(tar, f"{key}.txt", txt.encode())


def sample_rows(images: Path):
    """(key, file name) of the readable images, in the order the shards hold them."""
    return [(f"{i:09d}", name) for i, name in enumerate(NAMES)]


@pytest.fixture(scope="module")
def tars(images, tmp_path_factory):
    """shards/00000.tar: 5 images with .json (url, caption) and a corrupt one with .txt;
    00001.tar: 3 images with .txt captions; 00002.tar: 2 images, then cut inside a third."""
    d = tmp_path_factory.mktemp("wds")
    rows = sample_rows(images)
    data = {name: (images / name).read_bytes() for name in NAMES}
    ext = {name: name.rsplit(".", 1)[1] for name in NAMES}
    first = [(k, ext[n], data[n], {"url": f"http://x/{n}", "caption": f"cap {n}"}, None) for k, n in rows[:5]]
    first.append(("bad000001", "png", (images / "broken.png").read_bytes(), None, "broken caption"))
    write_tar(d / "00000.tar", first)
    write_tar(d / "00001.tar", [(k, ext[n], data[n], None, f"txt {n}") for k, n in rows[5:8]])
    full = d / "full.tar"
    extra = ("cut000001", "png", (images / "img1.png").read_bytes(), None, None)
    write_tar(full, [(k, ext[n], data[n], None, None) for k, n in rows[8:]] + [extra])
    blob = full.read_bytes()
    (d / "00002.tar").write_bytes(blob[:len(blob) - 1024 - len(extra[2]) // 2 - 512])  # inside the last image
    full.unlink()
    return d


def folder_embeddings(metric, images: Path, names):
    emb, paths, skipped = embed_images(metric, [images / n for n in names], batch_size=4)
    assert not skipped and len(paths) == len(names)
    return emb.numpy()


def test_webdataset_keys_metadata_skips_and_embeddings(tars, images, tiny_metric, tmp_path):
    store = build_store(tars / "{00000..00002}.tar", tmp_path / "s", tiny_metric, dtype="float32", batch_size=3,
                        progress=False)
    rows = sample_rows(images)
    assert store.kind == "webdataset" and store.paths == [k for k, _ in rows] and store.files == store.paths
    assert store.urls == [f"http://x/{n}" for _, n in rows[:5]] + [None] * 5
    assert store.captions == [f"cap {n}" for _, n in rows[:5]] + [f"txt {n}" for _, n in rows[5:8]] + [None] * 2
    reasons = {s["path"]: s["reason"] for s in store.skipped}
    assert set(reasons) == {"bad000001", str(tars / "00002.tar")}
    assert "bad000001" in reasons["bad000001"] and "cannot be read to its end" in reasons[str(tars / "00002.tar")]
    assert len(store.manifest["shards"]) == 3
    expected = folder_embeddings(tiny_metric, images, [n for _, n in rows])
    np.testing.assert_allclose(store.embeddings().numpy(), expected, atol=1e-5)


def write_parquet(path: Path, table: dict, row_group_size: int = 3) -> None:
    pq.write_table(pa.table(table), path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def parquets(images, tmp_path_factory):
    """img2dataset-style a.parquet (jpg, key, url, caption) with a corrupt row; b.parquet with a Hugging
    Face Image struct column and an id column; c.parquet truncated."""
    d = tmp_path_factory.mktemp("pq")
    rows = sample_rows(images)
    data = [(images / n).read_bytes() for _, n in rows]
    broken = (images / "broken.png").read_bytes()
    write_parquet(d / "a.parquet", {"key": [k for k, _ in rows[:6]] + ["bad"], "jpg": data[:6] + [broken],
                                    "url": [f"u{k}" for k, _ in rows[:6]] + [None],
                                    "caption": [f"c{k}" for k, _ in rows[:6]] + ["x"]})
    write_parquet(d / "b.parquet", {"id": [k for k, _ in rows[6:]],
                                    "image": [{"bytes": b, "path": None} for b in data[6:]]})
    write_parquet(d / "c.parquet", {"key": ["z"], "jpg": [data[0]]})
    (d / "c.parquet").write_bytes((d / "c.parquet").read_bytes()[:-40])
    return d


def test_parquet_columns_struct_images_and_bad_files(parquets, images, tiny_metric, tmp_path):
    rows = sample_rows(images)
    store = build_store(parquets / "{a,c}.parquet", tmp_path / "a", tiny_metric, dtype="float32", progress=False)
    assert store.kind == "parquet" and store.paths == [k for k, _ in rows[:6]]
    assert store.urls == [f"u{k}" for k, _ in rows[:6]] and store.captions == [f"c{k}" for k, _ in rows[:6]]
    reasons = {s["path"]: s["reason"] for s in store.skipped}
    assert set(reasons) == {"bad", str(parquets / "c.parquet")}
    np.testing.assert_allclose(store.embeddings().numpy(), folder_embeddings(tiny_metric, images, [n for _, n in rows[:6]]),
                               atol=1e-5)
    # The struct column is found by itself (no jpg column); the keys come from --key-column.
    other = build_store(parquets / "b.parquet", tmp_path / "b", tiny_metric, dtype="float32", key_column="id",
                        progress=False)
    assert other.paths == [k for k, _ in rows[6:]] and other.urls == [None] * 4
    np.testing.assert_allclose(other.embeddings().numpy(), folder_embeddings(tiny_metric, images, [n for _, n in rows[6:]]),
                               atol=1e-5)
    # Without a key column, a row is named by its file and number.
    unnamed = build_store(parquets / "b.parquet", tmp_path / "c", tiny_metric, progress=False)
    assert unnamed.paths == [f"b/{i}" for i in range(4)]


def test_file_url(tars, tiny_metric, tmp_path):
    store = build_store(f"file://{tars}/{{00000..00001}}.tar", tmp_path / "s", tiny_metric, progress=False)
    assert store.paths == [k for k, _ in sample_rows(None)[:8]]


def test_resume_rereads_only_unfinished_shards(tars, tiny_metric, tmp_path, monkeypatch):
    pattern = tars / "{00000..00002}.tar"
    whole = build_store(pattern, tmp_path / "whole", tiny_metric, dtype="float32", batch_size=4, progress=False)
    assert build_store(pattern, tmp_path / "part", tiny_metric, dtype="float32", batch_size=2, progress=False,
                       max_shards=1) is None
    read = []
    original = sources.read_shard
    monkeypatch.setattr(sources, "read_shard", lambda kind, name, *a: read.append(name) or original(kind, name, *a))
    resumed = build_store(pattern, tmp_path / "part", tiny_metric, dtype="float32", batch_size=2, progress=False)
    assert read == [str(tars / "00001.tar"), str(tars / "00002.tar")]
    assert resumed.paths == whole.paths and resumed.skipped == whole.skipped and resumed.urls == whole.urls
    np.testing.assert_allclose(resumed.embeddings().numpy(), whole.embeddings().numpy(), atol=1e-5)


def test_missing_dependency_names_the_extra(tars, monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # import webdataset now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "rpmetric\[data\]"'):
        sources.plan_inputs(tars / "00000.tar")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_embed_search_dedup_show_keys(capsys, tars, images, vit_folder, tmp_path):
    out = tmp_path / "s"
    code, text, _ = run(capsys, "embed", tars / "{00000..00002}.tar", "--out", out, "--model", vit_folder, "--device",
                        "cpu", "--quiet", "--workers", "0")
    assert code == 0 and "10 images embedded" in text
    code, text, _ = run(capsys, "search", out, images / "copy_noise.png", "--k", "1", "--json", "--device", "cpu")
    hit = json.loads(text)["results"][0]["neighbours"][0]
    assert hit["path"] == "000000008"  # copy_noise.png's key
    assert hit["url"] is None and hit["caption"] is None
    code, text, _ = run(capsys, "search", out, images / "img2.png", "--k", "1", "--json", "--device", "cpu")
    hit = json.loads(text)["results"][0]["neighbours"][0]
    assert (hit["path"], hit["url"], hit["caption"]) == ("000000002", "http://x/img2.png", "cap img2.png")
    # A threshold between the planted copies' distances and every other pair's, from the vectors in numpy.
    store = EmbeddingStore(out)
    emb = store.embeddings().numpy().astype(np.float64)
    d = 1 - emb @ emb.T
    planted = [(0, 8), (3, 9)]  # img0 / copy_noise, img3 / copy_jpeg
    others = min(d[i, j] for i in range(10) for j in range(i + 1, 10) if (i, j) not in planted)
    threshold = (max(d[i, j] for i, j in planted) + others) / 2
    assert max(d[i, j] for i, j in planted) < threshold < others
    csv_path = tmp_path / "d.csv"
    code, _, _ = run(capsys, "dedup", out, "--threshold", threshold, "--out", csv_path)
    with open(csv_path, newline="") as f:
        table = list(csv.DictReader(f))
    assert code == 0 and list(table[0]) == ["group", "keep", "path", "distance_to_first", "url", "caption"]
    groups = {}
    for r in table:
        groups.setdefault(r["group"], []).append((r["path"], r["url"], r["caption"]))
    assert sorted(groups.values()) == [[("000000000", "http://x/img0.png", "cap img0.png"), ("000000008", "", "")],
                                       [("000000003", "http://x/img3.png", "cap img3.png"), ("000000009", "", "")]]


@pytest.mark.parametrize("argv, words", [
    (("{dir}/none-{{0..3}}.tar",), "matches no shards"),
    (("{dir}/a.parquet", "--image-column", "png"), "--image-column png is not a column"),
    (("{dir}/a.parquet", "--key-column", "nope"), "--key-column nope is not a column"),
    (("{dir}/a.parquet", "--image-column", "caption"), "not image bytes"),
])
def test_cli_errors_one_line(capsys, parquets, vit_folder, tmp_path, argv, words):
    argv = [a.format(dir=parquets) for a in argv]
    code, out, err = run(capsys, "embed", argv[0], "--out", tmp_path / "s", "--model", vit_folder, *argv[1:])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert words in err, err


def test_missing_shards_of_a_pattern_are_listed(tars, tiny_metric, tmp_path):
    store = build_store(tars / "{00001..00003}.tar", tmp_path / "s", tiny_metric, progress=False)
    assert store.paths == [k for k, _ in sample_rows(None)[5:]] and len(store.manifest["shards"]) == 2
    assert {"path": str(tars / "00003.tar"), "reason": f"shard {tars / '00003.tar'} does not exist"} in store.skipped


def test_cli_classify_labels_by_key(capsys, tars, images, vit_folder, tmp_path):
    out = tmp_path / "s"
    assert run(capsys, "embed", tars / "00000.tar", "--out", out, "--model", vit_folder, "--device", "cpu", "--quiet",
               "--workers", "0")[0] == 0
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n000000000,zero\n000000001,one\nbad000001,broken\n")
    code, text, _ = run(capsys, "classify", out, "--labels", labels, images / "copy_noise.png", "--k", "1", "--json",
                        "--device", "cpu")
    result = json.loads(text)["results"][0]
    assert code == 0 and result["label"] == "zero"
    assert result["neighbours"] == [{"path": "000000000", "label": "zero", "distance": result["neighbours"][0]["distance"],
                                     "url": "http://x/img0.png", "caption": "cap img0.png"}]


def test_changed_shard_is_refused_naming_overwrite(images, tiny_metric, tmp_path):
    rows = sample_rows(images)
    shard = tmp_path / "00000.tar"
    write_tar(shard, [(k, "png", (images / n).read_bytes(), None, None) for k, n in rows[:2]])
    build_store(shard, tmp_path / "s", tiny_metric, progress=False)
    write_tar(shard, [(k, "png", (images / n).read_bytes(), None, None) for k, n in rows[:3]])
    with pytest.raises(ValueError, match=r"shards of .* have changed .* 1 changed.*`overwrite=True`"):
        build_store(shard, tmp_path / "s", tiny_metric, progress=False)
    with pytest.raises(ValueError, match=r"`update` applies to folders and file lists"):
        build_store(shard, tmp_path / "s", tiny_metric, progress=False, update=True)
    assert len(build_store(shard, tmp_path / "s", tiny_metric, progress=False, overwrite=True)) == 3


def test_pixel_limit_applies_to_sample_bytes(images, tiny_metric, tmp_path, monkeypatch):
    from PIL import Image

    rows = sample_rows(images)
    shard = tmp_path / "00000.tar"
    write_tar(shard, [(k, "png", (images / n).read_bytes(), None, None) for k, n in rows[:3]])
    sizes = [Image.open(images / n).size for _, n in rows[:3]]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", sizes[1][0] * sizes[1][1] - 1)  # the first is under it
    store = build_store(shard, tmp_path / "s", tiny_metric, progress=False)
    over = [k for (k, _), (w, h) in zip(rows[:3], sizes) if w * h > Image.MAX_IMAGE_PIXELS]
    assert over and store.paths == [k for k, _ in rows[:3] if k not in over]
    assert [s["path"] for s in store.skipped] == over and "over the limit" in store.skipped[0]["reason"]
