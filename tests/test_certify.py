"""Certified 2AFC accuracy by randomized smoothing (rpmetric/attacks/certify.py), against closed forms.

The closed-form model: a linear encoder whose embedding of an image x is ``(1, C * (x_a - x_b))``
for two fixed pixels a and b. The left image has ``x_a - x_b = +D`` and the right one ``-D``, so
their unit embeddings mirror each other in the second coordinate and the 2AFC decision on a
reference ``x + noise`` is "left" exactly when ``x_a - x_b + noise_a - noise_b > 0``. With noise
N(0, sigma^2) per pixel, ``noise_a - noise_b`` is N(0, 2 sigma^2), so by hand

    P(left) = Phi((x_a - x_b) / (sigma * sqrt(2))),

and the smoothed classifier's true l2 radius is ``sigma * Phi^-1(max(P(left), P(right)))``.
"""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch
from scipy.stats import beta, binom, norm

import rpmetric
from rpmetric import evaluation
from rpmetric.attacks import certified_summary, certify
from rpmetric.attacks.certify import CertifyConfig, clopper_pearson_lower, smoothed_radius
from rpmetric.cli import main
from rpmetric.datasets import Triplet
from rpmetric.models.encoder import Encoder
from rpmetric.models.spec import ModelSpec, Preprocessing

SIZE = 4  # the model's input size; the images are saved at it, so nothing is resized
A, B = (0, 0, 0), (0, 0, 1)  # the two compared pixels (channel, row, column)
C = 5.0
SIGMA = 30 / 255
# x_a - x_b of each reference, in 1/255 (PNG levels, so exact): z = k / (30 sqrt 2) from -0.94 to 1.41.
OFFSETS = (-40, -10, 0, 5, 20, 60)
N0, N, ALPHA = 100, 2000, 0.001


def linear_encoder() -> Encoder:
    """``x -> (1, C (x_a - x_b))``: an affine map of the pixels (identity normalisation)."""
    layer = torch.nn.Linear(3 * SIZE * SIZE, 2)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor([1.0, 0.0]))
        flat = lambda c, y, x: (c * SIZE + y) * SIZE + x  # noqa: E731 (nn.Flatten's order)
        layer.weight[1, flat(*A)] = C
        layer.weight[1, flat(*B)] = -C
    pp = Preprocessing(image_size=SIZE, resize_size=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return Encoder(torch.nn.Sequential(torch.nn.Flatten(), layer), ModelSpec("linear-test", preprocessing=pp))


def _image(path, a: int, b: int, seed: int):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    pixels[A[1], A[2], A[0]], pixels[B[1], B[2], B[0]] = a, b
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope="module")
def linear_triplets(tmp_path_factory):
    """``(triplets, P(left) by hand)``: one triplet per offset (human choice: the likelier image),
    and a last one whose left and right are the same image (every sample a tie)."""
    folder = tmp_path_factory.mktemp("linear")
    left = _image(folder / "left.png", 200, 100, 1)
    right = _image(folder / "right.png", 100, 200, 2)
    triplets, p_left = [], []
    for i, k in enumerate(OFFSETS):
        ref = _image(folder / f"ref{i}.png", 128 + k, 128, 10 + i)
        p = float(norm.cdf(k / 255 / (SIGMA * math.sqrt(2))))
        triplets.append(Triplet(f"k{k}", ref, left, right, 0.0 if p > 0.5 else 1.0))
        p_left.append(p)
    triplets.append(Triplet("tie", triplets[-1].ref, left, left, 0.0))
    return triplets, p_left


@pytest.fixture(scope="module")
def certified(linear_triplets):
    triplets, _ = linear_triplets
    return certify(linear_encoder(), triplets, sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, batch_size=3,
                   noise_batch=500, radii=[0.0, 0.05, 0.1])


def test_votes_follow_the_closed_form_probability(linear_triplets, certified):
    _, p_left = linear_triplets
    for record, p in zip(certified.records, p_left):
        # No tie in continuous noise: every sample votes; the count is Binomial(n, P(left)).
        assert record["n_left"] + record["n_right"] == N and record["n0_left"] + record["n0_right"] == N0
        low, high = binom.ppf(1e-6, N, p), binom.ppf(1 - 1e-6, N, p)
        assert low <= record["n_left"] <= high, (record["id"], record["n_left"], N * p)


