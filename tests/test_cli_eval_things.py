"""``rpmetric eval things ROOT`` and ``rpmetric eval triplets FILE.csv`` end to end: the table, the JSON,
--per-sample, bad data (one line naming the file and row, exit 2), --skip-bad, resume, --attack,
--html, ``rpmetric plot`` and torchrun."""

import csv
import json
import os
import subprocess
import sys

import pytest

import datagen
from pagecheck import ParsedPage
from rpmetric.cli import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run logs land in the working directory


def _table(stdout):
    lines = stdout.strip().splitlines()
    return lines[0].split("  "), [line.split() for line in lines[2:]]


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run(capsys, *args):
    code = main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def things(tmp_path):
    return datagen.write_things(tmp_path / "things", datagen.THINGS_KNOWN[0])


@pytest.fixture()
def triplets(tmp_path):
    return datagen.write_triplets_csv(tmp_path / "set" / "mine.csv", datagen.TRIPLETS_KNOWN[0])


def test_things_table_json_and_per_sample(things, tmp_path, capsys):
    out, per_sample = tmp_path / "r.json", tmp_path / "s.csv"
    code, stdout, err = _run(capsys, "things", things, "--model", "l2", "--workers", "0", "--batch-size", "2",
                             "--out", out, "--per-sample", per_sample)
    assert code == 0, err
    assert stdout.splitlines()[0].split() == ["set", "n", "accuracy", "(%)"]
    assert _table(stdout)[1] == [["things_valset", "5", f"{100 * datagen.THINGS_KNOWN[1]:.2f}"]]
    assert "acc " in err  # the progress bar's running score
    summary = json.loads(out.read_text())
    assert summary["task"] == "odd-one-out" and summary["score"] == "odd-one-out accuracy"
    assert summary["results"] == {"things_valset": {"n": 5, "score": pytest.approx(datagen.THINGS_KNOWN[1])}}
    assert summary["selection"] == {"triplets": str((things / "things_valset.txt").resolve()),
                                    "sets": ["things_valset"]}
    assert summary["skipped"] == {"n": 0, "items": []} and summary["spec"] is None
    assert {"batch_size", "workers", "processes", "device"} <= set(summary["settings"])
    rows = _csv(per_sample)
    assert list(rows[0]) == ["group", "id", "d12", "d13", "d23", "odd"] and len(rows) == 5
    assert float(rows[3]["d12"]) == float(rows[3]["d13"]) == 0.5 and float(rows[3]["odd"]) == 3


def test_things_with_the_tiny_model_and_another_triplet_file(tmp_path, vit_folder, capsys):
    kinds, expected = datagen.THINGS_KNOWN_ANY_METRIC
    root = datagen.write_things(tmp_path / "images", kinds, size=(40, 48), name="list.txt")
    out = tmp_path / "r.json"
    code, stdout, err = _run(capsys, "things", root, "--triplets", root / "list.txt", "--model", vit_folder,
                             "--workers", "0", "--out", out)
    assert code == 0, err
    summary = json.loads(out.read_text())
    assert summary["results"] == {"list": {"n": 4, "score": pytest.approx(expected)}}
    assert summary["settings"]["preprocess"] == "dreamsim"  # DreamSim's THINGS protocol


def test_triplets_2afc_and_binary_accuracy(triplets, tmp_path, capsys):
    _, score, accuracy = datagen.TRIPLETS_KNOWN
    out = tmp_path / "r.json"
    code, stdout, err = _run(capsys, "triplets", triplets, "--model", "l2", "--workers", "0", "--out", out,
                             "--per-sample", tmp_path / "s.csv")
    assert code == 0, err
    assert stdout.splitlines()[0].split() == ["set", "n", "2AFC", "(%)", "binary", "acc", "(%)"]
    assert _table(stdout)[1] == [["mine", "4", f"{100 * score:.2f}", f"{100 * accuracy:.2f}"]]
    summary = json.loads(out.read_text())
    assert summary["task"] == "2afc" and summary["dataset"] == "triplets"
    assert summary["results"] == {"mine": {"n": 4, "score": pytest.approx(score), "accuracy": pytest.approx(accuracy)}}
    assert summary["selection"] == {"file": str(triplets.resolve()), "sets": ["mine"]}
    assert list(_csv(tmp_path / "s.csv")[0]) == ["group", "id", "d0", "d1", "p"]


