"""``rpmetric eval iqa`` and ``rpmetric eval pairs`` end to end on datasets generated in each published
layout: hand-worked correlations, bad data, --skip-bad, resume, PieAPP's 2AFC, --attack, --html."""

import csv
import json
import math
from pathlib import Path

import pytest

import iqadata
from rpmetric.cli import main

OFFSETS = [2, 4, 6, 8, 10]  # l2 distance (k/255)^2: the metric ranks the pairs by k
MOS = [5.0, 4.0, 4.0, 1.0, 2.0]  # higher is better, with a tie
# Oriented figures by hand (see test_scoring_correlation): overall, the first type (pairs 1-2: both
# rankings agree) and the second (pairs 3-5: -d ranks [3,2,1], mos ranks [3,1,2]).
OVERALL = {"srcc": 8.5 / math.sqrt(95), "krcc": 7 / math.sqrt(90)}
SECOND = {"srcc": 0.5, "krcc": 1 / 3}


def _worse(values, low=0.0, high=1.0):
    """The same judgements as a lower-is-better score in [low, high]."""
    return [round(low + (high - low) * (6.0 - m) / 5.0, 6) for m in values]


def _layout(name, root):
    """Write the five pairs in ``name``'s layout; ``(ROOT argument, extra options, type names)``."""
    if name == "tid2013":
        iqadata.write_tid2013(root, [(k, m, t) for k, m, t in zip(OFFSETS, MOS, ["01", "01", "02", "02", "02"])])
        return root, ["01", "02"]
    if name == "kadid10k":
        iqadata.write_kadid10k(root, [(k, m, t) for k, m, t in zip(OFFSETS, MOS, ["01", "01", "02", "02", "02"])])
        return root, ["01", "02"]
    if name == "csiq":  # DMOS, lower is better; dst_idx 1 awgn, 5 blur
        iqadata.write_csiq(root, list(zip(OFFSETS, _worse(MOS), [1, 1, 5, 5, 5])))
        return root, ["awgn", "blur"]
    if name == "pipal":  # Elo, higher is better
        iqadata.write_pipal(root, [(k, 1000 + 100 * m, t) for k, m, t in zip(OFFSETS, MOS, ["00", "00", "01", "01", "01"])])
        return root, ["00", "01"]
    if name == "pieapp":  # perceptual error, higher is worse
        iqadata.write_pieapp(root, [(k, s, t) for k, s, t in zip(OFFSETS, _worse(MOS, 0, 3), ["a", "a", "b", "b", "b"])],
                             [(0, 1, 0.9)])
        return root, ["a", "b"]
    path = iqadata.write_iqa_csv(root, [(k, m, t) for k, m, t in zip(OFFSETS, MOS, ["x", "x", "y", "y", "y"])])
    return path, ["x", "y"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("dataset", ["tid2013", "kadid10k", "csiq", "pipal", "pieapp", "csv"])
def test_each_layout_gives_the_hand_worked_correlations(dataset, tmp_path, capsys):
    root, types = _layout(dataset, tmp_path / dataset)
    out, per_sample = tmp_path / "r.json", tmp_path / "s.csv"
    assert main(["eval", "iqa", str(root), "--dataset", dataset, "--model", "l2", "--workers", "0",
                 "--out", str(out), "--per-sample", str(per_sample)]) == 0, capsys.readouterr().err
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["group", "n", "SRCC", "KRCC", "PLCC", "PLCC", "raw"]
    summary = json.loads(out.read_text())
    results = summary["results"]
    assert summary["dataset"] == dataset and summary["higher_is_better"] == (dataset not in ("csiq", "pieapp"))
    assert results["overall"]["n"] == 5 and results[types[0]]["n"] == 2 and results[types[1]]["n"] == 3
    for key in ("srcc", "krcc"):
        assert results["overall"][key] == pytest.approx(OVERALL[key])
        assert results[types[0]][key] == pytest.approx(1.0)
        assert results[types[1]][key] == pytest.approx(SECOND[key])
    assert results["overall"]["score"] == results["overall"]["srcc"]
    assert results[types[0]]["plcc"] is None  # two pairs cannot fit four parameters
    rows = _csv(per_sample)
    assert [r["group"] for r in rows] == [types[0]] * 2 + [types[1]] * 3
    assert [float(r["d"]) for r in rows] == pytest.approx([iqadata.l2_distance(k) for k in OFFSETS], rel=1e-5)


def test_pieapp_scores_its_pairwise_preferences(tmp_path, capsys):
    root = tmp_path / "pieapp"
    # image 0 (k=2) is closer than image 1 (k=6) and image 2 (k=4); 1 is further than 2
    iqadata.write_pieapp(root, [(2, 0.5, "blur"), (6, 1.0, "blur"), (4, 3.0, "noise")],
                         [(0, 1, 0.8), (0, 2, 0.3), (1, 2, 0.6)])
    out, per_sample = tmp_path / "r.json", tmp_path / "s.csv"
    assert main(["eval", "iqa", str(root), "--dataset", "pieapp", "--model", "l2", "--workers", "0",
                 "--out", str(out), "--per-sample", str(per_sample)]) == 0
    assert len(_csv(per_sample)) == 3
    rows = _csv(tmp_path / "s.pairwise.csv")
    assert [float(r["p"]) for r in rows] == pytest.approx([0.2, 0.7, 0.4])  # 1 - P(A preferred)
    assert float(rows[0]["d0"]) < float(rows[0]["d1"])
    pairwise = json.loads(out.read_text())["results"]["pairwise"]
    # The metric picks A, A, B: it agrees with 0.8, 0.3 and 1 - 0.6 of the people: 2AFC 1.5 / 3;
    # the majority chose A, B, A: binary accuracy 1 / 3.
    assert pairwise["n"] == 3 and pairwise["score"] == pytest.approx(0.5)
    assert pairwise["accuracy"] == pytest.approx(1 / 3)
    assert "NaN" not in out.read_text()  # the type with one image has no SRCC: null
    assert json.loads(out.read_text())["results"]["noise"]["score"] is None
    assert "2AFC (%)" in capsys.readouterr().out


def test_pieapp_train_split_has_pairwise_labels_only(tmp_path, capsys):
    root = tmp_path / "pieapp"
    iqadata.write_pieapp(root, [(2, 0, "a"), (6, 0, "a")], [(0, 1, 0.75)], split="train")
    assert main(["eval", "iqa", str(root), "--dataset", "pieapp", "--split", "train", "--model", "l2",
                 "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "SRCC" not in out and out.split("\n")[2].split() == ["pairwise", "1", "75.00", "100.00"]


@pytest.mark.parametrize("flag, sign", [([], 1), (["--higher-is-similar"], 1), (["--higher-is-different"], -1)])
def test_pairs_file_sign_convention(tmp_path, capsys, flag, sign):
    path = iqadata.write_pairs(tmp_path / "p", [(2, 0.9), (4, 0.8), (8, 0.1), (6, 0.5)])
    out = tmp_path / "r.json"
    assert main(["eval", "pairs", str(path), "--model", "l2", "--workers", "0", "--out", str(out), *flag]) == 0
    result = json.loads(out.read_text())["results"]
    assert list(result) == ["all"] and result["all"]["srcc"] == pytest.approx(sign * 1.0)
    assert result["all"]["krcc"] == pytest.approx(sign * 1.0)


def _tid(root, entries=None):
    entries = entries or [(k, m, t) for k, m, t in zip(OFFSETS, MOS, ["01", "01", "02", "02", "02"])]
    iqadata.write_tid2013(root, entries)
    return root


def _drop_image(root):
    (root / "distorted_images" / "i01_02_3.bmp").unlink()


def _bad_mos(root):
    text = (root / "mos_with_names.txt").read_text().replace("4.0 i01_01_2.bmp", "four i01_01_2.bmp")
    (root / "mos_with_names.txt").write_text(text)


def _duplicate(root):
    with open(root / "mos_with_names.txt", "a") as f:
        f.write("3.0 i01_01_1.bmp\n")


BAD = [
    ("tid2013", _drop_image, "mos_with_names.txt, line 3 (id 'i01_02_3.bmp'): image file not found"),
    ("tid2013", _bad_mos, "mos_with_names.txt, line 2 (id 'i01_01_2.bmp'): `MOS` must be a number, but got 'four'"),
    ("tid2013", _duplicate, "line 6 (id 'i01_01_1.bmp'): the id 'i01_01_1.bmp' occurs twice (first on line 1)"),
    ("kadid10k", lambda r: (r / "dmos.csv").write_text("dist_img,dmos\nI01_01_01.png,3\n"),
     "dmos.csv lacks the column(s) ref_img"),
    ("kadid10k", lambda r: (r / "dmos.csv").write_text("dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,nan,0\n"),
     "dmos.csv, line 2 (id 'I01_01_01.png'): `dmos` must be finite"),
    ("csiq", lambda r: (r / "csiq.DMOS.csv").unlink(), "CSIQ score file not found"),
    ("csiq", lambda r: (r / "csiq.DMOS.csv").write_text("image,dst_idx,dst_lev,dmos\n1600,9,1,0.2\n"),
     "csiq.DMOS.csv, line 2: `dst_idx` must be 1-6"),
    ("pipal", lambda r: (r / "Train_Label" / "A0001.txt").write_text("A0001_00_00.bmp\n"),
     "A0001.txt, line 1 (id 'A0001_00_00.bmp'): expected `NAME,ELO`"),
    ("csv", lambda r: (r / "scores.csv").write_text("ref,dist,mos\n../x.png,dist/0.png,1\n"),
     "scores.csv, line 2 (id 'dist/0.png'): `ref` '../x.png' leads outside"),
]


@pytest.mark.parametrize("dataset, damage, message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_data_gives_one_line_naming_the_file_and_row(dataset, damage, message, tmp_path, capsys):
    root, _ = _layout(dataset, tmp_path / dataset)
    damage(tmp_path / dataset)
    assert main(["eval", "iqa", str(root), "--dataset", dataset, "--model", "l2", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("content, message", [
    ("a,b,score\nimg/a.png,img/b0.png,high\n", "pairs.csv, line 2 (id 'line 2'): `score` must be a number"),
    ("a,b,score\nimg/a.png,img/none.png,1\n", "pairs.csv, line 2 (id 'line 2'): image file not found"),
    ("a,b\nimg/a.png,img/b0.png\n", "pairs.csv lacks the column(s) score"),
    ("id,a,b,score\nx,img/a.png,img/b0.png,1\nx,img/a.png,img/b0.png,2\n", "line 3 (id 'x'): the id 'x' occurs twice"),
    ("a,b,score\n/etc/passwd,img/b0.png,1\n", "`a` '/etc/passwd' leads outside"),
])
def test_bad_pair_files(content, message, tmp_path, capsys):
    path = iqadata.write_pairs(tmp_path / "p", [(2, 0.9)])
    path.write_text(content)
    assert main(["eval", "pairs", str(path), "--model", "l2", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_skip_bad_names_the_skipped_files(tmp_path, capsys):
    root = _tid(tmp_path / "tid")
    _drop_image(root)
    out = tmp_path / "r.json"
    assert main(["eval", "iqa", str(root), "--dataset", "tid2013", "--model", "l2", "--workers", "0",
                 "--skip-bad", "--out", str(out)]) == 0
    assert "i01_02_3.bmp" in capsys.readouterr().err
    summary = json.loads(out.read_text())
    assert summary["skipped"]["n"] == 1 and "i01_02_3.bmp" in summary["skipped"]["items"][0]["reason"]
    assert summary["results"]["overall"]["n"] == 4


def test_resume_gives_the_uninterrupted_result(tmp_path, capsys):
    root = _tid(tmp_path / "tid")
    common = ["eval", "iqa", str(root), "--dataset", "tid2013", "--model", "l2", "--workers", "0", "--batch-size", "2"]
    assert main(common + ["--out", str(tmp_path / "full.json"), "--per-sample", str(tmp_path / "full.csv")]) == 0
    out, log = tmp_path / "part.json", tmp_path / "part.json.log.jsonl"
    assert main(common + ["--out", str(out), "--max-batches", "1"]) == 3
    assert "2 of 5 done" in capsys.readouterr().err and log.exists()
    assert main(common + ["--out", str(out), "--resume", "--per-sample", str(tmp_path / "part.csv")]) == 0
    assert json.loads(out.read_text())["results"] == json.loads((tmp_path / "full.json").read_text())["results"]
    assert _csv(tmp_path / "part.csv") == _csv(tmp_path / "full.csv")
    assert not log.exists()


def test_a_log_is_not_resumed_with_the_score_running_the_other_way(tmp_path, capsys):
    path = iqadata.write_pairs(tmp_path / "p", [(2, 0.9), (4, 0.8), (8, 0.1)])
    log = tmp_path / "run.jsonl"
    common = ["eval", "pairs", str(path), "--model", "l2", "--workers", "0", "--batch-size", "1", "--log", str(log)]
    assert main(common + ["--max-batches", "1"]) == 3
    capsys.readouterr()
    assert main(common + ["--resume", "--higher-is-different"]) == 2
    assert "task" in capsys.readouterr().err


def test_options_that_do_not_apply_are_refused(tmp_path, capsys):
    root = _tid(tmp_path / "tid")
    assert main(["eval", "iqa", str(root), "--dataset", "tid2013", "--model", "l2", "--higher-is-worse"]) == 2
    assert "--higher-is-worse applies to --dataset csv only" in capsys.readouterr().err
    assert main(["eval", "iqa", str(root), "--dataset", "tid2013", "--model", "l2", "--attack", "linf"]) == 2
    assert "--attack needs a model with an encoder" in capsys.readouterr().err
    assert main(["eval", "iqa", str(root), "--dataset", "pipal", "--split", "test", "--model", "l2"]) == 2
    assert "must be one of ('train', 'val')" in capsys.readouterr().err


def test_attack_shifts_the_distances_and_reports_the_srcc_after(tmp_path, vit_folder, capsys):
    root = _tid(tmp_path / "tid")
    out, html = tmp_path / "r.json", tmp_path / "page.html"
    assert main(["eval", "iqa", str(root), "--dataset", "tid2013", "--model", str(vit_folder), "--workers", "0",
                 "--attack", "linf", "--eps", "8", "--steps", "5", "--out", str(out), "--html", str(html)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "SRCC attacked" in header and "max |dd|" in header
    summary = json.loads(out.read_text())
    overall = summary["attack"]["overall"]
    assert overall["n"] == 5 and overall["attack"]["eps"] == pytest.approx(8 / 255) and overall["attack"]["steps"] == 5
    assert 0 < overall["mean_shift"] <= overall["max_shift"]
    assert overall["wrong_way"] <= 0.2  # every distance moved the way it was pushed (bar one, at most)
    assert overall["attacked"]["srcc"] < overall["clean"]["srcc"]
    assert overall["srcc_drop"] == pytest.approx(overall["clean"]["srcc"] - overall["attacked"]["srcc"])
    assert set(summary["attack"]) == {"01", "02", "overall"}
    assert summary["settings"]["attack"]["norm"] == "linf"
    page = html.read_text()
    assert "SRCC attacked" in page and "ranks furthest from people" in page
    pytest.importorskip("matplotlib")
    from rpmetric.report.figures import score_bars

    figure = score_bars([summary])
    assert [ax.get_label() for ax in figure.axes] == ["score", "clean", "robust"]
    robust = [float(b.get_height()) for b in figure.axes[2].containers[0]]
    assert robust == pytest.approx([100 * summary["attack"][g]["attacked"]["srcc"] for g in ("01", "02", "overall")])
    assert main(["plot", str(out), "--out", str(tmp_path / "fig.png")]) == 0 and (tmp_path / "fig.png").stat().st_size


def test_evaluate_shift_pushes_each_distance_its_way(tiny_metric, tmp_path):
    from rpmetric.attacks.correlation import evaluate_shift
    from rpmetric.datasets import read_iqa

    pairs, higher = read_iqa("tid2013", _tid(tmp_path / "tid"))
    log = tmp_path / "shift.jsonl"
    result = evaluate_shift(tiny_metric, pairs, higher, eps=8 / 255, steps=5, batch_size=2, runlog_path=log,
                            progress=False)
    # median MOS 4: pairs with MOS >= 4 are pushed up, the two below it down
    assert [r["direction"] for r in result.records] == [1, 1, 1, -1, -1]
    for r in result.records:
        assert r["direction"] * (r["adv_d"] - r["clean_d"]) > 0
        assert r["linf"] <= 8 / 255 + 1e-6
    again = evaluate_shift(tiny_metric, pairs, higher, eps=8 / 255, steps=5, batch_size=2, runlog_path=log,
                           resume=True, progress=False)
    assert again.records == result.records  # resumed from the log, nothing recomputed


def test_html_page_and_counterattack_free_run(tmp_path, capsys):
    path = iqadata.write_pairs(tmp_path / "p", [(2, 0.9), (4, 0.8), (8, 0.1)])
    html = tmp_path / "p.html"
    assert main(["eval", "pairs", str(path), "--model", "l2", "--workers", "0", "--html", str(html)]) == 0
    page = html.read_text()
    assert "SRCC" in page and "ranks furthest from people" in page and (tmp_path / "p_files").is_dir()


def test_csiq_reads_the_published_excel_file(tmp_path, capsys):
    pytest.importorskip("openpyxl")
    root = tmp_path / "csiq"
    iqadata.write_csiq_xlsx(root, list(zip(OFFSETS, _worse(MOS), [1, 1, 5, 5, 5])))
    out = tmp_path / "r.json"
    assert main(["eval", "iqa", str(root), "--dataset", "csiq", "--model", "l2", "--workers", "0",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    results = json.loads(out.read_text())["results"]
    assert results["overall"]["srcc"] == pytest.approx(OVERALL["srcc"]) and results["blur"]["n"] == 3


def test_csiq_refuses_a_broken_excel_file(tmp_path, capsys):
    pytest.importorskip("openpyxl")
    root, _ = _layout("csiq", tmp_path / "csiq")
    (root / "csiq.DMOS.csv").unlink()
    (root / "csiq.DMOS.xlsx").write_bytes(b"not a workbook")
    assert main(["eval", "iqa", str(root), "--dataset", "csiq", "--model", "l2", "--workers", "0"]) == 2
    assert "csiq.DMOS.xlsx cannot be read as an Excel workbook" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_give_the_single_process_result(tmp_path):
    import os
    import subprocess
    import sys

    root = _tid(tmp_path / "tid")
    args = ["eval", "iqa", str(root), "--dataset", "tid2013", "--model", "l2", "--workers", "0", "--batch-size", "1"]
    assert main(args + ["--out", str(tmp_path / "one.json")]) == 0
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "rpmetric", *args, "--out", str(tmp_path / "two.json")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
                         timeout=240)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("overall") == 1  # only rank 0 prints
    one, both = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert both["settings"]["processes"] == 2 and both["results"] == one["results"]


def test_plot_draws_negative_correlations_below_zero(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from rpmetric.report.figures import score_bars

    path = iqadata.write_pairs(tmp_path / "p", [(2, 0.9), (4, 0.8), (8, 0.1)])
    out = tmp_path / "r.json"
    # a similarity read as a dissimilarity: the metric ranks exactly the wrong way
    assert main(["eval", "pairs", str(path), "--model", "l2", "--workers", "0", "--higher-is-different",
                 "--out", str(out)]) == 0
    figure = score_bars([str(out)])
    assert [float(b.get_height()) for b in figure.axes[0].containers[0]] == pytest.approx([-100.0])
    assert figure.axes[0].get_ylim() == (-100.0, 100.0)


def test_counterattack_in_the_clean_pass_is_recorded(tmp_path, vit_folder, capsys):
    path = iqadata.write_pairs(tmp_path / "p", [(2, 0.9), (4, 0.8), (8, 0.1)])
    out = tmp_path / "r.json"
    assert main(["eval", "pairs", str(path), "--model", str(vit_folder), "--workers", "0", "--counterattack",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    summary = json.loads(out.read_text())
    assert summary["settings"]["counterattack"]["tau_threshold"] == pytest.approx(0.2)
    assert summary["results"]["all"]["n"] == 3
    assert main(["eval", "pairs", str(path), "--model", str(vit_folder), "--counterattack", "--attack", "linf"]) == 2
    assert "not offered for correlations yet" in capsys.readouterr().err
