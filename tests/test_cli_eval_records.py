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
# -- default run logs ---------------------------------------------------------------------------
# -- options --------------------------------------------------------------------------------------
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
