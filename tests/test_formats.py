"""Checkpoint formats the Hub ships: transformers CLIP, sharded safetensors, sharded .bin, open_clip
.bin only. Each tiny checkpoint is saved in the real file layout, loaded through rpmetric's code path
(a folder, or a pre-filled Hugging Face cache with HF_HUB_OFFLINE=1), and compared with the
library's own forward pass: transformers' ``get_image_features``, open_clip's ``encode_image``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import tinymodels
from rpmetric.models import hub, load_encoder

MEAN = torch.tensor(tinymodels.CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(tinymodels.CLIP_STD).view(1, 3, 1, 1)


def _images(seed=0):
    return torch.rand(3, 3, tinymodels.IMAGE_SIZE, tinymodels.IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def _transformers_features(model, x):
    """The embedding transformers gives for images in [0, 1] (CLIP mean/std, no resize needed)."""
    with torch.no_grad():
        if hasattr(model, "get_image_features"):
            out = model.get_image_features(pixel_values=(x - MEAN) / STD)
        else:  # CLIPVisionModelWithProjection
            out = model(pixel_values=(x - MEAN) / STD).image_embeds
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("vision_only", [False, True], ids=["CLIPModel", "CLIPVisionModelWithProjection"])
def test_transformers_clip_equals_get_image_features(tmp_path, hidden_act, vision_only):
    model = tinymodels.save_hf_clip(tmp_path / "clip", hidden_act=hidden_act, vision_only=vision_only)
    encoder = load_encoder(str(tmp_path / "clip"))
    x = _images()
    with torch.no_grad():
        ours = encoder(x)
    torch.testing.assert_close(ours, _transformers_features(model, x), rtol=1e-4, atol=1e-5)


def test_quick_gelu_is_taken_from_the_config(tmp_path):
    """The same weights read as GELU give another embedding: the activation is not a default."""
    model = tinymodels.save_hf_clip(tmp_path / "clip", hidden_act="quick_gelu")
    config = json.loads((tmp_path / "clip" / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "gelu"
    (tmp_path / "clip" / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        ours = load_encoder(str(tmp_path / "clip"))(_images())
    assert (ours - _transformers_features(model, _images())).abs().max() > 1e-3


def test_preprocessor_config_sets_the_preprocessing(tmp_path):
    tinymodels.save_hf_clip(tmp_path / "clip", preprocessor={
        "size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}, "resample": 2,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    pp = load_encoder(str(tmp_path / "clip")).spec.preprocessing
    assert (pp.image_size, pp.resize_size, pp.interpolation, pp.resize_mode) == (32, 40, "bilinear", "shortest")
    assert pp.mean == (0.5, 0.5, 0.5) and pp.std == (0.25, 0.25, 0.25)


def test_a_zoo_entry_takes_the_repos_preprocessor_config(tmp_path):
    """A zoo spec's preprocessing is the fallback for a CLIP repo without preprocessor_config.json."""
    from dataclasses import replace

    from rpmetric.models.spec import Family, Preprocessing

    tinymodels.save_hf_clip(tmp_path / "clip", preprocessor={"size": 36, "crop_size": 32})
    zoo_pp = Preprocessing(image_size=32, resize_size=32, interpolation="nearest")
    spec = replace(hub.parse(str(tmp_path / "clip")), family=Family.HF_CLIP, preprocessing=zoo_pp)
    assert load_encoder(spec).spec.preprocessing.resize_size == 36
    (tmp_path / "clip" / "preprocessor_config.json").unlink()
    assert load_encoder(spec).spec.preprocessing == zoo_pp


def test_sharded_safetensors_read_only_vision_shards(hf_clip_sharded, tmp_path):
    """Shards holding only text-tower tensors are neither fetched nor read: deleting them changes nothing."""
    folder, model = hf_clip_sharded
    copy = tmp_path / "shards"
    shutil.copytree(folder, copy)
    index = json.loads((copy / "model.safetensors.index.json").read_text())["weight_map"]
    vision = {v for k, v in index.items() if k.startswith(("vision_model.", "visual_projection."))}
    text_only = set(index.values()) - vision
    assert text_only, "the fixture's shards must separate the towers for this test to mean anything"
    for name in text_only:
        (copy / name).unlink()
    files = hub.fetch(hub.parse(str(copy)))
    assert {p.name for p in files.shards} == vision
    with torch.no_grad():
        ours = load_encoder(str(copy))(_images())
    torch.testing.assert_close(ours, _transformers_features(model, _images()), rtol=1e-4, atol=1e-5)


def test_reading_a_whole_checkpoint_reads_no_text_tensor(hf_clip, monkeypatch):
    """One safetensors file holding both towers: only vision-tower keys are asked of safetensors."""
    import safetensors

    from rpmetric.models.backbones.weights import read_weights

    asked = []
    real_open = safetensors.safe_open

    class Recording:
        def __init__(self, *args, **kwargs):
            self.inner = real_open(*args, **kwargs)

        def __enter__(self):
            self.f = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_tensor(self, key):
            asked.append(key)
            return self.f.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Recording)
    state = read_weights(hub.fetch(hub.parse(str(hf_clip[0]))))
    assert asked and sorted(asked) == sorted(state)
    assert all(k.startswith(("vision_model.", "visual_projection.")) for k in asked)


