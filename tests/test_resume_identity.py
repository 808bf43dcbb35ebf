"""A resume continues the same run: the same model files and the same records, however the model
folder is spelled. Run logs (clean eval, attack eval) and training checkpoints refuse anything else."""

from __future__ import annotations

import csv
import json
import os

import pytest

import tinymodels
from rpmetric.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture()
def models(tmp_path):
    """Two different tiny models, each in a folder named ``model`` inside ``a/`` and ``b/``."""
    a = tinymodels.save_open_clip(tmp_path / "a" / "model", tinymodels.TINY_VIT_CFG, seed=0)
    b = tinymodels.save_open_clip(tmp_path / "b" / "model", tinymodels.TINY_VIT_CFG, seed=1)
    return a.resolve(), b.resolve()


def _eval(root, model, *extra):
    return ["eval", "nights", str(root), "--model", str(model), "--split", "test", "--batch-size", "1",
            "--workers", "0", *map(str, extra)]


def _edit_votes(root, row_id: str, right_vote: float) -> None:
    """Change one row's votes in data.csv, keeping its vote count (so the row stays in its split)."""
    with open(root / "data.csv", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    for row in rows[1:]:
        if row[header.index("id")] == row_id:
            row[header.index("left_vote")] = str(1.0 - right_vote)
            row[header.index("right_vote")] = str(right_vote)
    with open(root / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- clean evaluation ---------------------------------------------------------------------------
def test_eval_resumed_from_another_folder_with_another_model_is_refused(fresh_nights, models, tmp_path,
                                                                         monkeypatch, capsys):
    a, b = models
    out = tmp_path / "out.json"
    monkeypatch.chdir(a.parent)
    assert main(_eval(fresh_nights, "model", "--out", out, "--max-batches", 2)) == 3
    monkeypatch.chdir(b.parent)  # the same `--model model` names another folder here
    capsys.readouterr()
    assert main(_eval(fresh_nights, "model", "--out", out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"log has '{a}', this run has '{b}'" in err and "model_files" in err
    assert not out.exists() and (tmp_path / "out.json.log.jsonl").exists()  # the partial work is kept


def test_eval_resumed_after_votes_were_edited_is_refused(fresh_nights, models, tmp_path, monkeypatch, capsys):
    a, _ = models
    out = tmp_path / "out.json"
    assert main(_eval(fresh_nights, a, "--out", out, "--max-batches", 2)) == 3
    _edit_votes(fresh_nights, "tn-left-q", 0.375)  # 8 votes: 5 left, 3 right instead of 6 and 2
    capsys.readouterr()
    assert main(_eval(fresh_nights, a, "--out", out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "records: log has" in err and "model" not in err.split("records:", 1)[1]
    assert "delete the log" in err


def test_eval_resumed_after_the_weights_were_replaced_in_place_is_refused(fresh_nights, models, tmp_path,
                                                                          monkeypatch, capsys):
    a, _ = models
    out = tmp_path / "out.json"
    assert main(_eval(fresh_nights, a, "--out", out, "--max-batches", 2)) == 3
    tinymodels.save_open_clip(a, tinymodels.TINY_VIT_CFG, seed=1)  # same path, same size, other weights
    capsys.readouterr()
    assert main(_eval(fresh_nights, a, "--out", out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "model_files: log has" in err and "open_clip_model.safetensors" in err
    assert "records" not in err


def test_eval_resume_accepts_the_same_folder_spelled_four_ways(fresh_nights, models, tmp_path, monkeypatch,
                                                               capsys):
    a, _ = models
    link = tmp_path / "link"
    os.symlink(a, link)
    monkeypatch.chdir(a.parent)
    assert main(_eval(fresh_nights, a, "--out", tmp_path / "full.json", "--per-sample", tmp_path / "full.csv")) == 0
    out = tmp_path / "part.json"
    assert main(_eval(fresh_nights, "./model", "--out", out, "--max-batches", 2)) == 3
    assert main(_eval(fresh_nights, "model/", "--out", out, "--max-batches", 2, "--resume")) == 3
    assert main(_eval(fresh_nights, a, "--out", out, "--max-batches", 1, "--resume")) == 3
    capsys.readouterr()
    assert main(_eval(fresh_nights, link, "--out", out, "--per-sample", tmp_path / "part.csv", "--resume")) == 0, \
        capsys.readouterr().err
    full, part = json.loads((tmp_path / "full.json").read_text()), json.loads(out.read_text())
    assert part["results"] == full["results"]
    assert _csv(tmp_path / "part.csv") == _csv(tmp_path / "full.csv")  # bit-identical distances
    assert part["model_argument"] == str(link)  # the JSON still says what was typed


def test_the_default_log_is_found_under_another_spelling(fresh_nights, models, tmp_path, monkeypatch, capsys):
    a, _ = models
    monkeypatch.chdir(a.parent)
    assert main(_eval(fresh_nights, "./model", "--max-batches", 2)) == 3
    logs = sorted(a.parent.glob("rpmetric-eval-*.log.jsonl"))
    assert len(logs) == 1
    capsys.readouterr()
    assert main(_eval(fresh_nights, str(a) + "/", "--resume")) == 0
    assert "2 of" not in capsys.readouterr().err
    assert sorted(a.parent.glob("rpmetric-eval-*.log.jsonl")) == []  # the same log was continued and removed


# -- attack evaluation --------------------------------------------------------------------------
@pytest.fixture()
def attacked(fresh_nights, models, tmp_path):
    """``(triplets, log, uninterrupted result)`` of an attack on model a, its log cut after one batch."""
    import rpmetric
    from rpmetric.attacks import evaluate_attack
    from rpmetric.datasets import read_nights

    a, _ = models
    triplets = read_nights(fresh_nights, "test_imagenet")
    kwargs = dict(eps=8 / 255, steps=2, batch_size=2, progress=False)
    full = evaluate_attack(rpmetric.RobustDistance(str(a), device="cpu"), triplets, **kwargs)
    log = tmp_path / "attack.jsonl"
    evaluate_attack(rpmetric.RobustDistance(str(a), device="cpu"), triplets, runlog_path=log, **kwargs)
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:3]))  # the config and the first batch (2 triplets): an interrupted run
    return triplets, log, full, kwargs


def test_attack_resume_with_another_model_is_refused(attacked, models):
    import rpmetric
    from rpmetric.attacks import evaluate_attack

    triplets, log, _, kwargs = attacked
    a, b = models
    with pytest.raises(ValueError, match=f"different configuration.*model: log has '{a}', this run has '{b}'"):
        evaluate_attack(rpmetric.RobustDistance(str(b), device="cpu"), triplets, runlog_path=log, resume=True,
                        **kwargs)


def test_attack_resume_after_the_weights_were_replaced_is_refused(attacked, models):
    import rpmetric
    from rpmetric.attacks import evaluate_attack

    triplets, log, _, kwargs = attacked
    a, _ = models
    tinymodels.save_open_clip(a, tinymodels.TINY_VIT_CFG, seed=1)
    with pytest.raises(ValueError, match=r"different configuration \(model_files: log has .*safetensors"):
        evaluate_attack(rpmetric.RobustDistance(str(a), device="cpu"), triplets, runlog_path=log, resume=True,
                        **kwargs)


def test_attack_resume_with_other_votes_is_refused(attacked, models):
    import dataclasses

    import rpmetric
    from rpmetric.attacks import evaluate_attack

    triplets, log, _, kwargs = attacked
    a, _ = models
    edited = [dataclasses.replace(t, p=0.75) if t.id == "ti-right-1" else t for t in triplets]
    with pytest.raises(ValueError, match=r"different configuration \(records: log has"):
        evaluate_attack(rpmetric.RobustDistance(str(a), device="cpu"), edited, runlog_path=log, resume=True,
                        **kwargs)


def test_attack_resume_accepts_a_symlink_to_the_same_folder(attacked, models, tmp_path):
    import rpmetric
    from rpmetric.attacks import evaluate_attack

    triplets, log, full, kwargs = attacked
    a, _ = models
    link = tmp_path / "link"
    os.symlink(a, link)
    resumed = evaluate_attack(rpmetric.RobustDistance(str(link) + "/", device="cpu"), triplets, runlog_path=log,
                              resume=True, **kwargs)
    assert resumed.records == full.records


# -- training -----------------------------------------------------------------------------------
def _train(root, model, out, *extra):
    return ["train", "nights", str(root), "--model", str(model), "--head", "mlp", "--hidden", "8",
            "--batch-size", "64", "--out", str(out), "--device", "cpu", *map(str, extra)]


def test_train_resume_with_another_model_is_refused(fresh_nights, models, tmp_path, monkeypatch, capsys):
    a, b = models
    out = tmp_path / "head"
    monkeypatch.chdir(a.parent)
    assert main(_train(fresh_nights, "model", out, "--epochs", 1)) == 0
    monkeypatch.chdir(b.parent)
    capsys.readouterr()
    assert main(_train(fresh_nights, "model", out, "--epochs", 2, "--resume")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "different run" in err and str(a) in err and "model_files" in err


def test_train_resume_after_votes_were_edited_is_refused(fresh_nights, models, tmp_path, capsys):
    a, _ = models
    out = tmp_path / "head"
    assert main(_train(fresh_nights, a, out, "--epochs", 1)) == 0
    _edit_votes(fresh_nights, "tn-left-q", 0.375)
    capsys.readouterr()
    assert main(_train(fresh_nights, a, out, "--epochs", 2, "--resume")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "it differs in records" in err and "model_files" not in err


def test_train_resume_after_the_weights_were_replaced_in_place_is_refused(fresh_nights, models, tmp_path, capsys):
    a, _ = models
    out = tmp_path / "head"
    assert main(_train(fresh_nights, a, out, "--epochs", 1)) == 0
    tinymodels.save_open_clip(a, tinymodels.TINY_VIT_CFG, seed=1)
    capsys.readouterr()
    assert main(_train(fresh_nights, a, out, "--epochs", 2, "--resume")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "it differs in model_files" in err and "open_clip_model.safetensors" in err


def test_train_resume_accepts_the_same_folder_spelled_three_ways(fresh_nights, models, tmp_path, monkeypatch):
    import torch
    from rpmetric.training import CHECKPOINT_NAME

    a, _ = models
    link = tmp_path / "link"
    os.symlink(a, link)
    monkeypatch.chdir(a.parent)
    assert main(_train(fresh_nights, a, tmp_path / "whole", "--epochs", 3)) == 0
    out = tmp_path / "cut"
    assert main(_train(fresh_nights, "./model", out, "--epochs", 1)) == 0
    assert main(_train(fresh_nights, "model/", out, "--epochs", 2, "--resume")) == 0
    assert main(_train(fresh_nights, link, out, "--epochs", 3, "--resume")) == 0
    whole = torch.load(tmp_path / "whole" / CHECKPOINT_NAME, weights_only=True)
    cut = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert cut["history"] == whole["history"]
    assert all(torch.equal(whole["head"][k], cut["head"][k]) for k in whole["head"])


def test_eval_resume_accepts_a_zoo_name_as_its_hub_id(fresh_nights, zoo_cache, tmp_path):
    import rpmetric
    from subproc import run_cli

    hf_home, _ = zoo_cache
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out.json"
    part = run_cli(_eval(fresh_nights, "r-clip-f-vitb32", "--out", out, "--max-batches", 2), env=env)
    assert part.returncode == 3, part.stderr
    hub_id = rpmetric.get_spec("r-clip-f-vitb32").hub_id
    rest = run_cli(_eval(fresh_nights, f"hf-hub:{hub_id}", "--out", out, "--resume"), env=env)
    assert rest.returncode == 0, rest.stderr
    assert json.loads(out.read_text())["results"]["total"]["n"] == 6
