"""Review pages (rpmetric.report) read back with html.parser: every group or query appears, every
thumbnail link leads to a file, hostile images get placeholders, bad --html paths exit 2."""

from __future__ import annotations

import csv
import io
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import datagen
import rpmetric
from pagecheck import ParsedPage
from rpmetric.attacks import evaluate_attack
from rpmetric.cli import main
from rpmetric.datasets import Triplet
from rpmetric.report import Thumbnails, write_dedup_page, write_eval_page, write_search_page
from test_attacks import SpyApgd, random_triplets
from test_cli_retrieval import embed_args, images, planted_threshold, store  # noqa: F401 (fixtures)
from test_store import ORIGINALS


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def assert_sound(page: ParsedPage):
    """What every page promises: thumbnails beside it, no resource from elsewhere, alt text on each image."""
    assert page.missing_thumbnails() == []
    assert page.thumbnails_outside_files_folder() == []
    assert page.external_references() == []
    for c in page.cells:
        assert c["n"] in c["a"]  # the alt text names the path (and, where there is one, the distance)


# -- thumbnails ------------------------------------------------------------------------------------
def test_thumbnails_are_small_jpegs_of_the_right_colour_and_orientation(tmp_path):
    Image.new("RGB", (640, 320), (200, 10, 10)).save(tmp_path / "red.png")
    grey16 = np.full((30, 20), 32896, np.uint16)  # 32896 / 257 = 128 exactly
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: a 40 x 20 file shows as 20 x 40
    Image.new("RGB", (40, 20), (0, 90, 200)).save(tmp_path / "turned.jpg", exif=exif.tobytes())
    thumbs = Thumbnails(tmp_path / "p_files", size=160)
    red, grey, turned = (thumbs.of_file(tmp_path / n) for n in ("red.png", "grey16.png", "turned.jpg"))
    assert (red.width, red.height) == (160, 80) and (turned.width, turned.height) == (20, 40)
    with Image.open(tmp_path / red.href) as im:
        assert im.format == "JPEG" and im.size == (160, 80)
        assert np.abs(np.asarray(im, float).mean((0, 1)) - (200, 10, 10)).max() < 4
    with Image.open(tmp_path / grey.href) as im:
        assert abs(np.asarray(im.convert("L"), float).mean() - 128) < 2  # scaled, not clipped to white


def fifo(path):
    os.mkfifo(path)


def bomb(path):  # a small file with more pixels than the limit (set low by the test); Pillow refuses
    Image.new("RGB", (300, 300)).save(path)  # more than twice the limit itself


def large(path):  # over the limit, under twice it: refused from the header, before decoding
    Image.new("RGB", (120, 100)).save(path)


HOSTILE = [
    ("missing.png", None, "no such file"),
    ("folder.png", lambda p: p.mkdir(), "not a regular file"),
    ("pipe.png", fifo, "not a regular file"),
    ("text.jpg", lambda p: p.write_text("not an image"), "cannot identify image file"),
    ("truncated.png", lambda p: p.write_bytes(datagen_png()[:60]), ""),
    ("bomb.png", bomb, "twice the limit of 10,000 pixels"),
    ("large.png", large, "120 x 100 pixels, over the limit of 10,000"),
    ("zero.png", lambda p: p.symlink_to("/dev/zero"), "not a regular file"),
]


