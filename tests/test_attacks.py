"""Tests of the robust 2AFC evaluation (rpmetric/attacks/), on tiny models and generated datasets."""

from __future__ import annotations

import argparse
import math
import sys

import pytest
import torch

import datagen
import rpmetric
from interrupt import interrupt_at_call
from rpmetric.attacks import (AttackConfig, Norm, TwoAFCLogits, add_attack_options, attack_config_from_args,
                              evaluate_attack, human_labels, run_apgd)
from rpmetric.attacks import evaluate as evaluate_module
from rpmetric.datasets import Triplet, TripletImages, read_bapps_2afc, read_nights
from rpmetric.errors import MissingDependencyError
from rpmetric.images import load_image, read_pixels, unit_float
from rpmetric.models.preprocess import resize_and_crop


@pytest.fixture(autouse=True)
def one_thread():
    # Two threads on shared, busy cores spin-wait for each other; one is much faster here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_triplets(folder, n, metric=None, size=(40, 48)):
    """Triplets of three unrelated smooth images. With ``metric``, ``p`` is set to the metric's own
    clean decision (judged by RobustDistance's forward, a separate code path), so the clean
    accuracy is 1 by construction; otherwise p cycles through 0, 0.25, 0.75, 1."""
    triplets = []
    for i in range(n):
        paths = [datagen.save_png(folder / f"{i}_{name}.png", datagen.pattern(3 * i + j, size))
                 for j, name in enumerate(("ref", "left", "right"))]
        p = (0.0, 0.25, 0.75, 1.0)[i % 4]
        if metric is not None:
            ref, left, right = (load_image(path) for path in paths)
            p = 1.0 if float(metric(ref, right)) < float(metric(ref, left)) else 0.0
        triplets.append(Triplet(f"t{i}", *paths, p))
    return triplets


def reference_batch(triplets, encoder):
    """Prepared references and the clean classifier for ``triplets``, built by hand."""
    ref, left, right = (encoder.prepare(torch.cat([load_image(getattr(t, k)) for t in triplets]))
                        for k in ("ref", "left", "right"))
    with torch.no_grad():
        logits = TwoAFCLogits(encoder, encoder(left), encoder(right))
    return ref, logits


class SpyApgd:
    """Wraps run_apgd and keeps what it returned, so tests can re-check the images independently;
    ``calls`` holds each call's radius and the rows it was asked to attack."""

    def __init__(self, monkeypatch):
        self.outputs = []
        self.calls = []
        real = evaluate_module.run_apgd

        def spy(logits, x, y, config, **kwargs):
            out = real(logits, x, y, config, **kwargs)
            self.outputs.append((x.clone(), out.images.clone()))
            self.calls.append((config.eps, kwargs.get("correct")))
            return out

        monkeypatch.setattr(evaluate_module, "run_apgd", spy)


