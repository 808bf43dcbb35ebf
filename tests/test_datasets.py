"""NIGHTS and BAPPS readers on generated folders in the exact layouts, and the image datasets."""

import csv
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

import datagen
from rpmetric.datasets import (BadItem, JNDPair, PairImages, Triplet, TripletImages, collate_images, read_bapps_2afc,
                               read_bapps_jnd, read_nights)
from rpmetric.models.preprocess import resize_and_crop
from rpmetric.models.spec import Preprocessing


def _rewrite_csv(root, edit):
    """Apply ``edit(header, rows)`` to data.csv (rows as dicts) and write it back."""
    path = root / "data.csv"
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames), list(reader)
    header, rows = edit(header, rows)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# -- NIGHTS -------------------------------------------------------------------------------------
@pytest.mark.parametrize("split, ids", [
    ("train", ["train-left"]),
    ("val", ["val-right-0", "val-tie"]),
    ("test_imagenet", ["ti-left-0", "ti-right-1", "ti-tie", "ti-right-3q"]),
    ("test_no_imagenet", ["tn-left-1", "tn-left-q"]),
    ("test", ["ti-left-0", "ti-right-1", "tn-left-1", "ti-tie", "tn-left-q", "ti-right-3q"]),
])
def test_read_nights_keeps_unanimous_rows_of_the_split(fresh_nights, split, ids):
    triplets = read_nights(fresh_nights, split)
    assert [t.id for t in triplets] == ids  # the "drop-*" rows have votes < 6


def test_read_nights_fields(fresh_nights):
    t = {t.id: t for t in read_nights(fresh_nights, "test")}
    assert t["tn-left-q"].p == 0.25 and t["ti-right-3q"].p == 0.75 and t["ti-right-1"].p == 1.0
    first = t["ti-left-0"]
    assert first.ref == fresh_nights / "ref" / "000" / "000.png"
    assert first.left == fresh_nights / "distort" / "000" / "000_0.png"
    assert first.right == fresh_nights / "distort" / "000" / "000_1.png"
    assert isinstance(first, Triplet)


def test_read_nights_reads_columns_by_name(fresh_nights):
    _rewrite_csv(fresh_nights, lambda header, rows: (list(reversed(header)), rows))
    assert [t.id for t in read_nights(fresh_nights, "val")] == ["val-right-0", "val-tie"]
    assert read_nights(fresh_nights, "test_no_imagenet")[1].p == 0.25


def test_read_nights_errors(fresh_nights, tmp_path):
    with pytest.raises(ValueError, match=r"`split` must be one of .*'test_imagenet'.*but got 'tests'"):
        read_nights(fresh_nights, "tests")
    with pytest.raises(FileNotFoundError, match=r"NIGHTS csv not found: .*data.csv"):
        read_nights(tmp_path / "nowhere", "test")


def test_read_nights_missing_columns(fresh_nights):
    _rewrite_csv(fresh_nights, lambda header, rows: ([h for h in header if h not in ("votes", "right_vote")], rows))
    with pytest.raises(ValueError, match=r"data.csv lacks the column\(s\) right_vote, votes"):
        read_nights(fresh_nights, "test")


