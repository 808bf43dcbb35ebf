"""Shared file helpers: atomic writes, CSV by column name, CLI number options."""

import argparse
import json

import pytest

from rpmetric.cli.common import at_least
from rpmetric.files import atomic_write, check_writable, read_csv_columns, write_csv, write_json


def test_atomic_write_creates_folders_and_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    write_json(target, {"x": [1, 2]})
    assert json.loads(target.read_text()) == {"x": [1, 2]}

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"x": [1, 2]}  # the old file is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]  # no temporary left over


def test_csv_round_trip_by_column_name(tmp_path, capsys):
    path = tmp_path / "rows.csv"
    write_csv(path, ["b", "a"], [[1, "x,y"], [2, "z"]])
    assert read_csv_columns(path, ["a"]) == [{"b": "1", "a": "x,y"}, {"b": "2", "a": "z"}]
    write_csv(None, ["a"], [["q"]])
    assert capsys.readouterr().out == "a\nq\n"
    with pytest.raises(ValueError, match=r"rows.csv must have a header with columns a,c \(found: \['b', 'a'\]\)"):
        read_csv_columns(path, ["a", "c"])
    with pytest.raises(FileNotFoundError, match="CSV file not found: .*nope.csv"):
        read_csv_columns(tmp_path / "nope.csv", ["a"])


def test_at_least_refuses_bad_numbers_while_parsing(capsys):
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--batch-size", type=at_least(1))
    assert parser.parse_args(["--batch-size", "4"]).batch_size == 4
    for bad, why in (("0", "must be at least 1, but got 0"), ("x", "must be an integer, but got 'x'")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--batch-size", bad])
        assert f"argument --batch-size: {why}" in capsys.readouterr().err


# -- hostile CSV files and unwritable outputs ---------------------------------------------------
def test_read_csv_columns_reports_a_row_longer_than_its_header(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("a,b\nx.png,y.png\nx,1.png,y.png\nz.png,w.png\n")  # line 3: an unquoted comma
    with pytest.raises(ValueError, match=r"pairs.csv, line 3: the row has more fields \(3\) than the header \(2\)"):
        read_csv_columns(path, ("a", "b"))
    path.write_text('a,b\nx.png,y.png\n"x,1.png",y.png\n')  # quoted, it is one value
    assert [r["a"] for r in read_csv_columns(path, ("a", "b"))] == ["x.png", "x,1.png"]


def test_read_csv_columns_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b\r\nx.png,y.png\r\n")  # as Excel saves "CSV UTF-8"
    assert read_csv_columns(path, ("a", "b")) == [{"a": "x.png", "b": "y.png"}]


def test_read_csv_columns_names_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes("a,b\nx.png,y.png\ncaf\xe9.png,y.png\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"pairs.csv, line 3: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        read_csv_columns(path, ("a", "b"))


@pytest.mark.parametrize("make, folder, match", [
    (lambda t: (t / "out").mkdir(), False, "it is a folder; give a file name"),
    (lambda t: (t / "out").write_text("x"), True, "it is a file, not a folder"),
    (lambda t: (t / "file").write_text("x"), False, "file is a file, not a folder"),
])
def test_check_writable_refuses_before_any_work(tmp_path, make, folder, match):
    make(tmp_path)
    target = tmp_path / ("file/deeper/out" if (tmp_path / "file").exists() else "out")
    with pytest.raises(ValueError, match=f"Cannot write --out {target}: .*{match}"):
        check_writable(target, "--out", folder=folder)
    assert not (tmp_path / "file").is_dir()  # nothing created


def test_check_writable_accepts_new_files_and_folders_and_creates_nothing(tmp_path):
    check_writable(tmp_path / "a" / "b" / "out.json", "--out")
    check_writable(tmp_path / "store", "--out", folder=True)
    assert list(tmp_path.iterdir()) == []


def test_check_writable_refuses_a_location_without_new_files(tmp_path):
    with pytest.raises(ValueError, match=r"Cannot write --out /proc/x.json: /proc does not accept new files"):
        check_writable("/proc/x.json", "--out")


def test_atomic_write_errors_name_the_file_not_the_temporary(tmp_path, monkeypatch):
    import errno
    import os

    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        write_json(tmp_path / "folder", {})
    assert info.value.filename == str(tmp_path / "folder")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError) as info:
        write_json(tmp_path / "file" / "out.json", {})
    assert info.value.filename == str(tmp_path / "file" / "out.json")

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError) as info:
        write_json(tmp_path / "out.json", {})
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(tmp_path / "out.json"))
    assert sorted(tmp_path.iterdir()) == [tmp_path / "file", tmp_path / "folder"]  # no temporary file left


def test_write_csv_streams_a_generator_in_chunks_without_losing_or_repeating_rows(tmp_path, capsys):
    import csv as csv_module

    from rpmetric.files import write_csv

    consumed = []

    def rows():  # more rows than one chunk holds, so chunk boundaries are crossed twice
        for k in range(20_000):
            consumed.append(k)
            yield (k, f"path/{k}.png", "a,b" if k % 7 == 0 else "")

    write_csv(tmp_path / "t.csv", ["k", "path", "note"], rows())
    with open(tmp_path / "t.csv", newline="") as f:
        back = list(csv_module.reader(f))
    assert back[0] == ["k", "path", "note"]
    assert [int(r[0]) for r in back[1:]] == list(range(20_000)) == consumed
    assert back[8] == ["7", "path/7.png", "a,b"]
    write_csv(None, ["k"], ([k] for k in range(3)))
    assert capsys.readouterr().out == "k\n0\n1\n2\n"