def test_certified_radius_is_below_the_true_one_within_the_clopper_pearson_slack(linear_triplets, certified):
    _, p_left = linear_triplets
    for record, p in zip(certified.records, p_left):
        if record["cls"] < 0:
            continue
        p_true = p if record["cls"] == 0 else 1 - p  # of the class the n0 samples selected
        true_radius = SIGMA * norm.ppf(p_true)
        assert record["p_a"] <= p_true and record["radius"] <= true_radius, record
        # The slack: the bound computed from an unluckily low count (Binomial quantile 1e-6).
        worst = beta.ppf(ALPHA, binom.ppf(1e-6, N, p_true), N - binom.ppf(1e-6, N, p_true) + 1)
        assert record["p_a"] >= worst and record["radius"] >= SIGMA * norm.ppf(worst) - 1e-12, record
        # The bound and the radius by hand from the count.
        k = record["n_left"] if record["cls"] == 0 else record["n_right"]
        assert record["p_a"] == pytest.approx(beta.ppf(ALPHA, k, N - k + 1), rel=1e-12)
        assert record["radius"] == pytest.approx(SIGMA * norm.ppf(record["p_a"]), rel=1e-12)
        assert record["radius_255"] == pytest.approx(255 * record["radius"])
    far = [r for r, p in zip(certified.records, p_left) if abs(p - 0.5) > 0.15]
    assert far and all(r["cls"] == (0 if p > 0.5 else 1) for r, p in zip(certified.records, p_left)
                       if abs(p - 0.5) > 0.15)


def test_abstains_at_p_one_half_and_on_ties(linear_triplets, certified):
    by_id = {r["id"]: r for r in certified.records}
    # x_a == x_b: P(left) = P(right) = 1/2 exactly, so p_A <= 1/2 (with probability >= 1 - alpha).
    even = by_id["k0"]
    assert even["cls"] == -1 and even["radius"] == 0.0 and even["p_a"] <= 0.5
    tie = by_id["tie"]  # left and right are one image: every sample ties and votes for neither
    assert (tie["n0_left"], tie["n0_right"], tie["n_left"], tie["n_right"], tie["cls"]) == (0, 0, 0, 0, -1)
    assert tie["d0"] == tie["d1"]


def test_summary_counts_by_hand(certified):
    records = certified.records
    labels = [1 if r["p"] > 0.5 else 0 for r in records]
    correct = [r["cls"] == y for r, y in zip(records, labels)]
    summary = certified.results["all"]["certify"]
    assert summary["clean_accuracy"] == sum(correct) / len(records)
    assert summary["abstained"] == sum(r["cls"] == -1 for r in records) / len(records)
    for point, radius in zip(summary["certified"], [0.0, 0.05, 0.1]):
        expected = sum(ok and r["radius"] >= radius for ok, r in zip(correct, records)) / len(records)
        assert point["radius"] == radius and point["accuracy"] == expected
    assert summary["certified"][0]["accuracy"] == summary["clean_accuracy"]
    # The clean 2AFC score of the same pass: the human choice is the likelier image (1 each), and k0's
    # reference and the tie triplet are exactly equidistant (0.5 each).
    assert certified.results["all"]["score"] == pytest.approx(6 / 7)
    assert certified.radii == [r["radius"] for r in records]


def test_summary_tie_rule_for_people_and_abstentions():
    rows = [{"cls": 0, "radius": 0.2, "p": 0.5}, {"cls": 1, "radius": 0.2, "p": 0.5},
            {"cls": -1, "radius": 0.0, "p": 1.0}, {"cls": 1, "radius": 0.05, "p": 0.75}]
    summary = certified_summary(rows, [0.1, 0.0])
    # p == 0.5 counts as left (p > 0.5 is right), as in the binary accuracy; an abstention is wrong.
    assert summary["clean_accuracy"] == 0.5 and summary["abstained"] == 0.25
    assert [(p["radius"], p["accuracy"]) for p in summary["certified"]] == [(0.0, 0.5), (0.1, 0.25)]


