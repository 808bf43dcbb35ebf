"""Shared fixtures: tiny models in the Hub's file layouts and a NIGHTS folder with known answers."""

from __future__ import annotations

import os

import pytest
import torch

import datagen
import perturbed
import tinymodels

# Tests never reach the network; a test that needs the Hub must use a pre-filled cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite must pass with 1 and with 2 threads (BLAS rounding differs between them):
# OMP_NUM_THREADS=1 python -m pytest runs it single-threaded; without it, 2 threads (at most the CPUs).
if not os.environ.get("OMP_NUM_THREADS"):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def vit_folder(tmp_path_factory):
    """A tiny open_clip ViT (open_clip_config.json + open_clip_model.safetensors)."""
    return tinymodels.save_open_clip(tmp_path_factory.mktemp("models") / "tiny-vit", tinymodels.TINY_VIT_CFG)


@pytest.fixture(scope="session")
def convnext_folder(tmp_path_factory):
    """A tiny open_clip model with a timm ConvNeXt trunk, like R-CLIP ConvNeXt-B."""
    return tinymodels.save_open_clip(tmp_path_factory.mktemp("models") / "tiny-convnext", tinymodels.TINY_CONVNEXT_CFG)


@pytest.fixture(scope="session")
def timm_folder(tmp_path_factory):
    return tinymodels.save_timm_vit(tmp_path_factory.mktemp("models") / "tiny-timm-vit")


@pytest.fixture(scope="session")
def hf_vit(tmp_path_factory):
    """(folder, transformers ViTModel) for a tiny R-DINO-layout checkpoint."""
    folder = tmp_path_factory.mktemp("models") / "tiny-hf-vit"
    return folder, tinymodels.save_hf_vit(folder)


@pytest.fixture(scope="session")
def hf_clip(tmp_path_factory):
    """(folder, transformers CLIPModel) for a tiny LEAF-layout checkpoint (config.json + model.safetensors)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-hf-clip"
    return folder, tinymodels.save_hf_clip(folder)


@pytest.fixture(scope="session")
def hf_clip_sharded(tmp_path_factory):
    """(folder, transformers CLIPModel) saved in safetensors shards with model.safetensors.index.json,
    as LEAF's ViT-g/14 is; small shards, so some hold only text-tower tensors."""
    folder = tmp_path_factory.mktemp("models") / "tiny-hf-clip-sharded"
    model = tinymodels.save_hf_clip(folder, seed=1)
    # huggingface_hub's sharding (which transformers' save_pretrained calls) keeps the file's key order,
    # so the text tower's tensors (text_model.*) fill shards of their own, as in LEAF's ViT-g/14.
    tinymodels.shard_safetensors(folder, "model.safetensors", max_shard_size=8000)
    return folder, model


@pytest.fixture(scope="session")
def tiny_metric(vit_folder):
    """A RobustDistance on the tiny ViT, on the CPU (shared: treat as read-only)."""
    import rpmetric

    return rpmetric.RobustDistance(str(vit_folder), device="cpu")


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory):
    """An HF_HOME whose cache holds a tiny 224-px ViT under the real Hub id of `r-clip-f-vitb32`.

    Returns (hf_home, folder): loading the zoo name with HF_HUB_OFFLINE=1 and HF_HOME=hf_home goes
    through the real Hub code path and finds these files.
    """
    import rpmetric

    folder = tinymodels.save_open_clip(tmp_path_factory.mktemp("models") / "tiny-vit224", tinymodels.TINY_VIT224_CFG)
    hf_home = tmp_path_factory.mktemp("hf_home")
    tinymodels.fill_hf_cache(hf_home, rpmetric.get_spec("r-clip-f-vitb32").hub_id, folder)
    return hf_home, folder


@pytest.fixture(scope="session")
def nights_known(tmp_path_factory):
    """(root, expected) of ``datagen.nights_known`` (shared: treat as read-only; see ``fresh_nights``).

    40x48 images: the tiny ViT (32 px) must resize and crop them in the workers' transform.
    """
    root = tmp_path_factory.mktemp("nights") / "nights"
    return root, datagen.nights_known(root, size=(40, 48))


@pytest.fixture()
def fresh_nights(tmp_path):
    """The root of a private ``datagen.nights_known`` folder (32x32 images), for tests that break it."""
    root = tmp_path / "nights"
    datagen.nights_known(root)
    return root


@pytest.fixture()
def perturbed_metric(vit_folder):
    """A RobustDistance on the tiny ViT whose backbone adds a batch-position, batch-size and
    thread-count dependent perturbation of about 1e-6 (see ``perturbed.py``)."""
    import rpmetric

    return perturbed.wrap(rpmetric.RobustDistance(str(vit_folder), device="cpu"))


@pytest.fixture()
def perturbed_backbones(monkeypatch):
    """Every backbone that rpmetric builds in this test (e.g. through the CLI) is perturbed."""
    perturbed.install(monkeypatch)