class CountingEncoder(torch.nn.Module):
    """An ``embed``-interface module around an encoder that records every batch it embeds."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.calls = []

    def prepare(self, x):
        return self.encoder.prepare(x)

    def embed(self, x, normalize=False):
        self.calls.append(x.detach().clone())
        return self.encoder.embed(x, normalize=normalize)


@pytest.fixture(scope="module")
def fooled_data(tmp_path_factory, vit_folder):
    """Six triplets the tiny model judges correctly on clean images."""
    metric = rpmetric.RobustDistance(str(vit_folder), device="cpu")
    return random_triplets(tmp_path_factory.mktemp("fooled"), 6, metric)


# -- the classifier --------------------------------------------------------------------------
def test_logits_are_cosines_hand_worked():
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    logits = TwoAFCLogits(torch.nn.Flatten(), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
    # cos((3, 4), (1, 0)) = 3/5, cos((3, 4), (0, 2)) = 4/5; no temperature
    assert torch.allclose(logits(x), torch.tensor([[0.6, 0.8]]))


def test_logits_select_keeps_rows_paired():
    e_left = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    e_right = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 1.0]])
    logits = TwoAFCLogits(torch.nn.Flatten(), e_left, e_right).select(torch.tensor([2, 0]))
    x = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).view(2, 2, 1, 1)
    # row 0 is triplet 2: cos((1,1),(1,1)) = 1, cos((1,1),(-1,1)) = 0; row 1 is triplet 0: 1, 0
    assert torch.allclose(logits(x), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), atol=1e-6)


def test_logits_reject_mismatched_embeddings():
    with pytest.raises(ValueError, match=r"`e_left` and `e_right` must both have shape \[N, D\]"):
        TwoAFCLogits(torch.nn.Flatten(), torch.zeros(2, 3), torch.zeros(3, 3))


def test_human_labels_majority_and_tie_rule():
    assert human_labels(torch.tensor([0.0, 0.4, 0.5, 0.6, 1.0])).tolist() == [0, 0, 0, 1, 1]


# -- configuration ---------------------------------------------------------------------------
def test_config_defaults_are_the_published_protocol():
    assert AttackConfig.create() == AttackConfig(Norm.LINF, 4 / 255, 100, 1, 0, 4)
    assert AttackConfig.create("L2").eps == 3.0
    assert AttackConfig.create("linf").to_dict()["attack"] == "apgd-ce"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"norm": "l1"}, ValueError, r"`norm` must be one of \('linf', 'l2'\), but got 'l1'"),
    ({"eps": -0.1}, ValueError, r"`eps` must be at least 0, but got -0.1"),
    ({"eps": 4}, ValueError, r"at most 1 for linf .* pass 4/255, not 4"),
    ({"eps": math.inf}, ValueError, r"`eps` must be finite"),
    ({"eps": "4"}, TypeError, r"`eps` must be a real number"),
    ({"steps": 0}, ValueError, r"`steps` must be at least 1, but got 0"),
    ({"restarts": 1.5}, TypeError, r"`restarts` must be an integer, but got 1.5"),
    ({"seed": True}, TypeError, r"`seed` must be an integer, but got True"),
    ({"eot_samples": 0}, ValueError, r"`eot_samples` must be at least 1"),
])
def test_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        AttackConfig.create(**kwargs)


# -- APGD ------------------------------------------------------------------------------------
def test_run_apgd_matches_pyautoattack_perturb(tiny_metric):
    """With embeddings shared by all rows (a plain classifier), perturb's own subset handling is
    correct, so our restart loop must reproduce it exactly."""
    from pyautoattack.autopgd_base import APGDAttack

    encoder = tiny_metric.encoder
    x = datagen_images(10)
    with torch.no_grad():
        e = encoder(datagen_images(2, seed=50))
    logits = TwoAFCLogits(encoder, e[:1], e[1:])
    with torch.no_grad():
        y = logits(x).argmax(1)
    y[:3] = 1 - y[:3]  # three rows start misclassified: perturb leaves them alone
    config = AttackConfig.create("linf", 2 / 255, steps=8, restarts=2, seed=3)
    ours = run_apgd(logits, x, y, config)
    theirs = APGDAttack(logits, norm="Linf", eps=2 / 255, n_iter=8, n_restarts=2, seed=3, loss="ce",
                        device=x.device).perturb(x.clone(), y.clone())
    changed = (theirs != x).flatten(1).any(1)  # perturb returns the clean image unless it fooled the row
    assert ours.fooled.tolist() == changed.tolist()
    assert 0 < int(changed.sum()) < 7  # some fooled, some not: both branches are compared
    assert torch.equal(ours.images[changed], theirs[changed])
    assert torch.equal(ours.images[:3], x[:3])


def datagen_images(n, seed=0):
    return torch.stack([torch.from_numpy(datagen.pattern(seed + i, (32, 32))).permute(2, 0, 1).float()
                        for i in range(n)])


@pytest.mark.parametrize("norm, eps", [("linf", 16 / 255), ("l2", 1.0)])
def test_returned_images_lie_in_the_ball_and_in_unit_range(tiny_metric, fooled_data, norm, eps):
    ref, logits = reference_batch(fooled_data, tiny_metric.encoder)
    y = logits(ref).argmax(1)
    out = run_apgd(logits, ref, y, AttackConfig.create(norm, eps, steps=10))
    delta = (out.images - ref).flatten(1)
    assert float(delta.abs().max(1).values.max()) <= (eps + 1e-6 if norm == "linf" else 1.0)
    assert float(delta.norm(dim=1).max()) <= (eps * (1 + 1e-6) if norm == "l2" else math.sqrt(delta.shape[1]))
    assert float(out.images.min()) >= 0.0 and float(out.images.max()) <= 1.0
    assert bool(out.fooled.any())  # the check is not vacuous: the images did move


def test_run_apgd_leaves_the_caller_rng_alone(tiny_metric, fooled_data):
    ref, logits = reference_batch(fooled_data[:2], tiny_metric.encoder)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_apgd(logits, ref, logits(ref).argmax(1), AttackConfig.create(steps=2))
    assert torch.equal(torch.rand(3), expected)


def test_missing_pyautoattack_says_how_to_install(monkeypatch, tiny_metric, fooled_data):
    monkeypatch.setitem(sys.modules, "pyautoattack.autopgd_base", None)
    ref, logits = reference_batch(fooled_data[:1], tiny_metric.encoder)
    with pytest.raises(MissingDependencyError, match=r'pip install "rpmetric\[attack\]"'):
        run_apgd(logits, ref, torch.tensor([0]), AttackConfig.create(steps=1))


# -- the evaluation: known answers on the generated layouts --------------------------------
@pytest.fixture()
def nights(nights_known):
    return nights_known[0]  # conftest's shared read-only copy


def test_nights_clean_binary_accuracy_hand_worked_and_eps0(tiny_metric, nights):
    # test_imagenet (see datagen.nights_known): left p=0 -> correct; right p=1 -> correct;
    # tie -> 0.5; right p=0.75 -> correct: 3.5 / 4 (its 2AFC score is 0.8125: p is fractional).
    result = evaluate_attack(tiny_metric, read_nights(nights, "test_imagenet"), eps=0.0, steps=3,
                             batch_size=3, progress=False)
    assert result.n == 4
    assert result.clean_accuracy == 3.5 / 4
    assert result.robust_accuracy == result.clean_accuracy  # eps = 0: nothing can change
    assert [r["robust_correct"] for r in result.records] == [r["clean_correct"] for r in result.records]
    assert all(r["linf"] == 0.0 for r in result.records)
    # test_no_imagenet: left p=1 (people chose right) -> wrong; left p=0.25 -> correct.
    other = evaluate_attack(tiny_metric, read_nights(nights, "test_no_imagenet"), eps=0.0, steps=3, progress=False)
    assert other.clean_accuracy == 0.5


def test_bapps_attack_is_rechecked_independently(tiny_metric, tmp_path, monkeypatch):
    entries = [("left", 0.2), ("right", 0.6), ("tie", 0.8), ("right", 1.0)]
    datagen.write_bapps_2afc(tmp_path, "cnn", entries)  # 64x64 images: the reference is resized to 32
    triplets = read_bapps_2afc(tmp_path, "cnn")
    spy = SpyApgd(monkeypatch)
    result = evaluate_attack(tiny_metric, triplets, eps=64 / 255, steps=20, batch_size=4, progress=False)
    assert result.clean_accuracy == 3.5 / 4  # 1 + 1 + 0.5 (tie) + 1
    # A tie (left == right) stays a tie whatever happens to the reference: 0.5, by hand.
    assert result.records[2]["robust_correct"] == 0.5
    ((clean_refs, attacked),) = spy.outputs
    assert float((attacked - clean_refs).abs().max()) <= 64 / 255 + 1e-6
    # Re-judge the returned images with the public metric's own forward; left/right are resized in
    # 8 bits by the public preprocessing, as the data loader does.
    pp = tiny_metric.spec.preprocessing
    for t, image, record in zip(triplets, attacked, result.records):
        left, right = (unit_float(resize_and_crop(read_pixels(path)[None], pp)) for path in (t.left, t.right))
        d0, d1 = float(tiny_metric(image[None], left)), float(tiny_metric(image[None], right))
        assert d0 == pytest.approx(record["adv_d0"], abs=1e-5) and d1 == pytest.approx(record["adv_d1"], abs=1e-5)
        again = 0.5 if d0 == d1 else float((d1 < d0) == (t.p > 0.5))
        assert record["robust_correct"] == min(record["clean_correct"], again)
    assert result.robust_accuracy < result.clean_accuracy


@pytest.mark.parametrize("norm, eps", [("linf", 32 / 255), ("l2", 3.0)])
def test_non_robust_model_falls_far_below_clean(tiny_metric, fooled_data, norm, eps):
    result = evaluate_attack(tiny_metric, fooled_data, norm=norm, eps=eps, steps=20, batch_size=6, progress=False)
    assert result.clean_accuracy == 1.0
    assert result.robust_accuracy <= 1 / 6
    bound = [r["linf"] if norm == "linf" else r["l2"] for r in result.records]
    assert max(bound) <= eps * (1 + 1e-6) + 1e-6


def test_fixed_seed_repeats_exactly(tiny_metric, fooled_data):
    kwargs = dict(eps=4 / 255, steps=5, batch_size=4, progress=False)
    first = evaluate_attack(tiny_metric, fooled_data, seed=7, **kwargs)
    second = evaluate_attack(tiny_metric, fooled_data, seed=7, **kwargs)
    other = evaluate_attack(tiny_metric, fooled_data, seed=8, **kwargs)
    assert first.records == second.records
    assert [r["adv_d0"] for r in first.records] != [r["adv_d0"] for r in other.records]  # the seed matters


def test_left_and_right_are_embedded_once_outside_the_attack(tiny_metric, tmp_path):
    triplets = random_triplets(tmp_path, 5)
    counter = CountingEncoder(tiny_metric.encoder)
    steps = 4
    evaluate_attack(counter, triplets, steps=steps, batch_size=3, progress=False)
    encoder = tiny_metric.encoder
    for side in ("left", "right"):
        images = encoder.prepare(torch.cat([load_image(getattr(t, side)) for t in triplets]))
        for i, image in enumerate(images):
            hits = [n for n, call in enumerate(counter.calls) for row in call if torch.equal(row, image)]
            assert len(hits) == 1, f"{side} image of triplet {i} embedded in calls {hits}"
    # Per batch, by hand: one clean pass (reference, left and right), APGD's start + `steps` gradient
    # passes, the re-check.
    assert len(counter.calls) == 2 * (1 + (1 + steps) + 1)


def test_resume_after_an_interruption_is_exact(tiny_metric, fooled_data, tmp_path, monkeypatch):
    kwargs = dict(eps=8 / 255, steps=4, batch_size=2, progress=False)
    uninterrupted = evaluate_attack(tiny_metric, fooled_data, **kwargs)

    calls = interrupt_at_call(monkeypatch, evaluate_module, "run_apgd", 2)  # in the second batch
    log = tmp_path / "attack.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate_attack(tiny_metric, fooled_data, runlog_path=log, **kwargs)
    calls.clear()
    resumed = evaluate_attack(tiny_metric, fooled_data, runlog_path=log, resume=True, **kwargs)
    assert len(calls) == 2  # only the two unfinished batches of three were attacked again
    assert resumed.records == uninterrupted.records
    assert (resumed.clean_accuracy, resumed.robust_accuracy) == (uninterrupted.clean_accuracy,
                                                                 uninterrupted.robust_accuracy)


def test_run_log_errors(tiny_metric, fooled_data, tmp_path):
    log = tmp_path / "attack.jsonl"
    evaluate_attack(tiny_metric, fooled_data[:2], steps=1, runlog_path=log, progress=False)
    with pytest.raises(FileExistsError, match="already exists; pass `resume=True`"):
        evaluate_attack(tiny_metric, fooled_data[:2], steps=1, runlog_path=log, progress=False)
    with pytest.raises(ValueError, match="different configuration.*attack"):
        evaluate_attack(tiny_metric, fooled_data[:2], steps=2, runlog_path=log, resume=True, progress=False)


def test_n_samples_takes_the_first_triplets(tiny_metric, fooled_data):
    result = evaluate_attack(tiny_metric, fooled_data, n_samples=2, steps=1, progress=False)
    assert [r["key"] for r in result.records] == ["t0", "t1"]
    assert result.to_dict()["n"] == 2 and result.to_dict()["attack"]["steps"] == 1


def test_any_embed_module_and_value_range_give_the_same_result(tiny_metric, vit_folder, fooled_data):
    kwargs = dict(eps=8 / 255, steps=3, progress=False)
    base = evaluate_attack(tiny_metric, fooled_data, **kwargs)
    signed = rpmetric.RobustDistance(str(vit_folder), device="cpu", value_range=(-1, 1))
    assert evaluate_attack(signed, fooled_data, **kwargs).records == base.records  # attacks [0, 1] pixels
    dataset = TripletImages(fooled_data)  # a dataset instead of records: keys still the triplet ids
    assert evaluate_attack(tiny_metric.encoder, dataset, **kwargs).records == base.records
    # A module without a preprocessing spec is prepared in this process, by its own float resize: the
    # same judgements, distances within the 8-bit rounding of the data loader's resize.
    other = evaluate_attack(CountingEncoder(tiny_metric.encoder), fooled_data, **kwargs).records
    assert [r["key"] for r in other] == [r["key"] for r in base.records]
    for a, b in zip(other, base.records):
        assert (a["clean_correct"], a["robust_correct"]) == (b["clean_correct"], b["robust_correct"])
        for key in ("clean_d0", "clean_d1", "adv_d0", "adv_d1"):
            assert a[key] == pytest.approx(b[key], abs=2e-3), key


def test_robust_accuracy_trusts_only_the_recheck(tiny_metric, fooled_data, monkeypatch):
    # An attack that claims success but returns the clean images must not lower robust accuracy.
    monkeypatch.setattr(evaluate_module, "run_apgd",
                        lambda logits, x, y, config, **kw: run_apgd_result(x.clone(), torch.ones(len(x), dtype=bool)))
    result = evaluate_attack(tiny_metric, fooled_data, steps=1, progress=False)
    assert result.robust_accuracy == result.clean_accuracy == 1.0


def run_apgd_result(images, fooled):
    from rpmetric.attacks.apgd import ApgdResult

    return ApgdResult(images, fooled)


def test_an_image_outside_the_ball_is_an_error(tiny_metric, fooled_data, monkeypatch):
    monkeypatch.setattr(evaluate_module, "run_apgd",
                        lambda logits, x, y, config, **kw: run_apgd_result((x + 2 * config.eps).clamp(0, 1),
                                                                          torch.ones(len(x), dtype=bool)))
    with pytest.raises(RuntimeError, match="outside the linf ball of radius"):
        evaluate_attack(tiny_metric, fooled_data[:2], steps=1, progress=False)


@pytest.mark.parametrize("data, kwargs, error, match", [
    ("duplicates", {}, ValueError, r"Triplet id 't0' occurs more than once"),
    ("strings", {}, TypeError, r"must be rpmetric.datasets.Triplet records .* but holds a str"),
    ("ok", {"batch_size": 0}, ValueError, r"`batch_size` must be at least 1, but got 0"),
    ("ok", {"n_samples": 0}, ValueError, r"`n_samples` must be at least 1, but got 0"),
    ("ok", {"norm": "l3"}, ValueError, r"`norm` must be one of"),
    ("missing", {}, ValueError, r"Triplet 'gone' cannot be loaded: .*not found"),
])
def test_evaluate_attack_errors(tiny_metric, fooled_data, tmp_path, data, kwargs, error, match):
    triplets = {"ok": fooled_data[:2], "duplicates": [fooled_data[0], fooled_data[0]], "strings": ["a.png"],
                "missing": [Triplet("gone", tmp_path / "no.png", fooled_data[0].left, fooled_data[0].right, 1.0)]}
    with pytest.raises(error, match=match):
        evaluate_attack(tiny_metric, triplets[data], steps=1, progress=False, **kwargs)


def test_a_defence_without_the_hook_interface_is_rejected(tiny_metric, fooled_data):
    with pytest.raises(TypeError, match=r"`counterattack` must have a `defended_features\(encoder, x\)` method and a "
                                        r"`seed` attribute, like rpmetric.Counterattack, but got object"):
        evaluate_attack(tiny_metric, fooled_data, counterattack=object(), progress=False)


def test_a_module_without_embed_is_rejected(fooled_data):
    with pytest.raises(TypeError, match=r"must be a RobustDistance or a module with an `embed\(x, normalize=False\)`"):
        evaluate_attack(torch.nn.Linear(2, 2), fooled_data, progress=False)


# -- with a counterattack ----------------------------------------------------------------------
class NoDefence:
    """A stand-in defence that changes nothing, and records the seeds it was used with."""

    seeds_used: list

    def __init__(self, seed=0):
        self.seed = seed
        self.seeds_used = []

    def defended_features(self, encoder, x):
        self.seeds_used.append(self.seed)
        return encoder.embed(x, normalize=False)


def test_identity_defence_reproduces_the_plain_figures(tiny_metric, fooled_data):
    defence = NoDefence(seed=5)
    result = evaluate_attack(tiny_metric, fooled_data, eps=8 / 255, steps=4, counterattack=defence,
                             eot_samples=2, batch_size=3, progress=False)
    plain = evaluate_attack(tiny_metric, fooled_data, eps=8 / 255, steps=4, batch_size=3, progress=False)
    assert result.defended_clean_accuracy == plain.clean_accuracy
    assert result.nonadaptive_accuracy == plain.robust_accuracy
    # Two identical gradient samples average to the same gradient: the same attack, the same result.
    assert result.adaptive_accuracy == plain.robust_accuracy
    assert result.worst_case_accuracy == plain.robust_accuracy
    assert [r["adaptive_l2"] for r in result.records] == [r["l2"] for r in plain.records]
    # The judge uses the defence's own seed; the attacker's EOT copies use two other seeds.
    copies = set(defence.seeds_used) - {5}
    assert 5 in defence.seeds_used and len(copies) == 2
    assert result.to_dict()["counterattack"]["adaptive_accuracy"] == result.adaptive_accuracy


def test_adaptive_attack_averages_gradients_over_eot_samples(tiny_metric, fooled_data, monkeypatch):
    seen = []
    real = evaluate_module.run_apgd

    def spy(logits, x, y, config, **kwargs):
        seen.append(kwargs.get("eot_iter", 1))
        return real(logits, x, y, config, **kwargs)

    monkeypatch.setattr(evaluate_module, "run_apgd", spy)
    evaluate_attack(tiny_metric, fooled_data[:2], steps=1, counterattack=NoDefence(), eot_samples=3, progress=False)
    assert seen == [1, 3]  # the plain attack, then the adaptive one with three samples per step


def test_real_counterattack_both_evaluations(vit_folder, fooled_data, monkeypatch):
    from rpmetric.counterattack import Counterattack

    defence = Counterattack(tau_threshold=math.inf)  # counterattack every image
    metric = rpmetric.RobustDistance(str(vit_folder), device="cpu", counterattack=defence)
    spy = SpyApgd(monkeypatch)
    triplets = fooled_data[:4]
    result = evaluate_attack(metric, triplets, eps=16 / 255, steps=3, eot_samples=2, progress=False)
    assert result.config["counterattack"] == repr(defence)  # taken from the metric's hook
    # Two attacks: the plain one (its images are transferred to the defence), then one through it.
    (clean_refs, transferred), (adaptive_refs, adaptive) = spy.outputs
    assert torch.equal(adaptive_refs, clean_refs)
    assert float((adaptive - clean_refs).abs().max()) <= 16 / 255 + 1e-6
    # Re-judge both sets of images with the public defended metric (its forward applies the hook);
    # left/right are resized in 8 bits by the public preprocessing, as the data loader does.
    pp = metric.spec.preprocessing
    for i, (t, record) in enumerate(zip(triplets, result.records)):
        left, right = (unit_float(resize_and_crop(read_pixels(path)[None], pp)) for path in (t.left, t.right))

        def judged(image):
            d0, d1 = float(metric(image[None], left)), float(metric(image[None], right))
            return 0.5 if d0 == d1 else float((d1 < d0) == (t.p > 0.5))

        clean_ok = judged(clean_refs[i])
        assert record["defended_clean_correct"] == clean_ok
        assert record["nonadaptive_correct"] == min(clean_ok, judged(transferred[i]))
        assert record["adaptive_correct"] == min(clean_ok, judged(adaptive[i]))
        assert record["adaptive_linf"] == pytest.approx(float((adaptive[i] - clean_refs[i]).abs().max()), abs=1e-7)
    assert result.defended_clean_accuracy == 1.0
    assert result.adaptive_accuracy < result.defended_clean_accuracy  # 16/255 breaks the tiny random model
    assert result.worst_case_accuracy == sum(min(r["nonadaptive_correct"], r["adaptive_correct"])
                                             for r in result.records) / 4


@pytest.mark.gpu
def test_attack_on_cuda_with_mixed_precision(vit_folder, fooled_data):
    metric = rpmetric.RobustDistance(str(vit_folder), device="cuda")
    cpu = evaluate_attack(rpmetric.RobustDistance(str(vit_folder), device="cpu"), fooled_data, eps=0.0, steps=2,
                          progress=False)
    result = evaluate_attack(metric, fooled_data, eps=0.0, steps=2, progress=False)
    assert result.clean_accuracy == cpu.clean_accuracy == result.robust_accuracy


# -- command-line options ----------------------------------------------------------------------
@pytest.fixture()
def parser():
    from rpmetric.counterattack import add_counterattack_options

    p = argparse.ArgumentParser()
    add_attack_options(p)
    add_counterattack_options(p)  # as `rpmetric eval` has them: --eot-samples needs --counterattack
    return p


@pytest.mark.parametrize("argv, expected", [
    ([], None),
    (["--attack", "linf"], {"norm": "linf", "eps": 4 / 255, "steps": 100, "restarts": 1, "seed": 0,
                            "eot_samples": 4, "n_samples": None}),
    (["--attack", "linf", "--eps", "8"], {"eps": 8 / 255}),  # 1/255 units for linf
    (["--attack", "l2", "--eps", "0.5"], {"norm": "l2", "eps": 0.5}),  # absolute for l2
    (["--attack", "l2"], {"eps": 3.0}),
    (["--attack", "linf", "--steps", "10", "--restarts", "2", "--n-samples", "50", "--seed", "4",
      "--eot-samples", "8", "--counterattack"], {"steps": 10, "restarts": 2, "n_samples": 50, "seed": 4, "eot_samples": 8}),
])
def test_attack_options(parser, argv, expected):
    config = attack_config_from_args(parser.parse_args(argv))
    if expected is None:
        assert config is None
    else:
        assert {k: config[k] for k in expected} == expected


@pytest.mark.parametrize("argv, match", [
    (["--eps", "8"], r"--eps only apply to a robust evaluation; add --attack linf or --attack l2"),
    (["--steps", "5", "--seed", "1"], r"--steps, --seed only apply"),
    (["--attack", "linf", "--steps", "0"], r"`steps` must be at least 1"),
    # --eps is checked as typed, in its own units: 1/255 for linf, absolute for l2.
    (["--attack", "linf", "--eps", "-1"], r"^Argument `--eps` must be in \[0, 255\] for --attack linf, in units of "
                                          r"1/255 \(4 means 4/255\), but got -1\.$"),
    (["--attack", "linf", "--eps", "300"], r"`--eps` must be in \[0, 255\] .* but got 300\.$"),
    (["--attack", "l2", "--eps", "-0.5"], r"^Argument `--eps` must be a finite number >= 0 for --attack l2 "
                                          r"\(absolute, e\.g\. 3\), but got -0\.5\.$"),
    (["--attack", "l2", "--eps", "inf"], r"`--eps` must be a finite number >= 0 .* but got inf"),
    (["--attack", "linf", "--eot-samples", "2"], r"--eot-samples only applies to the adaptive attack on a "
                                                 r"counterattack; add --counterattack or drop --eot-samples"),
    (["--attack", "l2", "--n-samples", "0"], r"`--n-samples` must be at least 1, but got 0"),
])
def test_attack_option_errors(parser, argv, match):
    with pytest.raises(ValueError, match=match):
        attack_config_from_args(parser.parse_args(argv))


def test_eot_samples_needs_a_counterattack_on_the_command_line(fresh_nights, vit_folder, capsys):
    from rpmetric.cli import main

    base = ["eval", "nights", str(fresh_nights), "--model", str(vit_folder), "--workers", "0", "--attack", "linf",
            "--steps", "1", "--eot-samples", "2", "--log", str(fresh_nights / "run.jsonl")]
    assert main(base) == 2
    assert "--eot-samples only applies to the adaptive attack on a counterattack" in capsys.readouterr().err
    # Rejected before any work: no run log was started that would block a later run.
    assert not list(fresh_nights.glob("run.jsonl*"))


def test_attack_option_help_states_the_eps_units(parser, capsys):
    with pytest.raises(SystemExit):
        parser.parse_args(["--attack", "l1"])
    assert "invalid choice" in capsys.readouterr().err
    text = parser.format_help()
    assert "units of 1/255 for linf" in text and "absolute for" in text


def test_attack_groups_per_split_with_the_nights_total(tiny_metric, nights, tmp_path):
    from rpmetric.attacks import attack_groups

    groups = {g: read_nights(nights, g) for g in ("test_imagenet", "test_no_imagenet")}
    options = attack_config_from_args(_parsed(["--attack", "linf", "--eps", "0", "--steps", "2"]))
    log = tmp_path / "eval.log.jsonl"
    results = attack_groups(tiny_metric, groups, options, batch_size=3, log=log, progress=False)
    # eps = 0, so robust = clean; hand-worked: 3.5 / 4 and 1 / 2, total (3.5 + 1) / 6.
    assert [results[g]["robust_accuracy"] for g in groups] == [3.5 / 4, 0.5]
    assert results["total"]["n"] == 6 and results["total"]["clean_accuracy"] == pytest.approx(4.5 / 6)
    assert results["total"]["attack"]["eps"] == 0.0
    assert (tmp_path / "eval.log.jsonl.attack-test_imagenet.jsonl").exists()
    again = attack_groups(tiny_metric, groups, options, batch_size=3, log=log, resume=True, progress=False)
    assert again == results
    partial = attack_groups(tiny_metric, groups, {**options, "n_samples": 1}, batch_size=3, progress=False)
    # a total over what was attacked, weighted by the attacked counts: ti-left-0 right, tn-left-1 wrong
    assert partial["total"]["n"] == 2 and partial["total"]["clean_accuracy"] == pytest.approx(1 / 2)


def test_attack_table_cells():
    from rpmetric.attacks import attack_columns, attack_headers

    summary = {"n": 8, "clean_accuracy": 0.875, "robust_accuracy": 0.125,
               "counterattack": {"clean_accuracy": 0.75, "nonadaptive_accuracy": 0.5, "adaptive_accuracy": 0.0}}
    assert attack_columns(summary, defended=False) == ["8", "87.50", "12.50"]
    assert attack_columns(summary, defended=True) == ["8", "87.50", "12.50", "75.00", "50.00", "0.00"]
    assert attack_columns(None, defended=True) == [""] * 6 == [""] * len(attack_headers(True))


def _parsed(argv):
    p = argparse.ArgumentParser()
    add_attack_options(p)
    return p.parse_args(argv)


def test_attack_sees_the_reference_through_the_chosen_preprocess(vit_folder, tmp_path, monkeypatch):
    # eval --attack --preprocess paper: APGD attacks the reference as fra31's Resize(size) (bilinear) gives it.
    import numpy as np
    from PIL import Image
    from torchvision import transforms as PT

    from rpmetric.evaluation import load_distances
    from tinymodels import IMAGE_SIZE

    datagen.write_bapps_2afc(tmp_path, "cnn", [("left", 0.2), ("right", 0.8)])
    attacked = []

    def no_attack(logits, x, y, config, **kwargs):  # pyautoattack is optional: keep the clean images
        attacked.append(x.clone())
        return run_apgd_result(x.clone(), torch.zeros(len(x), dtype=bool))

    monkeypatch.setattr(evaluate_module, "run_apgd", no_attack)
    metric = load_distances(str(vit_folder), device="cpu", preprocess="paper").metric
    result = evaluate_attack(metric, read_bapps_2afc(tmp_path, "cnn"), steps=1, progress=False)
    ref = Image.open(tmp_path / "2afc" / "val" / "cnn" / "ref" / "000000.png")
    peer = torch.tensor(np.array(PT.Resize(IMAGE_SIZE)(ref))).permute(2, 0, 1).double()
    assert (attacked[0][0].double() * 255 - peer).abs().max() <= 2 + 1e-3
    assert result.config["preprocessing"]["interpolation"] == "bilinear"
    own = load_distances(str(vit_folder), device="cpu").metric  # the model's own: bicubic
    assert evaluate_module._run_config(own, AttackConfig(), None, 1, ["a"])["preprocessing"]["interpolation"] == \
        "bicubic"