def test_noise_depends_on_the_triplet_not_its_batch_or_process(linear_triplets, certified, monkeypatch):
    triplets, _ = linear_triplets
    fields = ("n0_left", "n0_right", "n_left", "n_right", "cls", "p_a", "radius")
    kwargs = dict(sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, radii=[0.0])
    alone = certify(linear_encoder(), triplets, batch_size=1, noise_batch=7, **kwargs)
    assert [[r[f] for f in fields] for r in alone.records] == [[r[f] for f in fields] for r in certified.records]
    # torchrun's dealing: each of two ranks measures every other batch.
    monkeypatch.setattr(evaluation, "gather_records", list)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(evaluation, "rank_and_world", lambda rank=rank: (rank, 2))
        shares += certify(linear_encoder(), triplets, batch_size=2, noise_batch=64, **kwargs).records
    dealt = {r["id"]: [r[f] for f in fields] for r in shares}
    assert len(dealt) == len(triplets)
    assert dealt == {r["id"]: [r[f] for f in fields] for r in certified.records}


def test_left_and_right_are_embedded_once_and_only_noisy_references_after(linear_triplets):
    triplets, _ = linear_triplets
    encoder = linear_encoder()
    sizes = []
    encoder.backbone.register_forward_hook(lambda module, inputs, output: sizes.append(len(inputs[0])))
    certify(encoder, triplets, sigma=SIGMA, n0=4, n=20, batch_size=len(triplets), noise_batch=50, radii=[0.0])
    # One clean pass over the distinct images (6 references, left, right), then the noisy references:
    # n0 + n of each triplet, in passes of at most noise_batch.
    assert sizes[0] == 8 and sum(sizes[1:]) == len(triplets) * 24 and max(sizes[1:]) <= 50


def test_the_seed_draws_other_noise(linear_triplets, certified):
    triplets, _ = linear_triplets
    other = certify(linear_encoder(), triplets, sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, seed=1, radii=[0.0])
    assert [r["n_left"] for r in other.records[:-1]] != [r["n_left"] for r in certified.records[:-1]]


@pytest.mark.gpu
def test_on_cuda_the_votes_follow_the_closed_form(linear_triplets):
    triplets, p_left = linear_triplets
    metric = rpmetric.RobustDistance(linear_encoder(), device="cuda")
    result = certify(metric, triplets, sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, radii=[0.0])
    for record, p in zip(result.records, p_left):
        assert binom.ppf(1e-6, N, p) <= record["n_left"] <= binom.ppf(1 - 1e-6, N, p), record
        if record["cls"] >= 0:
            assert record["radius"] <= SIGMA * norm.ppf(p if record["cls"] == 0 else 1 - p)
    assert result.records[-1]["cls"] == -1  # the tie, exact in float16 too


