"""evals/gpu_check.py, the one-shot GPU check: its --cpu-smoke mode runs every step, so the script
cannot rot while no GPU is at hand; its step isolation, timeouts, requirements and the pip download
command it prints."""

from __future__ import annotations

import csv
import doctest
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT / "evals"))

import gpu_check  # noqa: E402


def test_docstring_examples_run():
    # evals/ is outside the doctest collection (testpaths), so its examples run here.
    result = doctest.testmod(gpu_check)
    assert result.attempted >= 3 and result.failed == 0


def _known_scores(root: Path) -> dict:
    """2AFC scores of the generated NIGHTS test split, worked from the files alone: the image that
    is a byte copy of another decides each triplet (ref = left: 1 - p; ref = right: p; left = right:
    0.5), independently of the script's own bookkeeping."""
    groups = {"test_imagenet": [], "test_no_imagenet": []}
    with open(root / "data.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] != "test" or float(row["votes"]) < 6:
                continue
            ref, left, right = ((root / row[c]).read_bytes() for c in ("ref_path", "left_path", "right_path"))
            p = float(row["right_vote"])
            score = 1 - p if ref == left else p if ref == right else 0.5 if left == right else None
            assert score is not None, f"triplet {row['id']} has no copy"
            groups["test_imagenet" if row["is_imagenet"] == "True" else "test_no_imagenet"].append(score)
    out = {g: sum(v) / len(v) for g, v in groups.items()}
    out["total"] = sum(groups["test_imagenet"] + groups["test_no_imagenet"]) / sum(map(len, groups.values()))
    return out


@pytest.mark.slow
def test_cpu_smoke_runs_every_step(tmp_path):
    out, work, wheels = tmp_path / "smoke.json", tmp_path / "work", tmp_path / "wheels"
    wheels.mkdir()
    done = subprocess.run([sys.executable, str(CHECKOUT / "evals" / "gpu_check.py"), "--cpu-smoke", "--out", str(out),
                           "--work", str(work), "--wheels", str(wheels)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert list(steps) == gpu_check.STEPS
    assert {s: r["ok"] for s, r in steps.items()} == {s: True for s in gpu_check.STEPS}
    assert report["failed"] == [] and report["mode"] == "cpu-smoke"
    assert report["install"] == {"ok": True, "torch": report["install"]["torch"], "missing": []}
    for step in gpu_check.STEPS:  # the summary names every step
        assert f"  {step} " in done.stdout
    assert "pip download" in report["pip_download"]

    # The commands: timed, memory measured (no GPU here), outputs checked against known answers.
    cli_steps = ["eval_nights", "eval_attack", "eval_counterattack", "train_lora", "embed", "dedup", "torchrun"]
    for step in cli_steps:
        r = steps[step]
        assert r["rc"] == 0 and r["wall_s"] > 0 and r["peak_rss_mb"] > 0, step
        assert r["peak_gpu_allocated_mb"] is None, step
        if step != "dedup":  # dedup reads a store: no model, no device
            assert r["argv"][r["argv"].index("--device") + 1] == "cpu", step
    known = _known_scores(work / "nights")
    for step in ("eval_nights", "torchrun", "train_lora"):
        assert steps[step]["scores"].keys() >= known.keys()
        for group, score in known.items():
            assert steps[step]["scores"][group] == pytest.approx(score, abs=1e-9), (step, group)
    for step in ("eval_attack", "eval_counterattack"):
        for group, a in steps[step]["attack"].items():
            assert 0 <= a["robust_accuracy"] <= a["clean_accuracy"] <= 1, (step, group)
    assert "counterattack" in steps["eval_counterattack"]["attack"]["total"]
    n_triplets = sum(1 for _ in open(work / "nights" / "data.csv")) - 1
    images = list((work / "nights").rglob("*.png"))
    assert steps["embed"]["rows"] == len(images) == 3 * n_triplets
    assert steps["dedup"]["planted_found"] == steps["dedup"]["planted_pairs"] == n_triplets
    assert steps["torchrun"]["backend"] == "gloo" and steps["torchrun"]["world_size"] == 1
    assert steps["torchrun"]["all_reduce_sum"] == 1.0 and steps["torchrun"]["launcher"] == "exec"
    assert report["launcher"] == "fork" and steps["eval_nights"]["launcher"] == "fork"

    # Precision and overhead: finite, small on the tiny models, and the same answer as open_clip.
    assert set(steps["precision"]["models"]) == {"tiny-vit", "tiny-convnext"}
    for model, r in steps["precision"]["models"].items():
        assert r["fp32_distance_range"]["far"][1] > 0
        for label in ("fp16", "bf16"):
            diffs = [v for k, v in r[label].items() if k.startswith("max_abs")]
            assert len(diffs) == 3 and all(0 <= v < 0.05 for v in diffs), (model, label, r[label])
        assert r["fp16_grad_finite"] and r["fp16_grad_nonzero"]
    for model, r in steps["throughput"]["models"].items():
        runs = {k: v for k, v in r.items() if k.startswith("batch")}
        assert set(runs) == {"batch1_fp32", "batch1_fp16", "batch2_fp32", "batch2_fp16"}
        for name, v in runs.items():
            assert v["ratio_median"] > 0 and v["metric_images_per_s"] > 0 and v["raw_images_per_s"] > 0
            assert v["max_abs_distance_diff_vs_raw"] < (1e-4 if name.endswith("fp32") else 0.05), (model, name)


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path):
    """A step's child fails (no setup ran, so it has no config), the runner records the error with
    the child's log, and the following step still runs."""
    work = tmp_path / "work"
    work.mkdir()

    def run(step, timeout):
        if step == "fine":
            return {"ok": True}
        # dedup in a fresh interpreter (as on the GPU), precision forked (as in the smoke run)
        return gpu_check.run_child(step, work, cpu_smoke=True, timeout=timeout, fork=step == "precision")

    seen = []
    records = gpu_check.run_steps(["dedup", "precision", "fine"], run, budget=120,
                                  report=lambda r: seen.append(list(r)))
    for step, launcher in (("dedup", "exec"), ("precision", "fork")):
        assert records[step]["ok"] is False and "config.json" in records[step]["error"], records[step]
        assert records[step]["launcher"] == launcher and "traceback" in records[step]
    assert records["fine"] == {"ok": True}
    assert seen == [["dedup"], ["dedup", "precision"], ["dedup", "precision", "fine"]]  # rewritten after each step
    skipped = gpu_check.run_steps(["a", "b"], lambda s, t: {"ok": True}, budget=4, report=lambda r: None)
    assert skipped["a"]["skipped"] and "time budget" in skipped["b"]["error"]


def test_a_step_past_its_timeout_is_killed_with_its_children(tmp_path):
    # A shell that leaves a grandchild behind, as torchrun leaves its worker.
    marker = tmp_path / "grandchild.pid"
    proc = subprocess.Popen(["sh", "-c", f"sleep 60 & echo $! > {shlex.quote(str(marker))}; wait"],
                            start_new_session=True)
    start = time.monotonic()
    assert gpu_check._wait(proc.pid, timeout=1) is None
    proc.returncode = -9
    assert time.monotonic() - start < 10
    grandchild = int(marker.read_text())
    for _ in range(100):  # killed with the session; gone once its parent (init) reaps it
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{grandchild}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild outlived the timeout")


@pytest.mark.parametrize("installed, missing", [
    ({"torch": "2.11.0+cu128", "torchvision": "0.26.0", "numpy": "2.1", "tqdm": "4.66"}, []),
    ({"torch": "2.11.0+cu128", "torchvision": "0.29.1", "numpy": "2.1", "tqdm": "4.66"}, ["torchvision>=0.16,==0.26.*"]),
    ({"torch": "2.11.0", "torchvision": "0.26.1", "tqdm": "4.50"}, ["numpy", "tqdm>=4.60"]),
])
def test_missing_requirements(installed, missing):
    reqs = ["torch>=2.1", "torchvision>=0.16", "numpy", "tqdm>=4.60", 'tomli; python_version < "3.11"']
    got = gpu_check.missing_requirements(reqs, installed.get, torch_version=installed["torch"])
    assert _parsed(got) == _parsed(missing)


def _parsed(reqs):
    requirement = gpu_check._packaging().requirements.Requirement
    return {(r.name, frozenset(map(str, r.specifier))) for r in map(requirement, reqs)}


def test_pip_download_command_covers_pyproject_without_torch():
    try:
        import tomllib
    except ImportError:
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + project["optional-dependencies"]["attack"]
    command = gpu_check.pip_download_command("wheels", "2.11")
    parts = command.split(" && ")
    assert len(parts) == 2
    flags = "--only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64"
    requirements = []
    for part in parts:
        words = shlex.split(part)
        assert words[:2] == ["pip", "download"] and flags in part and words[words.index("-d") + 1] == "wheels"
        requirements += [w for w in words[2:] if not w.startswith("-") and w not in flags.split() + ["wheels"]]
    assert "--no-deps" in shlex.split(parts[0]) and "--no-deps" not in shlex.split(parts[1])
    names = {gpu_check._canonical(w.split("=")[0].split(">")[0].split("<")[0].split("!")[0]) for w in requirements}
    for req in wanted:
        name = gpu_check._canonical(req.split(">")[0].split("=")[0].split("<")[0])
        assert (name in names) == (name != "torch"), name
    assert "torchvision==0.26.*" in requirements  # the series built for torch 2.11
    assert {"regex", "ftfy", "pyyaml"} <= names  # open_clip's and timm's own, fetched without their torch


def test_torchvision_series():
    assert [gpu_check.torchvision_for(v) for v in ("2.1.2", "2.11.0+cu128", "2.14.1")] == ["0.16.*", "0.26.*", "0.29.*"]
    with pytest.raises(ValueError, match="torch 1.13"):
        gpu_check.torchvision_for("1.13")
