"""Each builder against the library's own forward pass on the same weights."""

import pytest
import torch

import rpmetric
import tinymodels
from rpmetric.models.backbones.hf_vit import convert_hf_vit


def _clip_normalize(x):
    mean = torch.tensor(tinymodels.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(tinymodels.CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("fixture", ["vit_folder", "convnext_folder"])
def test_open_clip_embedding_equals_encode_image(request, fixture):
    folder = request.getfixturevalue(fixture)
    reference = tinymodels.load_reference_open_clip(folder)
    metric = rpmetric.RobustDistance(str(folder), device="cpu")
    x, y = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ex = reference.encode_image(_clip_normalize(x))
        ey = reference.encode_image(_clip_normalize(y))
        expected = 1 - torch.nn.functional.cosine_similarity(ex, ey)
        torch.testing.assert_close(metric.embed(x, normalize=False), ex, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(metric(x, y), expected, atol=1e-5, rtol=0)


def test_open_clip_vit_uses_custom_block_with_same_gradients(vit_folder):
    """rpmetric builds ViTs with open_clip's own Attention (faster backward); open_clip's
    default-block model on the same weights must give the same input gradients."""
    from open_clip.transformer import Attention

    reference = tinymodels.load_reference_open_clip(vit_folder)
    encoder = rpmetric.RobustDistance(str(vit_folder), device="cpu").encoder
    blocks = encoder.backbone.transformer.resblocks
    assert all(type(b.attn) is Attention for b in blocks)
    assert all(type(b.attn) is torch.nn.MultiheadAttention for b in reference.visual.transformer.resblocks)
    x = torch.rand(2, 3, 32, 32)
    ours, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    encoder(ours).square().sum().backward()
    reference.encode_image(_clip_normalize(theirs)).square().sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-4)


def test_open_clip_config_block_type_is_kept(tmp_path):
    cfg = dict(tinymodels.TINY_VIT_CFG, vision_cfg=dict(tinymodels.TINY_VIT_CFG["vision_cfg"], block_type="default"))
    folder = tinymodels.save_open_clip(tmp_path / "default-block", cfg)
    backbone = rpmetric.RobustDistance(str(folder), device="cpu").encoder.backbone
    assert type(backbone.transformer.resblocks[0].attn) is torch.nn.MultiheadAttention


def test_timm_embedding_equals_timm_forward(timm_folder):
    import timm
    from safetensors.torch import load_file

    model = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32, patch_size=8).eval()
    model.load_state_dict(load_file(str(timm_folder / "model.safetensors")))
    metric = rpmetric.RobustDistance(str(timm_folder), device="cpu", resize=False)
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(metric.embed(x, normalize=False), model((x - mean) / std), atol=1e-5, rtol=1e-5)


def test_r_dino_remap_equals_transformers_cls(hf_vit):
    folder, model = hf_vit
    metric = rpmetric.RobustDistance(str(folder), device="cpu")
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        cls = model(pixel_values=(x - mean) / std).last_hidden_state[:, 0]
        torch.testing.assert_close(metric.embed(x, normalize=False), cls, atol=1e-5, rtol=1e-5)


def test_remap_accepts_task_model_prefix(hf_vit):
    from safetensors.torch import load_file

    folder, _ = hf_vit
    state = load_file(str(folder / "model.safetensors"))
    plain = convert_hf_vit(state)
    prefixed = convert_hf_vit({f"vit.{k}": v for k, v in state.items()} | {"classifier.weight": torch.zeros(2, 32)})
    assert plain.keys() == prefixed.keys()
    assert "blocks.1.attn.qkv.weight" in plain and plain["blocks.1.attn.qkv.weight"].shape == (96, 32)
    assert not any(k.startswith(("pooler", "encoder", "embeddings")) for k in plain)


def test_remap_rejects_incomplete_qkv(hf_vit):
    from safetensors.torch import load_file

    state = load_file(str(hf_vit[0] / "model.safetensors"))
    del state["encoder.layer.0.attention.attention.key.bias"]
    with pytest.raises(ValueError, match=r"Block 0 has only \['query', 'value'\] of query/key/value bias"):
        convert_hf_vit(state)


def test_unsupported_activation(tmp_path, hf_vit):
    import json
    import shutil

    folder = tmp_path / "vit"
    shutil.copytree(hf_vit[0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_act"] = "relu"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"hidden_act 'relu' is not supported"):
        rpmetric.RobustDistance(str(folder), device="cpu")