def test_resume_gives_identical_certified_numbers(linear_triplets, certified, tmp_path):
    triplets, _ = linear_triplets
    kwargs = dict(sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, batch_size=3, noise_batch=500, log=tmp_path / "run.jsonl")
    first = certify(linear_encoder(), triplets, max_batches=1, radii=[0.0, 0.05, 0.1], **kwargs)
    assert not first.complete and len(first.records) == 3 and first.results == {}
    resumed = certify(linear_encoder(), triplets, resume=True, radii=[0.0, 0.05, 0.1], **kwargs)
    assert resumed.complete and resumed.records == certified.records  # counts exact, floats from them
    assert resumed.results == certified.results
    # Other radii need no new measurement; other settings are refused.
    other_radii = certify(linear_encoder(), triplets, resume=True, radii=[0.02], **kwargs)
    assert other_radii.records == certified.records
    with pytest.raises(ValueError, match="sigma"):
        certify(linear_encoder(), triplets, resume=True, **{**kwargs, "sigma": 2 * SIGMA})


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma": 0.0}, r"`sigma` must be a finite number > 0"),
    ({"sigma": -0.1}, r"`sigma` must be a finite number > 0"),
    ({"n0": 0}, r"`n0` must be at least 1"),
    ({"n": 0}, r"`n` must be at least 1"),
    ({"alpha": 0.0}, r"`alpha` must be in \(0, 1\)"),
    ({"alpha": 1.0}, r"`alpha` must be in \(0, 1\)"),
    ({"noise_batch": 0}, r"`noise_batch` must be at least 1"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CertifyConfig(**{"sigma": 0.25, **kwargs})


def test_bound_and_radius_edge_cases():
    assert clopper_pearson_lower(0, 100, 0.01) == 0.0
    assert clopper_pearson_lower(100, 100, 0.01) == pytest.approx(0.01 ** (1 / 100))  # Beta(n, 1): alpha^(1/n)
    assert smoothed_radius(0.5, 1.0) == 0.0 and smoothed_radius(0.8413447460685429, 2.0) == pytest.approx(2.0)


# -- the command line ---------------------------------------------------------------------------
def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _certify_args(root, model, *extra):
    return ["eval", "nights", str(root), "--model", str(model), "--split", "val", "test", "--batch-size", "3",
            "--workers", "0", "--certify", "--sigma", "16", "--n0", "4", "--n", "12", "--radii", "0", "1",
            *map(str, extra)]


def test_cli_certify_table_json_and_per_sample(nights_known, vit_folder, tmp_path, monkeypatch, capsys):
    root, expected = nights_known
    monkeypatch.chdir(tmp_path)
    out, per_sample = tmp_path / "c.json", tmp_path / "c.csv"
    code = main(_certify_args(root, vit_folder, "--out", out, "--per-sample", per_sample))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    header = captured.out.splitlines()[0]
    assert "2AFC (%)" in header and "smoothed (%)" in header and "cert @1/255 (%)" in header
    summary = json.loads(out.read_text())
    settings = summary["settings"]["certify"]
    assert settings["sigma"] == pytest.approx(16 / 255) and settings["sigma_255"] == pytest.approx(16)
    assert (settings["n0"], settings["n"], settings["alpha"]) == (4, 12, 0.001)
    assert settings["radii_255"] == pytest.approx([0, 1])
    rows = _csv(per_sample)
    assert list(rows[0]) == ["group", "id", "d0", "d1", "n0_left", "n0_right", "n_left", "n_right", "cls", "p_a",
                             "radius", "radius_255", "p"]
    for group in ("val", "test_imagenet", "test_no_imagenet", "total"):
        # The clean 2AFC score of the same pass is the plain evaluation's.
        assert summary["results"][group]["score"] == pytest.approx(expected[group]["score"])
        mine = [r for r in rows if r["group"] == group or (group == "total" and r["group"] != "val")]
        correct = [int(r["cls"]) == (1 if float(r["p"]) > 0.5 else 0) for r in mine]
        cert = summary["results"][group]["certify"]
        assert cert["clean_accuracy"] == pytest.approx(sum(correct) / len(mine))
        assert cert["certified"][1]["accuracy"] == pytest.approx(
            sum(ok and float(r["radius_255"]) >= 1 for ok, r in zip(correct, mine)) / len(mine))
    for r in rows:
        assert int(r["n_left"]) + int(r["n_right"]) <= 12 and int(r["cls"]) in (-1, 0, 1)
        assert (int(r["cls"]) == -1) == (float(r["p_a"]) <= 0.5 or r["n0_left"] == r["n0_right"])


def test_cli_certify_resume_is_identical(nights_known, vit_folder, tmp_path, monkeypatch, capsys):
    root, _ = nights_known
    monkeypatch.chdir(tmp_path)
    assert main(_certify_args(root, vit_folder, "--per-sample", tmp_path / "whole.csv")) == 0
    log = tmp_path / "run.jsonl"
    assert main(_certify_args(root, vit_folder, "--run-log", log, "--max-batches", "1")) == 3
    assert main(_certify_args(root, vit_folder, "--run-log", log, "--resume", "--per-sample",
                              tmp_path / "resumed.csv")) == 0
    capsys.readouterr()
    assert _csv(tmp_path / "resumed.csv") == _csv(tmp_path / "whole.csv")


@pytest.mark.parametrize("extra, match", [
    (["--certify", "--sigma", "0"], "--sigma must be a finite number > 0"),
    (["--certify", "--sigma", "-4"], "--sigma must be a finite number > 0"),
    (["--certify"], "--certify needs --sigma S"),
    (["--sigma", "16"], "--sigma only apply to a certification; add --certify"),
    (["--certify", "--sigma", "16", "--n0", "0"], "--n0 must be at least 1"),
    (["--certify", "--sigma", "16", "--n", "0"], "--n must be at least 1"),
    (["--certify", "--sigma", "16", "--alpha", "0"], r"--alpha must be in \(0, 1\)"),
    (["--certify", "--sigma", "16", "--alpha", "1.5"], r"--alpha must be in \(0, 1\)"),
    (["--certify", "--sigma", "16", "--radii", "-1"], "--radii must be finite numbers >= 0"),
    (["--certify", "--sigma", "16", "--attack", "linf"], "--certify does not combine with --attack"),
    (["--certify", "--sigma", "16", "--model", "l2"], "--certify needs a model with an encoder"),
])
def test_cli_bad_values_are_one_line_errors(tmp_path, extra, match, capsys):
    code = main(["eval", "nights", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert re.search(match, err), err