def test_read_nights_missing_image_names_the_file(fresh_nights):
    (fresh_nights / "distort" / "000" / "001_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"line 3 \(id 'ti-right-1'\): image file not found: .*001_1.png"):
        read_nights(fresh_nights, "test")
    skipped = []
    assert len(read_nights(fresh_nights, "test", skipped=skipped)) == 5
    assert [s.id for s in skipped] == ["ti-right-1"] and "001_1.png" in skipped[0].reason


@pytest.mark.parametrize("column, value, message", [
    ("right_vote", "1.5", r"`right_vote` must be a share in \[0, 1\], but got '1.5'"),
    ("votes", "many", r"`votes` must be a number, but got 'many'"),
    ("is_imagenet", "maybe", r"`is_imagenet` must be True or False, but got 'maybe'"),
])
def test_read_nights_bad_values(fresh_nights, column, value, message):
    def edit(header, rows):
        rows[0][column] = value  # row of "ti-left-0", a test row
        return header, rows

    _rewrite_csv(fresh_nights, edit)
    with pytest.raises(ValueError, match=message):
        read_nights(fresh_nights, "test_imagenet")


def _truncate_line(root, number, fields):
    """Cut line ``number`` (1-based) of data.csv after its first ``fields`` fields, like a torn write."""
    path = root / "data.csv"
    lines = path.read_text().splitlines()
    lines[number - 1] = ",".join(lines[number - 1].split(",")[:fields])
    path.write_text("\n".join(lines) + "\n")


def test_read_nights_short_row(fresh_nights):
    _truncate_line(fresh_nights, 5, 5)  # ti-tie's row, cut before its split column
    with pytest.raises(ValueError, match=r"line 5 \(id 'ti-tie'\): the row has fewer fields \(5\) than the header "
                                         r"\(10\).*pass `skipped=\[\]`"):
        read_nights(fresh_nights, "test")
    skipped = []
    assert len(read_nights(fresh_nights, "test", skipped=skipped)) == 5
    assert [s.id for s in skipped] == ["ti-tie"] and "fewer fields" in skipped[0].reason


def test_read_nights_short_row_without_its_id(fresh_nights):
    _rewrite_csv(fresh_nights, lambda header, rows: (list(reversed(header)), rows))  # id is the last column
    _truncate_line(fresh_nights, 5, 4)  # ti-tie's row keeps prompt, is_imagenet, split and right_path
    assert [t.id for t in read_nights(fresh_nights, "val")] == ["val-right-0", "val-tie"]  # another split's row
    with pytest.raises(ValueError, match=r"data.csv, line 5: the row has fewer fields \(4\) than the header"):
        read_nights(fresh_nights, "test")
    skipped = []
    assert len(read_nights(fresh_nights, "test", skipped=skipped)) == 5
    assert [s.id for s in skipped] == ["line 5"]


def test_read_nights_empty_split(fresh_nights):
    _rewrite_csv(fresh_nights, lambda header, rows: (header, [r for r in rows if r["split"] != "train"]))
    with pytest.raises(ValueError, match=r"NIGHTS split 'train' is empty .*votes >= 6"):
        read_nights(fresh_nights, "train")


def test_read_nights_long_row_is_bad_in_every_split(fresh_nights):
    # An unquoted comma in ti-tie's ref_path shifts its split column: reported, not silently dropped.
    path = fresh_nights / "data.csv"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace("ref/000/", "ref/0,00/", 1)
    path.write_text("\n".join(lines) + "\n")
    for split in ("test", "train"):
        with pytest.raises(ValueError, match=r"line 5 \(id 'ti-tie'\): the row has more fields \(11\) than the "
                                             r"header \(10\); a value holding a comma .* must be quoted"):
            read_nights(fresh_nights, split)
    skipped = []
    assert len(read_nights(fresh_nights, "test", skipped=skipped)) == 5
    assert [s.id for s in skipped] == ["ti-tie"]


def test_read_nights_accepts_a_bom_and_names_a_file_that_is_not_utf8(fresh_nights):
    path = fresh_nights / "data.csv"
    text = path.read_text()
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert [t.id for t in read_nights(fresh_nights, "val")] == ["val-right-0", "val-tie"]
    path.write_bytes(text.replace("a photo", "caf\xe9", 1).encode("latin-1"))
    with pytest.raises(ValueError, match=r"data.csv, line 2: not UTF-8 text \(byte 0xe9\)"):
        read_nights(fresh_nights, "val")


@pytest.mark.parametrize("value", ["../../etc/passwd", "../outside.png", "{outside}", "ref/link.png",
                                   "ref/../../outside.png"])
def test_read_nights_paths_stay_inside_the_root(fresh_nights, value):
    outside = fresh_nights.parent / "outside.png"
    outside.write_bytes((fresh_nights / "ref" / "000" / "000.png").read_bytes())
    (fresh_nights / "ref" / "link.png").symlink_to(outside)
    value = value.format(outside=outside)
    _rewrite_csv(fresh_nights, lambda header, rows: (header, [dict(r, ref_path=value) if r["id"] == "val-tie" else r
                                                              for r in rows]))
    with pytest.raises(ValueError, match=r"\(id 'val-tie'\): `ref_path` .* leads outside the dataset root .*"
                                         r"`allow_outside_root=True`"):
        read_nights(fresh_nights, "val")
    skipped = []
    assert [t.id for t in read_nights(fresh_nights, "val", skipped=skipped)] == ["val-right-0"]
    assert [s.id for s in skipped] == ["val-tie"] and "outside" in skipped[0].reason
    if value != "../../etc/passwd":  # an image outside: read when asked for
        triplets = read_nights(fresh_nights, "val", allow_outside_root=True)
        assert triplets[1].ref.resolve() == outside.resolve()


def test_read_nights_accepts_a_root_reached_through_a_symlink(fresh_nights, tmp_path):
    (tmp_path / "alias").symlink_to(fresh_nights)
    assert [t.id for t in read_nights(tmp_path / "alias", "val")] == ["val-right-0", "val-tie"]


# -- BAPPS --------------------------------------------------------------------------------------
def test_read_bapps_2afc(tmp_path):
    datagen.write_bapps_2afc(tmp_path, "cnn", [("left", 0.4), ("right", 0.6), ("tie", 0.8)])
    triplets = read_bapps_2afc(tmp_path, "cnn")
    assert [t.id for t in triplets] == ["000000", "000001", "000002"]
    assert [t.p for t in triplets] == pytest.approx([0.4, 0.6, 0.8])
    folder = tmp_path / "2afc" / "val" / "cnn"
    assert triplets[1].ref == folder / "ref" / "000001.png"
    assert triplets[1].left == folder / "p0" / "000001.png" and triplets[1].right == folder / "p1" / "000001.png"


def test_read_bapps_2afc_train_subset(tmp_path):
    datagen.write_bapps_2afc(tmp_path, "color", [("left", 0.5)], subset="train")
    assert read_bapps_2afc(tmp_path, "color", "train")[0].p == 0.5


def test_read_bapps_judge_count_mismatch(tmp_path):
    folder = datagen.write_bapps_2afc(tmp_path, "deblur", [("left", 0.4), ("right", 0.6), ("tie", 0.2)])
    (folder / "judge" / "000001.npy").unlink()
    with pytest.raises(ValueError, match=r"judge count does not match the images \(ref/ 3, p0/ 3, p1/ 3, judge/ 2 files\)"
                                         r"; e.g. '000001' has no file in judge/"):
        read_bapps_2afc(tmp_path, "deblur")
    skipped = []
    assert [t.id for t in read_bapps_2afc(tmp_path, "deblur", skipped=skipped)] == ["000000", "000002"]
    assert skipped[0] == BadItem("000001", f"{folder}: '000001' has no file in judge/")


def test_read_bapps_bad_judge_files(tmp_path):
    folder = datagen.write_bapps_2afc(tmp_path, "superres", [("left", 0.4), ("left", 0.4)])
    np.save(folder / "judge" / "000000.npy", np.array([0.2, 0.4]))
    with pytest.raises(ValueError, match=r"000000.npy must hold one number, but holds an array of shape \(2,\)"):
        read_bapps_2afc(tmp_path, "superres")
    np.save(folder / "judge" / "000000.npy", np.array([1.4]))
    with pytest.raises(ValueError, match=r"000000.npy must hold a share in \[0, 1\], but holds 1.4"):
        read_bapps_2afc(tmp_path, "superres")
    np.save(folder / "judge" / "000000.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"000000.npy cannot be read as a .npy array"):  # never unpickled
        read_bapps_2afc(tmp_path, "superres")
    (folder / "judge" / "000000.npy").write_bytes(b"")  # a torn write
    with pytest.raises(ValueError, match=r"000000.npy cannot be read as a .npy array: No data left in file"):
        read_bapps_2afc(tmp_path, "superres")
    np.savez(folder / "judge" / "000000.npz", np.array([0.5]))
    (folder / "judge" / "000000.npz").rename(folder / "judge" / "000000.npy")
    with pytest.raises(ValueError, match=r"000000.npy is an .npz archive; it must be a .npy array holding one number"):
        read_bapps_2afc(tmp_path, "superres")


def test_read_bapps_judge_header_is_checked_before_reading(tmp_path, monkeypatch):
    folder = datagen.write_bapps_2afc(tmp_path, "cnn", [("left", 0.4), ("left", 0.4)])
    judge = folder / "judge" / "000000.npy"
    with open(judge, "wb") as f:  # claims 10^11 values (400 GB), holds none
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**11,)})

    load = np.load

    def checked_load(file, *args, **kwargs):
        assert file.name != str(judge), "np.load read a file whose header is refused"
        return load(file, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(np, "load", checked_load)
        with pytest.raises(ValueError, match=r"000000.npy must hold one number, but holds an array of shape "
                                             r"\(100000000000,\)"):
            read_bapps_2afc(tmp_path, "cnn")
        skipped = []
        assert [t.id for t in read_bapps_2afc(tmp_path, "cnn", skipped=skipped)] == ["000001"]
        assert skipped[0].id == "000000"
    np.save(judge, np.array([0.5 + 0.25j]))
    with pytest.raises(ValueError, match=r"000000.npy must hold one number, .*complex128 \(a complex number is not a "
                                         r"share\)"):
        read_bapps_2afc(tmp_path, "cnn")
    np.save(judge, np.array(0.25, dtype=np.float64))  # a 0-d array is one number too
    assert read_bapps_2afc(tmp_path, "cnn")[0].p == 0.25


def test_read_bapps_skips_hidden_files(tmp_path):
    folder = datagen.write_bapps_2afc(tmp_path, "cnn", [("left", 0.4), ("right", 0.8)])
    for sub in ("ref", "p0", "p1"):
        (folder / sub / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / sub / "._000000.png").write_bytes(b"\0\5\x16\7")  # AppleDouble
    (folder / "judge" / "._000000.npy").write_bytes(b"\0\5\x16\7")
    assert [(t.id, t.p) for t in read_bapps_2afc(tmp_path, "cnn")] == [("000000", pytest.approx(0.4)),
                                                                       ("000001", pytest.approx(0.8))]
    jnd = datagen.write_bapps_jnd(tmp_path, "cnn", [(0.1, 0.5)])
    (jnd / "p0" / "._000000.png").write_bytes(b"\0\5\x16\7")
    assert [p.id for p in read_bapps_jnd(tmp_path, "cnn")] == ["000000"]


def test_read_bapps_refuses_one_stem_with_two_extensions(tmp_path):
    folder = datagen.write_bapps_2afc(tmp_path, "cnn", [("left", 0.4), ("right", 0.8)])
    (folder / "p1" / "000001.jpg").write_bytes((folder / "p1" / "000001.png").read_bytes())
    with pytest.raises(ValueError, match=rf"{folder / 'p1' / '000001.jpg'} and {folder / 'p1' / '000001.png'} share "
                                         r"the stem '000001'"):
        read_bapps_2afc(tmp_path, "cnn")
    skipped = []
    assert [t.id for t in read_bapps_2afc(tmp_path, "cnn", skipped=skipped)] == ["000000"]
    assert [s.id for s in skipped] == ["000001"]


def test_read_bapps_errors(tmp_path):
    with pytest.raises(ValueError, match=r"`category` must be one of \('traditional', 'cnn', .*but got 'cnns'"):
        read_bapps_2afc(tmp_path, "cnns")
    with pytest.raises(ValueError, match=r"`subset` must be one of \('train', 'val'\), but got 'test'"):
        read_bapps_2afc(tmp_path, "cnn", "test")
    with pytest.raises(FileNotFoundError, match=r"BAPPS folder not found: .*2afc/val/cnn/ref"):
        read_bapps_2afc(tmp_path, "cnn")
    with pytest.raises(ValueError, match=r"`category` must be one of \('traditional', 'cnn'\), but got 'color'"):
        read_bapps_jnd(tmp_path, "color")
    for sub in ("p0", "p1", "same"):
        (tmp_path / "jnd" / "val" / "cnn" / sub).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"jnd/val/cnn holds no usable entries"):
        read_bapps_jnd(tmp_path, "cnn")


