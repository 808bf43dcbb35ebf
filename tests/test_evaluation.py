"""The evaluation engine, the run log and the distributed helpers, on datasets with known answers."""

import json

import pytest

import datagen
import rpmetric
from rpmetric.distributed import gather_records, init_from_env, shard
from rpmetric.evaluation import EncoderDistances, PixelL2, evaluate, load_distances, load_groups, nights_total
from rpmetric.runlog import RunLog

SPLITS = ["train", "val", "test"]


@pytest.fixture()
def encoder_distances(tiny_metric):
    return EncoderDistances(tiny_metric)


def _check_known(result, expected):
    for group, value in result.results.items():
        assert value["n"] == expected[group]["n"], group
        assert value["score"] == pytest.approx(expected[group]["score"], abs=1e-12), group


@pytest.mark.parametrize("model", ["l2", "tiny"])
def test_nights_known_scores(nights_known, model, encoder_distances):
    root, expected = nights_known
    distances = PixelL2() if model == "l2" else encoder_distances
    task, groups, _ = load_groups("nights", root, SPLITS)
    assert list(groups) == ["train", "val", "test_imagenet", "test_no_imagenet"]
    result = evaluate(distances, task, groups, batch_size=3)
    assert result.complete and result.done == result.total == 9 and not result.skipped
    _check_known(result, expected)
    assert nights_total(result.results)["score"] == pytest.approx(expected["total"]["score"])
    by_id = {r["id"]: r for r in result.records}
    assert by_id["ti-left-0"]["d0"] == 0.0 < by_id["ti-left-0"]["d1"]
    assert by_id["ti-tie"]["d0"] == by_id["ti-tie"]["d1"] > 0


def test_each_image_is_embedded_once(nights_known, vit_folder):
    root, _ = nights_known
    metric = rpmetric.RobustDistance(str(vit_folder), device="cpu")
    seen = []
    metric.encoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    task, groups, _ = load_groups("nights", root, ["test"])
    evaluate(EncoderDistances(metric), task, groups, batch_size=4)
    # 6 triplets in batches of 4 and 2, one pass each. Every triplet of datagen's is two distinct
    # images (the third is a copy of one of them), and no two triplets share an image.
    assert seen == [8, 4]


@pytest.mark.gpu
def test_mixed_precision_on_gpu_agrees_with_float32(nights_known, vit_folder):
    root, expected = nights_known
    task, groups, _ = load_groups("nights", root, SPLITS)
    gpu = EncoderDistances(rpmetric.RobustDistance(str(vit_folder), device="cuda"))
    assert gpu.amp and gpu.describe()["precision"] == "float16-autocast"
    half = evaluate(gpu, task, groups, batch_size=3)
    full = evaluate(EncoderDistances(rpmetric.RobustDistance(str(vit_folder), device="cpu")), task, groups, batch_size=3)
    _check_known(half, expected)
    for a, b in zip(half.records, full.records):
        assert a["d1"] == pytest.approx(b["d1"], abs=2e-3)


def test_bapps_known_scores(tmp_path, encoder_distances):
    for category, (entries, _) in datagen.BAPPS_2AFC_KNOWN.items():
        datagen.write_bapps_2afc(tmp_path, category, entries)
    task, groups, _ = load_groups("bapps", tmp_path, list(datagen.BAPPS_2AFC_KNOWN))
    for distances in (PixelL2(), encoder_distances):
        result = evaluate(distances, task, groups, batch_size=2)
        for category, (entries, expected) in datagen.BAPPS_2AFC_KNOWN.items():
            assert result.results[category] == {"n": len(entries), "score": pytest.approx(expected, abs=1e-6)}


def test_jnd_known_map_with_l2(tmp_path):
    entries, expected = datagen.JND_KNOWN
    datagen.write_bapps_jnd(tmp_path, "traditional", entries)
    datagen.write_bapps_jnd(tmp_path, "cnn", [(0.0, 1.0), (0.25, 0.0)])
    task, groups, _ = load_groups("jnd", tmp_path, ["traditional", "cnn"])
    result = evaluate(PixelL2(), task, groups, batch_size=2)
    assert result.results["traditional"] == {"n": 5, "score": pytest.approx(expected, abs=1e-6)}
    assert result.results["cnn"] == {"n": 2, "score": 1.0}
    d = [r["d"] for r in result.records if r["group"] == "traditional"]
    assert d[1] == 0.0 and sorted(d) == [d[1], d[3], d[4], d[0], d[2]]  # grows with the amplitude


