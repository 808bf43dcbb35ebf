"""The Ray engine (rpmetric.stores.ray) on a local cluster this module starts: the store equals the
one a single process writes (folder and WebDataset sources), resume keeps finished shards, an actor
killed mid-batch is retried without losing or duplicating a row, and embed_dataset agrees with the
metric's own embeddings; the image values it takes, and the CLI's errors. Four Ray pipelines in
all: each starts actors that import torch and load the model, seconds apiece."""

from __future__ import annotations

import builtins
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rpmetric
import rpmetric.scale
from rpmetric.cli import main
from rpmetric.models.preprocess import resize_and_crop
from rpmetric.stores import ray as engine  # imports without ray: ray is imported when a pipeline runs
from rpmetric.stores.store import EmbeddingStore, build_store, embed_images
from storecheck import records
from test_sources import images, tars  # noqa: F401  (module fixtures: images, and tar shards made from them)

# float16 rounds values in [0.5, 1) to steps of 2**-11: a 1e-7 difference can move one step.
FLOAT16_STEP = 2.0 ** -11


@pytest.fixture(scope="module")
def ray():
    """The ray module, connected to one local two-CPU cluster for the whole module (starting Ray
    takes seconds). Objects of this module (the factory below) are pickled by value, as the
    cluster's workers cannot import tests/."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    plain_print = builtins.print  # ray.init replaces print (tqdm_ray.safe_print) and never puts it back
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()
    builtins.print = plain_print  # later tests (in this process) see Python's own print


pytestmark = pytest.mark.slow  # Ray starts worker processes: seconds per pipeline


@pytest.fixture(scope="module")
def folder_reference(images, tiny_metric, tmp_path_factory):  # noqa: F811
    """The single-process store of the image folder, in float32 with 4 files a shard (3 shards)."""
    return build_store(images, tmp_path_factory.mktemp("ref") / "folder", tiny_metric, dtype="float32",
                       shard_size=4, batch_size=4, num_workers=0, progress=False)


def assert_same_store(got: EmbeddingStore, want: EmbeddingStore, atol: float) -> None:
    assert records(got.path) == records(want.path)  # paths, order, skipped, shards, model, plan...
    assert len(got.paths) == len(set(got.paths))
    np.testing.assert_allclose(got.embeddings().numpy(), want.embeddings().numpy(), atol=atol)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


class KillFirstBatch:
    """A model factory for the actors: the process that runs the first forward pass exits there,
    without cleanup (as a lost node or an OOM kill would), once; the marker file remembers it."""

    def __init__(self, model: str, marker: Path):
        self.model, self.marker = model, str(marker)

    def __call__(self):
        metric = rpmetric.RobustDistance(self.model, device="cpu")
        encoder, marker = metric.encoder, self.marker
        forward = encoder.forward

        def dying_forward(x):
            if not os.path.exists(marker):
                Path(marker).write_text(str(os.getpid()))
                os._exit(1)
            return forward(x)

        encoder.forward = dying_forward
        return metric


def test_cli_ray_folder_store_equals_single_process(ray, images, folder_reference, vit_folder, tmp_path,  # noqa: F811
                                                    capsys):
    out = tmp_path / "ray"
    code = main(["embed", str(images), "--out", str(out), "--model", str(vit_folder), "--engine", "ray",
                 "--num-workers", "2", "--dtype", "float32", "--shard-size", "4", "--batch-size", "3", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "10 images embedded" in capsys.readouterr().out
    # Shard files and their names, manifest, row order and skipped files as one process writes them.
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in folder_reference.path.iterdir())
    assert_same_store(EmbeddingStore(out), folder_reference, atol=1e-5)


def test_webdataset_store_equals_single_process_resume_and_a_killed_actor(ray, tars, tiny_metric, vit_folder,  # noqa: F811
                                                                         tmp_path):
    """Shard 0 is written by one process (a build stopped after one shard), the rest by Ray, whose
    only actor dies in its first batch: Ray restarts it and retries the batch, and no row of the
    store is missing or duplicated. (One pipeline for all three: each costs seconds of actor start.)"""
    pattern = tars / "{00000..00002}.tar"  # with a corrupt sample and a truncated shard
    whole = build_store(pattern, tmp_path / "whole", tiny_metric, batch_size=4, progress=False)
    assert build_store(pattern, tmp_path / "part", tiny_metric, batch_size=2, progress=False, max_shards=1) is None
    first = [tmp_path / "part" / name for name in ("emb-00000.npy", "shard-00000.json")]
    before = [(p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in first]
    marker = tmp_path / "killed"
    store = engine.build_store(pattern, tmp_path / "part", tiny_metric, num_workers=1, batch_size=2, progress=False,
                               model=KillFirstBatch(str(vit_folder), marker))
    assert marker.is_file() and int(marker.read_text()) != os.getpid()  # an actor did die in its first batch
    assert [(p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in first] == before  # shard 0 kept
    assert_same_store(store, whole, atol=FLOAT16_STEP)  # rows once each, in order
    assert any("cannot be read to its end" in s["reason"] for s in store.skipped)  # the truncated shard
    assert any(s["path"] == "bad000001" for s in store.skipped)  # the corrupt sample
    assert store.urls == whole.urls and store.captions == whole.captions


def test_embed_dataset_equals_the_metrics_embeddings(ray, images, tiny_metric):  # noqa: F811
    """read_binary_files: image file bytes of several sizes (resized in the tasks), a corrupt PNG and a text file."""
    ds = ray.data.read_binary_files(str(images), include_paths=True)
    rows = {Path(r["path"]).name: r for r in
            rpmetric.scale.embed_dataset(ds, str(tiny_metric.spec.local_path), image_column="bytes", batch_size=3,
                                         num_workers=1).take_all()}
    emb, paths, skipped = embed_images(tiny_metric, sorted(p for p in images.iterdir() if not p.name.startswith(".")))
    assert sorted(rows) == sorted(Path(p).name for p in paths + [s["path"] for s in skipped])  # each row once
    got = np.stack([rows[Path(p).name]["embedding"] for p in paths])
    np.testing.assert_allclose(got, emb.numpy(), atol=1e-5)
    assert all(rows[Path(p).name]["embedding_error"] == "" for p in paths)
    for name in ("broken.png", "notes.txt"):
        assert f"{name} cannot be read as an image" in rows[name]["embedding_error"]
        assert np.isnan(rows[name]["embedding"]).all()


@pytest.mark.parametrize("form", ["bytes", "struct", "rgb", "rgba", "grey", "grey1"])
def test_image_values_of_every_form_give_the_same_pixels(images, tiny_metric, form):  # noqa: F811
    """What embed_dataset's tasks take from a column: file bytes, a Hugging Face Image struct, or
    the arrays read_images and read_webdataset decode to (no Ray needed)."""
    pp = tiny_metric.spec.preprocessing
    rgb = np.array(Image.open(images / "img2.png").convert("RGB"))
    grey = rgb[..., 0]
    value = {"bytes": png_bytes(rgb), "struct": {"bytes": png_bytes(rgb), "path": None}, "rgb": rgb,
             "rgba": np.dstack([rgb, np.full(grey.shape, 7, np.uint8)]), "grey": grey, "grey1": grey[..., None]}[form]
    want = rgb if not form.startswith("grey") else np.repeat(grey[..., None], 3, axis=2)
    pixels = engine._pixels_of(value, "x", pp)
    expected = resize_and_crop(torch.from_numpy(want).permute(2, 0, 1)[None], pp)[0].numpy()
    assert pixels.shape == (3, pp.image_size, pp.image_size) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, expected)


def test_image_values_refused_name_the_forms(tiny_metric):
    with pytest.raises(ValueError, match=r"x is a float64 array of shape \(4, 4, 3\); give image file bytes"):
        engine._pixels_of(np.zeros((4, 4, 3)), "x", tiny_metric.spec.preprocessing)
    with pytest.raises(ValueError, match="x holds a int; give image file bytes"):
        engine._pixels_of(3, "x", tiny_metric.spec.preprocessing)


@pytest.mark.parametrize("argv, words", [
    (["--num-workers", "2"], "--num-workers configures the Ray engine; add --engine ray"),
    (["--address", "auto"], "--address configures the Ray engine"),
    (["--engine", "ray", "--device", "cpu"], "--device applies to --engine local"),
    (["--engine", "ray", "--workers", "2"], "--workers applies to --engine local"),
])
def test_cli_ray_options_refused_one_line(capsys, images, vit_folder, tmp_path, argv, words):  # noqa: F811
    code = main(["embed", str(images), "--out", str(tmp_path / "s"), "--model", str(vit_folder), *argv])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_without_ray_names_the_extra(capsys, images, vit_folder, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code = main(["embed", str(images), "--out", str(tmp_path / "s"), "--model", str(vit_folder), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install "rpmetric[ray]"' in err and len(err.strip().splitlines()) == 1