# -- bad data: one line naming the file and the row, exit 2 -------------------------------------------
def _things_line(root, number, text):
    lines = (root / "things_valset.txt").read_text().splitlines()
    lines[number - 1] = text
    (root / "things_valset.txt").write_text("\n".join(lines) + "\n")


def _csv_row(path, number, row):
    lines = path.read_text().splitlines()
    lines[number - 1] = row
    path.write_text("\n".join(lines) + "\n")


THINGS_BAD = [
    ("missing image", lambda r: (r / "t2b.png").unlink(), r"things_valset.txt, line 2: image file not found: "),
    ("two ids", lambda r: _things_line(r, 2, "t2a t2b"), "things_valset.txt, line 2: a line must hold three image ids"),
    ("duplicated id", lambda r: _things_line(r, 3, "t3a t3a t3c"),
     "things_valset.txt, line 3: the image id 't3a' occurs twice in one triplet"),
    ("ambiguous id", lambda r: (r / "t2a.jpg").write_bytes(b"x"),
     "things_valset.txt, line 2: the image id 't2a' has 2 files (t2a.jpg, t2a.png)"),
    ("unreadable image", lambda r: (r / "t4c.png").write_bytes(b"GIF89a nonsense"),
     "bad triplet things_valset/4: "),
    ("not UTF-8", lambda r: (r / "things_valset.txt").write_bytes(b"t1a t1b t1c\n\xff\xfe t2b t2c\n"),
     "things_valset.txt, line 2: not UTF-8 text"),
    ("no triplet file", lambda r: (r / "things_valset.txt").unlink(), "THINGS triplet file not found: "),
    ("empty triplet file", lambda r: (r / "things_valset.txt").write_text("\n\n"), "holds no usable triplet"),
]

TRIPLETS_BAD = [
    ("wrong column names", lambda p: _csv_row(p, 1, "ref,left,right,prob"),
     "mine.csv lacks the column(s) p; a triplet CSV needs the header ref,left,right,p"),
    ("non-numeric p", lambda p: _csv_row(p, 3, "img/001_ref.png,img/001_left.png,img/001_right.png,most"),
     "mine.csv, line 3: `p` must be a number, but got 'most'"),
    ("p above 1", lambda p: _csv_row(p, 3, "img/001_ref.png,img/001_left.png,img/001_right.png,7"),
     "mine.csv, line 3: `p` must be a share in [0, 1]"),
    ("missing image", lambda p: (p.parent / "img" / "002_right.png").unlink(),
     "mine.csv, line 4: image file not found: "),
    ("path outside", lambda p: _csv_row(p, 2, "../secret.png,img/000_left.png,img/000_right.png,0.25"),
     "mine.csv, line 2: `ref` '../secret.png' leads outside the CSV's folder"),
    ("long row", lambda p: _csv_row(p, 5, "img/003_ref.png,img/003_left.png,img/003_right.png,1,extra"),
     "mine.csv, line 5: the row has more fields (5) than the header (4)"),
    ("unreadable image", lambda p: (p.parent / "img" / "000_left.png").write_bytes(b"broken"),
     "bad triplet mine/2: "),
]


@pytest.mark.parametrize("case, break_it, message", THINGS_BAD, ids=[c[0] for c in THINGS_BAD])
def test_things_bad_data(things, capsys, case, break_it, message):
    break_it(things)
    code, _, err = _run(capsys, "things", things, "--model", "l2", "--workers", "0")
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]  # one line
    assert message in line, err


@pytest.mark.parametrize("case, break_it, message", TRIPLETS_BAD, ids=[c[0] for c in TRIPLETS_BAD])
def test_triplets_bad_data(triplets, capsys, case, break_it, message):
    (triplets.parent.parent / "secret.png").write_bytes((triplets.parent / "img" / "000_ref.png").read_bytes())
    break_it(triplets)
    code, _, err = _run(capsys, "triplets", triplets, "--model", "l2", "--workers", "0")
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert message in line, err


