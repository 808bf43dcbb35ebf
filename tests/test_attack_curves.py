"""Robustness curves: several attack radii in one run (rpmetric.attacks, ``rpmetric eval --eps E1 E2 ...``)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from rpmetric.attacks import add_attack_options, attack_config_from_args, evaluate_attack
from rpmetric.attacks import evaluate as evaluate_module
from rpmetric.cli import main
from rpmetric.datasets import read_nights
from rpmetric.images import load_image, read_pixels, unit_float
from rpmetric.models.preprocess import resize_and_crop
# fooled_data and the autouse one_thread are fixtures: importing them makes them this module's too
from interrupt import interrupt_at_call
from test_attacks import CountingEncoder, NoDefence, SpyApgd, fooled_data, one_thread, random_triplets  # noqa: F401

RADII = [0.0, 1 / 255, 4 / 255, 16 / 255, 32 / 255]


def test_eps_zero_gives_the_clean_accuracy(tiny_metric, nights_known):
    # test_imagenet of datagen.nights_known, by hand: correct, correct, a tie (0.5), correct: 3.5 / 4.
    result = evaluate_attack(tiny_metric, read_nights(nights_known[0], "test_imagenet"), eps=[8 / 255, 0.0],
                             steps=3, batch_size=3, progress=False)
    assert result.clean_accuracy == 3.5 / 4
    assert [point["eps"] for point in result.curve] == [0.0, 8 / 255]  # in increasing order
    assert result.curve[0]["robust_accuracy"] == 3.5 / 4
    assert result.robust_accuracy is None  # one figure per radius, none at the top


def test_accuracy_does_not_rise_with_eps_on_a_non_robust_model(tiny_metric, fooled_data, monkeypatch):
    spy = SpyApgd(monkeypatch)
    result = evaluate_attack(tiny_metric, fooled_data, eps=RADII, steps=10, batch_size=6, progress=False)
    accuracy = [point["robust_accuracy"] for point in result.curve]
    assert accuracy[0] == result.clean_accuracy == 1.0
    assert all(later <= earlier for earlier, later in zip(accuracy, accuracy[1:])), accuracy
    assert accuracy[-1] <= 1 / 6  # the random tiny model is not robust: 32/255 breaks it
    # Re-judge every image APGD returned with the public metric's forward: a triplet is robust at a
    # radius only if no image found at that radius or a smaller one fools it.
    assert [eps for eps, _ in spy.calls] == RADII
    pp = tiny_metric.spec.preprocessing
    for i, (t, record) in enumerate(zip(fooled_data, result.records)):
        left, right = (unit_float(resize_and_crop(read_pixels(path)[None], pp)) for path in (t.left, t.right))
        robust = record["clean_correct"]
        for k, ((eps, attacked_rows), (_, images)) in enumerate(zip(spy.calls, spy.outputs)):
            assert bool(attacked_rows[i]) == (robust > 0)  # only the rows still robust are attacked again
            d0, d1 = float(tiny_metric(images[i][None], left)), float(tiny_metric(images[i][None], right))
            robust = min(robust, 0.5 if d0 == d1 else float((d1 < d0) == (t.p > 0.5)))
            assert record["robust_correct"][k] == robust, (i, k)
            assert record["linf"][k] <= eps + 1e-6


def test_the_smallest_radius_repeats_a_one_radius_run(tiny_metric, fooled_data):
    kwargs = dict(steps=4, batch_size=4, progress=False)
    curve = evaluate_attack(tiny_metric, fooled_data, eps=[4 / 255, 8 / 255], **kwargs)
    single = evaluate_attack(tiny_metric, fooled_data, eps=4 / 255, **kwargs)
    assert curve.curve[0]["robust_accuracy"] == single.robust_accuracy
    for a, b in zip(curve.records, single.records):
        assert a["robust_correct"][0] == b["robust_correct"] and a["adv_d0"][0] == b["adv_d0"]
    assert single.curve is None and "per_eps" not in single.to_dict()


def test_one_clean_pass_for_all_radii(tiny_metric, tmp_path):
    triplets = random_triplets(tmp_path, 5)
    counter = CountingEncoder(tiny_metric.encoder)
    evaluate_attack(counter, triplets, eps=[0.0, 2 / 255, 8 / 255], steps=2, batch_size=3, progress=False)
    encoder = tiny_metric.encoder
    for side in ("left", "right"):
        images = encoder.prepare(torch.cat([load_image(getattr(t, side)) for t in triplets]))
        for i, image in enumerate(images):
            hits = [n for n, call in enumerate(counter.calls) for row in call if torch.equal(row, image)]
            assert len(hits) == 1, f"{side} image of triplet {i} embedded in calls {hits}"


def test_identity_defence_reproduces_the_plain_curve(tiny_metric, fooled_data):
    kwargs = dict(eps=[2 / 255, 8 / 255], steps=3, batch_size=3, progress=False)
    defended = evaluate_attack(tiny_metric, fooled_data, counterattack=NoDefence(), eot_samples=2, **kwargs)
    plain = evaluate_attack(tiny_metric, fooled_data, **kwargs)
    assert defended.defended_clean_accuracy == plain.clean_accuracy
    for point, base in zip(defended.curve, plain.curve):
        assert point["nonadaptive_accuracy"] == point["adaptive_accuracy"] == point["worst_case_accuracy"] == \
            base["robust_accuracy"]
    summary = defended.to_dict()
    assert summary["counterattack"]["clean_accuracy"] == plain.clean_accuracy
    assert summary["per_eps"][1]["counterattack"]["adaptive_accuracy"] == plain.curve[1]["robust_accuracy"]


def test_curve_resumes_exactly_and_refuses_other_radii(tiny_metric, fooled_data, tmp_path, monkeypatch):
    kwargs = dict(eps=[2 / 255, 8 / 255], steps=3, batch_size=2, progress=False)
    uninterrupted = evaluate_attack(tiny_metric, fooled_data, **kwargs)
    interrupt_at_call(monkeypatch, evaluate_module, "run_apgd", 4)  # batch 2, second radius
    log = tmp_path / "curve.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate_attack(tiny_metric, fooled_data, runlog_path=log, **kwargs)
    resumed = evaluate_attack(tiny_metric, fooled_data, runlog_path=log, resume=True, **kwargs)
    assert resumed.records == uninterrupted.records and resumed.curve == uninterrupted.curve
    with pytest.raises(ValueError, match="different configuration.*attack"):
        evaluate_attack(tiny_metric, fooled_data, runlog_path=log, resume=True, **{**kwargs, "eps": [2 / 255]})


@pytest.mark.parametrize("eps, match", [
    ([], r"`eps` must hold at least one radius"),
    ([2 / 255, 2 / 255], r"`eps` holds the radius 0\.0078\d* twice"),
    ([0.0, -1.0], r"`eps` must be at least 0, but got -1\.0"),
])
def test_curve_radius_errors(tiny_metric, fooled_data, eps, match):
    with pytest.raises(ValueError, match=match):
        evaluate_attack(tiny_metric, fooled_data, eps=eps, steps=1, progress=False)


# -- the command line ------------------------------------------------------------------------
def _parser(curves):
    from rpmetric.counterattack import add_counterattack_options

    p = argparse.ArgumentParser()
    add_attack_options(p, curves=curves)
    add_counterattack_options(p)
    return p


@pytest.mark.parametrize("argv, eps", [
    (["--attack", "linf", "--eps", "8", "0", "2"], [0.0, 2 / 255, 8 / 255]),  # 1/255 units, sorted
    (["--attack", "l2", "--eps", "0.5", "1"], [0.5, 1.0]),
    (["--attack", "linf", "--eps", "4"], 4 / 255),  # one radius: a number, as before
])
def test_several_eps_options(argv, eps):
    assert attack_config_from_args(_parser(True).parse_args(argv))["eps"] == eps


@pytest.mark.parametrize("curves, argv, match", [
    (True, ["--attack", "linf", "--eps", "2", "4", "2"], r"^--eps gives the radius 2 twice; give each radius once\.$"),
    (True, ["--attack", "linf", "--eps", "2", "300"], r"`--eps` must be in \[0, 255\] .* but got 300\.$"),
])
def test_several_eps_option_errors(curves, argv, match):
    with pytest.raises(ValueError, match=match):
        attack_config_from_args(_parser(curves).parse_args(argv))


def test_one_radius_commands_refuse_several():
    # eval retrieval keeps one radius (so `--eps 4 STORE` reads STORE as positional); a list that
    # reaches attack_config_from_args anyway is refused with the commands that take several.
    args = _parser(False).parse_args(["--attack", "linf"])
    args.eps = [2.0, 4.0]
    with pytest.raises(ValueError, match=r"^--eps takes one radius here, but got 2 \(2 4\); robustness curves .* "
                                         r"`rpmetric eval nights\|bapps`\.$"):
        attack_config_from_args(args)


def test_a_root_after_several_radii_says_where_to_put_it(fresh_nights, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "nights", "--attack", "linf", "--eps", "2", "4", str(fresh_nights)])
    err = capsys.readouterr().err
    assert "argument --eps: must be numbers, but got" in err and "put positional arguments (ROOT) before --eps" in err


def _eval(nights_known, vit_folder, tmp_path, *extra):
    out = tmp_path / "result.json"
    argv = ["eval", "nights", str(nights_known[0]), "--model", str(vit_folder), "--workers", "0", "--attack", "linf",
            "--steps", "2", "--out", str(out), *extra]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_eval_json_and_table_per_radius(nights_known, vit_folder, tmp_path, capsys):
    summary = _eval(nights_known, vit_folder, tmp_path, "--eps", "8", "0")
    lines = capsys.readouterr().out.splitlines()
    assert "robust @0 (%)" in lines[0] and "robust @8/255 (%)" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert summary["settings"]["attack"]["eps"] == [0.0, 8 / 255]
    for group in ("test_imagenet", "test_no_imagenet", "total"):
        attack = summary["attack"][group]
        assert set(attack) == {"n", "clean_accuracy", "attack", "per_eps"}
        assert attack["attack"]["eps"] == [0.0, 8 / 255]
        assert [p["eps"] for p in attack["per_eps"]] == [0.0, 8 / 255]
        assert attack["per_eps"][0]["robust_accuracy"] == pytest.approx(attack["clean_accuracy"])  # eps = 0
        assert attack["per_eps"][1]["robust_accuracy"] <= attack["clean_accuracy"]
        # the row: split, n, 2AFC, n attacked, clean, robust @0, robust @8/255
        assert rows[group][5:] == [f"{100 * p['robust_accuracy']:.2f}" for p in attack["per_eps"]]
    # hand-worked clean accuracies (datagen.nights_known): 3.5 / 4 and 1 / 2; total weighted by n
    assert summary["attack"]["total"]["clean_accuracy"] == pytest.approx(4.5 / 6)
    parts = [summary["attack"][g]["per_eps"][1]["robust_accuracy"] for g in ("test_imagenet", "test_no_imagenet")]
    total = summary["attack"]["total"]["per_eps"][1]["robust_accuracy"]
    assert total == pytest.approx((4 * parts[0] + 2 * parts[1]) / 6)


def test_a_single_eps_keeps_the_json_layout(nights_known, vit_folder, tmp_path, capsys):
    summary = _eval(nights_known, vit_folder, tmp_path, "--eps", "4")
    assert "robust acc (%)" in capsys.readouterr().out
    assert summary["settings"]["attack"]["eps"] == 4 / 255
    for group in ("test_imagenet", "test_no_imagenet", "total"):
        attack = summary["attack"][group]
        assert list(attack) == ["n", "clean_accuracy", "robust_accuracy", "attack"]
        assert attack["attack"] == {"attack": "apgd-ce", "target": "ref", "norm": "linf", "eps": 4 / 255, "steps": 2,
                                    "restarts": 1, "seed": 0}


def test_eval_curve_with_a_counterattack(nights_known, vit_folder, tmp_path, capsys):
    summary = _eval(nights_known, vit_folder, tmp_path, "--eps", "0", "8", "--counterattack",
                    "--counterattack-steps", "1", "--eot-samples", "1")
    header = capsys.readouterr().out.splitlines()[0]
    assert "non-adaptive @8/255 (%)" in header and "adaptive @0 (%)" in header
    attack = summary["attack"]["test_imagenet"]
    assert set(attack["counterattack"]) == {"config", "clean_accuracy"}
    zero = attack["per_eps"][0]["counterattack"]
    # eps = 0: nothing moves, so each defended figure is the defended clean accuracy
    assert zero["nonadaptive_accuracy"] == zero["adaptive_accuracy"] == attack["counterattack"]["clean_accuracy"]
    assert set(summary["attack"]["total"]["per_eps"][1]["counterattack"]) == {
        "nonadaptive_accuracy", "adaptive_accuracy", "worst_case_accuracy"}


def test_eval_curve_resumes_from_its_logs(nights_known, vit_folder, tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    first = _eval(nights_known, vit_folder, tmp_path, "--eps", "0", "8", "--log", str(log))
    assert (tmp_path / "run.jsonl.attack-test_imagenet.jsonl").exists()
    again = _eval(nights_known, vit_folder, tmp_path, "--eps", "0", "8", "--log", str(log), "--resume")
    assert again["attack"] == first["attack"]
    code = main(["eval", "nights", str(nights_known[0]), "--model", str(vit_folder), "--workers", "0", "--attack",
                 "linf", "--steps", "2", "--eps", "0", "4", "--log", str(log), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "different configuration" in err and "Traceback" not in err


@pytest.mark.gpu
def test_curve_on_cuda_with_mixed_precision(vit_folder, fooled_data):
    import rpmetric

    cuda = rpmetric.RobustDistance(str(vit_folder), device="cuda")
    result = evaluate_attack(cuda, fooled_data, eps=[0.0, 8 / 255, 32 / 255], steps=3, progress=False)
    accuracy = [point["robust_accuracy"] for point in result.curve]
    assert accuracy[0] == result.clean_accuracy == 1.0  # fooled_data is judged right on the CPU too
    assert accuracy[2] <= accuracy[1] <= accuracy[0]
