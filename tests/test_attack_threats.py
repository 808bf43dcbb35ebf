"""Threat models (``target="distorted"|"both"``) and the attack suite (APGD-CE, APGD-margin,
APGD-targeted, Square) of rpmetric.attacks, on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from rpmetric.attacks import AttackConfig, TwoAFCLogits, evaluate_attack
from rpmetric.attacks import evaluate as evaluate_module
from rpmetric.attacks.square import run_square
from rpmetric.cli import main
from rpmetric.datasets import Triplet
from rpmetric.images import read_pixels, unit_float
from rpmetric.models.preprocess import resize_and_crop
# fooled_data and the autouse one_thread are fixtures: importing them makes them this module's too
from interrupt import interrupt_at_call
from test_attacks import NoDefence, datagen_images, fooled_data, one_thread  # noqa: F401


class SpyAttacks:
    """Wraps run_apgd and run_square; ``calls`` holds (attack, clean rows, returned rows, attacked mask)."""

    def __init__(self, monkeypatch):
        self.calls = []
        apgd, square = evaluate_module.run_apgd, evaluate_module.run_square

        def spy_apgd(logits, x, y, config, **kwargs):
            out = apgd(logits, x, y, config, **kwargs)
            self.calls.append(("apgd-" + kwargs.get("loss", "ce"), x.clone(), out.images.clone(), kwargs["correct"]))
            return out

        def spy_square(logits, x, y, config, **kwargs):
            out = square(logits, x, y, config, **kwargs)
            self.calls.append(("square", x.clone(), out.images.clone(), kwargs["correct"]))
            return out

        monkeypatch.setattr(evaluate_module, "run_apgd", spy_apgd)
        monkeypatch.setattr(evaluate_module, "run_square", spy_square)


def loaded(metric, triplet):
    """The triplet's images as the data loader gives them: 8-bit resize by the public preprocessing."""
    pp = metric.spec.preprocessing
    return [unit_float(resize_and_crop(read_pixels(path)[None], pp))[0] for path in (triplet.ref, triplet.left,
                                                                                     triplet.right)]


def judged(metric, ref, left, right, p):
    """Binary agreement of the public metric's forward, by hand: 0.5 on a tie."""
    d0, d1 = float(metric(ref[None], left[None])), float(metric(ref[None], right[None]))
    return d0, d1, 0.5 if d0 == d1 else float((d1 < d0) == (p > 0.5))