def test_read_bapps_jnd(tmp_path):
    datagen.write_bapps_jnd(tmp_path, "traditional", [(0.0, 1.0), (0.2, 0.4)])
    pairs = read_bapps_jnd(tmp_path, "traditional")
    assert pairs[1] == JNDPair("000001", tmp_path / "jnd/val/traditional/p0/000001.png",
                               tmp_path / "jnd/val/traditional/p1/000001.png", pytest.approx(0.4))
    assert pairs[0].same == 1.0


# -- decoding -----------------------------------------------------------------------------------
def test_triplet_images_decode_and_transform(fresh_nights):
    triplets = read_nights(fresh_nights, "test")
    item = TripletImages(triplets)[0]
    assert set(item) == {"index", "ref", "left", "right", "p"}
    assert item["ref"].shape == (3, 32, 32) and item["ref"].dtype == torch.uint8  # 8 bits until the consumer
    pil = np.array(Image.open(triplets[0].ref).convert("RGB"))
    assert torch.equal(item["ref"], torch.from_numpy(pil).permute(2, 0, 1))
    assert torch.equal(item["ref"], item["left"])  # "left" kind: left is a copy of ref
    transform = partial(resize_and_crop, pp=Preprocessing(image_size=16, resize_size=16))
    small = TripletImages(triplets, transform=transform)[3]
    assert small["index"] == 3 and small["right"].shape == (3, 16, 16) and small["p"] == 1.0


