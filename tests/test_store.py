"""Embedding stores: contents against an independent embedding path, bad files, resume, settings checks."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rpmetric
from rpmetric.stores import store as store_mod
from rpmetric.stores.store import EmbeddingStore, build_store, embed_images, list_files

ORIGINALS = [f"img{i}.png" for i in range(8)]
PLANTED = {"copy_noise.png": "img0.png", "copy_jpeg.jpg": "img3.png"}  # copy -> original
BAD = {"broken.png", "notes.txt"}


def make_image_folder(folder: Path, seed: int = 0) -> Path:
    """8 smooth random images of different sizes, 2 planted near-copies, a corrupt PNG and a text file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, name in enumerate(ORIGINALS):
        small = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8))
        arrays[name] = np.asarray(small.resize((56 - 2 * i, 40 + 4 * i), Image.BICUBIC))
        Image.fromarray(arrays[name]).save(folder / name)
    noisy = arrays["img0.png"].astype(int) + rng.integers(-2, 3, arrays["img0.png"].shape)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / "copy_noise.png")
    Image.fromarray(arrays["img3.png"]).save(folder / "copy_jpeg.jpg", quality=95)
    buf = io.BytesIO()
    Image.fromarray(arrays["img1.png"]).save(buf, "PNG")
    (folder / "broken.png").write_bytes(buf.getvalue()[:60])  # truncated: header only
    (folder / "notes.txt").write_text("not an image\n")
    (folder / ".hidden.png").write_bytes(buf.getvalue())  # hidden files are not walked
    return folder


def pil_tensor(path: Path) -> torch.Tensor:
    """[1, 3, H, W] in [0, 1] straight from PIL: a decoding path independent of rpmetric.images."""
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images") / "imgs")


