"""The embed, search, dedup and classify commands end to end, and torchrun's 2-process embed."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from rpmetric.cli import main
from rpmetric.stores.store import EmbeddingStore
from test_store import ORIGINALS, PLANTED, make_image_folder, pil_tensor


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("cli-images") / "imgs")


def embed_args(images, out, model):
    return ["embed", str(images), "--out", str(out), "--model", str(model), "--device", "cpu",
            "--dtype", "float32", "--shard-size", "4", "--batch-size", "3", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def store(images, vit_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-stores") / "store"
    assert main(embed_args(images, out, vit_folder)) == 0
    return out


@pytest.fixture(scope="module")
def planted_threshold(images, tiny_metric):
    """A threshold between the planted copies' distances and all other pairs' (computed pairwise here)."""
    names = ORIGINALS + list(PLANTED)
    x = {n: pil_tensor(images / n) for n in names}
    planted_pairs = {frozenset(p) for p in PLANTED.items()}
    with torch.no_grad():
        d = {frozenset((a, b)): tiny_metric(x[a], x[b]).item() for a, b in itertools.combinations(names, 2)}
    planted = max(v for k, v in d.items() if k in planted_pairs)
    others = min(v for k, v in d.items() if k not in planted_pairs)
    assert planted < others / 10  # the data has a clear gap, else the test would prove nothing
    return (planted + others) / 2


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_embed_reports_the_store(capsys, images, vit_folder, tmp_path):
    code, out, _ = run(capsys, *embed_args(images, tmp_path / "s", vit_folder))
    assert code == 0 and "10 images embedded" in out and "2 unreadable files skipped" in out


def test_search_table_and_json(capsys, store, images):
    code, out, _ = run(capsys, "search", store, images / "copy_noise.png", "--k", "2", "--device", "cpu")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["query", "rank", "distance", "path"]
    rank, distance, path = lines[2].split()[1:]
    assert (rank, path) == ("1", str(images.resolve() / "copy_noise.png")) and float(distance) < 1e-6
    assert lines[3].split()[-1] == str(images.resolve() / "img0.png")
    code, out, _ = run(capsys, "search", store, images / "img5.png", "--k", "3", "--json", "--index", "exact",
                       "--device", "cpu")
    result = json.loads(out)
    assert result["index"] == "exact"
    neighbours = result["results"][0]["neighbours"]
    assert [n["rank"] for n in neighbours] == [1, 2, 3] and neighbours[0]["distance"] < 1e-6
    assert neighbours[0]["path"].endswith("img5.png")


def test_search_with_a_query_store_exact_equals_faiss(capsys, store):
    outputs = []
    for index in ("exact", "faiss"):
        code, out, _ = run(capsys, "search", store, "--query-store", store, "--k", "4", "--json", "--index", index)
        assert code == 0
        outputs.append(json.loads(out)["results"])
    paths = [[n["path"] for n in r["neighbours"]] for r in outputs[0]]
    assert paths == [[n["path"] for n in r["neighbours"]] for r in outputs[1]]
    assert all(p[0] == r["query"] for p, r in zip(paths, outputs[0]))  # each image finds itself first


def read_csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_dedup_finds_exactly_the_planted_groups(capsys, store, images, planted_threshold, tmp_path):
    out_csv = tmp_path / "dups.csv"
    code, _, err = run(capsys, "dedup", store, "--threshold", planted_threshold, "--out", out_csv)
    assert code == 0 and "2 groups of near-duplicates covering 4 of 10 images" in err
    rows = read_csv(out_csv.read_text())
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], []).append((os.path.basename(r["path"]), r["keep"]))
    # Store order is sorted by path: copy_jpeg.jpg, copy_noise.png, img0.png, ... so copies come first.
    assert sorted(groups.values()) == [[("copy_jpeg.jpg", "1"), ("img3.png", "0")],
                                      [("copy_noise.png", "1"), ("img0.png", "0")]]
    assert all(float(r["distance_to_first"]) <= planted_threshold for r in rows)
    # A threshold just below the smallest planted distance finds nothing.
    code, out, _ = run(capsys, "dedup", store, "--threshold", 0.0)
    assert read_csv(out) == []


def test_dedup_against_flags_images_close_to_the_other_store(capsys, store, images, vit_folder, tmp_path,
                                                            planted_threshold):
    protected = tmp_path / "protected"
    protected.mkdir()
    (protected / "secret.png").write_bytes((images / "img3.png").read_bytes())
    assert run(capsys, *embed_args(protected, tmp_path / "pstore", vit_folder))[0] == 0
    code, out, err = run(capsys, "dedup", store, "--against", tmp_path / "pstore", "--threshold", planted_threshold)
    assert code == 0 and "2 of 10 images are within" in err
    rows = read_csv(out)
    assert [os.path.basename(r["path"]) for r in rows] == ["copy_jpeg.jpg", "img3.png"]
    assert {os.path.basename(r["match"]) for r in rows} == {"secret.png"}
    assert float(rows[1]["distance"]) < 1e-6  # the same image: 0 up to rounding, printed as it is


def test_dedup_refuses_index_options_it_would_ignore(capsys, store):
    code, _, err = run(capsys, "dedup", store, "--threshold", 0.1, "--index", "faiss")
    assert code == 2 and "--index chooses how --against OTHER_STORE is searched" in err


def test_unreadable_files_in_a_query_folder_are_skipped_and_listed(capsys, store, images, tmp_path):
    folder = tmp_path / "queries"
    folder.mkdir()
    for name in ("img1.png", "notes.txt", "broken.png"):
        (folder / name).write_bytes((images / name).read_bytes())
    code, out, err = run(capsys, "search", store, folder, "--k", "1", "--json", "--device", "cpu")
    assert code == 0
    results = json.loads(out)["results"]
    assert [os.path.basename(r["query"]) for r in results] == ["img1.png"]
    assert os.path.basename(results[0]["neighbours"][0]["path"]) == "img1.png"
    skipped = err.strip().splitlines()
    assert len(skipped) == 2 and all(line.startswith("rpmetric search: skipped ") for line in skipped)
    assert "broken.png" in skipped[0] and "notes.txt" in skipped[1]


def test_classify_votes_with_labelled_images_only(capsys, store, images, tmp_path):
    labels = tmp_path / "labels.csv"
    # Originals labelled by parity; the planted copies stay unlabelled, so they cannot vote.
    labels.write_text("path,label\n" + "".join(f"{images / n},{'even' if i % 2 == 0 else 'odd'}\n"
                                               for i, n in enumerate(ORIGINALS)))
    code, out, _ = run(capsys, "classify", store, images / "copy_noise.png", images / "copy_jpeg.jpg",
                       "--labels", labels, "--k", "1", "--json", "--device", "cpu")
    assert code == 0
    result = json.loads(out)
    assert [r["label"] for r in result["results"]] == ["even", "odd"]  # img0 -> even, img3 -> odd
    assert os.path.basename(result["results"][0]["neighbours"][0]["path"]) == "img0.png"
    code, out, _ = run(capsys, "classify", store, images / "copy_noise.png", "--labels", labels, "--k", "3",
                       "--vote", "distance", "--device", "cpu")
    assert code == 0 and out.splitlines()[0].split() == ["query", "label", "score"]
    assert out.splitlines()[2].split()[1] == "even"  # the copy of img0 is far nearer than the rest


@pytest.mark.parametrize("argv, message", [
    (["search", "{store}", "--k", "3"], "give query images \\(QUERY...\\) or --query-store STORE"),
    (["search", "{store}", "{images}/img1.png", "--query-store", "{store}"], "exactly one of them"),
    (["search", "{store}", "{images}/notes.txt"], "1 query file\\(s\\) cannot be read"),
    (["search", "{store}", "{images}/missing.png"], "Query .*missing.png does not exist"),
    (["search", "{images}", "--query-store", "{store}"], "is not an embedding store"),
    (["dedup", "{store}", "--threshold", "3"], "must be a cosine distance in \\[0, 2\\], but got 3.0"),
    (["classify", "{store}", "{images}/img1.png", "--labels", "{images}/none.csv"], "CSV file not found"),
])
def test_user_errors_exit_2_with_one_line(capsys, store, images, argv, message):
    code, _, err = run(capsys, *[a.format(store=store, images=images) for a in argv])
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


@pytest.mark.parametrize("argv, message", [
    (["search", "{store}", "{images}/img1.png", "--k", "0"], "argument --k: must be at least 1, but got 0"),
    (["search", "{store}", "{images}/img1.png", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["search", "{store}", "{images}/img1.png", "--index", "ivf", "--nprobe", "0"],
     "argument --nprobe: must be at least 1, but got 0"),
    (["classify", "{store}", "{images}/img1.png", "--labels", "l.csv", "--nprobe", "-3"],
     "argument --nprobe: must be at least 1, but got -3"),
    (["dedup", "{store}", "--threshold", "0.1", "--nprobe", "0"], "argument --nprobe: must be at least 1"),
    (["embed", "{images}", "--out", "x", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["embed", "{images}", "--out", "x", "--workers", "-1"], "argument --workers: must be at least 0, but got -1"),
    (["embed", "{images}", "--out", "x", "--shard-size", "0"], "argument --shard-size: must be at least 1"),
    (["eval", "retrieval", "{store}", "--queries", "q.csv", "--task", "duplicate", "--k", "0"],
     "argument --k: must be at least 1, but got 0"),
    (["eval", "retrieval", "{store}", "--queries", "q.csv", "--task", "duplicate", "--batch-size", "0"],
     "argument --batch-size: must be at least 1, but got 0"),
])
def test_bad_counts_are_refused_while_parsing(capsys, store, images, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(store=store, images=images) for a in argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_faiss_is_a_one_line_error(capsys, store, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    code, _, err = run(capsys, "search", store, "--query-store", store, "--index", "faiss")
    assert code == 2 and "pip install faiss-cpu" in err


# `python -m rpmetric` with every shard write logged as "RANK k" (the module is patched, so the
# real build code runs and calls it).
LOGGING_LAUNCHER = """
import os, sys
import rpmetric.stores.store as store
from rpmetric.cli import main

