"""Dataset sources: WebDataset tar shards and Parquet files, made here, with a corrupt sample and a
truncated shard; keys and metadata in the store, resume per input shard, CLI errors; decoding in
DataLoader workers (the in-process store, interruption, a dead worker) and under torchrun."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import rpmetric.stores.store as store_mod
from rpmetric.stores import sources
from rpmetric.cli import main
from rpmetric.errors import MissingDependencyError, WorkerDiedError
from rpmetric.stores.store import EmbeddingStore, build_store, embed_images
from test_cli_retrieval import LOGGING_LAUNCHER
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


def log_reads(monkeypatch, log: Path) -> None:
    """Append ``pid shard`` to ``log`` for every shard read, by this process or a forked worker."""
    original = sources.read_shard

    def logged(kind, name, *rest):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {Path(name).name}\n")
        return original(kind, name, *rest)

    monkeypatch.setattr(sources, "read_shard", logged)


def reads(log: Path):
    return [tuple(line.split()) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_rereads_only_unfinished_shards(tars, tiny_metric, tmp_path, monkeypatch, workers):
    pattern = tars / "{00000..00002}.tar"
    whole = build_store(pattern, tmp_path / "whole", tiny_metric, dtype="float32", batch_size=4, num_workers=0,
                        progress=False)
    assert build_store(pattern, tmp_path / "part", tiny_metric, dtype="float32", batch_size=2, progress=False,
                       num_workers=workers, max_shards=1) is None
    log_reads(monkeypatch, tmp_path / "reads.log")
    resumed = build_store(pattern, tmp_path / "part", tiny_metric, dtype="float32", batch_size=2, progress=False,
                          num_workers=workers)
    assert sorted(name for _, name in reads(tmp_path / "reads.log")) == ["00001.tar", "00002.tar"]
    assert resumed.paths == whole.paths and resumed.skipped == whole.skipped and resumed.urls == whole.urls
    np.testing.assert_allclose(resumed.embeddings().numpy(), whole.embeddings().numpy(), atol=1e-5)


# -- decoding in DataLoader workers ------------------------------------------------------------
DATASETS = {"webdataset": ("tars", "{00000..00002}.tar"), "parquet": ("parquets", "{a,c}.parquet")}


@pytest.mark.parametrize("kind", sorted(DATASETS))
def test_workers_give_the_in_process_store(kind, request, images, tiny_metric, tmp_path, monkeypatch):
    folder, pattern = DATASETS[kind]
    source = request.getfixturevalue(folder) / pattern
    one = build_store(source, tmp_path / "one", tiny_metric, dtype="float32", batch_size=3, num_workers=0,
                      progress=False)
    log_reads(monkeypatch, tmp_path / "reads.log")
    two = build_store(source, tmp_path / "two", tiny_metric, dtype="float32", batch_size=3, num_workers=2,
                      progress=False)
    assert two.paths == one.paths and two.urls == one.urls and two.captions == one.captions
    assert two.skipped == one.skipped and len(two.skipped) == 2  # the corrupt sample and the truncated shard
    assert [s["count"] for s in two.manifest["shards"]] == [s["count"] for s in one.manifest["shards"]]
    # Against the same files embedded from a folder: the rows are the right images.
    names = dict(sample_rows(images))
    np.testing.assert_allclose(two.embeddings().numpy(), folder_embeddings(tiny_metric, images, [names[k] for k in two.paths]),
                               atol=1e-5)
    # Two workers, in other processes than this one, each reading whole shards: w takes shards w, w + 2, ...
    by_pid = {}
    for pid, name in reads(tmp_path / "reads.log"):
        by_pid.setdefault(pid, []).append(name)
    shards = sorted(Path(s).name for s in two.manifest["inputs"])
    assert str(os.getpid()) not in by_pid and sorted(by_pid.values()) == sorted([shards[0::2], shards[1::2]])


def test_interrupted_build_with_workers_resumes(tars, tiny_metric, tmp_path, monkeypatch):
    pattern, out = tars / "{00000..00002}.tar", tmp_path / "s"
    whole = build_store(pattern, tmp_path / "whole", tiny_metric, dtype="float32", batch_size=2, num_workers=0,
                        progress=False)
    real_write, written = store_mod._write_shard, []

    def write_then_interrupt(out, k, *rest, **kw):  # Ctrl-C while the second finished shard is being written
        if written:
            raise KeyboardInterrupt
        written.append(k)
        real_write(out, k, *rest, **kw)

    monkeypatch.setattr(store_mod, "_write_shard", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_store(pattern, out, tiny_metric, dtype="float32", batch_size=2, num_workers=2, progress=False)
    assert [p.name for p in out.glob("shard-*.json")] == [f"shard-{written[0]:05d}.json"]
    monkeypatch.setattr(store_mod, "_write_shard", real_write)
    log_reads(monkeypatch, tmp_path / "reads.log")
    resumed = build_store(pattern, out, tiny_metric, dtype="float32", batch_size=2, num_workers=2, progress=False)
    assert sorted(name for _, name in reads(tmp_path / "reads.log")) == sorted(
        f"{k:05d}.tar" for k in range(3) if k != written[0])
    assert resumed.paths == whole.paths and resumed.skipped == whole.skipped and resumed.captions == whole.captions
    np.testing.assert_allclose(resumed.embeddings().numpy(), whole.embeddings().numpy(), atol=1e-5)


def kill_worker_at(monkeypatch, key: str, decoder: str = "sample_input") -> None:
    """A DataLoader worker decoding ``key`` (with ``rpmetric.stores.store.<decoder>``) is killed, as
    the kernel's OOM killer would kill it."""
    real = getattr(store_mod, decoder)

    def decode(data, *rest):
        if str(data if decoder == "model_input" else rest[0]).endswith(key) and torch.utils.data.get_worker_info():
            os.kill(os.getpid(), signal.SIGKILL)
        return real(data, *rest)

    monkeypatch.setattr(store_mod, decoder, decode)


