"""Heads: the MLP's formula, LoRA's placement and zero start, head folders on disk and on the Hub."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from torch import nn

import rpmetric
import tinymodels
from rpmetric.models import load_encoder
from rpmetric.models.encoder import Encoder
from rpmetric.models.heads import (CONFIG_NAME, WEIGHTS_NAME, HeadConfig, LoRAAttention, MLPHead, attach_head,
                            head_parameters, head_state_dict, load_head, load_head_state, lora_targets,
                            save_head_folder)

IMAGES = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
OTHER = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Give every head tensor random values (B included), so a head really changes distances."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head_parameters(module):
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def _headed(folder, config: HeadConfig, randomise: bool = True):
    base = load_encoder(str(folder))
    dim = base(IMAGES[:1]).shape[1]
    module, config = attach_head(base.backbone, config, dim=dim)
    if randomise:
        _randomise(module)
    return Encoder(module, base.spec), config


def test_mlp_head_matches_hand_computation():
    head = MLPHead(2, hidden=2)
    with torch.no_grad():
        head.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        head.fc1.bias.copy_(torch.tensor([0.0, 0.5]))
        head.fc2.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
        head.fc2.bias.copy_(torch.tensor([1.0, 0.0]))
    # e = (1, 1): fc1 -> (1, -0.5), relu -> (1, 0), fc2 -> (3, 0), + e -> (4, 1)
    assert torch.equal(head(torch.tensor([[1.0, 1.0]])), torch.tensor([[4.0, 1.0]]))


@pytest.mark.parametrize("fixture, expected", [
    ("vit_folder", ["transformer.resblocks.0.attn", "transformer.resblocks.1.attn"]),
    ("timm_folder", [f"blocks.{i}.attn.qkv" for i in range(6)]),  # timm test_vit has 6 blocks
    ("convnext_folder", ["trunk.stages.0.blocks.0.mlp.fc1", "trunk.stages.0.blocks.0.mlp.fc2"]),
])
def test_lora_targets_per_architecture(request, fixture, expected):
    targets = lora_targets(load_encoder(str(request.getfixturevalue(fixture))).backbone)
    assert targets[:len(expected)] == expected
    if fixture == "convnext_folder":
        assert all(t.endswith(("mlp.fc1", "mlp.fc2")) for t in targets)
    else:
        assert len(targets) == len(expected)


@pytest.mark.parametrize("fixture", ["vit_folder", "timm_folder", "convnext_folder"])
def test_untrained_lora_leaves_distances_unchanged(request, fixture):
    folder = request.getfixturevalue(fixture)
    plain = rpmetric.RobustDistance(str(folder), device="cpu")
    headed, config = _headed(folder, HeadConfig("lora", r=4), randomise=False)
    # A starts random, B at zero: the adapted model must compute what the plain one does.
    assert all(p.abs().sum() > 0 for n, p in headed.named_parameters() if "lora_A" in n)
    with torch.no_grad():
        expected = plain(IMAGES, OTHER)
        got = rpmetric.RobustDistance(headed, device="cpu")(IMAGES, OTHER)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # And a non-zero B changes what the adapted layer computes (ConvNeXt's layer scale starts at
    # 1e-6, so its distances barely move: look at the layer itself).
    first = headed.backbone.get_submodule(config.targets[0])
    outputs = []
    first.register_forward_hook(lambda module, args, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        headed(IMAGES)
        _randomise(headed.backbone)
        headed(IMAGES)
    assert (outputs[1] - outputs[0]).abs().max() > 1e-3


def test_lora_attention_equals_merged_weight():
    """Independent path: PyTorch's own MultiheadAttention with W + (alpha/r) B A merged in."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    lora = LoRAAttention(mha, r=2, alpha=0.5, dropout=0.3).eval()
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(3, 5, 8)
    merged = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    merged.load_state_dict(mha.state_dict())
    with torch.no_grad():
        merged.in_proj_weight += 0.25 * lora.lora_B @ lora.lora_A
    expected = merged(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(lora(x, x, x, need_weights=False)[0], expected, rtol=1e-5, atol=1e-6)


def test_lora_attention_rejects_cross_attention():
    lora = LoRAAttention(nn.MultiheadAttention(8, 2), r=2, alpha=1.0, dropout=0.0)
    x = torch.randn(5, 3, 8)
    with pytest.raises(ValueError, match="self-attention only"):
        lora(x, torch.randn(5, 3, 8), x)


def test_lora_on_open_clip_attention_equals_merged_weight():
    """Independent path: open_clip's own Attention with W + (alpha/r) B A merged in."""
    from open_clip.transformer import Attention

    torch.manual_seed(0)
    attn = Attention(8, 2).eval()
    lora = LoRAAttention(attn, r=2, alpha=1.0, dropout=0.3).eval()
    with torch.no_grad():
        lora.lora_B.normal_()
    merged = Attention(8, 2).eval()
    merged.load_state_dict(attn.state_dict())
    with torch.no_grad():
        merged.in_proj_weight += 0.5 * lora.lora_B @ lora.lora_A
    x = torch.randn(3, 5, 8)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)  # causal: True is masked out
    for attn_mask in (None, mask):
        torch.testing.assert_close(lora(x, attn_mask=attn_mask), merged(x, attn_mask=attn_mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("option, name", [
    ({"scaled_cosine": True}, "scaled cosine attention"),
    ({"scale_heads": True}, "head scale"),
    ({"qk_norm": True}, "QK norm"),
    ({"inner_norm": True}, "inner norm"),
])
def test_lora_rejects_non_plain_open_clip_attention(option, name):
    from open_clip.transformer import Attention

    with pytest.raises(ValueError, match=f"plain form only .* uses {name}"):
        LoRAAttention(Attention(8, 2, **option), r=2, alpha=1.0, dropout=0.0)


def test_lora_rejects_other_modules():
    with pytest.raises(TypeError, match="wraps nn.MultiheadAttention or open_clip.transformer.Attention, but got Linear"):
        LoRAAttention(nn.Linear(8, 24), r=2, alpha=1.0, dropout=0.0)


def test_lora_head_is_the_same_on_default_and_custom_blocks(vit_folder):
    """A head trained when ViTs were built with nn.MultiheadAttention loads, by the same names,
    into the custom-block ViT rpmetric builds now, and computes the same embeddings."""
    from open_clip.model import _build_vision_tower

    custom = load_encoder(str(vit_folder))
    cfg = tinymodels.TINY_VIT_CFG
    default = _build_vision_tower(cfg["embed_dim"], dict(cfg["vision_cfg"], block_type="default")).eval()
    default.load_state_dict(custom.backbone.state_dict())
    assert type(default.transformer.resblocks[0].attn) is nn.MultiheadAttention
    config = HeadConfig("lora", r=4)
    old, _ = attach_head(default, config)
    new, new_config = attach_head(custom.backbone, config)
    _randomise(old)
    load_head_state(new, head_state_dict(old))
    assert new_config.targets == ("transformer.resblocks.0.attn", "transformer.resblocks.1.attn")
    x = (IMAGES - 0.5) / 0.25
    with torch.no_grad():  # eval: LoRA dropout off
        torch.testing.assert_close(new.eval()(x), old.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head", ["mlp", "lora"])
def test_saved_head_folder_loads_with_identical_distances(vit_folder, tmp_path, head):
    encoder, config = _headed(vit_folder, HeadConfig(head, hidden=16, r=4))
    save_head_folder(tmp_path / "head", str(vit_folder), config, head_state_dict(encoder.backbone))
    loaded = rpmetric.RobustDistance(str(tmp_path / "head"), device="cpu")
    plain = rpmetric.RobustDistance(str(vit_folder), device="cpu")
    with torch.no_grad():
        expected = rpmetric.RobustDistance(encoder, device="cpu")(IMAGES, OTHER)
        assert torch.equal(loaded(IMAGES, OTHER), expected)
        assert (plain(IMAGES, OTHER) - expected).abs().max() > 1e-4  # the head matters
    meta = json.loads((tmp_path / "head" / CONFIG_NAME).read_text())
    assert meta["base_model"] == str(vit_folder) and meta["head"]["type"] == head
    assert loaded.spec.preprocessing == plain.spec.preprocessing


def test_head_on_a_relative_base_path_loads_from_another_directory(vit_folder, tmp_path, monkeypatch):
    encoder, config = _headed(vit_folder, HeadConfig("mlp", hidden=16))
    monkeypatch.chdir(vit_folder.parent)
    save_head_folder(tmp_path / "head", vit_folder.name, config, head_state_dict(encoder.backbone))
    monkeypatch.chdir(tmp_path)
    loaded = rpmetric.RobustDistance(str(tmp_path / "head"), device="cpu")
    with torch.no_grad():
        assert torch.equal(loaded(IMAGES, OTHER), rpmetric.RobustDistance(encoder, device="cpu")(IMAGES, OTHER))


def test_unknown_base_model_is_reported_with_the_head_folder(vit_folder, tmp_path):
    encoder, config = _headed(vit_folder, HeadConfig("mlp", hidden=16))
    save_head_folder(tmp_path, str(vit_folder), config, head_state_dict(encoder.backbone))
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps(dict(meta, base_model="vit")))
    with pytest.raises(ValueError, match=rf"{CONFIG_NAME}: base_model 'vit' cannot be loaded: Unknown model 'vit'"):
        rpmetric.RobustDistance(str(tmp_path), device="cpu")


def test_head_from_prefilled_hub_cache_offline(vit_folder, tmp_path, monkeypatch):
    """hf-hub:ORG/NAME with a head repo and its hf-hub base, both only in the cache (no network)."""
    import huggingface_hub

    encoder, config = _headed(vit_folder, HeadConfig("mlp", hidden=16))
    save_head_folder(tmp_path / "head", "hf-hub:tiny/base", config, head_state_dict(encoder.backbone))
    tinymodels.fill_hf_cache(tmp_path / "home", "tiny/base", vit_folder)
    tinymodels.fill_hf_cache(tmp_path / "home", "tiny/head", tmp_path / "head")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "home" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = rpmetric.RobustDistance("hf-hub:tiny/head", device="cpu")
    with torch.no_grad():
        expected = rpmetric.RobustDistance(encoder, device="cpu")(IMAGES, OTHER)
        assert torch.equal(loaded(IMAGES, OTHER), expected)
    assert loaded.spec.name == "hf-hub:tiny/head"


def test_head_folder_without_weights_is_reported(vit_folder, tmp_path):
    encoder, config = _headed(vit_folder, HeadConfig("mlp", hidden=16))
    save_head_folder(tmp_path, str(vit_folder), config, head_state_dict(encoder.backbone))
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="has no head.safetensors"):
        rpmetric.RobustDistance(str(tmp_path), device="cpu")


def test_heads_do_not_stack(vit_folder, tmp_path):
    encoder, config = _headed(vit_folder, HeadConfig("mlp", hidden=16))
    save_head_folder(tmp_path / "a", str(vit_folder), config, head_state_dict(encoder.backbone))
    save_head_folder(tmp_path / "b", str(tmp_path / "a"), config, head_state_dict(encoder.backbone))
    with pytest.raises(ValueError, match="is itself a head folder"):
        rpmetric.RobustDistance(str(tmp_path / "b"), device="cpu")


def test_head_folder_of_a_newer_format_asks_to_upgrade(vit_folder, tmp_path):
    encoder, config = _headed(vit_folder, HeadConfig("mlp", hidden=16))
    save_head_folder(tmp_path, str(vit_folder), config, head_state_dict(encoder.backbone))
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert meta["format"] == 1
    (tmp_path / CONFIG_NAME).write_text(json.dumps(dict(meta, format=2)))
    with pytest.raises(ValueError, match=r"is head folder format 2, but rpmetric \S+ reads format 1 at most; "
                                         r"upgrade rpmetric"):
        rpmetric.RobustDistance(str(tmp_path), device="cpu")


def test_head_weights_that_do_not_fit_are_reported(vit_folder):
    encoder, _ = _headed(vit_folder, HeadConfig("mlp", hidden=16))
    state = head_state_dict(encoder.backbone)
    with pytest.raises(ValueError, match=r"missing \['mlp_head.fc2.weight'\]"):
        load_head_state(encoder.backbone, {k: v for k, v in state.items() if k != "mlp_head.fc2.weight"})
    state["mlp_head.fc1.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"shape of 'mlp_head.fc1.bias' is \(3,\), expected \(16,\)"):
        load_head_state(encoder.backbone, state)


@pytest.mark.parametrize("kwargs, match", [
    (dict(type="linear"), r"`type` must be one of \('mlp', 'lora'\), but got 'linear'"),
    (dict(type="lora", r=0), r"`r` must be at least 1, but got 0"),
    (dict(type="lora", dropout=1.0), r"`dropout` must be in \[0, 1\), but got 1.0"),
])
def test_head_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeadConfig(**kwargs)


def test_head_config_sizes_must_be_integers():
    with pytest.raises(TypeError, match=r"`hidden` must be an integer, but got 8.5"):
        HeadConfig("mlp", hidden=8.5)


class _Holder(nn.Module):
    """A backbone with one LoRA target, ``attn`` (MultiheadAttention) or ``attn.qkv`` (a timm-style Linear)."""

    def __init__(self, kind: str, device=None):
        super().__init__()
        if kind == "mha":
            self.attn = nn.MultiheadAttention(8, 2, device=device)
        else:
            self.attn = nn.Module()
            self.attn.qkv = nn.Linear(8, 24, device=device)


@pytest.mark.parametrize("make, config", [
    (lambda: _Holder("mha", device="meta"), HeadConfig("lora", r=2)),
    (lambda: _Holder("qkv", device="meta"), HeadConfig("lora", r=2)),
    (lambda: nn.Linear(3, 4, device="meta"), HeadConfig("mlp", hidden=8, dim=4)),
])
def test_heads_are_created_on_the_backbone_s_device(make, config):
    module, _ = attach_head(make(), config)
    params = head_parameters(module)
    assert params and all(p.device.type == "meta" for p in params)


def test_lora_on_linear_layers_without_peft_names_the_extra(monkeypatch):
    from rpmetric.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"needs peft: pip install 'rpmetric\[train\]'"):
        attach_head(_Holder("qkv"), HeadConfig("lora", r=2))


def test_unknown_head_setting_and_missing_targets():
    with pytest.raises(ValueError, match=r"Unknown head setting\(s\) \['rank'\]"):
        HeadConfig.from_dict({"type": "lora", "rank": 4})
    with pytest.raises(ValueError, match="Found no LoRA target in a Sequential"):
        lora_targets(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="needs the embedding size"):
        attach_head(nn.Linear(2, 2), HeadConfig("mlp"))


# -- the converter of the authors' released heads (weights/convert_dreamsim_heads.py) -------------
def _converter():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "weights" / "convert_dreamsim_heads.py"
    spec = importlib.util.spec_from_file_location("convert_dreamsim_heads", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _squashed(x):
    # The converted heads squash to the model's size (DreamSim style: bicubic, antialiased and
    # clipped like PIL, no crop); the tiny model is 32 px.
    squashed = torch.nn.functional.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    return squashed.clamp(0.0, 1.0)


def test_convert_mlp_checkpoint_with_the_authors_key_names(vit_folder, tmp_path):
    gen = torch.Generator().manual_seed(3)
    tensors = {"fc1.weight": torch.randn(16, 24, generator=gen), "fc1.bias": torch.randn(16, generator=gen),
               "fc2.weight": torch.randn(24, 16, generator=gen), "fc2.bias": torch.randn(24, generator=gen)}
    # A PyTorch Lightning checkpoint as the authors' eval.py reads it.
    torch.save({"state_dict": {f"perceptual_model.mlp.{k}": v for k, v in tensors.items()}, "epoch": 4},
               tmp_path / "epoch=04.ckpt")
    assert _converter().main(["mlp", str(tmp_path / "epoch=04.ckpt"), "--base-model", str(vit_folder),
                              "--out", str(tmp_path / "head")]) == 0
    metric = rpmetric.RobustDistance(str(tmp_path / "head"), device="cpu")
    assert metric.spec.preprocessing.resize_mode == "squash"
    plain = rpmetric.RobustDistance(str(vit_folder), device="cpu")
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        e = plain.embed(torch.cat([x, y]), normalize=False)
        h = torch.relu(e @ tensors["fc1.weight"].T + tensors["fc1.bias"]) @ tensors["fc2.weight"].T + tensors["fc2.bias"] + e
        expected = 1 - torch.nn.functional.cosine_similarity(h[:2], h[2:])
        torch.testing.assert_close(metric(x, y), expected, rtol=1e-5, atol=1e-5)


def test_convert_vit_lora_adapter_onto_open_clip_in_projection(vit_folder, tmp_path):
    """PEFT adapter keys of the authors' DINO-style ViT; checked against open_clip with W + (alpha/r) B A merged."""
    from safetensors.torch import save_file

    r, width = 4, 32
    gen = torch.Generator().manual_seed(4)
    state = {}
    for i in range(2):
        a, b = torch.randn(r, width, generator=gen), torch.randn(3 * width, r, generator=gen)
        for prefix in ("base_model.model.model.", "base_model.model."):  # the wrapper's two aliases
            state[f"{prefix}blocks.{i}.attn.qkv.lora_A.weight"] = a.clone()
            state[f"{prefix}blocks.{i}.attn.qkv.lora_B.weight"] = b.clone()
    adapter = tmp_path / "epoch_4_open_clip_vitb16"
    adapter.mkdir()
    save_file(state, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 2.0, "lora_dropout": 0.3,
                                                             "target_modules": ["qkv"], "peft_type": "LORA"}))
    _converter().convert("lora", adapter, str(vit_folder), tmp_path / "head")
    metric = rpmetric.RobustDistance(str(tmp_path / "head"), device="cpu")

    reference = tinymodels.load_reference_open_clip(vit_folder)
    with torch.no_grad():
        for i, block in enumerate(reference.visual.transformer.resblocks):
            a = state[f"base_model.model.blocks.{i}.attn.qkv.lora_A.weight"]
            b = state[f"base_model.model.blocks.{i}.attn.qkv.lora_B.weight"]
            block.attn.in_proj_weight += (2.0 / r) * b @ a
        x, y = torch.rand(2, 3, 40, 30), torch.rand(2, 3, 40, 30)
        mean = torch.tensor(tinymodels.CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(tinymodels.CLIP_STD).view(1, 3, 1, 1)
        fx, fy = (reference.encode_image((_squashed(z) - mean) / std) for z in (x, y))
        expected = 1 - torch.nn.functional.cosine_similarity(fx, fy)
        torch.testing.assert_close(metric(x, y), expected, rtol=1e-4, atol=1e-5)


# The tiny ConvNeXt's (open_clip "test_convnext") stages: stage -> (blocks, width); MLP ratio 4.
TINY_CONVNEXT_STAGES = {0: (1, 24), 1: (2, 32), 2: (4, 48), 3: (2, 64)}


def test_convert_convnext_lora_adapter_onto_open_clip_mlps(convnext_folder, tmp_path):
    """PEFT adapter keys as the authors save them for ConvNeXt; checked against open_clip with
    fc.weight + (alpha/r) B A merged into every MLP layer by hand."""
    from safetensors.torch import save_file

    from safetensors.torch import load_file

    # ConvNeXt's layer scale starts at 1e-6, which would hide the MLPs (and their adapters): set it to 1.
    folder = tmp_path / "convnext"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text((convnext_folder / "open_clip_config.json").read_text())
    weights = load_file(str(convnext_folder / "open_clip_model.safetensors"))
    save_file({k: torch.ones_like(v) if k.endswith(".gamma") else v for k, v in weights.items()},
              str(folder / "open_clip_model.safetensors"))
    r, alpha = 2, 0.5
    gen = torch.Generator().manual_seed(5)
    state = {}
    for stage, (blocks, width) in TINY_CONVNEXT_STAGES.items():
        for block in range(blocks):
            for fc, (n_in, n_out) in (("fc1", (width, 4 * width)), ("fc2", (4 * width, width))):
                prefix = f"base_model.model.model.trunk.stages.{stage}.blocks.{block}.mlp.{fc}"
                state[f"{prefix}.lora_A.weight"] = torch.randn(r, n_in, generator=gen)
                state[f"{prefix}.lora_B.weight"] = torch.randn(n_out, r, generator=gen)
    adapter = tmp_path / "lora-convnext"
    adapter.mkdir()
    lone = {k: v for k, v in state.items() if "stages.3.blocks.1.mlp.fc2.lora_B" not in k}
    save_file(lone, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="has no matching A/B partner"):
        _converter().convert("lora", adapter, str(folder), tmp_path / "head")
    save_file(state, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": alpha, "lora_dropout": 0.3,
                                                             "target_modules": ["fc1", "fc2"], "peft_type": "LORA"}))
    _converter().convert("lora", adapter, str(folder), tmp_path / "head")
    metric = rpmetric.RobustDistance(str(tmp_path / "head"), device="cpu")
    assert metric.spec.preprocessing.resize_mode == "squash"

    reference = tinymodels.load_reference_open_clip(folder)
    plain = tinymodels.load_reference_open_clip(folder)
    x, y = torch.rand(2, 3, 40, 30), torch.rand(2, 3, 40, 30)
    mean = torch.tensor(tinymodels.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(tinymodels.CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        for stage, (blocks, _) in TINY_CONVNEXT_STAGES.items():
            for block in range(blocks):
                mlp = reference.visual.trunk.stages[stage].blocks[block].mlp
                for fc in ("fc1", "fc2"):
                    prefix = f"base_model.model.model.trunk.stages.{stage}.blocks.{block}.mlp.{fc}"
                    b, a = state[f"{prefix}.lora_B.weight"], state[f"{prefix}.lora_A.weight"]
                    getattr(mlp, fc).weight += (alpha / r) * b @ a

        def distance(model):
            fx, fy = (model.encode_image((_squashed(z) - mean) / std) for z in (x, y))
            return 1 - torch.nn.functional.cosine_similarity(fx, fy)

        expected = distance(reference)
        torch.testing.assert_close(metric(x, y), expected, rtol=1e-4, atol=1e-5)
        assert (distance(plain) - expected).abs().max() > 0.1  # the adapters matter


def test_converter_errors(tmp_path):
    converter = _converter()
    torch.save({"state_dict": {"perceptual_model.mlp.fc1.weight": torch.zeros(2, 2)}}, tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="has no complete MLP head"):
        converter.convert("mlp", tmp_path / "a.ckpt", "r-clip-f-vitb16", tmp_path / "out")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "args": HeadConfig("mlp")}, tmp_path / "pickled.ckpt")
    with pytest.raises(ValueError, match=r"cannot be read with torch.load\(weights_only=True\)"):
        converter.convert("mlp", tmp_path / "pickled.ckpt", "r-clip-f-vitb16", tmp_path / "out")
    with pytest.raises(ValueError, match="is not a folder"):
        converter.convert("lora", tmp_path / "a.ckpt", "r-clip-f-vitb16", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="has no adapter_model.safetensors or adapter_model.bin"):
        converter.convert("lora", tmp_path, "r-clip-f-vitb16", tmp_path / "out")


