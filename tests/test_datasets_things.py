"""THINGS odd-one-out and triplet CSV files: the readers, the odd-one-out score (ties by hand), and
the engine's odd-one-out task on generated data whose answers are set by construction."""

import itertools
import math

import numpy as np
import pytest
import torch

import datagen
from rpmetric.attacks.oddoneout import OddOneOutLogits
from rpmetric.datasets import OddOneOut, read_things, read_triplets_csv
from rpmetric.evaluation import PixelL2, evaluate, load_file_groups
from rpmetric.scoring import binary_accuracy, odd_one_out_accuracy, odd_one_out_credits, twoafc_score


# -- the score ---------------------------------------------------------------------------------------
def _credit_by_hand(d12, d13, d23, odd):
    """The rule spelled out: the odd image of every pair at the smallest distance is a candidate."""
    pairs = {3: d12, 2: d13, 1: d23}  # odd image -> the distance of the pair without it
    least = min(pairs.values())
    candidates = [k for k, d in pairs.items() if d == least]
    return (odd in candidates) / len(candidates)


@pytest.mark.parametrize("d12, d13, d23, odd, credit", [
    (0.1, 0.5, 0.4, 3, 1.0),  # 1 and 2 closest: 3 is odd, as people said
    (0.1, 0.5, 0.4, 1, 0.0),
    (0.5, 0.1, 0.4, 2, 1.0),
    (0.5, 0.4, 0.1, 1, 1.0),
    (0.2, 0.2, 0.3, 3, 0.5),  # two candidates (3 and 2): half
    (0.2, 0.2, 0.3, 1, 0.0),
    (0.3, 0.3, 0.3, 2, 1 / 3),  # all tied: chance
    (0.0, 0.4, 0.0, 3, 0.5),
])
def test_odd_one_out_credit_by_hand(d12, d13, d23, odd, credit):
    assert odd_one_out_credits([d12], [d13], [d23], [odd])[0] == pytest.approx(credit)


def test_odd_one_out_credit_matches_the_rule_on_every_order_of_three_levels():
    levels = [0.1, 0.2, 0.3]
    rows = [(*d, odd) for d in itertools.product(levels, repeat=3) for odd in (1, 2, 3)]
    got = odd_one_out_credits(*zip(*rows))
    assert got.tolist() == pytest.approx([_credit_by_hand(*r) for r in rows])
    assert odd_one_out_accuracy(*zip(*rows)) == pytest.approx(np.mean([_credit_by_hand(*r) for r in rows]))


@pytest.mark.parametrize("odd, match", [([0], "positions 1, 2 or 3, but holds 0"), ([2.5], "but holds 2.5"),
                                        ([1, 2], "same number of elements")])
def test_odd_one_out_credit_errors(odd, match):
    with pytest.raises(ValueError, match=match):
        odd_one_out_credits([0.1], [0.2], [0.3], odd)


def test_odd_one_out_logits_pick_the_image_outside_the_most_similar_pair():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((5, 3, 4))
    for position in range(3):
        x = torch.tensor(rng.standard_normal((5, 4)), dtype=torch.float32)
        logits = OddOneOutLogits(torch.nn.Flatten(), position, torch.tensor(e, dtype=torch.float32))(
            x.view(5, 4, 1, 1))
        full = e.copy()
        full[:, position] = x.numpy()
        unit = full / np.linalg.norm(full, axis=2, keepdims=True)
        cos = lambda i, j: np.sum(unit[:, i] * unit[:, j], axis=1)  # noqa: E731
        expected = np.stack([cos(1, 2), cos(0, 2), cos(0, 1)], axis=1)
        assert logits.detach().numpy() == pytest.approx(expected, abs=1e-5)
    assert OddOneOutLogits(torch.nn.Flatten(), 1, torch.zeros(5, 3, 4)).select(torch.tensor([0, 2])).fixed.shape[0] == 2