def test_pair_images_and_worker_decoding(tmp_path):
    datagen.write_bapps_jnd(tmp_path, "cnn", [(0.0, 1.0), (0.1, 0.0), (0.2, 0.6)])
    transform = partial(resize_and_crop, pp=Preprocessing(image_size=16, resize_size=16))
    loader = torch.utils.data.DataLoader(PairImages(read_bapps_jnd(tmp_path, "cnn"), transform), batch_size=2,
                                         num_workers=1, collate_fn=collate_images)  # the transform must pickle
    batches = list(loader)
    assert [b["index"] for b in batches] == [[0, 1], [2]]
    assert batches[0]["p0"].shape == (2, 3, 16, 16)
    assert torch.equal(batches[0]["p0"][0], batches[0]["p1"][0])  # amplitude 0: identical
    assert batches[1]["same"].tolist() == pytest.approx([0.6])


def test_unreadable_image_becomes_an_error_item(fresh_nights):
    triplets = read_nights(fresh_nights, "val")
    triplets[1].left.write_bytes(b"not a png")
    ds = TripletImages(triplets)
    assert "error" not in ds[0]
    assert ds[1]["index"] == 1 and ds[1]["error"].startswith(f"{triplets[1].left} cannot be read as an image")
    batch = collate_images([ds[0], ds[1]])
    assert batch["index"] == [0] and batch["errors"][0][0] == 1 and batch["ref"].shape == (1, 3, 32, 32)


def test_collate_keeps_mixed_sizes_as_lists():
    items = [{"index": 0, "p0": torch.zeros(3, 4, 4), "p1": torch.zeros(3, 4, 4), "same": 1.0},
             {"index": 1, "p0": torch.zeros(3, 5, 4), "p1": torch.zeros(3, 5, 4), "same": 0.0}]
    batch = collate_images(items)
    assert isinstance(batch["p0"], list) and [x.shape[1] for x in batch["p0"]] == [4, 5]
    assert batch["same"].dtype == torch.float64 and batch["same"].tolist() == [1.0, 0.0]


def test_read_bapps_2afc_train_mix(tmp_path):
    # lpips trains on 2afc/train/{traditional,cnn,mix}; mix is a train-only category.
    datagen.write_bapps_2afc(tmp_path, "mix", [("left", 0.0), ("right", 1.0)], subset="train")
    assert [t.p for t in read_bapps_2afc(tmp_path, "mix", "train")] == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"'mix' exists in the train subset only .*pass `subset='train'`"):
        read_bapps_2afc(tmp_path, "mix")
