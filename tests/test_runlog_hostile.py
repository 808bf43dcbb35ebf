"""Corrupt run logs, resumed through the CLI and through RunLog: each is repaired (its resume gives
the uninterrupted result) or refused in one line that names the file and the fix."""

import csv
import json
import re
import warnings

import pytest

import datagen
from rpmetric.cli import main
from rpmetric.runlog import RunLog, record_check


def _without(line: bytes, field: str) -> bytes:
    record = json.loads(line)
    del record[field]
    return (json.dumps(record) + "\n").encode()


def _with(line: bytes, field: str, raw: str) -> bytes:
    """``line`` with ``field`` set to the raw JSON text ``raw`` (which may be one json.dumps refuses)."""
    record = json.loads(line)
    record[field] = "@@"
    return json.dumps(record).replace('"@@"', raw).encode() + b"\n"


# (name, corrupt(header, records) -> bytes, outcome): "repair" with how many of the 4 records are
# kept, or "refuse" with a pattern of the message. The records are 4 lines of 2 batches of 2.
CASES = [
    ("torn-last-line", lambda h, r: h + b"".join(r[:3]) + r[3][:12], ("repair", 3)),
    ("nul-tail", lambda h, r: h + b"".join(r) + b"\0" * 512, ("repair", 4)),
    ("nuls-instead-of-the-last-record", lambda h, r: h + b"".join(r[:3]) + b"\0" * len(r[3]), ("repair", 3)),
    ("nul-hole-before-records", lambda h, r: h + r[0] + b"\0" * len(r[1]) + r[2] + r[3], ("repair", 1)),
    ("zero-bytes", lambda h, r: b"", ("repair", 0)),
    ("only-nuls", lambda h, r: b"\0" * 300, ("repair", 0)),
    ("torn-header", lambda h, r: h[:15], ("repair", 0)),
    ("torn-header-then-nuls", lambda h, r: h[:25] + b"\0" * 100, ("repair", 0)),
    ("record-without-d0", lambda h, r: h + r[0] + _without(r[1], "d0") + r[2] + r[3],
     ("refuse", r"line 3: record '.*' has no field 'd0'; delete the log to start over, or delete that line")),
    ("record-without-p", lambda h, r: h + r[0] + r[1] + _without(r[2], "p") + r[3],
     ("refuse", r"line 4: record '.*' has no field 'p'")),
    ("d1-not-a-number", lambda h, r: h + _with(r[0], "d1", '"far"') + b"".join(r[1:]),
     ("refuse", r"line 2: record '.*' has a field 'd1' that is not a finite number")),
    ("d0-nan", lambda h, r: h + _with(r[0], "d0", "NaN") + b"".join(r[1:]),
     ("refuse", r"line 2: record '.*' has a field 'd0' that is not a finite number")),
    ("record-without-id", lambda h, r: h + r[0] + r[1] + r[2] + _without(r[3], "id"),
     ("refuse", r"line 5: record '.*' has no field 'id'")),
    ("record-not-an-object", lambda h, r: h + r[0] + b"[1, 2]\n" + b"".join(r[2:]), ("refuse", r"line 3 is corrupt")),
    ("garbage-line", lambda h, r: h + b"".join(r[:2]) + b"garbage\n" + r[3], ("refuse", r"line 4 is corrupt")),
    ("deeply-nested-line", lambda h, r: h + r[0] + b"[" * 100_000 + b"\n", ("refuse", r"line 3 is corrupt")),
    ("config-not-an-object", lambda h, r: b'{"config": 5}\n' + b"".join(r), ("refuse", r"not a rpmetric run log")),
    ("header-not-json", lambda h, r: b"hello\n" + b"".join(r), ("refuse", r"not a rpmetric run log")),
    ("header-not-utf8", lambda h, r: b"\xff\xfe\xfd\n" + b"".join(r), ("refuse", r"not a rpmetric run log")),
    ("notes-without-a-newline", lambda h, r: b"my notes, not a log", ("refuse", r"not a rpmetric run log")),
    ("a-folder", None, ("refuse", r"is a folder; give the path of a file")),
]
IDS = [case[0] for case in CASES]


def _split(data: bytes):
    lines = data.splitlines(keepends=True)
    return lines[0], lines[1:]


def _corrupt(path, corrupt, header: bytes, records):
    if corrupt is None:
        path.unlink()
        path.mkdir()
    else:
        path.write_bytes(corrupt(header, records))


def _snapshot(path):
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else path.read_bytes()


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- through the CLI ------------------------------------------------------------------------------
@pytest.fixture()
def interrupted(fresh_nights, tmp_path):
    """(eval arguments, the log of 2 of its 3 batches, the uninterrupted per-sample CSV)."""
    args = ["eval", "nights", str(fresh_nights), "--model", "l2", "--workers", "0", "--split", "test",
            "--batch-size", "2"]
    assert main([*args, "--per-sample", str(tmp_path / "full.csv")]) == 0
    log = tmp_path / "run.jsonl"
    assert main([*args, "--run-log", str(log), "--max-batches", "2"]) == 3
    return args, log, _csv(tmp_path / "full.csv")


