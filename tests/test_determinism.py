"""Results that do not depend on batch composition, thread count or process count.

Every test here runs a backbone that perturbs its output by about 1e-6 with the batch position,
batch size and thread count (``perturbed.py``), as MKL does on AMD EPYC: a guarantee that holds
only because identical images happened to embed to identical bits fails here on every machine.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import datagen
import perturbed
import rpmetric
from rpmetric.attacks import evaluate_attack
from rpmetric.cli import main
from rpmetric.counterattack import Counterattack
from rpmetric.datasets import read_nights
from rpmetric.evaluation import EncoderDistances, evaluate, load_groups
from rpmetric.stores.dedup import find_near, group_duplicates

SPLITS = ["train", "val", "test"]


def _images(n, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=size, mode="bilinear")


def test_the_perturbation_is_real(perturbed_metric):
    """The same image at two batch positions, or alone, embeds differently: the tests below could fail."""
    x = _images(3)
    batch = perturbed_metric.embed(torch.cat([x, x[:1]]), normalize=False)
    alone = perturbed_metric.embed(x[:1], normalize=False)
    assert not torch.equal(batch[0], batch[3]) and not torch.equal(batch[0], alone[0])
    assert torch.allclose(batch[0], batch[3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 32])
def test_tie_triplets_are_exact_ties_at_any_batch_size(nights_known, perturbed_metric, batch_size):
    root, expected = nights_known
    task, groups, _ = load_groups("nights", root, SPLITS)
    result = evaluate(EncoderDistances(perturbed_metric), task, groups, batch_size=batch_size)
    for group, value in result.results.items():
        assert value == {"n": expected[group]["n"], "score": pytest.approx(expected[group]["score"], abs=1e-12)}
    ties = [r for r in result.records if "tie" in r["id"]]
    assert ties and all(r["d0"] == r["d1"] > 0 for r in ties)
    copies = [r for r in result.records if "left" in r["id"]]  # left is a copy of the reference
    assert copies and all(r["d0"] == 0.0 < r["d1"] for r in copies)


def _table(stdout):
    lines = stdout.strip().splitlines()
    return {cells[0]: (int(cells[1]), float(cells[2])) for cells in (line.split() for line in lines[2:])}


def test_cli_scores_do_not_depend_on_the_batch_size(nights_known, vit_folder, perturbed_backbones, tmp_path,
                                                     monkeypatch, capsys):
    root, expected = nights_known
    monkeypatch.chdir(tmp_path)
    tables = {}
    for batch_size in (1, 2, 3, 32):
        code = main(["eval", "nights", str(root), "--model", str(vit_folder), "--split", "val",
                     "--batch-size", str(batch_size), "--workers", "0"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        tables[batch_size] = _table(captured.out)
    assert tables[1] == {"val": (2, 100 * expected["val"]["score"])}  # 25.0: one tie, one wrong
    assert tables[2] == tables[3] == tables[32] == tables[1]


def test_torchrun_two_processes_match_one(nights_known, vit_folder, tmp_path):
    """One process on this suite's threads, two on one thread each: the scores agree exactly and the
    distances to the BLAS tolerance, and ties stay exact."""
    root, _ = nights_known
    launcher = str(Path(perturbed.__file__))
    args = ["eval", "nights", str(root), "--model", str(vit_folder), "--split", "train", "val", "test",
            "--batch-size", "2", "--workers", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(launcher).parent),
                                                                      os.environ.get("PYTHONPATH")]))}
    one = subprocess.run([sys.executable, launcher, *args, "--out", str(tmp_path / "one.json"),
                          "--per-sample", str(tmp_path / "one.csv")],
                         capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "2"}, cwd=tmp_path,
                         timeout=240)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", launcher,
         *args, "--out", str(tmp_path / "two.json"), "--per-sample", str(tmp_path / "two.csv")],
        capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, timeout=240)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("total") == 1  # only rank 0 prints
    results = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two")]
    assert results[1]["settings"]["processes"] == 2 and results[0]["settings"]["processes"] == 1
    assert results[1]["results"] == results[0]["results"]
    rows = [_csv(tmp_path / f"{n}.csv") for n in ("one", "two")]
    assert [r["id"] for r in rows[0]] == [r["id"] for r in rows[1]]
    for a, b in zip(*rows):
        assert float(a["d0"]) == pytest.approx(float(b["d0"]), rel=1e-4, abs=1e-9), a["id"]
        assert float(a["d1"]) == pytest.approx(float(b["d1"]), rel=1e-4, abs=1e-9), a["id"]
        if "tie" in a["id"]:
            assert a["d0"] == a["d1"] and b["d0"] == b["d1"]


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_identical_images_are_exactly_zero_apart(perturbed_metric):
    x = _images(4)
    d = perturbed_metric(x[2:3], x)  # a batch of 1 against 4: x[2] is embedded at two positions
    assert d[2] == 0.0 and (d[[0, 1, 3]] > 0).all()
    assert torch.equal(perturbed_metric(x, x), torch.zeros(4))
    assert torch.equal(perturbed_metric(x, x.flip(0)[[3, 1, 2, 0]])[[0, 3]], torch.zeros(2))  # [x0, x2, x1, x3]


def test_counterattack_calibration_flags_do_not_depend_on_the_batch(perturbed_metric):
    encoder = perturbed_metric.encoder
    x = _images(16)
    for rate in (0.0, 0.25, 0.5, 1.0):
        ttc = Counterattack()
        ttc.calibrate(encoder, x, rate, batch_size=5)
        in_batch = ttc(encoder, x).flagged
        alone = torch.cat([ttc(encoder, x[i:i + 1]).flagged for i in range(len(x))])
        assert torch.equal(in_batch, alone), rate
        assert int(in_batch.sum()) == round(rate * len(x))


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_defended_distance_is_the_same_in_a_batch_and_alone(perturbed_metric, rate):
    """A threshold calibrated onto one image's tau made that image's defended distance depend on
    its batch (0.0707 in a batch, 0.0856 alone, on AMD EPYC)."""
    x, y = _images(8), _images(8, seed=1)
    ttc = Counterattack()
    ttc.calibrate(perturbed_metric.encoder, x, rate, batch_size=3)
    perturbed_metric.counterattack = ttc
    batch = perturbed_metric(x, y)
    alone = torch.cat([perturbed_metric(x[i:i + 1], y[i:i + 1]) for i in range(len(x))])
    assert torch.allclose(batch, alone, rtol=1e-4, atol=1e-7)


def test_attack_evaluation_keeps_tie_triplets_exact(tmp_path, vit_folder):
    """left == right: a tie earns 0.5 clean, whatever the batch, with a perturbation that changes
    with every encoder call too (so separate passes for left and right would differ)."""
    rows = [{"id": f"tie-{n}", "kind": "tie", "p": 1.0, "votes": 6, "split": "val", "is_imagenet": True}
            for n in range(8)]
    datagen.write_nights(tmp_path / "nights", rows)
    metric = perturbed.wrap(rpmetric.RobustDistance(str(vit_folder), device="cpu"), per_call=True)
    result = evaluate_attack(metric, read_nights(tmp_path / "nights", "val"), eps=0.0, steps=1, batch_size=3,
                             progress=False)
    assert len(result.records) == 8
    for record in result.records:
        assert record["clean_d0"] == record["clean_d1"] > 0 and record["clean_correct"] == 0.5, record["key"]


def test_dedup_groups_the_same_image_embedded_in_different_batches(perturbed_metric):
    x = _images(5)
    copies = torch.cat([x, x[1:2]])  # the copy sits at another position, in another batch of 3
    emb = torch.cat([perturbed_metric.embed(b) for b in copies.split(3)])
    assert not torch.equal(emb[1], emb[5])  # the rounding differs...
    assert group_duplicates(emb, 0.0) == [[1, 5]]  # ...and the copy is still found at threshold 0
    rows, ref, _ = find_near(emb[5:], emb[:5], 0.0, index="exact")
    assert rows.tolist() == [0] and ref.tolist() == [1]


@pytest.mark.parametrize("head", ["mlp", "lora"])
def test_training_scores_keep_ties_and_copies_exact(nights_known, vit_folder, perturbed_backbones, tmp_path, head):
    """val holds a tie (0.5 whatever people said) and a right-is-the-reference copy that people
    judged wrong (0): any head scores exactly 25 %, before and after training."""
    from rpmetric.models.heads import HeadConfig
    from rpmetric.training import TrainConfig, train_nights

    root, expected = nights_known
    config = TrainConfig(HeadConfig(head, hidden=16) if head == "mlp" else HeadConfig(head, r=2, alpha=2.0),
                         epochs=1, batch_size=3, lr=1e-2)
    result = train_nights(root, str(vit_folder), tmp_path / head, config, progress=False, device="cpu")
    assert expected["val"]["score"] == 0.25
    assert result.val_history == [0.25, 0.25]
