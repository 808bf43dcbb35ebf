"""rpmetric.fingerprint: what a resume compares, for folders, Hub snapshots, head folders and records."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

import tinymodels
from rpmetric.datasets import JNDPair, Triplet
from rpmetric.fingerprint import (HASHED_BYTES, file_fingerprint, model_fingerprint, model_identity,
                                  records_fingerprint)


@pytest.fixture()
def model(tmp_path):
    return tinymodels.save_open_clip(tmp_path / "a" / "model", tinymodels.TINY_VIT_CFG, seed=0).resolve()


def test_one_folder_spelled_four_ways_has_one_identity(model, tmp_path, monkeypatch):
    os.symlink(model, tmp_path / "link")
    monkeypatch.chdir(model.parent)
    spellings = ["./model", "model/", str(model), str(tmp_path / "link")]
    identities = [model_identity(s) for s in spellings]
    assert all(i == identities[0] for i in identities)
    assert identities[0]["model"] == str(model)
    assert set(identities[0]["model_files"]) == {"open_clip_config.json", "open_clip_model.safetensors"}


def test_another_folder_and_replaced_weights_differ(model, tmp_path):
    before = model_identity(model)
    copy = tinymodels.save_open_clip(tmp_path / "b" / "model", tinymodels.TINY_VIT_CFG, seed=0)
    assert model_identity(copy)["model"] == str(copy.resolve()) != before["model"]
    weights = model / "open_clip_model.safetensors"
    size = weights.stat().st_size
    tinymodels.save_open_clip(model, tinymodels.TINY_VIT_CFG, seed=1)
    after = model_identity(model)
    assert weights.stat().st_size == size  # the same size: the hash tells them apart
    assert after["model"] == before["model"]
    assert after["model_files"]["open_clip_model.safetensors"] != before["model_files"]["open_clip_model.safetensors"]


def test_a_touched_file_differs_by_its_mtime(model):
    before = file_fingerprint(model / "open_clip_config.json")
    os.utime(model / "open_clip_config.json", ns=(before["mtime_ns"] + 10**9,) * 2)
    after = file_fingerprint(model / "open_clip_config.json")
    assert after["mtime_ns"] == before["mtime_ns"] + 10**9 and after["blake2b"] == before["blake2b"]


def test_a_huge_file_costs_two_megabytes(tmp_path):
    big = tmp_path / "weights.bin"
    with open(big, "wb") as f:  # 8 GB, sparse: reading it whole would take far longer than the limit
        f.truncate(8 << 30)
    start = time.perf_counter()
    first = file_fingerprint(big)
    assert time.perf_counter() - start < 2.0 and first["size"] == 8 << 30
    for offset in (0, (8 << 30) - 1):  # a change in the first or the last MB
        with open(big, "r+b") as f:
            f.seek(offset)
            f.write(b"\1")
        assert file_fingerprint(big, mtime=False)["blake2b"] != first["blake2b"]
        with open(big, "r+b") as f:
            f.seek(offset)
            f.write(b"\0")
    assert HASHED_BYTES == 1 << 20


def test_hub_models_are_known_by_repo_and_commit(tmp_path, monkeypatch):
    import huggingface_hub

    source = tinymodels.save_open_clip(tmp_path / "src", tinymodels.TINY_VIT_CFG)
    home = tmp_path / "home"
    tinymodels.fill_hf_cache(home, "tiny/base", source, commit="a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    found = model_fingerprint("hf-hub:tiny/base")
    assert found["location"] == "hf-hub:tiny/base@" + "a" * 40
    assert set(found["files"]) == {"open_clip_config.json", "open_clip_model.safetensors"}
    assert model_identity("hf-hub:tiny/base@main") == model_identity("hf-hub:tiny/base")
    tinymodels.fill_hf_cache(home, "tiny/base", source, commit="b" * 40)  # main moved to another commit
    assert model_identity("hf-hub:tiny/base")["model"] == "hf-hub:tiny/base@" + "b" * 40


def test_a_head_folder_includes_its_base_model(model, tmp_path):
    from rpmetric.models import load_encoder
    from rpmetric.models.heads import HeadConfig, attach_head, head_state_dict, save_head_folder

    module, config = attach_head(load_encoder(str(model)).backbone, HeadConfig("mlp", hidden=8), dim=24)
    head = save_head_folder(tmp_path / "head", str(model), config, head_state_dict(module))
    before = model_identity(head)
    assert before["model"] == str(head.resolve()) and before["model_files"]["base"] == str(model)
    assert {"rpmetric_config.json", "head.safetensors", "base/open_clip_model.safetensors"} <= set(
        before["model_files"])
    tinymodels.save_open_clip(model, tinymodels.TINY_VIT_CFG, seed=1)  # the base changes, not the head
    after = model_identity(head)
    assert after["model_files"]["head.safetensors"] == before["model_files"]["head.safetensors"]
    assert after["model_files"]["base/open_clip_model.safetensors"] != \
        before["model_files"]["base/open_clip_model.safetensors"]


def _triplets(root) -> list:
    root = Path(root)
    return [Triplet(f"t{i}", root / f"ref/{i}.png", root / f"distort/{i}_0.png", root / f"distort/{i}_1.png",
                    i / 4) for i in range(3)]


def test_records_agree_under_another_spelling_of_the_root(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "data", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    expected = records_fingerprint(_triplets(tmp_path / "data"))
    assert len(expected) == 32
    for root in ("data", "./data/", tmp_path / "link"):
        assert records_fingerprint(_triplets(root)) == expected


@pytest.mark.parametrize("change", ["id", "p", "path", "order", "dropped"])
def test_records_differ_in_ids_targets_paths_and_order(tmp_path, change):
    records = _triplets(tmp_path)
    edited = {"id": lambda r: [dataclasses.replace(r[0], id="other"), *r[1:]],
              "p": lambda r: [dataclasses.replace(r[0], p=0.5), *r[1:]],
              "path": lambda r: [dataclasses.replace(r[0], left=tmp_path / "distort/9_0.png"), *r[1:]],
              "order": lambda r: r[::-1],
              "dropped": lambda r: r[:-1]}[change](records)
    assert records_fingerprint(edited) != records_fingerprint(records)


def test_records_of_other_kinds(tmp_path):
    import numpy as np

    pairs = [JNDPair("j0", tmp_path / "p0/0.png", tmp_path / "p1/0.png", np.float32(0.25))]
    assert records_fingerprint(pairs) == records_fingerprint([dataclasses.replace(pairs[0], same=0.25)])
    assert records_fingerprint(["a", "b"]) != records_fingerprint(["b", "a"])
    with pytest.raises(TypeError, match="record field must be a str, number, None or path.*got dict"):
        records_fingerprint([("id", {"p": 1})])


def test_a_model_without_files_is_known_by_its_name():
    from rpmetric.models.spec import ModelSpec

    assert model_identity(ModelSpec(name="in-memory")) == {"model": "in-memory", "model_files": None}
    with pytest.raises(ValueError, match="'in-memory' has no files to fingerprint"):
        model_fingerprint(ModelSpec(name="in-memory"))