# -- the readers ---------------------------------------------------------------------------------
def test_read_things_keeps_file_order_and_the_third_as_odd(tmp_path):
    root = datagen.write_things(tmp_path / "things", ["right", "wrong"])
    (root / "things_valset.txt").write_text("t1a t1b t1c\n\n  t2c\tt2a t2b  \n")  # a blank line, other spacing
    records = read_things(root)
    assert [r.id for r in records] == ["1", "3"]  # line numbers, the blank line counted
    assert [r.odd for r in records] == [3, 3]
    assert [p.name for p in (records[1].im1, records[1].im2, records[1].im3)] == ["t2c.png", "t2a.png", "t2b.png"]
    other = tmp_path / "elsewhere.txt"
    other.write_text("t2a t2b t2c\n")
    assert [r.im1.name for r in read_things(root, other)] == ["t2a.png"]


def test_read_things_accepts_jpegs(tmp_path):
    root = datagen.write_things(tmp_path / "things", ["right"], suffix=".jpg")
    assert read_things(root)[0].im3.suffix == ".jpg"


@pytest.mark.parametrize("break_it, message", [
    (lambda root: (root / "t2b.png").unlink(), r"line 2: image file not found: .*t2b\.png \(image id 't2b'\)"),
    (lambda root: _line(root, 2, "t2a t2b"), r"line 2: a line must hold three image ids, but holds 2"),
    (lambda root: _line(root, 2, "t2a t2b t2c t1a"), r"line 2: a line must hold three image ids, but holds 4"),
    (lambda root: _line(root, 2, "t2a t2b t2a"), r"line 2: the image id 't2a' occurs twice in one triplet"),
    (lambda root: (root / "t2c.jpg").write_bytes((root / "t2c.png").read_bytes()),
     r"line 2: the image id 't2c' has 2 files \(t2c\.jpg, t2c\.png\)"),
])
def test_read_things_bad_lines_name_the_file_and_line(tmp_path, break_it, message):
    root = datagen.write_things(tmp_path / "things", ["right", "wrong", "right"])
    break_it(root)
    with pytest.raises((ValueError, FileNotFoundError), match=r"things_valset\.txt, " + message):
        read_things(root)
    skipped = []
    assert [r.id for r in read_things(root, skipped=skipped)] == ["1", "3"]
    assert len(skipped) == 1 and skipped[0].id == "2" and "things_valset.txt, line 2" in skipped[0].reason


def test_read_things_refuses_an_image_linked_from_outside(tmp_path):
    root = datagen.write_things(tmp_path / "things", ["right", "right"])
    outside = datagen.save_png(tmp_path / "secret.png", datagen.pattern(0))
    (root / "t2a.png").unlink()
    (root / "t2a.png").symlink_to(outside)
    with pytest.raises(ValueError, match=r"line 2: .*t2a\.png leads outside the image folder"):
        read_things(root)


def _line(root, number, text):
    lines = (root / "things_valset.txt").read_text().splitlines()
    lines[number - 1] = text
    (root / "things_valset.txt").write_text("\n".join(lines) + "\n")


def test_read_triplets_csv_paths_ids_and_targets(tmp_path):
    path = datagen.write_triplets_csv(tmp_path / "set" / "mine.csv", datagen.TRIPLETS_KNOWN[0])
    triplets = read_triplets_csv(path)
    assert [t.id for t in triplets] == ["2", "3", "4", "5"]  # line numbers
    assert [t.p for t in triplets] == [0.25, 0.9, 0.3, 1.0]
    assert triplets[0].left == tmp_path / "set" / "img" / "000_left.png"
    with_ids = datagen.write_triplets_csv(tmp_path / "ids" / "t.csv", [("left", 0.0)], ids=True)
    assert read_triplets_csv(with_ids)[0].id == "row-0"


def test_read_triplets_csv_short_row_is_bad(tmp_path):
    path = datagen.write_triplets_csv(tmp_path / "t.csv", [("left", 0.0), ("right", 1.0)])
    path.write_text(path.read_text().rstrip("\n") + "\nimg/000_ref.png,img/000_left.png\n")
    with pytest.raises(ValueError, match=r"t\.csv, line 4: the row has fewer fields \(2\) than the header \(4\)"):
        read_triplets_csv(path)