# -- LoRA heads on Linear/Conv layers (timm ViT qkv, ConvNeXt MLPs) load without peft -------------
def _convnext_with_unit_layer_scale(convnext_folder, folder):
    """The tiny ConvNeXt with layer scale 1 (it starts at 1e-6, which would hide the MLPs and their LoRA)."""
    from safetensors.torch import load_file, save_file

    folder.mkdir()
    (folder / "open_clip_config.json").write_text((convnext_folder / "open_clip_config.json").read_text())
    weights = load_file(str(convnext_folder / "open_clip_model.safetensors"))
    save_file({k: torch.ones_like(v) if k.endswith(".gamma") else v for k, v in weights.items()},
              str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.mark.parametrize("fixture", ["timm_folder", "convnext_folder"])
def test_lora_head_on_linear_layers_loads_without_peft(request, tmp_path, monkeypatch, fixture):
    """Loading merges W + (alpha/r) B A into the weights; the reference is peft's own LoRA forward."""
    folder = request.getfixturevalue(fixture)
    if fixture == "convnext_folder":
        folder = _convnext_with_unit_layer_scale(folder, tmp_path / "convnext")
    peft_encoder, config = _headed(folder, HeadConfig("lora", r=4, alpha=2.0))
    assert any(type(m).__module__.startswith("peft") for m in peft_encoder.backbone.modules())
    save_head_folder(tmp_path / "head", str(folder), config, head_state_dict(peft_encoder.backbone))
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` raise ImportError
    loaded = rpmetric.RobustDistance(str(tmp_path / "head"), device="cpu")
    assert not any("lora" in n for n, _ in loaded.encoder.backbone.named_parameters())
    plain = rpmetric.RobustDistance(str(folder), device="cpu")
    with torch.no_grad():
        expected = rpmetric.RobustDistance(peft_encoder, device="cpu")(IMAGES, OTHER)  # peft, eval: no dropout
        torch.testing.assert_close(loaded(IMAGES, OTHER), expected, rtol=1e-4, atol=1e-5)
        assert (plain(IMAGES, OTHER) - expected).abs().max() > 1e-3  # the head matters


def test_lora_head_weights_that_do_not_fit_a_linear_layer_are_reported(timm_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    encoder, config = _headed(timm_folder, HeadConfig("lora", r=4))
    save_head_folder(tmp_path, str(timm_folder), config, head_state_dict(encoder.backbone))
    state = load_file(str(tmp_path / WEIGHTS_NAME))
    state["blocks.0.attn.qkv.lora_B.default.weight"] = torch.zeros(5, 4)
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match=r"shape of 'blocks.0.attn.qkv.lora_B.default.weight' is \(5, 4\), "
                                         r"expected \(\d+, 4\)"):
        rpmetric.RobustDistance(str(tmp_path), device="cpu")
    del state["blocks.0.attn.qkv.lora_B.default.weight"]
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match=r"missing \['blocks.0.attn.qkv.lora_B.default.weight'\]"):
        rpmetric.RobustDistance(str(tmp_path), device="cpu")


class _Mlp(nn.Module):
    """A backbone whose only LoRA targets are ``mlp.fc1``/``mlp.fc2``: Linear, or Conv2d (ConvNeXt's conv_mlp)."""

    def __init__(self, conv: bool, kernel: int = 1):
        super().__init__()
        self.mlp = nn.Module()
        make = (lambda i, o: nn.Conv2d(i, o, kernel, padding=kernel // 2)) if conv else nn.Linear
        self.mlp.fc1, self.mlp.fc2 = make(6, 12), make(12, 6)
        self.conv = conv

    def forward(self, x):
        x = x if self.conv else x.permute(0, 2, 3, 1)
        return self.mlp.fc2(torch.relu(self.mlp.fc1(x))).flatten(1)


@pytest.mark.parametrize("conv", [False, True])
def test_merged_lora_equals_peft_on_linear_and_1x1_conv(conv):
    torch.manual_seed(0)
    config = HeadConfig("lora", r=2, alpha=3.0)
    peft_module, config = attach_head(_Mlp(conv), config)
    _randomise(peft_module)
    merged = _Mlp(conv)
    merged.load_state_dict({k.replace(".base_layer", ""): v for k, v in peft_module.state_dict().items()
                            if ".lora_" not in k})
    merged = load_head(merged, config, head_state_dict(peft_module))
    assert type(merged.mlp.fc1) is (nn.Conv2d if conv else nn.Linear)
    x = torch.randn(2, 6, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), peft_module.eval()(x), rtol=1e-5, atol=1e-5)


def test_lora_on_a_wider_conv_is_refused():
    config = HeadConfig("lora", r=2, targets=("mlp.fc1",))
    with pytest.raises(ValueError, match=r"LoRA target 'mlp.fc1' is a \(3, 3\) Conv2d; only Linear and 1x1 Conv2d"):
        load_head(_Mlp(conv=True, kernel=3), config, {})


def test_relative_base_model_is_read_from_the_head_folder_whatever_the_working_directory(vit_folder, tmp_path,
                                                                                         monkeypatch):
    """A hand-written "../models/vit" means the folder beside the head, from any working directory:
    from b/x it used to load b/models/vit, another model, and gave other distances."""
    encoder, config = _headed(vit_folder, HeadConfig("mlp", hidden=16))
    shutil.copytree(vit_folder, tmp_path / "a" / "models" / "vit")
    tinymodels.save_open_clip(tmp_path / "b" / "models" / "vit", tinymodels.TINY_VIT_CFG, seed=1)
    (tmp_path / "b" / "x").mkdir()
    head = save_head_folder(tmp_path / "a" / "head", str(vit_folder), config, head_state_dict(encoder.backbone))
    meta = json.loads((head / CONFIG_NAME).read_text())
    (head / CONFIG_NAME).write_text(json.dumps(dict(meta, base_model="../models/vit")))
    with torch.no_grad():
        expected = rpmetric.RobustDistance(encoder, device="cpu")(IMAGES, OTHER)
        for cwd in (head, tmp_path / "b" / "x"):
            monkeypatch.chdir(cwd)
            assert torch.equal(rpmetric.RobustDistance(str(head), device="cpu")(IMAGES, OTHER), expected), cwd


def test_relative_base_model_that_is_no_folder_names_where_it_was_looked_for(vit_folder, tmp_path, monkeypatch):
    encoder, config = _headed(vit_folder, HeadConfig("mlp", hidden=16))
    head = save_head_folder(tmp_path / "head", str(vit_folder), config, head_state_dict(encoder.backbone))
    meta = json.loads((head / CONFIG_NAME).read_text())
    (head / CONFIG_NAME).write_text(json.dumps(dict(meta, base_model=vit_folder.name)))
    monkeypatch.chdir(vit_folder.parent)  # where the name would be a folder, if it were read from here
    with pytest.raises(ValueError, match=rf"base_model '{vit_folder.name}' cannot be loaded: Unknown model .*"
                                         rf"read from the head's folder, and .*{vit_folder.name} is not a folder"):
        rpmetric.RobustDistance(str(head), device="cpu")


def test_base_model_error_does_not_list_the_folder_it_names(vit_folder, tmp_path):
    """A base_model may point anywhere; the error names the files a model folder needs, not what it holds."""
    encoder, config = _headed(vit_folder, HeadConfig("mlp", hidden=16))
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret-notes.txt").write_text("x")
    save_head_folder(tmp_path / "head", str(private), config, head_state_dict(encoder.backbone))
    with pytest.raises(FileNotFoundError) as caught:
        rpmetric.RobustDistance(str(tmp_path / "head"), device="cpu")
    assert "secret-notes" not in str(caught.value)
    assert "has no open_clip_config.json or config.json" in str(caught.value)
    assert "open_clip_model.safetensors" in str(caught.value)