def test_jnd_known_map_with_a_model(tmp_path, encoder_distances):
    # The identical pair (amplitude 0) ranks first, whatever the encoder; the other two share their
    # `same`, so their order does not matter. Sorted: same = 0.6, 0.2, 0.2, sum 1.0
    #   TP = 0.6, 0.8, 1.0   FP = 0.4, 1.2, 2.0   precision = 0.6, 0.4, 1/3 (already monotone)
    #   AP = 0.6 * 0.6 + 0.2 * 0.4 + 0.2 * 1/3 = 38/75 (in input order, unsorted, it would be 29/75)
    datagen.write_bapps_jnd(tmp_path, "cnn", [(0.25, 0.2), (0.0, 0.6), (0.1, 0.2)])
    task, groups, _ = load_groups("jnd", tmp_path, ["cnn"])
    result = evaluate(encoder_distances, task, groups, batch_size=2)
    d = [r["d"] for r in result.records]
    assert d[1] == 0.0 < min(d[0], d[2])
    assert result.results["cnn"] == {"n": 3, "score": pytest.approx(38 / 75, abs=1e-6)}


def test_resume_after_max_batches_is_exact(nights_known, encoder_distances, tmp_path):
    root, _ = nights_known
    task, groups, _ = load_groups("nights", root, SPLITS)
    full = evaluate(encoder_distances, task, groups, batch_size=2)
    log = tmp_path / "run.jsonl"
    part = evaluate(encoder_distances, task, groups, batch_size=2, log=log, max_batches=2)
    assert not part.complete and part.done == 4 and part.results == {}
    assert len(log.read_text().splitlines()) == 1 + 4  # config + 2 batches of 2
    resumed = evaluate(encoder_distances, task, groups, batch_size=2, log=log, resume=True)
    assert resumed.complete and resumed.records == full.records and resumed.results == full.results


def test_resume_after_an_interruption_is_exact(nights_known, tmp_path):
    root, expected = nights_known
    task, groups, _ = load_groups("nights", root, SPLITS)

    class Interrupted(PixelL2):
        calls = 0

        def triplet_distances(self, *images):
            Interrupted.calls += 1
            if Interrupted.calls == 3:
                raise KeyboardInterrupt
            return super().triplet_distances(*images)

    log = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(Interrupted(), task, groups, batch_size=2, log=log)
    assert len(log.read_text().splitlines()) == 1 + 4
    resumed = evaluate(PixelL2(), task, groups, batch_size=2, log=log, resume=True)
    assert resumed.records == evaluate(PixelL2(), task, groups, batch_size=2).records
    _check_known(resumed, expected)


def test_resume_rejects_other_settings(nights_known, tmp_path):
    root, _ = nights_known
    task, groups, _ = load_groups("nights", root, ["val"])
    log = tmp_path / "run.jsonl"
    evaluate(PixelL2(), task, groups, batch_size=2, log=log)
    with pytest.raises(FileExistsError, match=r"run.jsonl already exists; pass `resume=True`"):
        evaluate(PixelL2(), task, groups, batch_size=2, log=log)
    with pytest.raises(ValueError, match=r"different configuration \(batch_size: log has 2, this run has 1\)"):
        evaluate(PixelL2(), task, groups, batch_size=1, log=log, resume=True)


def test_bad_image_raises_or_is_skipped(fresh_nights):
    task, groups, _ = load_groups("nights", fresh_nights, ["test"])
    tie = next(t for t in groups["test_imagenet"] if t.id == "ti-tie")
    tie.right.write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=rf"bad triplet test_imagenet/ti-tie: {tie.right} cannot be read as an image"
                                         r".*pass `skip_bad=True`"):
        evaluate(PixelL2(), task, groups, batch_size=4)
    result = evaluate(PixelL2(), task, groups, batch_size=4, skip_bad=True)
    assert [(s["group"], s["id"]) for s in result.skipped] == [("test_imagenet", "ti-tie")]
    # test_imagenet without its tie: (1 + 1 + 0.75) / 3
    assert result.results["test_imagenet"] == {"n": 3, "score": pytest.approx(2.75 / 3)}
    assert result.results["test_no_imagenet"] == {"n": 2, "score": 0.375}  # untouched (datagen.nights_known)