def datagen_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((datagen.pattern(1, (24, 24)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name, make, reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_image_gets_a_placeholder_and_its_reason(tmp_path, monkeypatch, name, make, reason):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    path = tmp_path / name
    if make is not None:
        make(path)
    Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "good.png")
    rows = [{"group": 1, "keep": 1, "path": str(tmp_path / "good.png"), "distance_to_first": 0},
            {"group": 1, "keep": 0, "path": str(path), "distance_to_first": 0.25}]
    page = ParsedPage(write_dedup_page(tmp_path / "page.html", rows))
    assert_sound(page)
    good, bad = page.cells
    assert "s" in good and "s" not in bad and reason in bad["r"] and bad["r"]
    assert bad["a"] == f"{path}, distance to first 0.25"


def test_a_rerun_reuses_thumbnails_and_drops_only_its_own_stale_ones(tmp_path):
    for i in range(3):
        Image.new("RGB", (30, 30), (80 * i, 0, 0)).save(tmp_path / f"{i}.png")
    rows = [{"group": 1, "keep": int(i == 0), "path": str(tmp_path / f"{i}.png"), "distance_to_first": i / 10}
            for i in range(3)]
    first = ParsedPage(write_dedup_page(tmp_path / "p.html", rows))
    files = tmp_path / "p_files"
    (files / "notes.txt").write_text("mine")  # a user's file in the folder is never touched
    made = {c["s"]: (tmp_path / c["s"]).stat().st_mtime_ns for c in first.cells}
    second = ParsedPage(write_dedup_page(tmp_path / "p.html", rows[:2]))
    assert {c["s"] for c in second.cells} < set(made)
    assert all((tmp_path / c["s"]).stat().st_mtime_ns == made[c["s"]] for c in second.cells)  # reused
    assert sorted(p.name for p in files.iterdir()) == sorted([*(os.path.basename(c["s"]) for c in second.cells),
                                                              "notes.txt"])


def test_no_path_can_close_the_data_island(tmp_path):
    name = str(tmp_path / '</script><script>alert(1)</script>"&.png')
    page = ParsedPage(write_dedup_page(tmp_path / "p.html", [{"group": 1, "keep": 1, "path": name,
                                                             "distance_to_first": 0}]))
    assert page.cells[0]["n"] == name
    assert sum(tag == "script" and "type" not in attrs for tag, attrs in page.tags) == 1  # the page's own


def test_dataset_rows_show_the_key_and_link_the_url(tmp_path):
    rows = [{"group": 1, "keep": 1, "path": "shard-0/000001", "distance_to_first": 0, "url": "https://x.org/a.jpg",
             "caption": "a cat"},
            {"group": 1, "keep": 0, "path": "shard-0/000002", "distance_to_first": 0.1, "url": None, "caption": None}]
    page = ParsedPage(write_dedup_page(tmp_path / "p.html", rows))
    first, second = page.cells
    assert "s" not in first and "dataset sample" in first["r"] and first["u"] == "https://x.org/a.jpg"
    assert "a cat" in first["l"] and "u" not in second
    results = [{"query": "q/1", "neighbours": [{"rank": 1, "path": "shard-0/000001", "distance": 0.5,
                                                "url": "https://x.org/a.jpg", "caption": None}]}]
    page = ParsedPage(write_search_page(tmp_path / "s.html", results, query_files=False))
    assert all("s" not in c and "dataset sample" in c["r"] for c in page.cells)


# -- the commands ----------------------------------------------------------------------------------
def test_dedup_page_has_every_group_largest_first_with_keep_marks(capsys, store, images, planted_threshold,  # noqa: F811
                                                                  tmp_path):
    out_csv, html = tmp_path / "dups.csv", tmp_path / "dups.html"
    code, _, err = run(capsys, "dedup", store, "--threshold", planted_threshold, "--out", out_csv, "--html", html)
    assert code == 0 and f"review page written to {html}" in err
    page = ParsedPage(html)
    assert_sound(page)
    groups = {}
    for r in read_csv(out_csv):
        groups.setdefault(r["group"], []).append(r)
    assert len(page.rows) == len(groups) == 2
    sizes = [row["n"] for row in page.rows]
    assert sizes == sorted(sizes, reverse=True)
    for row in page.rows:
        group = re.match(r"group (\d+) ", row["title"])[1]
        members = groups[group]
        assert [c["n"] for c in row["cells"]] == [m["path"] for m in members]
        assert [c.get("b") == "keep" for c in row["cells"]] == [m["keep"] == "1" for m in members]
        assert all("s" in c for c in row["cells"])  # real images: real thumbnails
        for c, m in zip(row["cells"], members):
            assert f"distance to first {float(m['distance_to_first']):.6g}" in c["a"]


def test_dedup_against_page_shows_each_flagged_image_beside_its_match(capsys, store, images, vit_folder,  # noqa: F811
                                                                      tmp_path, planted_threshold):
    protected = tmp_path / "protected"
    protected.mkdir()
    (protected / "secret.png").write_bytes((images / "img3.png").read_bytes())
    assert run(capsys, *embed_args(protected, tmp_path / "pstore", vit_folder))[0] == 0
    html = tmp_path / "near.html"
    code, out, _ = run(capsys, "dedup", store, "--against", tmp_path / "pstore", "--threshold", planted_threshold,
                       "--html", html)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    page = ParsedPage(html)
    assert_sound(page)
    assert [[c["n"] for c in row["cells"]] for row in page.rows] == [[r["path"], r["match"]] for r in rows]


def test_search_and_classify_pages_show_each_query_and_its_neighbours(capsys, store, images, tmp_path):  # noqa: F811
    queries = [images / "copy_noise.png", images / "img5.png"]
    code, out, _ = run(capsys, "search", store, *queries, "--k", "3", "--json", "--device", "cpu",
                       "--html", tmp_path / "search.html")
    assert code == 0
    results = json.loads(out)["results"]
    page = ParsedPage(tmp_path / "search.html")
    assert_sound(page)
    assert [row["cells"][0]["n"] for row in page.rows] == [str(q) for q in queries]
    for row, result in zip(page.rows, results):
        assert row["cells"][0]["b"] == "query" and len(row["cells"]) == 1 + 3
        assert [c["n"] for c in row["cells"][1:]] == [n["path"] for n in result["neighbours"]]
    assert page.rows[1]["cells"][1]["l"][0] == "#1 distance 0"  # img5 is in the store: itself first

    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{images / n},{'even' if i % 2 == 0 else 'odd'}\n"
                                               for i, n in enumerate(ORIGINALS)))
    code, out, _ = run(capsys, "classify", store, *queries, "--labels", labels, "--k", "3", "--json",
                       "--device", "cpu", "--html", tmp_path / "classify.html")
    assert code == 0
    results = json.loads(out)["results"]
    page = ParsedPage(tmp_path / "classify.html")
    assert_sound(page)
    for row, result in zip(page.rows, results):
        assert row["title"] == f"{result['query']} \u2192 label {result['label']} (vote share {result['score']:.3f})"
        assert [c["l"][1] for c in row["cells"][1:]] == [f"label {n['label']}" for n in result["neighbours"]]


