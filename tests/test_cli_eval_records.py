"""``rpmetric eval``: what the JSON and the run logs record, default run logs, repeatable options,
ε warnings and the attacked counts in the table."""

import json
import shutil
import sys

import pytest

import datagen
from rpmetric.cli import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run logs land in the working directory


def _rows(stdout):
    """``{row label: cells}`` of the printed table (cells split on whitespace)."""
    return {line.split()[0]: line.split()[1:] for line in stdout.strip().splitlines()[2:]}


def _config(log):
    return json.loads(log.read_text().splitlines()[0])["config"]


def _default_logs(folder):
    return sorted(p.name for p in folder.glob("rpmetric-eval-*.jsonl"))


# -- settings: every defence and setting that shapes a number, and only what applies -------------
def test_counterattack_and_its_settings_are_in_the_json(nights_known, vit_folder, tmp_path, capsys):
    root, _ = nights_known
    out = tmp_path / "ca.json"
    assert main(["eval", "nights", str(root), "--model", str(vit_folder), "--split", "val", "--workers", "0",
                 "--counterattack", "--tau-threshold", "0.05", "--counterattack-steps", "3",
                 "--out", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert settings["counterattack"]["tau_threshold"] == 0.05 and settings["counterattack"]["steps"] == 3
    assert settings["counterattack"]["eps"] == pytest.approx(4 / 255)  # the default, in [0, 1] units
    assert settings["attack"] is None


def test_no_counterattack_is_recorded_as_none(fresh_nights, tmp_path):
    out = tmp_path / "l2.json"
    assert main(["eval", "nights", str(fresh_nights), "--model", "l2", "--workers", "0", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["settings"]["counterattack"] is None


def test_jnd_records_no_attack_setting(tmp_path):
    entries, _ = datagen.JND_KNOWN
    datagen.write_bapps_jnd(tmp_path / "bapps", "cnn", entries)
    out = tmp_path / "jnd.json"
    assert main(["eval", "jnd", str(tmp_path / "bapps"), "--model", "l2", "--categories", "cnn", "--workers", "0",
                 "--out", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert "attack" not in settings and settings["counterattack"] is None  # JND offers no attack


def test_the_subset_is_logged_for_bapps_only(fresh_nights, tmp_path):
    log = tmp_path / "nights.jsonl"
    assert main(["eval", "nights", str(fresh_nights), "--model", "l2", "--workers", "0", "--log", str(log)]) == 0
    assert "subset" not in _config(log)
    for category, (entries, _) in datagen.BAPPS_2AFC_KNOWN.items():
        datagen.write_bapps_2afc(tmp_path / "bapps", category, entries)
    log = tmp_path / "bapps.jsonl"
    assert main(["eval", "bapps", str(tmp_path / "bapps"), "--model", "l2", "--categories", "cnn", "--workers", "0",
                 "--log", str(log)]) == 0
    assert _config(log)["subset"] == "val"


def test_n_samples_shows_attacked_counts_and_the_total(nights_known, vit_folder, tmp_path, capsys):
    root, _ = nights_known
    out, log = tmp_path / "robust.json", tmp_path / "robust.jsonl"
    assert main(["eval", "nights", str(root), "--model", str(vit_folder), "--split", "test", "--workers", "0",
                 "--attack", "linf", "--steps", "1", "--n-samples", "1", "--out", str(out), "--log", str(log)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "n attacked" in lines[0]
    rows = _rows("\n".join(lines))
    # split, n, 2AFC, then the attacked count: 1 of each test part, 2 in all
    assert [rows[g][0] for g in ("test_imagenet", "test_no_imagenet", "total")] == ["4", "2", "6"]
    assert [rows[g][2] for g in ("test_imagenet", "test_no_imagenet", "total")] == ["1", "1", "2"]
    assert len(rows["total"]) == len(rows["test_imagenet"])  # the total row's attack cells are filled
    summary = json.loads(out.read_text())
    assert summary["attack"]["total"]["n"] == 2
    # no counterattack: eot_samples does not apply, so it is neither reported nor logged
    assert "eot_samples" not in summary["attack"]["test_imagenet"]["attack"]
    attack_log = tmp_path / "robust.jsonl.attack-test_imagenet.jsonl"
    assert "eot_samples" not in _config(attack_log)["attack"]
    assert summary["settings"]["attack"]["n_samples"] == 1 and summary["settings"]["attack"]["steps"] == 1
    assert "eot_samples" not in summary["settings"]["attack"]


# -- default run logs ---------------------------------------------------------------------------
def test_default_logs_are_named_by_root_split_and_model(fresh_nights, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(fresh_nights, other)
    common = ["--model", "l2", "--workers", "0", "--batch-size", "1", "--max-batches", "1"]
    assert main(["eval", "nights", str(fresh_nights), *common, "--split", "test"]) == 3
    assert main(["eval", "nights", str(other), *common, "--split", "test"]) == 3  # another root: not blocked
    assert main(["eval", "nights", str(other), *common, "--split", "val"]) == 3  # another split
    names = _default_logs(tmp_path)
    assert len(names) == 3
    assert any("nights" in n and "test" in n and "l2" in n for n in names)
    assert any("other" in n and "val" in n for n in names)


def test_an_interrupted_run_leaves_no_empty_log(fresh_nights, tmp_path, monkeypatch, capsys):
    import rpmetric.evaluation

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    args = ["eval", "nights", str(fresh_nights), "--model", "l2", "--workers", "0"]
    with monkeypatch.context() as patch:
        patch.setattr(rpmetric.evaluation, "_measure", interrupt)
        assert main(args) == 130
        assert main([*args, "--log", str(tmp_path / "mine.jsonl")]) == 130
    assert _default_logs(tmp_path) == [] and not (tmp_path / "mine.jsonl").exists()
    assert main(args) == 0  # the same run is not refused


def test_an_interrupted_run_keeps_a_log_with_finished_batches(fresh_nights, tmp_path, monkeypatch, capsys):
    import rpmetric.evaluation

    measure, calls = rpmetric.evaluation._measure, []

    def second_interrupts(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(rpmetric.evaluation, "_measure", second_interrupts)
    assert main(["eval", "nights", str(fresh_nights), "--model", "l2", "--workers", "0", "--batch-size", "1"]) == 130
    [name] = _default_logs(tmp_path)
    assert len((tmp_path / name).read_text().splitlines()) == 2  # config and the finished batch


@pytest.mark.parametrize("records, removed", [([], True), (['{"key": "a"'], True),  # a torn line is no record
                                              (['{"key": "a"}\n'], False)])
def test_remove_if_empty_keeps_finished_records(tmp_path, records, removed):
    from rpmetric.runlog import RunLog, remove_if_empty

    path = tmp_path / "run.jsonl"
    RunLog(path, {"model": "l2"}, resume=False)
    with open(path, "a") as f:
        f.write("".join(records))
    assert remove_if_empty(path) is removed and path.exists() is not removed


def test_remove_if_empty_keeps_what_is_not_a_run_log(tmp_path):
    from rpmetric.runlog import remove_if_empty

    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    assert remove_if_empty(other) is False and other.read_text() == "keep me"
    assert remove_if_empty(tmp_path / "missing.jsonl") is False


def test_a_missing_pyautoattack_is_reported_before_the_clean_pass(fresh_nights, vit_folder, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # `import pyautoattack` fails
    monkeypatch.setitem(sys.modules, "pyautoattack.autopgd_base", None)
    code = main(["eval", "nights", str(fresh_nights), "--model", str(vit_folder), "--workers", "0",
                 "--attack", "linf"])
    err = capsys.readouterr().err
    assert code == 2 and "pyautoattack" in err
    assert "2AFC" not in err and _default_logs(tmp_path) == []  # no clean pass ran


# -- options --------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, fraction", [("--eps", "0.0157", True), ("--eps", "0.2", True),
                                                      ("--eps", "4", False), ("--eps", "0", False),
                                                      ("--counterattack-eps", "0.0157", True),
                                                      ("--counterattack-eps", "2", False)])
def test_a_linf_eps_that_looks_like_a_fraction_is_warned_about(fresh_nights, option, value, fraction, capsys):
    extra = ["--attack", "linf"] if option == "--eps" else ["--counterattack"]
    code = main(["eval", "nights", str(fresh_nights), "--model", "l2", *extra, option, value])
    assert code == 2  # l2 refuses attacks and counterattacks, after the options were read
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    if not fraction:
        assert warnings == []
        return
    [line] = warnings
    assert f"{option} {value}" in line and "1/255" in line and f"{float(value) / 255:.3g}" in line
    assert f"{option} {float(value) * 255:.3g}" in line  # how to write the fraction meant


def test_l2_eps_below_one_half_is_not_warned_about(fresh_nights, capsys):
    assert main(["eval", "nights", str(fresh_nights), "--model", "l2", "--attack", "l2", "--eps", "0.25"]) == 2
    assert "warning" not in capsys.readouterr().err


def test_repeated_split_options_accumulate(fresh_nights, capsys):
    assert main(["eval", "nights", str(fresh_nights), "--model", "l2", "--workers", "0",
                 "--split", "val", "--split", "train", "val"]) == 0
    assert list(_rows(capsys.readouterr().out)) == ["val", "train"]  # each once, in order


def test_repeated_category_options_accumulate(tmp_path, capsys):
    for category, (entries, _) in datagen.BAPPS_2AFC_KNOWN.items():
        datagen.write_bapps_2afc(tmp_path / "bapps", category, entries)
    out = tmp_path / "b.json"
    assert main(["eval", "bapps", str(tmp_path / "bapps"), "--model", "l2", "--workers", "0",
                 "--categories", "cnn", "--categories", "traditional", "--out", str(out)]) == 0
    assert list(_rows(capsys.readouterr().out)) == ["cnn", "traditional"]
    assert json.loads(out.read_text())["selection"]["categories"] == ["cnn", "traditional"]


def test_skip_bad_reports_a_short_row_once(fresh_nights, tmp_path, capsys):
    with open(fresh_nights / "data.csv", "a") as f:
        f.write("short-row,0.5\n")  # too short to name its split: bad in every split read
    out = tmp_path / "r.json"
    assert main(["eval", "nights", str(fresh_nights), "--model", "l2", "--workers", "0", "--split", "test",
                 "--skip-bad", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 bad triplet(s)" in err and sum("short-row" in line for line in err.splitlines()) == 1
    assert json.loads(out.read_text())["skipped"]["n"] == 1
