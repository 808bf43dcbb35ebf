"""Heads: the MLP's formula, LoRA's placement and zero start, head folders on disk and on the Hub."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import rpmetric
import tinymodels
from rpmetric.encoder import Encoder, load_encoder
from rpmetric.heads import (CONFIG_NAME, WEIGHTS_NAME, HeadConfig, LoRAMultiheadAttention, MLPHead, attach_head,
                            head_parameters, head_state_dict, load_head_state, lora_targets, save_head_folder)

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
    lora = LoRAMultiheadAttention(mha, r=2, alpha=0.5, dropout=0.3).eval()
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
    lora = LoRAMultiheadAttention(nn.MultiheadAttention(8, 2), r=2, alpha=1.0, dropout=0.0)
    x = torch.randn(5, 3, 8)
    with pytest.raises(ValueError, match="self-attention only"):
        lora(x, torch.randn(5, 3, 8), x)


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
    (dict(type="lora", r=0), r"`r` must be a positive integer, but got 0"),
    (dict(type="lora", dropout=1.0), r"`dropout` must be in \[0, 1\), but got 1.0"),
])
def test_head_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeadConfig(**kwargs)


def test_unknown_head_setting_and_missing_targets():
    with pytest.raises(ValueError, match=r"Unknown head setting\(s\) \['rank'\]"):
        HeadConfig.from_dict({"type": "lora", "rank": 4})
    with pytest.raises(ValueError, match="Found no LoRA target in a Sequential"):
        lora_targets(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="needs the embedding size"):
        attach_head(nn.Linear(2, 2), HeadConfig("mlp"))