# -- threat models ---------------------------------------------------------------------------
def test_distorted_moves_only_the_image_people_chose(tiny_metric, fooled_data, monkeypatch):
    # The last triplet is a p = 0.5 tie of the raters: the label rule makes its left image the one to move.
    t = fooled_data[3]
    triplets = fooled_data[:3] + [Triplet(t.id, t.ref, t.left, t.right, 0.5)]
    spy = SpyAttacks(monkeypatch)
    eps = 16 / 255
    result = evaluate_attack(tiny_metric, triplets, eps=eps, steps=5, target="distorted", batch_size=4,
                             progress=False)
    ((_, x, attacked, rows),) = spy.calls
    assert result.config["attack"]["target"] == "distorted"
    for i, (t, record) in enumerate(zip(triplets, result.records)):
        ref, left, right = loaded(tiny_metric, t)
        chosen = right if t.p > 0.5 else left
        assert torch.allclose(x[i], chosen, atol=1e-6), i  # the row attacked is the image people chose
        delta = attacked[i] - x[i]
        assert float(delta.abs().max()) <= eps + 1e-6
        assert 0.0 <= float(attacked[i].min()) and float(attacked[i].max()) <= 1.0
        if bool(rows[i]):
            assert float(delta.abs().max()) > eps / 2  # it did move
        # Only that image moved: the public metric on the clean reference and the other clean image
        # gives the recorded distances.
        moved = (left, attacked[i]) if t.p > 0.5 else (attacked[i], right)
        d0, d1, ok = judged(tiny_metric, ref, *moved, t.p)
        assert d0 == pytest.approx(record["adv_d0"], abs=1e-5) and d1 == pytest.approx(record["adv_d1"], abs=1e-5)
        assert record["robust_correct"] == min(record["clean_correct"], ok)
        side = "adv_d0" if t.p > 0.5 else "adv_d1"  # the image that did not move keeps its clean distance
        assert record[side] == pytest.approx(record["clean" + side[3:]], abs=1e-5)
    assert result.robust_accuracy < result.clean_accuracy


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_both_moves_all_three_images_each_in_its_own_ball(tiny_metric, fooled_data, monkeypatch, norm, eps):
    spy = SpyAttacks(monkeypatch)
    triplets = fooled_data[:3]
    result = evaluate_attack(tiny_metric, triplets, norm=norm, eps=eps, steps=5, target="both", batch_size=3,
                             progress=False)
    ((_, x, attacked, rows),) = spy.calls
    assert x.shape[0] == 9 and rows.tolist() == [True] * 9
    joint = []
    for i, (t, record) in enumerate(zip(triplets, result.records)):
        clean = loaded(tiny_metric, t)
        moved = attacked[3 * i:3 * i + 3]
        for image, original, row in zip(moved, clean, x[3 * i:3 * i + 3]):
            assert torch.allclose(row, original, atol=1e-6)  # rows: reference, left, right
            delta = (image - row).flatten()
            size = float(delta.abs().max() if norm == "linf" else delta.norm())
            assert 0.5 * eps < size <= eps * (1 + 1e-6) + 1e-6  # each image moved, inside its own ball
            assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        joint.append(float((moved - x[3 * i:3 * i + 3]).flatten().norm()))
        d0, d1, ok = judged(tiny_metric, *moved, t.p)
        assert d0 == pytest.approx(record["adv_d0"], abs=1e-5) and d1 == pytest.approx(record["adv_d1"], abs=1e-5)
        assert record["robust_correct"] == min(record["clean_correct"], ok)
    if norm == "l2":  # three balls, not one joint ball of radius eps around the triplet
        assert max(joint) > 1.2 * eps


def test_both_with_an_identity_defence_and_the_suite_reproduces_the_plain_figures(tiny_metric, fooled_data):
    kwargs = dict(eps=[4 / 255, 16 / 255], steps=3, target="both", suite=True, square_queries=10, batch_size=3,
                  progress=False)
    plain = evaluate_attack(tiny_metric, fooled_data, **kwargs)
    defended = evaluate_attack(tiny_metric, fooled_data, counterattack=NoDefence(), eot_samples=2, **kwargs)
    for a, b in zip(defended.records, plain.records):
        # Two identical EOT samples average to the plain gradient; Square queries the same decision.
        assert a["adaptive_suite_correct"] == b["suite_correct"] and a["adaptive_correct"] == b["robust_correct"]
    summary = defended.to_dict()["per_eps"][1]
    assert summary["counterattack"]["adaptive_suite"] == plain.to_dict()["per_eps"][1]["suite"]


# -- the suite -------------------------------------------------------------------------------
def test_the_ensemble_is_never_above_any_attack(tiny_metric, fooled_data, monkeypatch):
    spy = SpyAttacks(monkeypatch)
    result = evaluate_attack(tiny_metric, fooled_data, eps=4 / 255, steps=3, suite=True, square_queries=30,
                             batch_size=6, progress=False)
    names = ["apgd-ce", "apgd-margin", "apgd-targeted", "square"]
    assert [call[0] for call in spy.calls] == names
    per_attack = {name: [] for name in names}
    for name, _, images, _ in spy.calls:  # each attack's images re-judged by the public metric
        for t, image, record in zip(fooled_data, images, result.records):
            ref, left, right = loaded(tiny_metric, t)
            per_attack[name].append(min(record["clean_correct"], judged(tiny_metric, image, left, right, t.p)[2]))
    for j, record in enumerate(result.records):
        alone = {name: per_attack[name][j] for name in names}
        assert record["suite_correct"] == alone
        assert record["robust_correct"] == min(alone.values())
        assert all(record["robust_correct"] <= v for v in alone.values())
        assert record["fooled_by"] == [name for name in names if alone[name] < record["clean_correct"]]
    summary = result.to_dict()["suite"]
    assert summary["ensemble"] == result.robust_accuracy <= min(summary[name] for name in names)
    assert len({tuple(per_attack[name]) for name in names}) > 1  # the attacks differ: the check is not vacuous