@pytest.fixture(scope="module")
def store32(images, tiny_metric, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "s32"
    return build_store(images, out, tiny_metric, dtype="float32", shard_size=4, batch_size=3, num_workers=0,
                       progress=False)


def good_names():
    return sorted(ORIGINALS + list(PLANTED))


def test_store_holds_every_readable_file_in_sorted_order(store32, images):
    assert store32.paths == good_names()
    assert store32.files == [str(images.resolve() / p) for p in good_names()]
    assert len(store32) == 10 and store32.dim == 24 and store32.dtype == "float32"


def test_unreadable_files_are_listed_with_reasons(store32):
    skipped = {s["path"]: s["reason"] for s in store32.skipped}
    assert set(skipped) == BAD
    assert "cannot be read as an image" in skipped["notes.txt"]
    assert "broken.png" in skipped["broken.png"]


def pil_prepared(path: Path, size: int) -> torch.Tensor:
    """[1, 3, size, size] in [0, 1]: PIL's own bicubic resize of the shorter side and centre crop, in
    8 bits, as torchvision's transforms on PIL images do in the published protocols."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    img = img.resize((new_w, new_h), Image.BICUBIC).crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)


def test_embeddings_match_the_metric_on_each_image(store32, images, tiny_metric):
    emb = store32.embeddings()
    size = tiny_metric.spec.preprocessing.image_size
    with torch.no_grad():
        expected = torch.cat([tiny_metric.embed(pil_prepared(images / p, size)) for p in store32.paths])
        float_path = torch.cat([tiny_metric.embed(pil_tensor(images / p)) for p in store32.paths])
    # Images are resized in 8 bits, as PIL does: within its rounding (a level or two) of PIL's own
    # pixels, and no further from the metric's float resize of the full image than that allows.
    torch.testing.assert_close(emb, expected, atol=3e-4, rtol=0)
    torch.testing.assert_close(emb, float_path, atol=1e-3, rtol=0)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5, rtol=0)


def test_manifest_records_model_version_and_shards(store32):
    manifest = json.loads((store32.path / "manifest.json").read_text())
    assert manifest["rpmetric_version"] == rpmetric.__version__
    assert manifest["model"]["local_path"] == store32.model_ref
    # 12 walked files in shards of 4: 3 shards; the readable ones split 3 + 4 + 3.
    assert [s["count"] for s in manifest["shards"]] == [3, 4, 3]
    assert np.load(store32.path / "emb-00001.npy").dtype == np.float32


def test_float16_store_is_close_to_float32(images, tiny_metric, store32, tmp_path):
    half = build_store(images, tmp_path / "s16", tiny_metric, dtype="float16", num_workers=1, progress=False)
    assert np.load(half.path / "emb-00000.npy").dtype == np.float16
    assert half.paths == store32.paths
    torch.testing.assert_close(half.embeddings(), store32.embeddings(), atol=2e-3, rtol=0)


def test_interrupted_build_resumes_and_loses_nothing(images, tiny_metric, store32, tmp_path, monkeypatch):
    out = tmp_path / "s"
    real_write = store_mod._write_shard
    calls = []

    def write_then_die(*args):
        if calls:  # the process is killed while the second shard is pending
            raise KeyboardInterrupt
        calls.append(args[1])
        real_write(*args)

    monkeypatch.setattr(store_mod, "_write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_store(images, out, tiny_metric, dtype="float32", shard_size=4, batch_size=3, num_workers=0,
                    progress=False)
    assert sorted(p.name for p in out.glob("shard-*.json")) == ["shard-00000.json"]
    with pytest.raises(ValueError, match="unfinished"):
        EmbeddingStore(out)
    first_shard_time = (out / "emb-00000.npy").stat().st_mtime_ns

    monkeypatch.setattr(store_mod, "_write_shard", real_write)
    resumed = build_store(images, out, tiny_metric, dtype="float32", shard_size=4, batch_size=3, num_workers=0,
                          progress=False)
    assert (out / "emb-00000.npy").stat().st_mtime_ns == first_shard_time  # kept, not redone
    assert resumed.paths == store32.paths
    assert resumed.skipped == store32.skipped
    torch.testing.assert_close(resumed.embeddings(), store32.embeddings(), atol=1e-6, rtol=0)


def test_max_shards_stops_early_and_a_finished_store_is_not_rebuilt(images, tiny_metric, tmp_path):
    out = tmp_path / "s"
    kwargs = dict(dtype="float32", shard_size=5, num_workers=0, progress=False)
    assert build_store(images, out, tiny_metric, max_shards=2, **kwargs) is None
    assert len(list(out.glob("shard-*.json"))) == 2
    done = build_store(images, out, tiny_metric, **kwargs)
    assert len(done) == 10
    stamp = (out / "manifest.json").stat().st_mtime_ns
    again = build_store(images, out, tiny_metric, **kwargs)
    assert again.paths == done.paths and (out / "manifest.json").stat().st_mtime_ns == stamp


def test_changed_settings_refuse_to_resume_unless_overwrite(images, tiny_metric, tmp_path):
    out = tmp_path / "s"
    build_store(images, out, tiny_metric, dtype="float32", shard_size=5, num_workers=0, progress=False)
    with pytest.raises(ValueError, match="different dtype, shard_size; .* `overwrite=True`"):
        build_store(images, out, tiny_metric, dtype="float16", shard_size=4, num_workers=0, progress=False)
    (out / "keep-me.txt").write_text("unrelated")
    rebuilt = build_store(images, out, tiny_metric, dtype="float16", shard_size=4, num_workers=0, progress=False,
                          overwrite=True)
    assert rebuilt.dtype == "float16" and len(list(out.glob("shard-*.json"))) == 3
    assert (out / "keep-me.txt").exists()  # overwrite only removes the store's own files


def test_output_folder_errors(images, tiny_metric, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty and holds no manifest.json"):
        build_store(images, tmp_path / "full", tiny_metric, num_workers=0, progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        build_store(images, tmp_path / "afile", tiny_metric, num_workers=0, progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "float64"}, r"Argument `dtype` must be one of \('float16', 'float32'\), but got 'float64'"),
    ({"shard_size": 0}, r"Argument `shard_size` must be an integer >= 1, but got 0"),
    ({"batch_size": -1}, r"Argument `batch_size` must be an integer >= 1, but got -1"),
    ({"num_workers": -1}, r"Argument `num_workers` must be an integer >= 0, but got -1"),
])
def test_build_argument_errors(images, tiny_metric, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_store(images, tmp_path / "s", tiny_metric, progress=False, **kwargs)


def test_store_inside_its_source_folder_is_not_walked(tmp_path, tiny_metric):
    src = make_image_folder(tmp_path / "src")
    first = build_store(src, src / "store", tiny_metric, num_workers=0, progress=False)
    assert len(first) == 10
    # Only now does the store folder exist inside the source: a rebuild would otherwise walk its own
    # manifest and shards (and list them as unreadable images).
    rebuilt = build_store(src, src / "store", tiny_metric, num_workers=0, progress=False, overwrite=True)
    assert {s["path"] for s in rebuilt.skipped} == BAD and len(rebuilt.skipped) == len(BAD)
    assert rebuilt.paths == good_names()
    root, files = list_files(src, exclude=src / "store")
    assert not any(f.startswith("store/") for f in files)


def test_file_list_source(images, tiny_metric, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\n{images / 'img1.png'}\n\n{images / 'broken.png'}\n")
    root, files = list_files(listing)
    assert root == tmp_path.resolve() and files == [str(images / "img1.png"), str(images / "broken.png")]
    s = build_store(listing, tmp_path / "s", tiny_metric, num_workers=0, progress=False)
    assert s.files == [str(images / "img1.png")] and [x["path"] for x in s.skipped] == [str(images / "broken.png")]


def test_list_files_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="names no files"):
        list_files(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_files(tmp_path / "missing")


def test_empty_folder_is_an_error(tmp_path, tiny_metric):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files to embed"):
        build_store(tmp_path / "empty", tmp_path / "s", tiny_metric, progress=False)


def test_embed_images_reports_unreadable_files(images, tiny_metric, store32):
    emb, names, skipped = embed_images(tiny_metric, [images / "img2.png", images / "notes.txt"], num_workers=0)
    assert names == [str(images / "img2.png")] and [s["path"] for s in skipped] == [str(images / "notes.txt")]
    torch.testing.assert_close(emb[0], store32.embeddings()[store32.paths.index("img2.png")], atol=1e-6, rtol=0)


def count_encoder_calls(metric):
    """A forward hook counting calls of ``metric.encoder``; returns (counter list, hook handle)."""
    calls = []
    handle = metric.encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    return calls, handle


def test_embed_images_runs_the_encoder_once_per_batch(images, tiny_metric):
    calls, handle = count_encoder_calls(tiny_metric)
    try:
        emb, _, _ = embed_images(tiny_metric, [images / "img1.png", images / "img2.png"], num_workers=0)
        assert calls == [2]  # one batch, no extra pass to learn the embedding width
        calls.clear()
        emb, names, skipped = embed_images(tiny_metric, [images / "notes.txt"], num_workers=0)
        assert emb.shape == (0, 24) and names == [] and len(skipped) == 1
        assert calls == [1]  # nothing embedded: one dummy pass gives the width
    finally:
        handle.remove()


def test_model_input_is_what_the_store_embeds(store32, images, tiny_metric):
    x = store_mod.model_input(images / "img4.png", tiny_metric.spec.preprocessing)
    size = tiny_metric.spec.preprocessing.image_size
    assert x.dtype == torch.uint8 and x.shape == (3, size, size)
    # Within a level or two of PIL's own 8-bit bicubic resize and crop (an independent path).
    assert (x.float() - 255 * pil_prepared(images / "img4.png", size)[0]).abs().max() <= 2
    with torch.no_grad():
        emb = tiny_metric.embed(x[None].float() / 255)
    torch.testing.assert_close(emb[0], store32.embeddings()[store32.paths.index("img4.png")], atol=1e-6, rtol=0)


def test_labelled_rows(store32, images, tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\nimg2.png,y\nimg1.png,x\n")
    rows, labels = store32.labelled(csv_path)
    assert rows == [store32.paths.index("img1.png"), store32.paths.index("img2.png")] and labels == ["x", "y"]
    csv_path.write_text(f"path,label\n{images / 'broken.png'},z\n")  # only a file the store skipped
    with pytest.raises(ValueError, match="labels none of the images of store"):
        store32.labelled(csv_path)


def test_opening_errors(tmp_path, store32):
    with pytest.raises(FileNotFoundError, match="is not an embedding store"):
        EmbeddingStore(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="is not an rpmetric embedding manifest"):
        EmbeddingStore(tmp_path)


def test_read_labels(store32, images, tmp_path):
    csv_path = tmp_path / "labels.csv"
    relative_to_csv = os.path.relpath(images / "img1.png", tmp_path)
    csv_path.write_text(f"path,label\n{relative_to_csv},x\n"
                        "img2.png,y\n"  # as the store records it
                        f"{images / 'broken.png'},z\n")  # skipped by the store: ignored
    labels = store32.read_labels(csv_path)
    assert labels[store32.paths.index("img1.png")] == "x"
    assert labels[store32.paths.index("img2.png")] == "y"
    assert sum(label is not None for label in labels) == 2
    csv_path.write_text("path,label\nnope.png,a\n")
    with pytest.raises(ValueError, match="names 1 file\\(s\\) that store .* does not hold, e.g. 'nope.png'"):
        store32.read_labels(csv_path)
    csv_path.write_text("file,class\nimg1.png,a\n")
    with pytest.raises(ValueError, match="must have a header with columns path,label"):
        store32.read_labels(csv_path)
    with pytest.raises(FileNotFoundError, match="CSV file not found"):
        store32.read_labels(tmp_path / "missing.csv")


def test_a_different_model_warns_or_refuses(store32, tmp_path, images, tiny_metric):
    import tinymodels

    other_folder = tinymodels.save_open_clip(tmp_path / "other-vit", tinymodels.TINY_VIT_CFG, seed=1)
    with pytest.warns(UserWarning, match="differs from the model that built store"):
        store32.load_metric(str(other_folder), device="cpu")
    other_metric = rpmetric.RobustDistance(str(other_folder), device="cpu")
    other = build_store(images, tmp_path / "other", other_metric, num_workers=0, progress=False)
    with pytest.raises(ValueError, match="were built with different models"):
        store32.check_same_model(other)


# -- symlinks, empty results, changed folders, list files -----------------------------------------
def save_image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(path)
    return path


def linked_folder(tmp_path: Path) -> Path:
    """A source folder that reaches images through a symlinked folder and a symlinked file, with two loops."""
    elsewhere = tmp_path / "elsewhere"
    save_image(elsewhere / "a.png", 1)
    save_image(elsewhere / "b.png", 2)
    root = tmp_path / "root"
    save_image(root / "own.png", 3)
    (root / "link").symlink_to(elsewhere, target_is_directory=True)
    (root / "f.png").symlink_to(elsewhere / "a.png")
    (root / "sub").mkdir()
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)  # a loop through an ancestor
    (root / "self").symlink_to(".", target_is_directory=True)  # a loop onto itself
    (elsewhere / "up").symlink_to(root, target_is_directory=True)  # a loop back from the linked folder
    return root


def test_symlinked_folders_and_files_are_followed_and_loops_end(tmp_path, tiny_metric):
    root = linked_folder(tmp_path)
    # Each real folder is walked once, so the loops add nothing: no hang, no endless recursion.
    assert list_files(root) == (root.resolve(), ["f.png", "link/a.png", "link/b.png", "own.png"])
    store = build_store(root, tmp_path / "s", tiny_metric, dtype="float32", num_workers=0, progress=False)
    assert store.paths == ["f.png", "link/a.png", "link/b.png", "own.png"]
    direct, _, _ = embed_images(tiny_metric, [tmp_path / "elsewhere" / n for n in ("a.png", "a.png", "b.png")])
    torch.testing.assert_close(store.embeddings()[:3], direct, atol=1e-6, rtol=0)


def test_a_store_without_one_readable_image_is_an_error(tmp_path, tiny_metric):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("text")
    (src / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"None of the 2 files of .*src could be read as an image \(e.g. .*a.txt "
                                         r"cannot be read as an image"):
        build_store(src, tmp_path / "s", tiny_metric, num_workers=0, progress=False)
    with pytest.raises(ValueError, match=r"None of the 2 files"):  # and again when the finished store is reopened
        build_store(src, tmp_path / "s", tiny_metric, num_workers=0, progress=False)


def changed_copy(tmp_path: Path) -> Path:
    """make_image_folder, as it is before changing it: the test then edits it."""
    return make_image_folder(tmp_path / "src")


def change_folder(src: Path) -> None:
    """One file added, one removed, one rewritten (same name, new pixels and mtime)."""
    save_image(src / "img10.png", 10)
    (src / "img5.png").unlink()
    save_image(src / "img2.png", 22)
    stat = (src / "img2.png").stat()
    os.utime(src / "img2.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


KW = dict(dtype="float32", shard_size=4, batch_size=3, num_workers=0, progress=False)


def test_a_changed_folder_is_refused_naming_the_change_and_the_fix(tmp_path, tiny_metric):
    src = changed_copy(tmp_path)
    build_store(src, tmp_path / "s", tiny_metric, **KW)
    change_folder(src)
    with pytest.raises(ValueError, match=r"changed since store .* was built: 1 added, 1 removed, 1 changed file\(s\), "
                                         r"e.g. 'img10.png'; pass `update=True` .* or `overwrite=True`"):
        build_store(src, tmp_path / "s", tiny_metric, **KW)


def test_a_touched_file_counts_as_changed(tmp_path, tiny_metric):
    src = changed_copy(tmp_path)
    build_store(src, tmp_path / "s", tiny_metric, **KW)
    stat = (src / "img1.png").stat()
    os.utime(src / "img1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match=r"0 added, 0 removed, 1 changed file\(s\), e.g. 'img1.png'"):
        build_store(src, tmp_path / "s", tiny_metric, **KW)


def test_update_embeds_only_new_and_changed_files_and_drops_removed_ones(tmp_path, tiny_metric):
    src = changed_copy(tmp_path)
    build_store(src, tmp_path / "s", tiny_metric, **KW)
    change_folder(src)
    calls, handle = count_encoder_calls(tiny_metric)
    try:
        updated = build_store(src, tmp_path / "s", tiny_metric, update=True, **KW)
    finally:
        handle.remove()
    assert sum(calls) == 2  # img10.png and the rewritten img2.png; nothing else is decoded again
    fresh = build_store(src, tmp_path / "fresh", tiny_metric, **KW)
    assert updated.paths == fresh.paths and "img5.png" not in updated.paths
    assert updated.skipped == fresh.skipped
    torch.testing.assert_close(updated.embeddings(), fresh.embeddings(), atol=1e-6, rtol=0)
    direct, _, _ = embed_images(tiny_metric, [src / "img2.png"])
    torch.testing.assert_close(updated.embeddings()[updated.paths.index("img2.png")], direct[0], atol=1e-6, rtol=0)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(p.name for p in (tmp_path / "fresh").iterdir())
    stamp = (tmp_path / "s" / "manifest.json").stat().st_mtime_ns
    assert build_store(src, tmp_path / "s", tiny_metric, **KW).paths == fresh.paths  # now up to date
    assert (tmp_path / "s" / "manifest.json").stat().st_mtime_ns == stamp


def interrupted_update(tmp_path, metric, monkeypatch, writes_before_dying: int) -> Path:
    """The source folder of a store in tmp_path/s whose update, after change_folder, was killed
    after writing that many shards."""
    src = changed_copy(tmp_path)
    build_store(src, tmp_path / "s", metric, **KW)
    change_folder(src)
    real_write = store_mod._write_shard
    writes = []

    def write_then_die(*args):
        if len(writes) == writes_before_dying:
            raise KeyboardInterrupt
        writes.append(args[1])
        real_write(*args)

    monkeypatch.setattr(store_mod, "_write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_store(src, tmp_path / "s", metric, update=True, **KW)
    monkeypatch.setattr(store_mod, "_write_shard", real_write)
    return src


def test_an_interrupted_update_resumes(tmp_path, tiny_metric, monkeypatch):
    src = interrupted_update(tmp_path, tiny_metric, monkeypatch, 2)
    kept = (tmp_path / "s" / "emb-00000.npy").stat().st_mtime_ns
    resumed = build_store(src, tmp_path / "s", tiny_metric, **KW)  # a plain rerun finishes the update
    assert (tmp_path / "s" / "emb-00000.npy").stat().st_mtime_ns == kept
    fresh = build_store(src, tmp_path / "fresh", tiny_metric, **KW)
    assert resumed.paths == fresh.paths and resumed.skipped == fresh.skipped
    torch.testing.assert_close(resumed.embeddings(), fresh.embeddings(), atol=1e-6, rtol=0)


def test_a_folder_changed_during_an_interrupted_build_is_refused(tmp_path, tiny_metric):
    src = changed_copy(tmp_path)
    assert build_store(src, tmp_path / "s", tiny_metric, max_shards=1, **KW) is None
    change_folder(src)
    with pytest.raises(ValueError, match="1 added, 1 removed, 1 changed"):
        build_store(src, tmp_path / "s", tiny_metric, **KW)
    updated = build_store(src, tmp_path / "s", tiny_metric, update=True, **KW)
    fresh = build_store(src, tmp_path / "fresh", tiny_metric, **KW)
    torch.testing.assert_close(updated.embeddings(), fresh.embeddings(), atol=1e-6, rtol=0)


def test_update_and_overwrite_exclude_each_other(tmp_path, tiny_metric, images):
    with pytest.raises(ValueError, match=r"pass update or overwrite, not both"):
        build_store(images, tmp_path / "s", tiny_metric, update=True, overwrite=True, progress=False)


def test_list_paths_resolve_against_the_list_folder_and_a_missing_one_is_named(tmp_path, tiny_metric, monkeypatch):
    lists = tmp_path / "lists"
    save_image(lists / "sub" / "a.png", 1)
    listing = lists / "list.txt"
    listing.write_text("sub/a.png\n")
    monkeypatch.chdir(tmp_path)  # not the list's folder: relative paths still resolve against the list
    assert list_files(Path("lists/list.txt"))[0] == lists.resolve()
    assert build_store(Path("lists/list.txt"), tmp_path / "s", tiny_metric, num_workers=0, progress=False).files == [
        str(lists.resolve() / "sub" / "a.png")]
    listing.write_text("# header\nsub/a.png\nsub/nope.png\nother.png\n")
    with pytest.raises(FileNotFoundError, match=r"list.txt, line 3: 'sub/nope.png' resolves to "
                                                r".*lists/sub/nope.png, which does not exist \(1 more listed file is "
                                                r"missing\); paths in a list file are relative to its folder"):
        list_files(listing)


def test_an_interrupted_update_of_a_folder_that_changes_again_updates_again(tmp_path, tiny_metric, monkeypatch):
    src = interrupted_update(tmp_path, tiny_metric, monkeypatch, 1)
    save_image(src / "a-first.png", 30)  # shifts every file by one place in the plan
    (src / "img7.png").unlink()
    calls, handle = count_encoder_calls(tiny_metric)
    try:
        updated = build_store(src, tmp_path / "s", tiny_metric, update=True, **KW)
    finally:
        handle.remove()
    fresh = build_store(src, tmp_path / "fresh", tiny_metric, **KW)
    assert updated.paths == fresh.paths and updated.skipped == fresh.skipped
    torch.testing.assert_close(updated.embeddings(), fresh.embeddings(), atol=1e-6, rtol=0)
    assert sum(calls) <= 3  # the new file, and at most the two the interrupted update had not embedded yet
