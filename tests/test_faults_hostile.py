"""Hostile and malformed inputs and outputs on the command line: one row per case, each asserting
exit status 2, one line on stderr, no traceback, and a message that names the bad file or option.

Every case builds its input in ``tmp_path``; cases that need a fault the root user cannot cause
with permissions (a full disk, a denied write) simulate it by monkeypatching the write.
"""

import csv
import errno
import os
import shutil

import numpy as np
import pytest

import datagen
from rpmetric.cli import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run logs land in the working directory


def _nights(tmp_path):
    root = tmp_path / "nights"
    datagen.nights_known(root)
    return root


def _edit_csv(root, edit, **open_args):
    """Rewrite ``root/data.csv`` as ``edit(lines)`` of its raw text lines."""
    path = root / "data.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n", **open_args)
    return path


def _set_field(root, row_id, column, value):
    """Set one field of the row with ``id == row_id`` (written with csv, so properly quoted)."""
    path = root / "data.csv"
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    for row in rows:
        if row["id"] == row_id:
            row[column] = value
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _eval_nights(root, *extra):
    return ["eval", "nights", str(root), "--model", "l2", "--workers", "0", *extra]


def _bapps(tmp_path):
    root = tmp_path / "bapps"
    datagen.write_bapps_2afc(root, "traditional", [("left", 0.2), ("right", 0.6)], size=16)
    return root


def _eval_bapps(root, *extra):
    return ["eval", "bapps", str(root), "--categories", "traditional", "--model", "l2", "--workers", "0", *extra]


def _judge(root, stem="000001"):
    return root / "2afc" / "val" / "traditional" / "judge" / f"{stem}.npy"


def _train(tmp_path, vit_folder, out, *extra):
    return ["train", "nights", str(_nights(tmp_path)), "--model", str(vit_folder), "--head", "mlp", "--out", str(out),
            "--epochs", "1", "--device", "cpu", "--workers", "0", *extra]


# -- the cases: each returns (argv, words the message must hold) -------------------------------
def nights_parent_path(tmp_path, **_):
    root = _nights(tmp_path)
    csv_path = _set_field(root, "ti-left-0", "ref_path", "../../etc/passwd")
    return _eval_nights(root), [str(csv_path), "line 2", "outside", "--allow-outside-root"]


def nights_absolute_path(tmp_path, **_):
    root = _nights(tmp_path)
    outside = shutil.copy(root / "ref" / "000" / "000.png", tmp_path / "outside.png")
    csv_path = _set_field(root, "ti-right-1", "left_path", str(outside))
    return _eval_nights(root), [str(csv_path), "line 3", "outside"]


def nights_symlink_out_of_root(tmp_path, **_):
    root = _nights(tmp_path)
    outside = shutil.copy(root / "ref" / "000" / "000.png", tmp_path / "outside.png")
    os.symlink(outside, root / "ref" / "link.png")
    csv_path = _set_field(root, "ti-left-0", "ref_path", "ref/link.png")
    return _eval_nights(root), [str(csv_path), "line 2", "outside"]


def nights_unquoted_comma(tmp_path, **_):
    root = _nights(tmp_path)
    # A path holding a comma, unquoted: the row has one field more than the header.
    csv_path = _edit_csv(root, lambda lines: lines[:3] + [lines[3].replace("ref/000/", "ref/0,00/", 1)] + lines[4:])
    return _eval_nights(root), [str(csv_path), "line 4", "more fields"]


def nights_not_utf8(tmp_path, **_):
    root = _nights(tmp_path)
    csv_path = _edit_csv(root, lambda lines: lines[:2] + [lines[2].replace("a photo", "caf\xe9")] + lines[3:],
                         encoding="latin-1")
    return _eval_nights(root), [str(csv_path), "UTF-8", "line 3"]