write = store._write_shard

def logged(out, k, *rest, **kw):
    with open(os.environ["SHARD_LOG"], "a") as f:
        f.write(f"{os.environ['RANK']} {k}\\n")
    write(out, k, *rest, **kw)

store._write_shard = logged
sys.exit(main(sys.argv[1:]))
"""


def test_torchrun_two_processes_write_the_same_store(store, images, vit_folder, tmp_path):
    out, log, launcher = tmp_path / "two", tmp_path / "shards.log", tmp_path / "launch.py"
    launcher.write_text(LOGGING_LAUNCHER)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(launcher), *embed_args(images, out, vit_folder)]
    env = dict(os.environ, OMP_NUM_THREADS="1", SHARD_LOG=str(log))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = EmbeddingStore(store), EmbeddingStore(out)
    assert two.paths == one.paths and two.skipped == one.skipped
    torch.testing.assert_close(two.embeddings(), one.embeddings(), atol=1e-5, rtol=0)
    # 12 files in shards of 4: rank r writes shards r, r + 2, ...
    writes = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    assert sorted(writes) == [(0, 0), (0, 2), (1, 1)]


def test_eval_retrieval_knn_and_duplicate(capsys, store, images, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{images / n},{n[3]}\n" for n in ORIGINALS))  # label = digit
    queries = tmp_path / "queries.csv"
    queries.write_text(f"path,label\n{images / 'copy_noise.png'},0\n{images / 'copy_jpeg.jpg'},3\n"
                       f"{images / 'copy_jpeg.jpg'},5\n")
    code, out, _ = run(capsys, "eval", "retrieval", store, "--queries", queries, "--labels", labels, "--k", "1",
                       "--device", "cpu", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["clean_accuracy"] == pytest.approx(2 / 3) and result["robust_accuracy"] is None
    dup = tmp_path / "dup.csv"
    dup.write_text(f"path,match\n{images / 'copy_noise.png'},img0.png\n{images / 'copy_jpeg.jpg'},img3.png\n")
    # Queries are copies; the store holds both copy and original, so the nearest is the copy itself,
    # not the listed match: clean accuracy 0. Against the copies as matches it is 1.
    code, out, _ = run(capsys, "eval", "retrieval", store, "--queries", dup, "--task", "duplicate",
                       "--device", "cpu", "--json")
    assert json.loads(out)["clean_accuracy"] == 0.0
    dup.write_text(f"path,match\n{images / 'img5.png'},img5.png\n{images / 'img6.png'},img6.png\n")
    out_json = tmp_path / "r.json"
    code, out, _ = run(capsys, "eval", "retrieval", store, "--queries", dup, "--task", "duplicate", "--device", "cpu",
                       "--attack", "linf", "--eps", "8", "--steps", "5", "--out", out_json)
    assert code == 0 and out.splitlines()[0].split()[:3] == ["task", "queries", "clean"]
    result = json.loads(out_json.read_text())
    assert result["clean_accuracy"] == 1.0 and result["attack"]["eps"] == pytest.approx(8 / 255)
    assert result["records"][0]["truth"].endswith("img5.png")
    assert result["robust_accuracy"] <= result["clean_accuracy"]


def test_eval_retrieval_n_samples_limits_the_attack_not_the_clean_score(capsys, store, images, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{images / n},{n[3]}\n" for n in ORIGINALS))
    queries = tmp_path / "queries.csv"
    # As above: the 1-NN of each copy is its original, so the labels 0 and 3 are right and 5 is wrong.
    queries.write_text(f"path,label\n{images / 'copy_noise.png'},0\n{images / 'copy_jpeg.jpg'},3\n"
                       f"{images / 'copy_jpeg.jpg'},5\n")
    code, out, _ = run(capsys, "eval", "retrieval", store, "--queries", queries, "--labels", labels, "--k", "1",
                       "--device", "cpu", "--json", "--attack", "linf", "--eps", "0", "--steps", "1",
                       "--n-samples", "1")
    assert code == 0
    result = json.loads(out)
    assert result["n"] == 3 and result["clean_accuracy"] == pytest.approx(2 / 3)
    assert result["n_attacked"] == 1 and result["robust_accuracy"] == 1.0  # eps 0 cannot change a decision
    assert ["attacked" in r for r in result["records"]] == [True, False, False]


@pytest.mark.parametrize("extra, message", [
    (["--task", "knn"], "--labels is needed with --task knn"),
    (["--task", "duplicate", "--eps", "4"], "--eps only apply to a robust evaluation; add --attack"),
])
def test_eval_retrieval_errors(capsys, store, tmp_path, extra, message):
    queries = tmp_path / "q.csv"
    queries.write_text("path,match\nx.png,img0.png\n")
    code, _, err = run(capsys, "eval", "retrieval", store, "--queries", queries, *extra)
    assert code == 2 and message in err


def test_eval_retrieval_help_speaks_of_queries_and_has_no_eot(capsys):
    from rpmetric.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "retrieval", "--help"])
    out = capsys.readouterr().out
    assert "attack only the first N queries" in out and "triplets" not in out
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "retrieval", "store", "--queries", "q.csv", "--eot-samples", "2"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --eot-samples" in capsys.readouterr().err


# -- embed: symlinks, empty results, changed folders, list files ----------------------------------
def test_embed_follows_a_symlinked_folder(capsys, vit_folder, tmp_path):
    from test_store import save_image

    save_image(tmp_path / "real" / "a.png", 1)
    save_image(tmp_path / "real" / "b.png", 2)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "src", target_is_directory=True)
    code, out, err = run(capsys, *embed_args(tmp_path / "src", tmp_path / "s", vit_folder))
    assert code == 0 and "2 images embedded" in out, err
    assert EmbeddingStore(tmp_path / "s").paths == ["link/a.png", "link/b.png"]


@pytest.mark.parametrize("make, message", [
    (lambda src: (src / "a.txt").write_text("x"), r"None of the 1 files of .*src could be read as an image"),
    (lambda src: (src / ".hidden.png").write_text("x"), r"Input .*src holds no files to embed"),
    (lambda src: (src / "gone").symlink_to(src.parent / "nowhere", target_is_directory=True),
     r"Input .*src holds no files to embed"),
], ids=["unreadable-only", "hidden-only", "dangling-link"])
def test_embed_with_nothing_embedded_is_an_error(capsys, vit_folder, tmp_path, make, message):
    src = tmp_path / "src"
    src.mkdir()
    make(src)
    code, out, err = run(capsys, *embed_args(src, tmp_path / "s", vit_folder))
    assert code == 2 and "embedded" not in out
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_embed_refuses_a_changed_folder_and_updates_it_with_update(capsys, vit_folder, tmp_path):
    from test_store import change_folder

    src = make_image_folder(tmp_path / "src")
    assert run(capsys, *embed_args(src, tmp_path / "s", vit_folder))[0] == 0
    change_folder(src)
    code, _, err = run(capsys, *embed_args(src, tmp_path / "s", vit_folder))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(r"1 added, 1 removed, 1 changed file\(s\), e.g. 'img10.png'; pass --update", err), err
    code, out, err = run(capsys, *embed_args(src, tmp_path / "s", vit_folder), "--update")
    assert code == 0 and "10 images embedded" in out, err
    paths = EmbeddingStore(tmp_path / "s").paths
    assert "img10.png" in paths and "img5.png" not in paths
    with pytest.raises(SystemExit) as exit_info:
        main(embed_args(src, tmp_path / "s", vit_folder) + ["--update", "--overwrite"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_embed_names_a_missing_listed_file_and_how_list_paths_resolve(capsys, vit_folder, tmp_path):
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "files.txt"
    listing.write_text("# images\nimgs/a.png\n")
    code, _, err = run(capsys, *embed_args(listing, tmp_path / "s", vit_folder))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(r"files.txt, line 2: 'imgs/a.png' resolves to .*lists/imgs/a.png, which does not exist; "
                     r"paths in a list file are relative to its folder", err), err
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "relative to the list file's folder" in help_text and "--update" in help_text


def test_embed_checks_its_source_before_loading_the_model(capsys, tmp_path):
    code, _, err = run(capsys, "embed", tmp_path / "nope", "--out", tmp_path / "s", "--model", tmp_path / "no-model")
    assert code == 2 and re.search(r"Input .*nope does not exist", err), err


def test_eval_retrieval_streams_a_store_above_the_embeddings_limit(capsys, store, images, tmp_path, monkeypatch):
    from rpmetric.stores import store as store_mod

    opened = EmbeddingStore(store)
    limit = 6 * opened.dim * 4  # bytes of float32: the whole store is above it, its 6 labelled rows are not
    monkeypatch.setattr(store_mod, "EMBEDDINGS_LIMIT", limit)

    def refuse(self, *args, **kwargs):
        raise AssertionError("embeddings() was called on a store above the limit")

    monkeypatch.setattr(EmbeddingStore, "embeddings", refuse)
    assert len(opened) * opened.dim * 4 > limit
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{images / n},{n[3]}\n" for n in ORIGINALS[:6]))
    queries = tmp_path / "queries.csv"
    # As in the unlimited test above: the 1-NN of each copy is its original (labels 0 and 3 right, 5 wrong).
    queries.write_text(f"path,label\n{images / 'copy_noise.png'},0\n{images / 'copy_jpeg.jpg'},3\n"
                       f"{images / 'copy_jpeg.jpg'},5\n")
    code, out, err = run(capsys, "eval", "retrieval", store, "--queries", queries, "--labels", labels, "--k", "1",
                         "--device", "cpu", "--json", "--attack", "linf", "--eps", "0", "--steps", "1")
    assert code == 0, err
    result = json.loads(out)
    assert result["clean_accuracy"] == pytest.approx(2 / 3) and result["robust_accuracy"] == pytest.approx(2 / 3)
    dup = tmp_path / "dup.csv"
    dup.write_text(f"path,match\n{images / 'img5.png'},img5.png\n{images / 'img6.png'},img6.png\n")
    code, out, err = run(capsys, "eval", "retrieval", store, "--queries", dup, "--task", "duplicate",
                         "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["clean_accuracy"] == 1.0
    # An attack's surrogate would hold every stored row as float32: refused in one line, exit 2.
    code, _, err = run(capsys, "eval", "retrieval", store, "--queries", dup, "--task", "duplicate",
                       "--device", "cpu", "--attack", "linf", "--steps", "1")
    assert code == 2 and f"surrogate classifier holds its {len(opened)} reference rows" in err and "Traceback" not in err
