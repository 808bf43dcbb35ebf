"""Embedding stores that were damaged on disk, sources with files that are not files, and models
replaced under a store: each is found, named, and repaired or refused (issue 12)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import rpmetric
from rpmetric.cli import main
from rpmetric.files import atomic_write, write_json
from rpmetric.stores.store import EmbeddingStore, build_store
from subproc import run_cli
from test_store import KW, make_image_folder

BAD_SHARD, BAD_RECORD = "emb-00001.npy", "shard-00001.json"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("hostile") / "src")


@pytest.fixture(scope="module")
def clean(source, tiny_metric, tmp_path_factory):
    """A finished store of ``source`` in 3 shards of 4 files (rows 3 + 4 + 3): the reference."""
    return build_store(source, tmp_path_factory.mktemp("hostile") / "clean", tiny_metric, **KW)


def rows_of(store_dir: Path) -> np.ndarray:
    return np.load(store_dir / BAD_SHARD, allow_pickle=False)


# Each case damages shard 1 of a store folder, as a crash, a full disk or a stray tool could.
def zero_length(d):
    (d / BAD_SHARD).write_bytes(b"")


def truncated(d):
    data = (d / BAD_SHARD).read_bytes()
    (d / BAD_SHARD).write_bytes(data[:len(data) - 40])


def wrong_width(d):
    np.save(d / BAD_SHARD, rows_of(d)[:, :20])


def too_few_rows(d):
    np.save(d / BAD_SHARD, rows_of(d)[:-1])


def wrong_dtype(d):
    np.save(d / BAD_SHARD, rows_of(d).astype(np.float64))


def flipped_value(d):  # the right shape and dtype: only the checksum can tell
    rows = rows_of(d).copy()
    rows[0, 0] = -rows[0, 0]
    np.save(d / BAD_SHARD, rows)


def missing_npy(d):
    (d / BAD_SHARD).unlink()


def torn_record(d):
    text = (d / BAD_RECORD).read_text()
    (d / BAD_RECORD).write_text(text[:len(text) // 2])


def missing_record(d):
    (d / BAD_RECORD).unlink()


NPY_CASES = [zero_length, truncated, wrong_width, too_few_rows, wrong_dtype, flipped_value, missing_npy]
RECORD_CASES = [torn_record, missing_record]


def damaged_copy(clean_dir: Path, tmp_path: Path, damage) -> Path:
    out = tmp_path / "store"
    shutil.copytree(clean_dir, out)
    damage(out)
    return out


@pytest.mark.parametrize("damage", NPY_CASES + RECORD_CASES, ids=lambda f: f.__name__)
def test_a_rerun_re_embeds_a_damaged_shard_of_a_finished_store(damage, clean, source, tiny_metric, tmp_path):
    out = damaged_copy(clean.path, tmp_path, damage)
    kept = (out / "emb-00000.npy").stat().st_mtime_ns
    with pytest.warns(UserWarning, match=r"store .*: shard 1 \((emb-00001.npy|shard-00001.json)\) .*; re-embedding it"):
        repaired = build_store(source, out, tiny_metric, **KW)
    assert (out / "emb-00000.npy").stat().st_mtime_ns == kept  # the good shards are kept
    assert repaired.paths == clean.paths and repaired.skipped == clean.skipped
    # Another batch composition rounds differently (README, "What is exact"): to a tolerance.
    torch.testing.assert_close(repaired.embeddings(), clean.embeddings(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("damage", [zero_length, wrong_dtype, flipped_value, torn_record], ids=lambda f: f.__name__)
def test_a_resume_re_embeds_a_damaged_shard_of_an_unfinished_store(damage, clean, source, tiny_metric, tmp_path):
    out = tmp_path / "store"
    assert build_store(source, out, tiny_metric, max_shards=2, **KW) is None  # shards 0 and 1 written
    damage(out)
    with pytest.warns(UserWarning, match=r"shard 1 .*; re-embedding it"):
        resumed = build_store(source, out, tiny_metric, **KW)
    assert resumed.paths == clean.paths and resumed.skipped == clean.skipped
    torch.testing.assert_close(resumed.embeddings(), clean.embeddings(), atol=1e-6, rtol=0)


def test_embed_says_which_shards_it_re_embeds_one_line_each(clean, source, vit_folder, tmp_path, capsys):
    out = damaged_copy(clean.path, tmp_path, zero_length)
    (out / "shard-00002.json").write_text("{")  # and a torn record of another shard
    argv = ["embed", source, "--out", out, "--model", vit_folder, "--dtype", "float32", "--shard-size", "4",
            "--batch-size", "3", "--workers", "0", "--quiet", "--device", "cpu"]
    assert main([str(a) for a in argv]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 2, lines
    where = f"rpmetric embed: warning: store {re.escape(str(out))}"
    assert re.fullmatch(rf"{where}: shard 1 \(emb-00001.npy\) is empty \(0 bytes\); re-embedding it\.", lines[0])
    assert re.fullmatch(rf"{where}: shard 2 \(shard-00002.json\) is unreadable \(.+\); re-embedding it\.", lines[1])
    assert captured.out.startswith(f"{len(clean)} images embedded")
    torch.testing.assert_close(EmbeddingStore(out).embeddings(), clean.embeddings(), atol=1e-6, rtol=0)


def read_commands(store: Path, source: Path, tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nimg1.png,a\nimg2.png,b\n")
    return [["search", store, source / "img0.png", "--k", "2", "--device", "cpu"],
            ["dedup", store, "--threshold", "0.1"],
            ["classify", store, source / "img0.png", "--labels", labels, "--k", "1", "--device", "cpu"]]


@pytest.mark.parametrize("damage", NPY_CASES, ids=lambda f: f.__name__)
def test_readers_name_the_damaged_shard_and_the_fix(damage, clean, source, tmp_path, capsys):
    out = damaged_copy(clean.path, tmp_path, damage)
    with pytest.raises(ValueError, match=rf"{BAD_SHARD} of store .*store .*rerun `rpmetric embed .*src --out .*store"):
        EmbeddingStore(out).embeddings()
    for argv in read_commands(out, source, tmp_path):
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2, (argv[0], err)
        assert err.count("\n") == 1 and "Traceback" not in err
        assert BAD_SHARD in err and f"rpmetric embed {source.resolve()} --out {out}" in err, err


def test_the_named_command_repairs_the_store(clean, source, tmp_path, capsys):
    out = damaged_copy(clean.path, tmp_path, flipped_value)
    with pytest.raises(ValueError, match="rerun `") as raised:
        EmbeddingStore(out).embeddings()
    command = shlex.split(str(raised.value).split("`")[1])
    assert command[:2] == ["rpmetric", "embed"]
    assert main(command[1:] + ["--workers", "0", "--quiet", "--device", "cpu"]) == 0
    assert "shard 1 (emb-00001.npy) does not match the checksum" in capsys.readouterr().err
    torch.testing.assert_close(EmbeddingStore(out).embeddings(), clean.embeddings(), atol=1e-6, rtol=0)


def test_a_damaged_store_through_a_fresh_process(clean, source, tmp_path):
    out = damaged_copy(clean.path, tmp_path, zero_length)
    result = run_cli(["dedup", out, "--threshold", "0.1"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and BAD_SHARD in result.stderr


# -- atomic writes -----------------------------------------------------------------------------
def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "sub" / "shard.json"
    write_json(target, {"a": 1})
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert Path(events[0][1]).parent == target.parent and Path(events[0][1]).name.startswith(".shard.json.tmp")
    assert events[1][1] == str(target) and events[2][1] == str(target.parent)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_write_gives_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o666 & ~umask


def test_head_weights_are_written_atomically_with_the_umask_mode(tmp_path, monkeypatch, vit_folder):
    from rpmetric.models.heads import WEIGHTS_NAME, HeadConfig, save_head_folder

    state = {"w": torch.arange(4.0)}
    old = os.umask(0o022)
    try:
        folder = save_head_folder(tmp_path / "head", str(vit_folder), HeadConfig("mlp"), state)
    finally:
        os.umask(old)
    weights = folder / WEIGHTS_NAME
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644
    before = weights.read_bytes()

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError):
        save_head_folder(folder, str(vit_folder), HeadConfig("mlp"), {"w": torch.ones(9)})
    assert weights.read_bytes() == before  # the finished head is intact
    assert sorted(p.name for p in folder.iterdir()) == ["head.safetensors", "rpmetric_config.json"]


# -- sources with files that are not files -----------------------------------------------------
def special_folder(tmp_path: Path) -> Path:
    src = make_image_folder(tmp_path / "special")
    os.mkfifo(src / "pipe.png")  # opening it for reading would wait for a writer forever
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    return src


def test_dangling_symlinks_and_fifos_are_listed_as_skipped(tmp_path, vit_folder):
    src = special_folder(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("special/img1.png\nspecial/pipe.png\n")
    # A fresh process with a timeout: a FIFO opened for reading would block the run, not fail it.
    result = run_cli(["embed", src, "--out", tmp_path / "s", "--model", vit_folder, "--workers", "0", "--quiet",
                      "--device", "cpu"], timeout=120)
    assert result.returncode == 0, result.stderr
    skipped = {s["path"]: s["reason"] for s in json.loads((tmp_path / "s" / "manifest.json").read_text())["skipped"]}
    assert "pipe.png" in skipped and "FIFO" in skipped["pipe.png"]
    assert "gone.png" in skipped and "nowhere.png" in skipped["gone.png"] and "does not exist" in skipped["gone.png"]
    result = run_cli(["embed", listing, "--out", tmp_path / "l", "--model", vit_folder, "--workers", "0", "--quiet",
                      "--device", "cpu"], timeout=120)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "l" / "manifest.json").read_text())
    assert EmbeddingStore(tmp_path / "l").paths == ["special/img1.png"]
    assert [s["path"] for s in manifest["skipped"]] == ["special/pipe.png"]
    assert "FIFO" in manifest["skipped"][0]["reason"]


# -- the model under a store -------------------------------------------------------------------
def test_weights_replaced_in_place_refuse_a_resume_and_an_update(tmp_path, source, vit_folder):
    import tinymodels

    model = tmp_path / "model"
    shutil.copytree(vit_folder, model)
    metric = rpmetric.RobustDistance(str(model), device="cpu")
    out = tmp_path / "s"
    assert build_store(source, out, metric, max_shards=1, **KW) is None
    other = tinymodels.save_open_clip(tmp_path / "other", tinymodels.TINY_VIT_CFG, seed=1)
    weights = "open_clip_model.safetensors"
    shutil.copyfile(other / weights, model / weights)  # same architecture, same size, other weights
    replaced = rpmetric.RobustDistance(str(model), device="cpu")
    for update in (False, True):
        with pytest.raises(ValueError, match=rf"{out} was built with other weights: {weights} of {model.resolve()} "
                                             r"differs \(.*first and last MB\); load the model it was built with "
                                             r"to resume it, or pass `overwrite=True`"):
            build_store(source, out, replaced, update=update, **KW)
    assert build_store(source, out, replaced, overwrite=True, **KW) is not None


def test_the_same_model_folder_spelled_three_ways_resumes(tmp_path, source, vit_folder, monkeypatch, clean):
    shutil.copytree(vit_folder, tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "s"
    for spelling in ("./m", "m/"):
        metric = rpmetric.RobustDistance(spelling, device="cpu")
        assert build_store(source, out, metric, max_shards=1, **KW) is None
    store = build_store(source, out, rpmetric.RobustDistance(str(tmp_path / "m"), device="cpu"), **KW)
    assert store.paths == clean.paths
    torch.testing.assert_close(store.embeddings(), clean.embeddings(), atol=1e-6, rtol=0)
