"""``rpmetric eval`` end to end: tables, JSON, per-sample CSV, errors, --resume, --skip-bad, torchrun."""

import csv
import json

import pytest

import datagen
from rpmetric.cli import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run logs land in the working directory


def _table(stdout):
    """``{row label: (n, percent)}`` from the printed table."""
    lines = stdout.strip().splitlines()
    return {cells[0]: (int(cells[1]), float(cells[2])) for cells in (line.split() for line in lines[2:])}


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_nights_with_the_tiny_model(nights_known, vit_folder, tmp_path, capsys):
    root, expected = nights_known
    out, per_sample = tmp_path / "res" / "nights.json", tmp_path / "samples.csv"
    code = main(["eval", "nights", str(root), "--model", str(vit_folder), "--split", "val", "test",
                 "--batch-size", "4", "--workers", "1", "--out", str(out), "--per-sample", str(per_sample)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines()[0].split() == ["split", "n", "2AFC", "(%)"]
    assert _table(captured.out) == {"val": (2, 25.0), "test_imagenet": (4, 81.25), "test_no_imagenet": (2, 37.5),
                                    "total": (6, 66.67)}
    assert "2AFC" in captured.err  # the progress bar shows the running score
    summary = json.loads(out.read_text())
    assert summary["model"] == summary["spec"]["name"] and summary["model_argument"] == str(vit_folder)
    assert summary["dataset"] == "nights" and summary["selection"] == {"splits": ["val", "test"]}
    for group in ("val", "test_imagenet", "test_no_imagenet", "total"):
        assert summary["results"][group] == {"n": expected[group]["n"],
                                             "score": pytest.approx(expected[group]["score"])}
    assert summary["spec"]["preprocessing"]["image_size"] == 32
    assert summary["version"] and summary["timestamp"].startswith("20") and summary["skipped"] == {"n": 0, "items": []}
    rows = _csv(per_sample)
    assert list(rows[0]) == ["group", "id", "d0", "d1", "p"] and len(rows) == 8
    by_id = {r["id"]: r for r in rows}
    assert float(by_id["tn-left-q"]["d0"]) == 0.0 < float(by_id["tn-left-q"]["d1"])
    assert by_id["tn-left-q"]["p"] == "0.25" and by_id["val-tie"]["d0"] == by_id["val-tie"]["d1"]
    assert not (out.parent / "nights.json.log.jsonl").exists()  # the default log goes once complete


@pytest.mark.parametrize("model", ["l2", "l2-lab"])
def test_bapps_with_l2(tmp_path, capsys, model):
    # The fixtures' triplets are decided by pixel distance, in RGB and in Lab alike.
    for category, (entries, _) in datagen.BAPPS_2AFC_KNOWN.items():
        datagen.write_bapps_2afc(tmp_path / "bapps", category, entries)
    out = tmp_path / "bapps.json"
    assert main(["eval", "bapps", str(tmp_path / "bapps"), "--model", model, "--categories", "traditional", "cnn",
                 "--workers", "0", "--out", str(out)]) == 0
    table = _table(capsys.readouterr().out)
    assert table == {"traditional": (3, pytest.approx(63.33)), "cnn": (2, 80.0)}
    summary = json.loads(out.read_text())
    assert summary["model"] == model and summary["spec"] is None
    assert summary["selection"] == {"categories": ["traditional", "cnn"], "subset": "val"}
    assert summary["results"]["traditional"]["score"] == pytest.approx(1.9 / 3, abs=1e-6)


def test_jnd_with_l2(tmp_path, capsys):
    entries, expected = datagen.JND_KNOWN
    datagen.write_bapps_jnd(tmp_path / "bapps", "cnn", entries)
    per_sample = tmp_path / "jnd.csv"
    assert main(["eval", "jnd", str(tmp_path / "bapps"), "--model", "l2", "--categories", "cnn", "--workers", "0",
                 "--per-sample", str(per_sample)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["category", "n", "mAP", "(%)"]
    assert _table(out) == {"cnn": (5, round(100 * expected, 2))}
    rows = _csv(per_sample)
    assert list(rows[0]) == ["group", "id", "d", "same"] and float(rows[1]["d"]) == 0.0


def _run_bad(args, capsys):
    code = main(["eval", *map(str, args), "--model", "l2", "--workers", "0"])
    return code, capsys.readouterr().err


def test_error_missing_image(fresh_nights, capsys):
    (fresh_nights / "ref" / "002" / "009.png").unlink()  # val-tie's reference
    code, err = _run_bad(["nights", fresh_nights, "--split", "val"], capsys)
    assert code == 2
    assert "rpmetric eval: error:" in err and "(id 'val-tie'): image file not found:" in err and "009.png" in err
    assert "--skip-bad" in err


def test_error_unreadable_image(fresh_nights, capsys):
    (fresh_nights / "distort" / "002" / "008_1.png").write_bytes(b"GIF89a nonsense")
    code, err = _run_bad(["nights", fresh_nights, "--split", "val"], capsys)
    assert code == 2 and "bad triplet val/val-right-0:" in err and "008_1.png cannot be read as an image" in err


def test_error_csv_without_columns(fresh_nights, capsys):
    text = (fresh_nights / "data.csv").read_text().replace("right_vote", "rightvote", 1)
    (fresh_nights / "data.csv").write_text(text)
    code, err = _run_bad(["nights", fresh_nights], capsys)
    assert code == 2 and "data.csv lacks the column(s) right_vote" in err


def test_error_judge_count(tmp_path, capsys):
    folder = datagen.write_bapps_2afc(tmp_path, "color", [("left", 0.2), ("tie", 0.4)])
    (folder / "judge" / "000000.npy").unlink()
    code, err = _run_bad(["bapps", tmp_path, "--categories", "color"], capsys)
    assert code == 2 and "judge count does not match the images (ref/ 2, p0/ 2, p1/ 2, judge/ 1 files)" in err


def test_error_empty_split(fresh_nights, capsys):
    lines = (fresh_nights / "data.csv").read_text().splitlines()
    (fresh_nights / "data.csv").write_text("\n".join(line for line in lines if ",train," not in line) + "\n")
    code, err = _run_bad(["nights", fresh_nights, "--split", "train"], capsys)
    assert code == 2 and "NIGHTS split 'train' is empty" in err


@pytest.mark.parametrize("option, value, low", [("--batch-size", "0", 1), ("--workers", "-1", 0),
                                                ("--max-batches", "0", 1)])
def test_error_option_below_its_minimum(tmp_path, option, value, low, capsys):
    with pytest.raises(SystemExit) as exit_info:  # refused by argparse, before any work
        main(["eval", "nights", str(tmp_path), option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: must be at least {low}, but got {value}" in capsys.readouterr().err


def test_error_bad_options(fresh_nights, capsys):
    code, err = _run_bad(["nights", fresh_nights.parent / "missing"], capsys)
    assert code == 2 and "Dataset folder not found" in err
    with pytest.raises(SystemExit):
        main(["eval", "nights", str(fresh_nights), "--split", "testing"])
    assert "invalid choice: 'testing'" in capsys.readouterr().err


def test_skip_bad_reports_and_goes_on(fresh_nights, tmp_path, capsys):
    (fresh_nights / "distort" / "002" / "008_1.png").write_bytes(b"broken")  # val-right-0: unreadable
    (fresh_nights / "ref" / "002" / "009.png").unlink()  # val-tie: missing
    lines = (fresh_nights / "data.csv").read_text().splitlines()
    extra = lines[-1].replace("train-left", "train-extra").replace("/011", "/099")  # a row without images
    (fresh_nights / "data.csv").write_text("\n".join(lines + [extra]) + "\n")
    out = tmp_path / "r.json"
    code, err = _run_bad(["nights", fresh_nights, "--split", "train", "val", "--skip-bad", "--out", out], capsys)
    assert code == 2 and "no triplets left after skipping" in err  # all of val was bad
    code, err = _run_bad(["nights", fresh_nights, "--split", "train", "test", "--skip-bad"], capsys)
    assert code == 0 and "skipped 1 bad triplet(s):" in err and "train/train-extra:" in err
    (fresh_nights / "distort" / "000" / "002_0.png").unlink()  # tn-left-1, row 2
    out = tmp_path / "test.json"
    code, err = _run_bad(["nights", fresh_nights, "--split", "test", "--skip-bad", "--out", out], capsys)
    summary = json.loads(out.read_text())
    assert code == 0 and summary["skipped"]["n"] == 1 and summary["skipped"]["items"][0]["id"] == "tn-left-1"
    assert summary["results"]["test_no_imagenet"] == {"n": 1, "score": 0.75}  # only tn-left-q is left
    assert "test_no_imagenet/tn-left-1:" in err


def test_resume_gives_the_uninterrupted_result(nights_known, vit_folder, tmp_path, capsys):
    root, _ = nights_known
    common = ["eval", "nights", str(root), "--model", str(vit_folder), "--split", "train", "val", "test",
              "--batch-size", "2", "--workers", "0"]
    assert main(common + ["--out", str(tmp_path / "full.json"), "--per-sample", str(tmp_path / "full.csv")]) == 0
    out, log = tmp_path / "part.json", tmp_path / "part.json.log.jsonl"
    assert main(common + ["--out", str(out), "--max-batches", "2"]) == 3
    err = capsys.readouterr().err
    assert "4 of 9 done" in err and "--resume" in err and log.exists() and not out.exists()
    assert main(common + ["--out", str(out)]) == 2
    assert "already exists; pass --resume" in capsys.readouterr().err
    assert main(common + ["--out", str(out), "--batch-size", "3", "--resume"]) == 2
    assert "batch_size: log has 2, this run has 3" in capsys.readouterr().err
    assert main(common + ["--out", str(out), "--resume", "--per-sample", str(tmp_path / "part.csv")]) == 0
    assert json.loads(out.read_text())["results"] == json.loads((tmp_path / "full.json").read_text())["results"]
    assert _csv(tmp_path / "part.csv") == _csv(tmp_path / "full.csv")  # bit-identical distances
    assert not log.exists()


def test_explicit_log_is_kept(fresh_nights, tmp_path, capsys):
    log = tmp_path / "keep.jsonl"
    assert main(["eval", "nights", str(fresh_nights), "--model", "l2", "--workers", "0", "--log", str(log)]) == 0
    assert len(log.read_text().splitlines()) == 1 + 6


def test_attack_columns_and_json(nights_known, vit_folder, tmp_path, capsys):
    root, _ = nights_known
    out = tmp_path / "robust.json"
    assert main(["eval", "nights", str(root), "--model", str(vit_folder), "--split", "test_no_imagenet",
                 "--workers", "0", "--attack", "linf", "--steps", "2", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "clean acc (%)" in lines[0] and "robust acc (%)" in lines[0]
    # binary accuracy by hand: tn-left-1 (p=1: people chose right, the metric left) wrong, tn-left-q right
    assert lines[2].split()[:5] == ["test_no_imagenet", "2", "37.50", "2", "50.00"]
    attack = json.loads(out.read_text())["attack"]["test_no_imagenet"]
    assert attack["n"] == 2 and attack["clean_accuracy"] == 0.5 and attack["attack"]["steps"] == 2
    assert 0.0 <= attack["robust_accuracy"] <= 0.5


def test_counterattack_in_the_clean_evaluation(nights_known, vit_folder, tmp_path, capsys):
    root, expected = nights_known
    log = tmp_path / "ca.jsonl"
    assert main(["eval", "nights", str(root), "--model", str(vit_folder), "--split", "val", "--workers", "0",
                 "--counterattack", "--tau-threshold", "0.05", "--log", str(log)]) == 0
    assert _table(capsys.readouterr().out) == {"val": (2, 100 * expected["val"]["score"])}
    config = json.loads(log.read_text().splitlines()[0])["config"]
    assert config["counterattack"].startswith("Counterattack(") and "tau_threshold=0.05" in config["counterattack"]


@pytest.mark.parametrize("extra, message", [
    (["--counterattack"], "--counterattack needs a model with an encoder, but --model is the l2 pixel baseline"),
    (["--attack", "linf"], "--attack needs a model with an encoder"),
    (["--steps", "3"], "--steps only apply to a robust evaluation; add --attack"),
])
def test_robustness_option_errors(fresh_nights, extra, message, capsys):
    code, err = _run_bad(["nights", fresh_nights, *extra], capsys)
    assert code == 2 and message in err


def test_attack_is_not_an_option_of_jnd(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "jnd", str(tmp_path), "--attack", "linf"])
    assert "unrecognized arguments: --attack" in capsys.readouterr().err


def test_attack_refuses_max_batches(fresh_nights, vit_folder, capsys):
    code = main(["eval", "nights", str(fresh_nights), "--model", str(vit_folder), "--attack", "l2",
                 "--max-batches", "1"])
    assert code == 2 and "--max-batches applies to the clean evaluation only" in capsys.readouterr().err


def test_bapps_train_subset_takes_mix_and_defaults_to_lpips_training_categories(tmp_path, capsys):
    for category in ("traditional", "cnn", "mix"):
        datagen.write_bapps_2afc(tmp_path / "bapps", category, [("left", 0.0), ("right", 1.0)], subset="train")
    out = tmp_path / "train.json"
    assert main(["eval", "bapps", str(tmp_path / "bapps"), "--model", "l2", "--subset", "train", "--workers", "0",
                 "--out", str(out)]) == 0
    assert _table(capsys.readouterr().out) == {"traditional": (2, 100.0), "cnn": (2, 100.0), "mix": (2, 100.0)}
    assert json.loads(out.read_text())["selection"] == {"categories": ["traditional", "cnn", "mix"], "subset": "train"}
    assert main(["eval", "bapps", str(tmp_path / "bapps"), "--model", "l2", "--categories", "mix",
                 "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "'mix' exists in the train subset only" in err and "Traceback" not in err


def test_l2_lab_refuses_an_attack(tmp_path, capsys):
    datagen.write_bapps_2afc(tmp_path / "bapps", "cnn", [("left", 0.2)])
    assert main(["eval", "bapps", str(tmp_path / "bapps"), "--model", "l2-lab", "--attack", "linf"]) == 2
    assert "--model is the l2-lab pixel baseline" in capsys.readouterr().err


def test_eval_help_says_which_l2_lpips_uses(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "bapps", "--help"])
    assert "`l2-lab` (lpips' L2 baseline" in " ".join(capsys.readouterr().out.split())


# -- --preprocess: the images the backbone sees, against the peers' own PIL transforms ---------------
def _backbone_inputs(monkeypatch):
    """Record, as 8-bit [0, 255] pixels, every batch reaching a loaded encoder's backbone (mean/std undone)."""
    import torch

    import rpmetric.models

    real, seen = rpmetric.models.load_encoder, []

    def recording(*args, **kwargs):
        encoder = real(*args, **kwargs)

        def hook(module, inputs, _encoder=encoder):
            pp = _encoder.spec.preprocessing
            mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (pp.mean, pp.std))
            seen.append((inputs[0] * std + mean) * 255)

        encoder.backbone.register_forward_pre_hook(hook)
        return encoder

    monkeypatch.setattr(rpmetric.models, "load_encoder", recording)
    return seen


def _peer_transform(name: str, size: int):
    from torchvision import transforms as PT

    bicubic = PT.InterpolationMode.BICUBIC
    return {"paper": PT.Resize(size),  # fra31's BAPPS loader: torchvision's default, bilinear
            "dreamsim": PT.Resize((size, size), interpolation=bicubic),
            "model": PT.Compose([PT.Resize(size, interpolation=bicubic), PT.CenterCrop(size)])}[name]  # tiny ViT's


@pytest.mark.parametrize("option, expected", [([], "paper"), (["--preprocess", "model"], "model"),
                                              (["--preprocess", "dreamsim"], "dreamsim")])
def test_bapps_preprocess_reaches_the_backbone_and_is_recorded(vit_folder, tmp_path, capsys, monkeypatch, option,
                                                               expected):
    import numpy as np
    import torch
    from PIL import Image

    from tinymodels import IMAGE_SIZE

    root = tmp_path / "bapps"
    datagen.write_bapps_2afc(root, "cnn", [("left", 0.2)])  # 64-px patches, as BAPPS ships them
    seen = _backbone_inputs(monkeypatch)
    out = tmp_path / "r.json"
    assert main(["eval", "bapps", str(root), "--model", str(vit_folder), "--categories", "cnn", "--workers", "0",
                 "--device", "cpu", "--out", str(out), *option]) == 0
    ref = Image.open(root / "2afc" / "val" / "cnn" / "ref" / "000000.png")
    peer = torch.tensor(np.array(_peer_transform(expected, IMAGE_SIZE)(ref))).permute(2, 0, 1).double()
    assert (seen[0][0].double() - peer).abs().max() <= 2 + 1e-3  # the 8-bit path: within 2 levels of PIL
    settings = json.loads(out.read_text())["settings"]
    geometry = {"paper": ("bilinear", "shortest"), "dreamsim": ("bicubic", "squash"), "model": ("bicubic", "shortest")}
    assert settings["preprocess"] == expected
    assert settings["preprocessing"] == {"image_size": IMAGE_SIZE, "resize_size": IMAGE_SIZE,
                                         "interpolation": geometry[expected][0], "resize_mode": geometry[expected][1]}


def test_nights_defaults_to_the_model_s_preprocessing(vit_folder, nights_known, tmp_path, capsys):
    root, _ = nights_known
    out = tmp_path / "r.json"
    assert main(["eval", "nights", str(root), "--model", str(vit_folder), "--split", "val", "--workers", "0",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["settings"]["preprocess"] == "model"


def test_preprocess_is_refused_for_pixel_baselines_and_absent_from_their_settings(tmp_path, capsys):
    for category, (entries, _) in datagen.BAPPS_2AFC_KNOWN.items():
        datagen.write_bapps_2afc(tmp_path / "bapps", category, entries)
    assert main(["eval", "bapps", str(tmp_path / "bapps"), "--model", "l2", "--preprocess", "paper"]) == 2
    err = capsys.readouterr().err
    assert "--preprocess needs a model with an encoder, but --model is the l2 pixel baseline" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "r.json"
    assert main(["eval", "bapps", str(tmp_path / "bapps"), "--model", "l2-lab", "--categories", "cnn", "--workers",
                 "0", "--out", str(out)]) == 0
    assert "preprocess" not in json.loads(out.read_text())["settings"]


def test_a_run_log_is_not_resumed_under_another_preprocess(vit_folder, tmp_path, capsys):
    datagen.write_bapps_2afc(tmp_path / "bapps", "cnn", [("left", 0.2), ("right", 0.8)])
    log = tmp_path / "run.jsonl"
    common = ["eval", "bapps", str(tmp_path / "bapps"), "--model", str(vit_folder), "--categories", "cnn",
              "--workers", "0", "--device", "cpu", "--batch-size", "1", "--log", str(log)]
    assert main(common + ["--max-batches", "1"]) == 3
    assert main(common + ["--resume", "--preprocess", "dreamsim"]) == 2
    assert "preprocess" in capsys.readouterr().err