def test_square_alone_breaks_the_tiny_model_without_gradients(tiny_metric, fooled_data, monkeypatch):
    grad_modes = []
    embed = tiny_metric.encoder.embed

    def recording(x, normalize=True):
        grad_modes.append(torch.is_grad_enabled())
        return embed(x, normalize=normalize)

    monkeypatch.setattr(tiny_metric.encoder, "embed", recording)
    result = evaluate_attack(tiny_metric, fooled_data, eps=32 / 255, suite=["square"], square_queries=500,
                             batch_size=6, progress=False)
    assert result.clean_accuracy == 1.0 and result.robust_accuracy <= 1 / 6
    assert result.to_dict()["suite"] == {"square": result.robust_accuracy, "ensemble": result.robust_accuracy}
    assert max(r["linf"] for r in result.records) <= 32 / 255 + 1e-6
    assert len(grad_modes) > 10 and not any(grad_modes)  # black-box: no pass ever records a graph


def test_square_keeps_rows_paired_as_pyautoattack_perturb_does(tiny_metric):
    """With embeddings shared by all rows, SquareAttack.perturb's own subset handling is correct, so
    run_square's row tracking must reproduce it exactly."""
    from pyautoattack.square import SquareAttack

    encoder = tiny_metric.encoder
    x = datagen_images(8)
    with torch.no_grad():
        e = encoder(datagen_images(2, seed=50))
        logits = TwoAFCLogits(encoder, e[:1], e[1:])
        y = logits(x).argmax(1)
    config = AttackConfig.create("linf", 16 / 255, seed=3, suite=["square"], square_queries=40)
    ours = run_square(logits, x, y, config)
    with torch.no_grad():
        theirs = SquareAttack(logits, norm="Linf", eps=16 / 255, n_queries=40, seed=3, device=x.device).perturb(x, y)
    changed = (theirs != x).flatten(1).any(1)  # perturb returns the clean image unless it fooled the row
    assert ours.fooled.tolist() == changed.tolist()
    assert 0 < int(changed.sum()) < 8  # some fooled, some not
    assert torch.equal(ours.images[changed], theirs[changed])


def test_margin_and_targeted_losses_by_hand():
    from rpmetric.attacks.apgd import _margin_loss, _target_logit_loss

    z = torch.tensor([[0.9, 0.2], [0.1, 0.6]])
    y = torch.tensor([0, 1])
    assert torch.allclose(_margin_loss(z, y), torch.tensor([0.2 - 0.9, 0.1 - 0.6]))
    assert torch.allclose(_target_logit_loss(z, y), torch.tensor([0.2, 0.1]))


def test_suite_resume_after_an_interruption_is_exact(tiny_metric, fooled_data, tmp_path, monkeypatch):
    kwargs = dict(eps=8 / 255, steps=2, suite=True, square_queries=10, target="distorted", batch_size=2,
                  progress=False)
    uninterrupted = evaluate_attack(tiny_metric, fooled_data, **kwargs)
    interrupt_at_call(monkeypatch, evaluate_module, "run_square", 2)  # in the second batch
    log = tmp_path / "suite.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate_attack(tiny_metric, fooled_data, runlog_path=log, **kwargs)
    resumed = evaluate_attack(tiny_metric, fooled_data, runlog_path=log, resume=True, **kwargs)
    assert resumed.records == uninterrupted.records
    assert resumed.to_dict() == uninterrupted.to_dict()
    for other in ({"square_queries": 11}, {"target": "ref"}, {"suite": ["apgd-ce", "square"]}):
        with pytest.raises(ValueError, match="different configuration.*attack"):
            evaluate_attack(tiny_metric, fooled_data, runlog_path=log, resume=True, **{**kwargs, **other})