def test_bad_triplet_stays_skipped_on_resume(fresh_nights, tmp_path):
    task, groups, _ = load_groups("nights", fresh_nights, ["val"])
    groups["val"][0].ref.unlink()
    log = tmp_path / "run.jsonl"
    evaluate(PixelL2(), task, groups, batch_size=1, log=log, skip_bad=True)
    with pytest.raises(ValueError, match=r"bad triplet val/val-right-0: Image file not found"):
        evaluate(PixelL2(), task, groups, batch_size=1, log=log, resume=True)


@pytest.mark.parametrize("batch_size", [1, 2])  # 1: each field stacks into a tensor, mismatch and all
def test_l2_needs_equal_sizes_within_a_triplet(fresh_nights, batch_size):
    task, groups, _ = load_groups("nights", fresh_nights, ["val"])
    datagen.save_png(groups["val"][1].left, datagen.pattern(0, (20, 24)))
    with pytest.raises(ValueError, match=r"val/val-tie: images differ in size \(ref \(32, 32\), left \(20, 24\), "
                                         r"right \(32, 32\)\); the l2 baseline"):
        evaluate(PixelL2(), task, groups, batch_size=batch_size)
    result = evaluate(PixelL2(), task, groups, batch_size=batch_size, skip_bad=True)
    assert result.results["val"] == {"n": 1, "score": 0.0} and result.skipped[0]["id"] == "val-tie"


def test_reader_skips_are_reported(tmp_path):
    datagen.write_bapps_2afc(tmp_path, "cnn", [("left", 0.2), ("right", 0.6)])
    (tmp_path / "2afc/val/cnn/p1/000000.png").unlink()
    task, groups, skipped = load_groups("bapps", tmp_path, ["cnn"], skip_bad=True)
    result = evaluate(PixelL2(), task, groups, skipped=skipped)
    assert result.results["cnn"] == {"n": 1, "score": pytest.approx(0.6)}
    assert [(s["group"], s["id"]) for s in result.skipped] == [("cnn", "000000")]


def test_evaluate_argument_errors(nights_known, tiny_metric):
    root, _ = nights_known
    task, groups, _ = load_groups("nights", root, ["val"])
    with pytest.raises(ValueError, match=r"`task` must be one of \('2afc', 'jnd'.*\), but got 'abx'"):
        evaluate(PixelL2(), "abx", groups)
    with pytest.raises(ValueError, match=r"`batch_size` must be at least 1, but got 0"):
        evaluate(PixelL2(), task, groups, batch_size=0)
    with pytest.raises(ValueError, match=r"Duplicate triplet id 'val/val-tie'"):
        evaluate(PixelL2(), task, {"val": groups["val"] + groups["val"][1:]})
    with pytest.raises(ValueError, match=r"Group 'val' has no triplets"):
        evaluate(PixelL2(), task, {"val": []})
    with pytest.raises(ValueError, match=r"`dataset` must be one of \('nights', 'bapps', 'jnd'\), but got 'tid'"):
        load_groups("tid", root, ["val"])
    with pytest.raises(ValueError, match=r"amp=True\) needs a CUDA device"):
        EncoderDistances(tiny_metric, amp=True)  # tiny_metric is on the CPU
    assert isinstance(load_distances("l2"), PixelL2)


# -- run log ------------------------------------------------------------------------------------
def test_runlog_roundtrip_and_torn_line(tmp_path):
    path = tmp_path / "sub" / "log.jsonl"
    log = RunLog(path, {"model": "l2", "size": (1, 2)}, resume=False)
    log.append([{"key": "a", "d": 0.1 + 0.2}, {"key": "b", "d": 1e-300}])
    with open(path, "a") as f:
        f.write('{"key": "c", "d"')  # the process died mid-line
    again = RunLog(path, {"model": "l2", "size": [1, 2]}, resume=True)
    assert again.done == {"a": {"key": "a", "d": 0.1 + 0.2}, "b": {"key": "b", "d": 1e-300}}  # floats exact
    again.append([{"key": "c", "d": 0.5}])
    assert json.loads(path.read_text().splitlines()[-1]) == {"key": "c", "d": 0.5}
    assert set(RunLog(path, {"model": "l2", "size": [1, 2]}, resume=True).done) == {"a", "b", "c"}