# -- the engine on generated data ------------------------------------------------------------------
def test_things_accuracy_by_hand_with_pixel_l2(tmp_path):
    kinds, expected = datagen.THINGS_KNOWN
    root = datagen.write_things(tmp_path / "things", kinds)
    task, groups, skipped = load_file_groups("things", root)
    assert task == "odd-one-out" and list(groups) == ["things_valset"] and skipped == {}
    result = evaluate(PixelL2(), task, groups, batch_size=2)
    assert result.results == {"things_valset": {"n": 5, "score": pytest.approx(expected)}}
    by_id = {r["id"]: r for r in result.records}
    assert by_id["1"]["d12"] == 0.0 < by_id["1"]["d13"] and by_id["2"]["d13"] == 0.0
    assert by_id["3"]["d12"] == by_id["3"]["d13"] == by_id["3"]["d23"] == 0.0
    assert by_id["4"]["d12"] == by_id["4"]["d13"] == 0.5 and by_id["4"]["d23"] == 1.0
    # DreamSim's rule (d12 <= d13 and d12 <= d23) counts both ties right: 4 of 5.
    dreamsim = np.mean([r["d12"] <= r["d13"] and r["d12"] <= r["d23"] for r in result.records])
    assert dreamsim == 0.8 and not math.isclose(expected, 0.8)


def test_things_accuracy_by_hand_with_the_tiny_model(tiny_metric, tmp_path):
    from rpmetric.evaluation import EncoderDistances

    kinds, expected = datagen.THINGS_KNOWN_ANY_METRIC
    root = datagen.write_things(tmp_path / "things", kinds, size=(40, 48))
    task, groups, _ = load_file_groups("things", root)
    result = evaluate(EncoderDistances(tiny_metric), task, groups, batch_size=3)
    assert result.results["things_valset"]["score"] == pytest.approx(expected)


def test_triplets_csv_2afc_and_binary_accuracy_by_hand(tmp_path):
    entries, score, accuracy = datagen.TRIPLETS_KNOWN
    path = datagen.write_triplets_csv(tmp_path / "mine.csv", entries)
    task, groups, _ = load_file_groups("triplets", path)
    assert task == "2afc" and list(groups) == ["mine"]
    result = evaluate(PixelL2(), task, groups)
    assert result.results["mine"]["score"] == pytest.approx(score)
    rows = result.records
    assert twoafc_score(*([r[k] for r in rows] for k in ("d0", "d1", "p"))) == pytest.approx(score)
    assert binary_accuracy(*([r[k] for r in rows] for k in ("d0", "d1", "p"))) == pytest.approx(accuracy)


def test_odd_one_out_records_are_fingerprinted_for_resume(tmp_path):
    root = datagen.write_things(tmp_path / "things", ["right", "wrong", "right"])
    _, groups, _ = load_file_groups("things", root)
    log = tmp_path / "run.jsonl"
    part = evaluate(PixelL2(), "odd-one-out", groups, batch_size=1, log=log, max_batches=2)
    assert not part.complete and part.done == 2
    full = evaluate(PixelL2(), "odd-one-out", groups, batch_size=1, log=log, resume=True)
    assert full.results["things_valset"]["score"] == pytest.approx(2 / 3)
    changed = {"things_valset": [OddOneOut(t.id, t.im1, t.im2, t.im3, 1) for t in groups["things_valset"]]}
    with pytest.raises(ValueError, match="records"):
        evaluate(PixelL2(), "odd-one-out", changed, batch_size=1, log=log, resume=True)


def test_the_attack_at_radius_zero_keeps_every_clean_judgement_ties_included(perturbed_metric, tmp_path,
                                                                            monkeypatch):
    """The backbone's output depends on the batch (tests/perturbed.py, here at 1e-3 so that it survives
    the similarities' float32 rounding): an image left unchanged must keep its clean judgement, and the
    three-way tie its 1/3, however it would embed again."""
    import perturbed
    from rpmetric.attacks.oddoneout import evaluate_odd_one_out_attack

    monkeypatch.setattr(perturbed, "SCALE", 1e-3)

    kinds, expected = datagen.THINGS_KNOWN_ANY_METRIC
    root = datagen.write_things(tmp_path / "things", kinds)
    result = evaluate_odd_one_out_attack(perturbed_metric, read_things(root), eps=0.0, steps=1, batch_size=4,
                                         progress=False)
    assert result.clean_accuracy == pytest.approx(expected)
    assert [r["robust_correct"] for r in result.records] == [r["clean_correct"] for r in result.records]
    assert [r["clean_correct"] for r in result.records] == pytest.approx([1, 0, 1 / 3, 1])
    assert all(r["fooled_by"] is None and r["linf"] == 0 for r in result.records)