@pytest.mark.parametrize("name, corrupt, outcome", CASES, ids=IDS)
def test_corrupt_log_resumed_by_the_cli(interrupted, tmp_path, capsys, name, corrupt, outcome):
    args, log, full = interrupted
    header, records = _split(log.read_bytes())
    assert len(records) == 4
    _corrupt(log, corrupt, header, records)
    before = _snapshot(log)
    capsys.readouterr()
    out, rows = tmp_path / "out.json", tmp_path / "rows.csv"
    code = main([*args, "--run-log", str(log), "--resume", "--out", str(out), "--per-sample", str(rows)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if outcome[0] == "refuse":
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert str(log) in err and re.search(outcome[1], err), err
        assert _snapshot(log) == before  # refused: the file is left as it was
        assert not out.exists()
    else:
        assert code == 0, err
        expected = datagen.nights_known(tmp_path / "expected")  # the hand-worked scores
        assert json.loads(out.read_text())["results"] == {g: expected[g] for g in
                                                          ("test_imagenet", "test_no_imagenet", "total")}
        assert _csv(rows) == full  # bit-identical distances
        warnings = [line for line in err.splitlines() if "warning" in line]
        assert all(str(log) in line for line in warnings), err


def test_the_progress_bar_counts_each_triplet_once_after_a_torn_line(interrupted, capsys):
    args, log, _ = interrupted
    header, records = _split(log.read_bytes())
    log.write_bytes(header + b"".join(records[:3]) + records[3][:12])  # 3 finished, the 4th torn: batch 2 reruns
    capsys.readouterr()
    assert main([*args, "--run-log", str(log), "--resume"]) == 0
    counts = [int(n) for n in re.findall(r"\b(\d+)/6\b", capsys.readouterr().err)]
    assert counts and counts[0] == 3 and counts[-1] == 6 and max(counts) == 6, counts


# -- through RunLog -----------------------------------------------------------------------------
CONFIG = {"task": "2afc", "model": "l2"}
RECORDS = [{"key": f"g/{i}", "group": "g", "id": str(i), "d0": 0.1 * i, "d1": 1 / (i + 3), "p": i / 4}
           for i in range(4)]
CHECK = record_check(["d0", "d1", "p"], present=["group", "id"])


@pytest.mark.parametrize("name, corrupt, outcome", CASES, ids=IDS)
def test_corrupt_log_resumed_by_runlog(tmp_path, name, corrupt, outcome):
    path = tmp_path / "run.jsonl"
    with RunLog(path, CONFIG, resume=False) as log:
        log.append(RECORDS[:2])
        log.append(RECORDS[2:])
    header, records = _split(path.read_bytes())
    _corrupt(path, corrupt, header, records)
    before = _snapshot(path)
    if outcome[0] == "refuse":
        with pytest.raises(ValueError, match=re.escape(str(path))) as info:
            RunLog(path, CONFIG, resume=True, check=CHECK)
        assert re.search(outcome[1], str(info.value)) and "\n" not in str(info.value)
        assert _snapshot(path) == before
        return
    kept = outcome[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = RunLog(path, CONFIG, resume=True, check=CHECK)
    assert all(str(path) in str(w.message) and "\n" not in str(w.message) for w in caught)
    assert list(log.done.values()) == RECORDS[:kept]
    log.append(RECORDS[kept:])  # what the resumed run computes again
    log.close()
    assert list(RunLog(path, CONFIG, resume=True, check=CHECK).done.values()) == RECORDS  # as if uninterrupted



@pytest.mark.parametrize("field", ["robust_correct", "clean_correct"])
def test_an_attack_log_record_without_a_field_is_refused(nights_known, vit_folder, tmp_path, capsys, field):
    root, _ = nights_known
    log = tmp_path / "run.jsonl"
    args = ["eval", "nights", str(root), "--model", str(vit_folder), "--split", "test_no_imagenet", "--workers", "0",
            "--attack", "linf", "--steps", "1", "--run-log", str(log)]
    assert main(args) == 0
    attack_log = tmp_path / "run.jsonl.attack-test_no_imagenet.jsonl"
    header, records = _split(attack_log.read_bytes())
    attack_log.write_bytes(header + _without(records[0], field) + b"".join(records[1:]))
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("rpmetric eval:")]  # after the clean pass's bar
    assert len(said) == 1 and "Traceback" not in err, err
    assert f"{attack_log}, line 2: record" in err and f"has no field '{field}'" in err, err