@pytest.mark.parametrize("layout", ["safetensors-shards", "bin-shards", "bin-only"])
def test_open_clip_layouts_equal_encode_image(tmp_path, layout):
    folder = tinymodels.save_open_clip(tmp_path / "oc", tinymodels.TINY_VIT_CFG, seed=3)
    reference = tinymodels.load_reference_open_clip(folder)
    if layout == "safetensors-shards":
        tinymodels.shard_safetensors(folder, "open_clip_model.safetensors")
    elif layout == "bin-shards":
        tinymodels.shard_to_bin(folder, "open_clip_model.safetensors", "open_clip_pytorch_model.bin.index.json")
    else:  # ΔCLIP's layout: the pickle alone
        folder = tinymodels.save_open_clip(tmp_path / "oc-bin", tinymodels.TINY_VIT_CFG, seed=3, safetensors=False)
    x = _images(1)
    with torch.no_grad():
        expected = reference.encode_image((x - MEAN) / STD)
        ours = load_encoder(str(folder))(x)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_sharded_bin_transformers_clip(hf_clip, tmp_path):
    folder = tmp_path / "bin"
    shutil.copytree(hf_clip[0], folder)
    tinymodels.shard_to_bin(folder, "model.safetensors", "pytorch_model.bin.index.json")
    with torch.no_grad():
        ours = load_encoder(str(folder))(_images())
    torch.testing.assert_close(ours, _transformers_features(hf_clip[1], _images()), rtol=1e-4, atol=1e-5)


def test_timm_sharded_equals_timm_forward(timm_folder, tmp_path):
    import timm

    folder = tmp_path / "timm"
    shutil.copytree(timm_folder, folder)
    reference = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=tinymodels.IMAGE_SIZE,
                                  patch_size=8)
    from safetensors.torch import load_file

    reference.load_state_dict(load_file(str(folder / "model.safetensors")))
    reference.eval()
    tinymodels.shard_safetensors(folder, "model.safetensors", max_shard_size=2000)
    assert (folder / "model.safetensors.index.json").is_file()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    encoder = load_encoder(str(folder), resize=False)
    with torch.no_grad():
        torch.testing.assert_close(encoder(_images()), reference((_images() - mean) / std), rtol=1e-4, atol=1e-5)


def test_sharded_clip_from_a_prefilled_cache_offline(hf_clip_sharded, tmp_path, monkeypatch):
    """The Hub path: a cache holding only the index and the vision shards (what fetch downloads) loads offline."""
    import huggingface_hub

    folder, model = hf_clip_sharded
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    vision = {v for k, v in index.items() if k.startswith(("vision_model.", "visual_projection."))}
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ["config.json", "model.safetensors.index.json", *vision]:
        shutil.copy(folder / name, partial / name)
    home = tmp_path / "hf_home"
    tinymodels.fill_hf_cache(home, "LEAF-CLIP/tiny-FARE2", partial)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    encoder = load_encoder("hf-hub:LEAF-CLIP/tiny-FARE2")
    assert encoder.spec.family.value == "hf_clip"
    with torch.no_grad():
        torch.testing.assert_close(encoder(_images()), _transformers_features(model, _images()), rtol=1e-4, atol=1e-5)
    paths = hub.download("hf-hub:LEAF-CLIP/tiny-FARE2", force_check=False)
    assert {p.name for p in paths} == {"model.safetensors.index.json", *vision}


def test_weights_only_repo_builds_from_the_zoo_config_offline(tmp_path, monkeypatch):
    """ΔCLIP's layout: open_clip_pytorch_model.bin without open_clip_config.json, in a pre-filled cache
    under the entry's Hub id; the zoo entry's config (here a tiny one) describes the architecture."""
    from dataclasses import replace

    import huggingface_hub

    from rpmetric.models.spec import Preprocessing, get_spec

    folder = tinymodels.save_open_clip(tmp_path / "delta", tinymodels.TINY_VIT_CFG, seed=5, safetensors=False)
    reference = tinymodels.load_reference_open_clip(folder)
    (folder / "open_clip_config.json").unlink()
    spec = get_spec("delta-clip-l14-224")
    home = tmp_path / "hf_home"
    tinymodels.fill_hf_cache(home, spec.hub_id, folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tiny = replace(spec, config={"model_cfg": tinymodels.TINY_VIT_CFG},
                   preprocessing=Preprocessing(image_size=32, resize_size=32, mean=tinymodels.CLIP_MEAN,
                                               std=tinymodels.CLIP_STD))
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(tiny)(_images()), reference.encode_image((_images() - MEAN) / STD),
                                   rtol=1e-4, atol=1e-5)
    # The real entry's config (ViT-L/14) does not fit the tiny weights: the error names the weights file.
    from rpmetric.errors import CheckpointError

    with pytest.raises(CheckpointError, match="open_clip_pytorch_model.bin do not fit"):
        load_encoder(replace(spec, preprocessing=tiny.preprocessing))


def test_fingerprint_covers_the_shards(hf_clip_sharded, tmp_path):
    """A shard replaced in place changes the model's identity, which a resume compares."""
    from rpmetric.fingerprint import model_identity

    folder = tmp_path / "shards"
    shutil.copytree(hf_clip_sharded[0], folder)
    before = model_identity(str(folder))
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    assert shard.name in before["model_files"]
    shard.write_bytes(shard.read_bytes()[:-4] + b"\0\0\0\1")
    assert model_identity(str(folder))["model_files"][shard.name] != before["model_files"][shard.name]


def test_lora_attaches_to_a_transformers_clip_backbone(hf_clip):
    """The remapped tower is open_clip's ViT, so heads find their targets as on open_clip's own."""
    from rpmetric.models.heads import HeadConfig, attach_head, lora_targets

    encoder = load_encoder(str(hf_clip[0]))
    assert len(lora_targets(encoder.backbone)) == 2  # the tiny model's two attention blocks
    module, _ = attach_head(encoder.backbone, HeadConfig("lora", r=2))
    with torch.no_grad():  # LoRA's B starts at zero: the head changes nothing until trained
        torch.testing.assert_close(module(encoder.normalize(_images())), encoder(_images()), rtol=1e-4, atol=1e-5)