def bar_values(page: ParsedPage, series: str) -> dict:
    return {a["data-category"]: float(a["data-value"]) for t, a in page.tags
            if t == "rect" and a.get("class") == "bar" and a["data-series"] == series}


def test_eval_page_scores_and_the_triplets_the_metric_gets_most_wrong(capsys, nights_known, vit_folder, tmp_path):
    root, expected = nights_known
    html = tmp_path / "eval.html"
    code, _, _ = run(capsys, "eval", "nights", root, "--model", vit_folder, "--device", "cpu", "--workers", "0",
                     "--html", html, "--html-examples", "5")
    assert code == 0
    page = ParsedPage(html)
    assert_sound(page)
    # The bars are the hand-worked scores of datagen.nights_known.
    bars = bar_values(page, "2AFC score")
    assert bars.keys() == {"test_imagenet", "test_no_imagenet", "total"}
    assert all(abs(bars[g] - expected[g]["score"]) < 1e-9 for g in bars)
    (disagree,) = page.galleries.values()
    # Per-triplet agreement by hand (datagen.nights_known): 1, 1, 0.5, 0.75 and 0, 0.75; least first.
    agreements = [float(re.search(r"agreement ([\d.]+)", row["title"])[1]) for row in disagree]
    assert agreements == [0.0, 0.5, 0.75, 0.75, 1.0]
    assert disagree[0]["title"].startswith("test_no_imagenet/tn-left-1 ")
    assert [c["l"][0].split(":")[0] for c in disagree[0]["cells"]] == ["reference", "left", "right"]


@pytest.mark.slow
def test_eval_page_shows_attacked_references_and_the_tau_histogram(capsys, nights_known, vit_folder, tmp_path):
    root, _ = nights_known
    html, out = tmp_path / "eval.html", tmp_path / "eval.json"
    code, _, _ = run(capsys, "eval", "nights", root, "--split", "test_no_imagenet", "--model", vit_folder,
                     "--device", "cpu", "--workers", "0", "--attack", "linf", "--steps", "1", "--counterattack",
                     "--eot-samples", "1", "--out", out, "--html", html)
    assert code == 0
    page = ParsedPage(html)
    assert_sound(page)
    summary = json.loads(out.read_text())
    assert bar_values(page, "robust accuracy") == pytest.approx(
        {g: a["robust_accuracy"] for g, a in summary["attack"].items()})
    _, attacked = page.galleries.values()
    assert len(attacked) == summary["attack"]["test_no_imagenet"]["n"] == 2  # all kept (fewer than 24)
    assert all(len(row["cells"]) == 3 and all("s" in c for c in row["cells"]) for row in attacked)
    threshold = [a for t, a in page.tags if t == "line" and a.get("class") == "threshold"]
    assert [float(a["data-value"]) for a in threshold] == [0.2]  # --counterattack's default
    for series in ("clean references", "attacked references"):
        assert sum(int(a["data-count"]) for t, a in page.tags
                   if t == "rect" and a.get("data-series") == series) == 2


@pytest.mark.slow
def test_eval_page_with_several_radii_shows_the_largest(capsys, nights_known, vit_folder, tmp_path):
    """--eps with several radii: the table has a column per radius, the bars and the attacked
    references are those of the largest radius, as the JSON's last per_eps point says."""
    root, _ = nights_known
    html, out = tmp_path / "eval.html", tmp_path / "eval.json"
    code, _, _ = run(capsys, "eval", "nights", root, "--split", "test_no_imagenet", "--model", vit_folder,
                     "--device", "cpu", "--workers", "0", "--attack", "linf", "--steps", "1", "--eps", "0", "8",
                     "--out", out, "--html", html)
    assert code == 0
    page = ParsedPage(html)
    assert_sound(page)
    summary = json.loads(out.read_text())["attack"]
    [label] = {a["data-series"] for t, a in page.tags if t == "rect" and a.get("class") == "bar"
               and a["data-series"].startswith("robust")}
    assert label == f"robust accuracy (at the largest radius, {8 / 255:.4g})"
    assert bar_values(page, label) == pytest.approx(
        {g: a["per_eps"][-1]["robust_accuracy"] for g, a in summary.items()})
    assert "robust @0 (%)" in page.text and "robust @8/255 (%)" in page.text
    _, attacked = page.galleries.values()
    assert len(attacked) == summary["test_no_imagenet"]["n"]