def test_triplets_duplicated_ids_and_missing_file(tmp_path, capsys):
    path = datagen.write_triplets_csv(tmp_path / "ids.csv", [("left", 0.0), ("right", 1.0)], ids=True)
    path.write_text(path.read_text().replace("row-1", "row-0"))
    code, _, err = _run(capsys, "triplets", path, "--model", "l2", "--workers", "0")
    assert code == 2 and "ids.csv, line 3 (id 'row-0'): the id 'row-0' is also the id of line 2" in err
    code, _, err = _run(capsys, "triplets", tmp_path / "none.csv", "--model", "l2", "--workers", "0")
    assert code == 2 and "Triplet CSV file not found: " in err
    code, _, err = _run(capsys, "triplets", tmp_path, "--model", "l2", "--workers", "0")
    assert code == 2 and f"{tmp_path} is a folder; give the triplet CSV file (header ref,left,right,p)" in err


def test_skip_bad_names_the_files(things, triplets, tmp_path, capsys):
    (things / "t2b.png").unlink()
    (things / "t4c.png").write_bytes(b"broken")
    out = tmp_path / "t.json"
    code, stdout, err = _run(capsys, "things", things, "--model", "l2", "--workers", "0", "--skip-bad", "--out", out)
    assert code == 0, err
    summary = json.loads(out.read_text())
    items = {item["id"]: item["reason"] for item in summary["skipped"]["items"]}
    assert set(items) == {"2", "4"} and "t2b.png" in items["2"] and "t4c.png" in items["4"]
    assert "skipped 2 bad triplet(s)" in err
    assert summary["results"]["things_valset"] == {"n": 3, "score": pytest.approx((1 + 1 / 3 + 1) / 3)}
    (triplets.parent / "img" / "001_ref.png").unlink()
    out = tmp_path / "c.json"
    assert _run(capsys, "triplets", triplets, "--model", "l2", "--workers", "0", "--skip-bad", "--out", out)[0] == 0
    summary = json.loads(out.read_text())
    assert [i["id"] for i in summary["skipped"]["items"]] == ["3"] and "001_ref.png" in summary["skipped"]["items"][0][
        "reason"]
    assert summary["results"]["mine"] == {"n": 3, "score": pytest.approx(0.75 / 3 + 0.5 / 3),
                                          "accuracy": pytest.approx(1.5 / 3)}


def test_things_resume_gives_the_uninterrupted_result(tmp_path, vit_folder, capsys):
    root = datagen.write_things(tmp_path / "things", datagen.THINGS_KNOWN_ANY_METRIC[0] * 2)
    common = ["things", root, "--model", vit_folder, "--workers", "0", "--batch-size", "2"]
    assert _run(capsys, *common, "--out", tmp_path / "full.json", "--per-sample", tmp_path / "full.csv")[0] == 0
    out = tmp_path / "part.json"
    code, _, err = _run(capsys, *common, "--out", out, "--max-batches", "2")
    assert code == 3 and "4 of 8 done" in err
    assert _run(capsys, *common, "--out", out, "--resume", "--per-sample", tmp_path / "part.csv")[0] == 0
    assert json.loads(out.read_text())["results"] == json.loads((tmp_path / "full.json").read_text())["results"]
    assert _csv(tmp_path / "part.csv") == _csv(tmp_path / "full.csv")
    assert not (tmp_path / "part.json.log.jsonl").exists()


# -- under attack ---------------------------------------------------------------------------------
def test_things_attack_on_the_tiny_model(tmp_path, vit_folder, capsys):
    kinds, expected = datagen.THINGS_KNOWN_ANY_METRIC
    root = datagen.write_things(tmp_path / "things", kinds)
    common = ["things", root, "--model", vit_folder, "--workers", "0", "--attack", "linf", "--steps", "2"]
    out = tmp_path / "r.json"
    code, stdout, err = _run(capsys, *common, "--eps", "8", "--out", out)
    assert code == 0, err
    header, rows = _table(stdout)
    assert "robust acc (%)" in stdout.splitlines()[0] and rows[0][3] == "4"
    attack = json.loads(out.read_text())["attack"]["things_valset"]
    # The attack's clean pass judges as the clean evaluation: identical images tie exactly.
    assert attack["n"] == 4 and attack["clean_accuracy"] == pytest.approx(expected)
    # 8/255 on one image at a time flips the tiny random ViT's decisions (robust 0 on this data).
    assert 0.0 <= attack["robust_accuracy"] < attack["clean_accuracy"]
    assert attack["attack"] == {"attack": "apgd-ce", "norm": "linf", "eps": pytest.approx(8 / 255), "steps": 2,
                                "restarts": 1, "seed": 0}
    assert "any one of the three images" in attack["threat"]