def judge_huge_header(tmp_path, **_):
    root = _bapps(tmp_path)
    with open(_judge(root), "wb") as f:  # a header that claims 10^11 float32 values, and no data
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**11,)})
    return _eval_bapps(root), [str(_judge(root)), "one number"]


def judge_huge_header_skip_bad_still_named(tmp_path, **_):
    # --skip-bad skips it (tested below); with a second bad file that is not skippable, the run stops
    root = _bapps(tmp_path)
    with open(_judge(root), "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**5)})
    return _eval_bapps(root), [str(_judge(root)), "(1000000, 100000)"]


def judge_complex(tmp_path, **_):
    root = _bapps(tmp_path)
    np.save(_judge(root), np.array([0.5 + 0.5j], dtype=np.complex64))
    return _eval_bapps(root), [str(_judge(root)), "complex"]


def bapps_duplicate_stem(tmp_path, **_):
    root = _bapps(tmp_path)
    ref = root / "2afc" / "val" / "traditional" / "ref"
    shutil.copy(ref / "000001.png", ref / "000001.jpg")
    return _eval_bapps(root), [str(ref / "000001.png"), str(ref / "000001.jpg")]


def eval_out_is_a_folder(tmp_path, **_):
    (tmp_path / "results").mkdir()
    return _eval_nights(_nights(tmp_path), "--out", str(tmp_path / "results")), [str(tmp_path / "results"), "folder"]


def eval_per_sample_is_a_folder(tmp_path, **_):
    (tmp_path / "samples").mkdir()
    return (_eval_nights(_nights(tmp_path), "--per-sample", str(tmp_path / "samples")),
            [str(tmp_path / "samples"), "folder"])


def eval_out_under_a_file(tmp_path, **_):
    (tmp_path / "file").write_text("x")
    return _eval_nights(_nights(tmp_path), "--out", str(tmp_path / "file" / "r.json")), [str(tmp_path / "file")]


def eval_per_sample_under_a_file(tmp_path, **_):
    (tmp_path / "file").write_text("x")
    return (_eval_nights(_nights(tmp_path), "--per-sample", str(tmp_path / "file" / "s.csv")),
            [str(tmp_path / "file")])


def eval_out_in_proc(tmp_path, **_):
    return _eval_nights(_nights(tmp_path), "--out", "/proc/rpmetric-results.json"), ["/proc/rpmetric-results.json"]


def _failing_replace(code):
    def replace(src, dst, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(src))
    return replace


def eval_out_disk_full(tmp_path, monkeypatch, **_):
    monkeypatch.setattr(os, "replace", _failing_replace(errno.ENOSPC))  # every atomic write hits a full disk
    out = tmp_path / "r.json"
    return _eval_nights(_nights(tmp_path), "--out", str(out), "--log", str(tmp_path / "l.jsonl")), \
        [str(out), "space", "--resume"]


def eval_out_permission_denied(tmp_path, monkeypatch, **_):
    monkeypatch.setattr(os, "replace", _failing_replace(errno.EACCES))
    out = tmp_path / "r.csv"
    return _eval_nights(_nights(tmp_path), "--per-sample", str(out)), [str(out), "ermission"]


def eval_out_read_only_filesystem(tmp_path, monkeypatch, **_):
    monkeypatch.setattr(os, "replace", _failing_replace(errno.EROFS))
    out = tmp_path / "r.json"
    return _eval_nights(_nights(tmp_path), "--out", str(out)), [str(out), "read-only"]


def embed_out_under_a_file(tmp_path, vit_folder, **_):
    (tmp_path / "file").write_text("x")
    images = tmp_path / "images"
    datagen.save_png(images / "a.png", datagen.pattern(0))
    return (["embed", str(images), "--out", str(tmp_path / "file" / "store"), "--model", str(vit_folder),
             "--device", "cpu", "--quiet"], [str(tmp_path / "file")])


def train_out_under_a_file(tmp_path, vit_folder, **_):
    (tmp_path / "file").write_text("x")
    return _train(tmp_path, vit_folder, tmp_path / "file" / "head"), [str(tmp_path / "file")]


def train_out_is_a_file(tmp_path, vit_folder, **_):
    (tmp_path / "head").write_text("x")
    return _train(tmp_path, vit_folder, tmp_path / "head"), [str(tmp_path / "head"), "file"]


def train_out_holds_a_head(tmp_path, vit_folder, **_):
    out = tmp_path / "head"
    out.mkdir()
    (out / "rpmetric_config.json").write_text("{}")  # a finished head without its checkpoint/
    (out / "head.safetensors").write_bytes(b"weights")
    return _train(tmp_path, vit_folder, out), [str(out), "--overwrite"]


def train_head_write_disk_full(tmp_path, vit_folder, monkeypatch, **_):
    monkeypatch.setattr(os, "replace", _failing_replace(errno.ENOSPC))
    out = tmp_path / "head"
    return _train(tmp_path, vit_folder, out), [str(out), "space"]


class _FullDisk:
    """A binary file whose writes fail as on a full disk."""

    def __init__(self, path, mode):
        self.file = open(path, mode)

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as os.write reports it: no file name

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def train_checkpoint_write_disk_full(tmp_path, vit_folder, monkeypatch, **_):
    import rpmetric.files

    monkeypatch.setattr(rpmetric.files, "open", _FullDisk, raising=False)  # atomic_write's open
    out = tmp_path / "head"
    return _train(tmp_path, vit_folder, out), [str(out / "checkpoint" / "checkpoint.pt"), "space"]


def train_path_outside_root(tmp_path, vit_folder, **_):
    argv = _train(tmp_path, vit_folder, tmp_path / "head")
    csv_path = _set_field(tmp_path / "nights", "train-left", "right_path", "/etc/hostname")
    return argv, [str(csv_path), "line 13", "outside", "--allow-outside-root"]


def train_margin_nan(tmp_path, vit_folder, **_):
    return _train(tmp_path, vit_folder, tmp_path / "head", "--margin", "nan"), ["--margin", "nan"]


def train_lr_inf(tmp_path, vit_folder, **_):
    return _train(tmp_path, vit_folder, tmp_path / "head", "--lr", "inf"), ["--lr", "inf"]


def pairs_csv_unquoted_comma(tmp_path, **_):
    (tmp_path / "pairs.csv").write_text("a,b\nx.png,y.png\nx,1.png,y.png\n")
    return ["distance", "--pairs", str(tmp_path / "pairs.csv")], [str(tmp_path / "pairs.csv"), "line 3", "more fields"]


def pairs_csv_not_utf8(tmp_path, **_):
    (tmp_path / "pairs.csv").write_bytes("a,b\ncaf\xe9.png,y.png\n".encode("latin-1"))
    return ["distance", "--pairs", str(tmp_path / "pairs.csv")], [str(tmp_path / "pairs.csv"), "UTF-8"]


CASES = [nights_parent_path, nights_absolute_path, nights_symlink_out_of_root, nights_unquoted_comma, nights_not_utf8,
         judge_huge_header, judge_huge_header_skip_bad_still_named, judge_complex, bapps_duplicate_stem,
         eval_out_is_a_folder, eval_per_sample_is_a_folder, eval_out_under_a_file, eval_per_sample_under_a_file,
         eval_out_in_proc, eval_out_disk_full, eval_out_permission_denied, eval_out_read_only_filesystem,
         embed_out_under_a_file, train_out_under_a_file, train_out_is_a_file, train_out_holds_a_head,
         train_head_write_disk_full, train_checkpoint_write_disk_full,
         train_path_outside_root, train_margin_nan, train_lr_inf, pairs_csv_unquoted_comma, pairs_csv_not_utf8]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_hostile_input_is_one_line_exit_2_naming_the_file(case, tmp_path, vit_folder, monkeypatch, capsys):
    argv, words = case(tmp_path=tmp_path, vit_folder=vit_folder, monkeypatch=monkeypatch)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse refuses a bad option value
        code = exit.code
    except BaseException as err:  # what would print a traceback
        pytest.fail(f"{type(err).__name__} escaped main: {err}")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"


# -- what the fixes still allow ---------------------------------------------------------------
def test_outside_paths_are_skipped_with_skip_bad_and_allowed_with_allow_outside_root(tmp_path, capsys):
    root = _nights(tmp_path)
    outside = shutil.copy(root / "ref" / "000" / "000.png", tmp_path / "outside.png")
    # ti-left-0 is a "left" triplet: ref == left; pointing its ref elsewhere to a copy keeps the data
    _set_field(root, "ti-left-0", "ref_path", str(outside))
    assert main(_eval_nights(root, "--skip-bad")) == 0
    captured = capsys.readouterr()
    assert "ti-left-0" in captured.err and "outside" in captured.err
    assert "test_imagenet     3" in captured.out
    assert main(_eval_nights(root, "--allow-outside-root")) == 0
    assert "test_imagenet     4" in capsys.readouterr().out


def test_huge_judge_header_is_skipped_with_skip_bad(tmp_path, capsys):
    root = _bapps(tmp_path)
    with open(_judge(root), "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**11,)})
    assert main(_eval_bapps(root, "--skip-bad")) == 0
    captured = capsys.readouterr()
    assert str(_judge(root)) in captured.err
    assert "traditional  1" in captured.out


def test_csv_with_a_bom_is_read(tmp_path, capsys):
    root = _nights(tmp_path)
    text = (root / "data.csv").read_text()
    (root / "data.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert main(_eval_nights(root)) == 0
    assert "total             6  66.67" in capsys.readouterr().out


def test_train_resume_without_a_checkpoint_starts_a_new_run_like_eval(tmp_path, vit_folder, capsys):
    out = tmp_path / "head"
    assert main(_train(tmp_path, vit_folder, out, "--resume")) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "checkpoint" in err and str(out) in err
    assert (out / "head.safetensors").is_file()


def test_train_overwrite_replaces_a_finished_head(tmp_path, vit_folder, capsys):
    out = tmp_path / "head"
    out.mkdir()
    (out / "head.safetensors").write_bytes(b"old")
    assert main(_train(tmp_path, vit_folder, out, "--overwrite")) == 0
    assert (out / "head.safetensors").read_bytes() != b"old"


def test_unwritable_train_out_is_found_before_the_model_loads(tmp_path, vit_folder, monkeypatch, capsys):
    import rpmetric.training

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(rpmetric.training, "load_encoder", no_load)
    (tmp_path / "file").write_text("x")
    assert main(_train(tmp_path, vit_folder, tmp_path / "file" / "head")) == 2
    assert str(tmp_path / "file") in capsys.readouterr().err


def test_unwritable_eval_out_is_found_before_the_run(tmp_path, monkeypatch, capsys):
    import rpmetric.evaluation

    def no_run(*args, **kwargs):
        raise AssertionError("the evaluation ran before --out was checked")

    monkeypatch.setattr(rpmetric.evaluation, "evaluate", no_run)
    (tmp_path / "results").mkdir()
    assert main(_eval_nights(_nights(tmp_path), "--out", str(tmp_path / "results"))) == 2
    assert "results" in capsys.readouterr().err


def test_unwritable_embed_out_is_found_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import rpmetric.metric

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(rpmetric.metric, "RobustDistance", no_load)
    (tmp_path / "file").write_text("x")
    datagen.save_png(tmp_path / "images" / "a.png", datagen.pattern(0))
    assert main(["embed", str(tmp_path / "images"), "--out", str(tmp_path / "file" / "store"), "--quiet"]) == 2
    assert str(tmp_path / "file") in capsys.readouterr().err