def test_a_dead_worker_of_a_folder_build_is_named_too(images, tiny_metric, tmp_path, monkeypatch):
    kill_worker_at(monkeypatch, "img5.png", "model_input")
    with pytest.raises(WorkerDiedError, match=r"died \(DataLoader worker \(pid.*\); the finished shards are kept"):
        build_store(images, tmp_path / "s", tiny_metric, shard_size=4, num_workers=2, progress=False)


def test_a_dead_worker_is_one_line_and_the_rerun_resumes(capsys, tars, vit_folder, tiny_metric, tmp_path, monkeypatch):
    pattern, out = tars / "{00000..00002}.tar", tmp_path / "s"
    kill_worker_at(monkeypatch, "000000006")  # in 00001.tar
    with pytest.raises(WorkerDiedError, match=r"died \(DataLoader worker \(pid.*\); the finished shards are kept"):
        build_store(pattern, out, tiny_metric, dtype="float32", num_workers=2, progress=False)
    argv = ["embed", pattern, "--out", out, "--model", vit_folder, "--device", "cpu", "--dtype", "float32",
            "--workers", "2", "--quiet"]
    code, _, err = run(capsys, *argv)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "died (DataLoader worker" in err and "--workers 0" in err, err
    monkeypatch.undo()
    code, text, _ = run(capsys, *argv)
    assert code == 0 and "10 images embedded" in text
    whole = build_store(pattern, tmp_path / "whole", tiny_metric, dtype="float32", num_workers=0, progress=False)
    resumed = EmbeddingStore(out)
    assert resumed.paths == whole.paths and resumed.skipped == whole.skipped
    np.testing.assert_allclose(resumed.embeddings().numpy(), whole.embeddings().numpy(), atol=1e-5)


def test_torchrun_two_processes_write_the_same_dataset_store(tars, vit_folder, tiny_metric, tmp_path):
    """Rank r embeds input shards r, r + 2, ... (each in one DataLoader worker); rank 0 finishes the manifest."""
    out, log, launcher = tmp_path / "two", tmp_path / "shards.log", tmp_path / "launch.py"
    launcher.write_text(LOGGING_LAUNCHER)
    pattern = tars / "{00000..00002}.tar"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher),
            "embed", str(pattern), "--out", str(out), "--model", str(vit_folder), "--device", "cpu", "--dtype",
            "float32", "--batch-size", "3", "--workers", "1", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", SHARD_LOG=str(log))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[:3000]
    one = build_store(pattern, tmp_path / "one", tiny_metric, dtype="float32", batch_size=3, num_workers=0,
                      progress=False)
    two = EmbeddingStore(out)
    assert two.paths == one.paths and two.skipped == one.skipped and two.urls == one.urls
    assert two.captions == one.captions
    np.testing.assert_allclose(two.embeddings().numpy(), one.embeddings().numpy(), atol=1e-5)
    writes = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    assert sorted(writes) == [(0, 0), (0, 2), (1, 1)]


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