@pytest.mark.parametrize("kwargs, error, match", [
    ({"target": "sideways"}, ValueError, r"`target` must be one of \('ref', 'distorted', 'both'\)"),
    ({"suite": ["apgd-dlr"]}, ValueError, r"unknown attack 'apgd-dlr'; choose from"),
    ({"suite": "square"}, TypeError, r"`suite` must be True, False or a sequence"),
    ({"suite": ["apgd-targeted"], "target": "distorted"}, ValueError, r"targeted attack does not apply to target "
                                                                      r"'distorted'"),
    ({"suite": True, "square_queries": 0}, ValueError, r"`square_queries` must be at least 1"),
])
def test_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        AttackConfig.create(**kwargs)


def test_the_suite_for_distorted_leaves_out_the_targeted_attack():
    assert AttackConfig.create(target="distorted", suite=True).attacks == ("apgd-ce", "apgd-margin", "square")
    assert AttackConfig.create(suite=["square", "apgd-ce"]).suite == ("apgd-ce", "square")  # the suite's order
    assert AttackConfig.create().attacks == ("apgd-ce",)


# -- the command line ------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--attack-suite"], "--attack-suite only apply to a robust evaluation; add --attack linf or --attack l2."),
    (["--attack-target", "both"], "--attack-target only apply to a robust evaluation; add --attack"),
    (["--attack", "linf", "--square-queries", "5"], "--square-queries sets the Square attack of the ensemble; add "
                                                    "--attack-suite or drop --square-queries."),
    (["--attack", "linf", "--attack-suite", "--square-queries", "0"], "Argument `--square-queries` must be at "
                                                                      "least 1, but got 0."),
])
def test_bad_combinations_are_one_line_errors(fresh_nights, vit_folder, capsys, extra, message):
    argv = ["eval", "nights", str(fresh_nights), "--model", str(vit_folder), "--workers", "0",
            "--log", str(fresh_nights / "run.jsonl"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(fresh_nights.glob("run.jsonl*"))  # refused before any work


def test_eval_suite_json_and_table(nights_known, vit_folder, tmp_path, capsys):
    out = tmp_path / "result.json"
    argv = ["eval", "nights", str(nights_known[0]), "--model", str(vit_folder), "--workers", "0", "--attack", "linf",
            "--eps", "8", "--steps", "2", "--attack-suite", "--square-queries", "10", "--attack-target", "distorted",
            "--out", str(out)]
    assert main(argv) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert all(f"{name} (%)" in header for name in ("apgd-ce", "apgd-margin", "square"))
    assert "apgd-targeted" not in header  # it does not apply to the distorted image
    summary = json.loads(out.read_text())
    assert summary["settings"]["attack"]["target"] == "distorted"
    assert summary["settings"]["attack"]["square_queries"] == 10
    parts = [summary["attack"][g] for g in ("test_imagenet", "test_no_imagenet")]
    total = summary["attack"]["total"]
    assert total["attack"]["suite"] == ["apgd-ce", "apgd-margin", "square"]
    for name in ("apgd-ce", "apgd-margin", "square", "ensemble"):
        assert total["suite"][name] == pytest.approx((4 * parts[0]["suite"][name] + 2 * parts[1]["suite"][name]) / 6)
        assert all(p["suite"]["ensemble"] <= p["suite"][name] for p in parts)


@pytest.mark.parametrize("target", ["distorted", "both"])
def test_a_real_counterattack_measures_tau_on_the_moved_image(vit_folder, fooled_data, monkeypatch, target):
    import math

    import rpmetric
    from rpmetric.counterattack import Counterattack

    defence = Counterattack(tau_threshold=math.inf)  # counterattack every image
    metric = rpmetric.RobustDistance(str(vit_folder), device="cpu", counterattack=defence)
    spy = SpyAttacks(monkeypatch)
    result = evaluate_attack(metric, fooled_data[:2], eps=16 / 255, steps=2, eot_samples=1, target=target,
                             progress=False)
    (_, x, _, _), (_, _, adaptive, _) = spy.calls  # the plain attack, then the one through the defence
    moved = adaptive[0::3] if target == "both" else adaptive  # under `both`: the references
    expected = defence.tau(metric.encoder, moved)
    for record, tau in zip(result.records, expected.tolist()):
        assert record["tau_adaptive"] == pytest.approx(tau, rel=1e-4)
        assert record["adaptive_correct"] <= record["defended_clean_correct"]