def test_runlog_errors(tmp_path):
    path = tmp_path / "log.jsonl"
    log = RunLog(path, {"model": "l2", "batch_size": 4}, resume=False)
    with pytest.raises(ValueError, match=r"needs a 'key' field"):
        log.append([{"d": 1.0}])
    with pytest.raises(FileExistsError, match=r"pass `resume=True` to continue that run, or delete the file"):
        RunLog(path, {"model": "l2"}, resume=False)
    with pytest.raises(ValueError, match=r"\(batch_size: log has 4, this run has '<missing>'; model: log has 'l2', "
                                         r"this run has 'x'\)"):
        RunLog(path, {"model": "x"}, resume=True)
    for line in ('{"d": 1.0}', '["a"]', "garbage"):  # no key, not a record, not JSON
        path.write_text(path.read_text().splitlines()[0] + "\n" + line + "\n")
        with pytest.raises(ValueError, match=r"log.jsonl, line 2 is corrupt \(not a JSON record with a 'key'\); "
                                             r"delete the log"):
            RunLog(path, {"model": "l2", "batch_size": 4}, resume=True)
    other = tmp_path / "other.jsonl"
    other.write_text('{"not": "a log"}\n')
    with pytest.raises(ValueError, match=r"not a rpmetric run log"):
        RunLog(other, {}, resume=True)


# -- distributed helpers (single process) ------------------------------------------------------
def test_distributed_helpers_in_one_process():
    assert init_from_env() == (0, 1)
    assert shard(list(range(5)), 0, 2) == [0, 2, 4] and shard(list(range(5)), 1, 2) == [1, 3]
    assert gather_records([{"key": "a"}]) == [{"key": "a"}]
    with pytest.raises(ValueError, match=r"`rank` must be in \[0, 2\), but got 2"):
        shard([1], 2, 2)


def test_running_score_is_recomputed_at_most_once_per_interval():
    # Scoring all finished records after every batch would be quadratic over a long run.
    import dataclasses
    import io

    from tqdm import tqdm

    from rpmetric.evaluation import TASKS, _RunningScore

    calls = []
    spec = dataclasses.replace(TASKS["2afc"], score=lambda records: calls.append(len(records)) or 0.5)
    bar = tqdm(total=10, file=io.StringIO())
    running = _RunningScore(bar, spec, interval=3600)
    for n in range(1, 6):
        running.update({str(i): {"d0": 0.0} for i in range(n)}, final=n == 5)
    assert calls == [1, 5]  # the first batch, then only the final one
    assert bar.postfix == "2AFC 50.00%"


def test_l2_lab_is_lpips_lab_l2_on_closed_form_colours():
    # lpips.L2(colorspace='Lab') = 0.5 * mean over L, a, b and pixels of ((Lab0 - Lab1) / 100)^2.
    # White vs black: L differs by 100 and a, b by about 0 (white's are ~0.002-0.005), so 0.5 * (1 + 0 + 0) / 3.
    import torch

    from rpmetric.evaluation import PixelL2, load_distances

    white, black = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8), torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    lab = load_distances("l2-lab")
    assert isinstance(lab, PixelL2) and lab.name == "l2-lab" and lab.describe() == {"model": "l2-lab"}
    assert lab.pair_distances(white, black).item() == pytest.approx(1 / 6, abs=1e-6)
    # Pure red vs pure green (published Lab values): the differences are 34.49, 166.28 and 16.02.
    red, green = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    red[:, 0], green[:, 1] = 1.0, 1.0
    expected = 0.5 * ((34.4939 / 100) ** 2 + (166.2752 / 100) ** 2 + (15.9761 / 100) ** 2) / 3
    assert lab.pair_distances(red, green).item() == pytest.approx(expected, rel=1e-4)
    # RGB l2 of the same pair: mean of (1, 1, 0) over channels.
    assert load_distances("l2").pair_distances(red, green).item() == pytest.approx(2 / 3)
    # Images of different sizes across a batch (a list) give the same as one at a time.
    listed = lab.pair_distances([white[0], red[0]], [black[0], green[0]])
    assert listed.tolist() == pytest.approx([1 / 6, expected], rel=1e-4)


def test_pixel_l2_refuses_an_unknown_colorspace():
    from rpmetric.evaluation import PixelL2

    with pytest.raises(ValueError, match=r"`colorspace` must be one of \('rgb', 'lab'\), but got 'hsv'"):
        PixelL2("hsv")
