"""transformers ViTModel checkpoints (R-DINO) remapped into timm's VisionTransformer.

The remap is a table of key swaps, so transformers is not needed at run time. Query, key
and value projections are fused into timm's single ``qkv`` projection.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Dict

import torch
from torch import nn

from ..spec import MAX_HIDDEN, MAX_IMAGE_SIZE, MAX_LAYERS, Preprocessing, config_int, config_real
from .remap import remap_keys
from .weights import build_checked, read_weights

__all__ = ["build_hf_vit", "hf_vit_preprocessing", "convert_hf_vit", "check_hf_vit_config"]

# (transformers key pattern, timm key); "{i}" is the block index.
_KEY_SWAPS = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
)
_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")
# Parts of ViTModel that the CLS embedding never uses.
_DROPPED = re.compile(r"(pooler\.|embeddings\.mask_token|classifier\.)")
_SUPPORTED_ACT = ("gelu",)


def convert_hf_vit(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a transformers ViT state dict into timm's VisionTransformer keys."""
    if any(k.startswith("vit.") for k in state):  # saved from ViTFor... task models
        state = {k[4:]: v for k, v in state.items() if k.startswith("vit.")}
    # _DROPPED is a prefix pattern (pooler.*, classifier.*), so it is matched with a trailing ".*".
    return remap_keys(state, _KEY_SWAPS, re.compile(_DROPPED.pattern + ".*"), _QKV, ("query", "key", "value"),
                      lambda block, kind: f"blocks.{block}.attn.qkv.{kind}")


def check_hf_vit_config(config: dict) -> None:
    """Raise ValueError unless a transformers ViTConfig's sizes are within bounds (see :mod:`rpmetric.models.spec`)."""
    act = config.get("hidden_act", "gelu")
    if act not in _SUPPORTED_ACT:
        raise ValueError(f"hidden_act {act!r} is not supported for the ViT remap; supported: {_SUPPORTED_ACT}.")
    hidden = config_int("hidden_size", config.get("hidden_size", 768))
    heads = config_int("num_attention_heads", config.get("num_attention_heads", 12), high=hidden)
    if hidden % heads:
        raise ValueError(f"`num_attention_heads` ({heads}) must divide `hidden_size` ({hidden}).")
    config_int("num_hidden_layers", config.get("num_hidden_layers", 12), high=MAX_LAYERS)
    config_int("intermediate_size", config.get("intermediate_size", 4 * hidden), high=MAX_HIDDEN)
    size = config_int("image_size", config.get("image_size", 224), high=MAX_IMAGE_SIZE)
    config_int("patch_size", config.get("patch_size", 16), high=size)
    if config.get("num_channels", 3) != 3:
        raise ValueError(f"`num_channels` must be 3 (RGB), but got {config.get('num_channels')!r}.")
    config_real("layer_norm_eps", config.get("layer_norm_eps", 1e-12), 0, 1, low_open=True)
    if not isinstance(config.get("qkv_bias", True), bool):
        raise ValueError(f"`qkv_bias` must be true or false, but got {config.get('qkv_bias')!r}.")


def build_hf_vit(files) -> nn.Module:
    """timm's ViT built from a transformers ViTConfig; output is the CLS token after the final norm."""
    from timm.models.vision_transformer import VisionTransformer

    cfg = files.config
    hidden = cfg.get("hidden_size", 768)

    def make():
        return VisionTransformer(
            img_size=cfg.get("image_size", 224),
            patch_size=cfg.get("patch_size", 16),
            in_chans=cfg.get("num_channels", 3),
            num_classes=0,
            global_pool="token",
            embed_dim=hidden,
            depth=cfg.get("num_hidden_layers", 12),
            num_heads=cfg.get("num_attention_heads", 12),
            mlp_ratio=cfg.get("intermediate_size", 4 * hidden) / hidden,
            qkv_bias=cfg.get("qkv_bias", True),
            # transformers' ViT default eps is 1e-12, timm's 1e-6: take the checkpoint's.
            norm_layer=partial(nn.LayerNorm, eps=cfg.get("layer_norm_eps", 1e-12)),
        )

    state = read_weights(files)
    try:
        state = convert_hf_vit(state)
    except ValueError as err:
        raise ValueError(f"{files.weights}: {err}") from None
    return build_checked(make, state, config=str(files.config_path), weights=str(files.weights))


_RESAMPLE = {2: "bilinear", 3: "bicubic", 0: "nearest"}


def hf_vit_preprocessing(config: dict, extras: dict) -> Preprocessing:
    """Preprocessing for a ViT folder outside the zoo: DINO's 256/224 bicubic, ImageNet statistics,
    unless ``preprocessor_config.json`` gives the statistics and interpolation."""
    size = config.get("image_size", 224)
    pp = extras.get("preprocessor_config.json", {})
    return Preprocessing(
        image_size=size,
        resize_size=int(round(size * 256 / 224)),
        interpolation=_RESAMPLE.get(pp.get("resample"), "bicubic"),
        mean=pp.get("image_mean", (0.485, 0.456, 0.406)),
        std=pp.get("image_std", (0.229, 0.224, 0.225)),
    )