def test_jnd_page_draws_the_precision_recall_curve(capsys, tmp_path):
    # Pixel L2 grows with the amplitude: distances in this order, same = 1, 0, 1 -> mAP 5/6 by hand.
    datagen.write_bapps_jnd(tmp_path, "cnn", [(0.0, 1.0), (0.1, 0.0), (0.2, 1.0)])
    html = tmp_path / "jnd.html"
    code, _, _ = run(capsys, "eval", "jnd", tmp_path, "--categories", "cnn", "--model", "l2", "--workers", "0",
                     "--html", html)
    assert code == 0
    page = ParsedPage(html)
    assert_sound(page)
    curves = [a for t, a in page.tags if t == "polyline"]
    assert [(a["data-series"], a["data-points"]) for a in curves] == [("cnn (mAP 83.33%)", "3")]


def test_write_eval_page_without_records_for_a_group(tmp_path):
    page = ParsedPage(write_eval_page(tmp_path / "e.html", task="2afc", results={"a": {"n": 0, "score": 0.5}},
                                      records=[], groups={"a": []}, tau_threshold=0.2))
    assert page.galleries == {} and "Scores" in page.text
    assert "The tau histogram compares clean and attacked references: run with --attack as well." in page.text


@pytest.mark.parametrize("html, message", [
    ("{tmp}/folder.html", "it is a folder; give a file name"),
    ("{tmp}/page.txt", "a page's name must end in .html"),
    ("{tmp}/taken.html", "taken_files: it is a file, not a folder"),
    ("/proc/rpmetric-page.html", "does not accept new files"),
])
def test_an_unwritable_page_is_refused_before_any_work(capsys, store, tmp_path, html, message):  # noqa: F811
    (tmp_path / "folder.html").mkdir()
    (tmp_path / "taken_files").write_text("x")
    out_csv = tmp_path / "dups.csv"
    code, out, err = run(capsys, "dedup", store, "--threshold", "0.1", "--out", out_csv,
                         "--html", html.format(tmp=tmp_path))
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out_csv.exists()


def test_html_examples_needs_html(capsys, nights_known, vit_folder):
    root, _ = nights_known
    code, _, err = run(capsys, "eval", "nights", root, "--model", "l2", "--html-examples", "3")
    assert code == 2 and "--html-examples sets what the review page shows; add --html" in err


# -- what the attack loop keeps for the page -------------------------------------------------------
def test_the_attack_keeps_its_first_references_and_the_tau_it_measured(vit_folder, tmp_path, monkeypatch):
    defence = rpmetric.Counterattack(tau_threshold=0.2)
    metric = rpmetric.RobustDistance(str(vit_folder), device="cpu", counterattack=defence)
    triplets = random_triplets(tmp_path, 3)
    # left == right: the clean judge embeds that image once, so its tau rows are not the batch's
    triplets.append(Triplet("tie", triplets[0].ref, triplets[1].left, triplets[1].left, 1.0))
    spy = SpyApgd(monkeypatch)
    result = evaluate_attack(metric, triplets, eps=8 / 255, steps=2, eot_samples=1, keep_images=2, progress=False)
    (clean_refs, transferred), (_, adaptive) = spy.outputs
    assert list(result.images) == ["t0", "t1"]
    for i, key in enumerate(result.images):
        assert torch.equal(result.images[key]["clean"], clean_refs[i])
        assert torch.equal(result.images[key]["attacked"], transferred[i])
    # The tau recorded in the attack's own passes, against the public Counterattack.tau (a pass of its own).
    for name, batch in (("tau_clean", clean_refs), ("tau_attacked", transferred), ("tau_adaptive", adaptive)):
        expected = defence.tau(metric.encoder, batch).tolist()
        assert [r[name] for r in result.records] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_a_group_larger_than_the_page_shows_lists_its_size(tmp_path):
    rows = [{"group": 1, "keep": int(i == 0), "path": f"{i}.png", "distance_to_first": 0} for i in range(7)]
    page = ParsedPage(write_dedup_page(tmp_path / "p.html", rows, max_members=5))
    (row,) = page.rows
    assert len(row["cells"]) == 5 and row["n"] == 7 and row["title"] == "group 1 \u00b7 7 images, 2 more in the CSV"