def test_things_attack_resumes_from_its_log(tmp_path, vit_folder, capsys, monkeypatch):
    from rpmetric.attacks import oddoneout

    root = datagen.write_things(tmp_path / "things", datagen.THINGS_KNOWN_ANY_METRIC[0])
    common = ["things", root, "--model", vit_folder, "--workers", "0", "--batch-size", "2", "--attack", "l2",
              "--eps", "0.5", "--steps", "2", "--run-log", tmp_path / "run.jsonl"]
    assert _run(capsys, *common, "--out", tmp_path / "full.json")[0] == 0
    calls = []
    real = oddoneout._attack_batch
    monkeypatch.setattr(oddoneout, "_attack_batch", lambda *a: calls.append(1) or real(*a))
    code, _, err = _run(capsys, *common, "--out", tmp_path / "again.json", "--resume")
    assert code == 0, err
    assert calls == []  # every batch came from the logs
    full, again = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("full", "again"))
    assert again["attack"] == full["attack"] and again["results"] == full["results"]


def test_triplets_attack_uses_the_2afc_attack(triplets, tmp_path, vit_folder, capsys):
    out = tmp_path / "r.json"
    code, stdout, err = _run(capsys, "triplets", triplets, "--model", vit_folder, "--workers", "0", "--attack",
                             "linf", "--steps", "1", "--eps", "0", "2", "--out", out)
    assert code == 0, err
    attack = json.loads(out.read_text())["attack"]["mine"]
    assert attack["n"] == 4 and attack["clean_accuracy"] == pytest.approx(datagen.TRIPLETS_KNOWN[2])
    assert [p["eps"] for p in attack["per_eps"]] == [0.0, pytest.approx(2 / 255)]
    assert attack["per_eps"][0]["robust_accuracy"] == pytest.approx(attack["clean_accuracy"])


def test_things_attack_option_errors(things, vit_folder, capsys):
    code, _, err = _run(capsys, "things", things, "--model", vit_folder, "--workers", "0", "--attack", "linf",
                        "--counterattack")
    assert code == 2 and "--attack on things evaluates the plain metric; drop --counterattack" in err
    with pytest.raises(SystemExit):  # one radius: no robustness curve for THINGS
        main(["eval", "things", str(things), "--attack", "linf", "--eps", "1", "2"])
    assert "unrecognized arguments: 2" in capsys.readouterr().err


# -- the page, the figure, torchrun -------------------------------------------------------------------
def test_things_page_shows_the_triplets_the_metric_gets_wrong(things, tmp_path, capsys):
    html = tmp_path / "page.html"
    code, _, err = _run(capsys, "things", things, "--model", "l2", "--workers", "0", "--html", html)
    assert code == 0, err
    page = ParsedPage(html)
    assert page.missing_thumbnails() == [] and page.external_references() == []
    (gallery,) = page.galleries.values()
    credits = [float(row["title"].rsplit("credit ", 1)[1]) for row in gallery]
    assert credits == [0.0, 0.33, 0.5, 1.0, 1.0]  # least first (datagen.THINGS_KNOWN, hand-worked)
    assert gallery[0]["title"].startswith("things_valset/2 ") and "the metric: image 2" in gallery[0]["title"]
    assert "the metric: image 2 or image 3 " in gallery[2]["title"]  # the two-way tie
    assert "people's odd one out" in gallery[0]["cells"][2]["l"] and "accuracy (%)" in page.text


def test_plot_draws_things_results(things, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "r.json"
    assert _run(capsys, "things", things, "--model", "l2", "--workers", "0", "--out", out)[0] == 0
    assert main(["plot", str(out), "--out", str(tmp_path / "fig.svg")]) == 0
    assert "odd-one-out accuracy" in (tmp_path / "fig.svg").read_text()


def test_things_under_torchrun_matches_one_process(things, tmp_path):
    args = ["eval", "things", str(things), "--model", "l2", "--workers", "0", "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "rpmetric", *args, "--out", str(tmp_path / "one.json")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "rpmetric", *args, "--out", str(tmp_path / "two.json")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("things_valset") == 1  # only rank 0 prints
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["settings"]["processes"] == 2 and two["results"] == one["results"]
