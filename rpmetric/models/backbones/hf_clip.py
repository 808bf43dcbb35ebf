"""transformers CLIP checkpoints (LEAF's FARE² models, openai/clip-*) remapped into open_clip's ViT.

A ``config.json`` of ``model_type`` ``clip`` (a whole ``CLIPModel``) or ``clip_vision_model`` (a
``CLIPVisionModelWithProjection``) is read without transformers: the vision tower's keys are
renamed by a table into open_clip's ``VisionTransformer``, whose output (CLS token after
``ln_post``, times ``proj``) is what ``CLIPModel.get_image_features`` returns: the pooled output
through ``visual_projection``. Query, key and value projections are fused into ``in_proj``.
"""

from __future__ import annotations

import re
from typing import Dict, Tuple

import torch
from torch import nn

from ..spec import MAX_HIDDEN, MAX_IMAGE_SIZE, MAX_LAYERS, Preprocessing, config_int, config_real
from .openclip import OPENAI_MEAN, OPENAI_STD, with_custom_block
from .remap import remap_keys
from .weights import build_checked, read_weights

__all__ = ["build_hf_clip", "hf_clip_preprocessing", "convert_hf_clip", "check_hf_clip_config", "vision_config"]

# (transformers key pattern, open_clip VisionTransformer key); group 1 of block keys is the layer.
_KEY_SWAPS = (
    (r"vision_model\.embeddings\.class_embedding", "class_embedding"),
    (r"vision_model\.embeddings\.patch_embedding\.weight", "conv1.weight"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"vision_model\.pre_layrnorm\.(weight|bias)", r"ln_pre.\1"),  # sic: transformers' spelling
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)", r"transformer.resblocks.\1.ln_1.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
     r"transformer.resblocks.\1.attn.out_proj.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)", r"transformer.resblocks.\1.ln_2.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_proj.\2"),
    (r"vision_model\.post_layernorm\.(weight|bias)", r"ln_post.\1"),
)
_QKV = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)")
_PROJECTION = "visual_projection.weight"  # nn.Linear(hidden, projection_dim, bias=False): proj is its transpose
# A buffer older transformers saved with the weights; open_clip has no counterpart.
_DROPPED = re.compile(r"vision_model\.embeddings\.position_ids")
# transformers' hidden_act for CLIP -> open_clip's quick_gelu flag; other activations have no open_clip ViT.
_ACTIVATIONS = {"quick_gelu": True, "gelu": False}
# CLIPVisionConfig's defaults, for keys a config.json leaves out.
_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
             "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
             "num_channels": 3, "projection_dim": 512}


def convert_hf_clip(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a transformers CLIP vision tower's state dict into open_clip ``VisionTransformer`` keys.

    Example:
        >>> w = torch.ones(8, 4)
        >>> out = convert_hf_clip({"visual_projection.weight": w,
        ...                        "vision_model.post_layernorm.bias": torch.zeros(4)})
        >>> sorted(out), tuple(out["proj"].shape)
        (['ln_post.bias', 'proj'], (4, 8))
    """
    projection = state.get(_PROJECTION)
    out = remap_keys({k: v for k, v in state.items() if k != _PROJECTION}, _KEY_SWAPS, _DROPPED, _QKV, ("q", "k", "v"),
                     lambda block, kind: f"transformer.resblocks.{block}.attn.in_proj_{kind}")
    if projection is not None:
        out["proj"] = projection.t().contiguous()
    return out


def vision_config(config: dict) -> Tuple[dict, int]:
    """``(vision config with defaults filled in, projection_dim)`` of a CLIP or CLIP-vision config.json."""
    if config.get("model_type") == "clip":
        vision = config.get("vision_config", {})
        if not isinstance(vision, dict):
            raise ValueError(f"`vision_config` must be an object, but got {vision!r}.")
        projection = config.get("projection_dim", _DEFAULTS["projection_dim"])
    else:
        vision, projection = config, config.get("projection_dim", _DEFAULTS["projection_dim"])
    return {key: vision.get(key, default) for key, default in _DEFAULTS.items()}, projection


def check_hf_clip_config(config: dict) -> None:
    """Raise ValueError unless a transformers CLIP config's vision tower is within bounds (see
    :mod:`rpmetric.models.spec`) and has an activation open_clip's ViT has.

    Example:
        >>> check_hf_clip_config({"model_type": "clip", "vision_config": {"num_hidden_layers": 10 ** 6}})
        Traceback (most recent call last):
        ...
        ValueError: `vision_config.num_hidden_layers` must be an integer in [1, 128], but got 1000000.
    """
    vision, projection = vision_config(config)
    at = "vision_config." if config.get("model_type") == "clip" else ""
    act = vision["hidden_act"]
    if act not in _ACTIVATIONS:
        raise ValueError(f"`{at}hidden_act` {act!r} is not supported for the CLIP remap; supported: "
                         f"{tuple(_ACTIVATIONS)}.")
    hidden = config_int(f"{at}hidden_size", vision["hidden_size"])
    heads = config_int(f"{at}num_attention_heads", vision["num_attention_heads"], high=hidden)
    if hidden % heads:
        raise ValueError(f"`{at}num_attention_heads` ({heads}) must divide `hidden_size` ({hidden}).")
    config_int(f"{at}num_hidden_layers", vision["num_hidden_layers"], high=MAX_LAYERS)
    config_int(f"{at}intermediate_size", vision["intermediate_size"], high=MAX_HIDDEN)
    size = config_int(f"{at}image_size", vision["image_size"], high=MAX_IMAGE_SIZE)
    config_int(f"{at}patch_size", vision["patch_size"], high=size)
    if vision["num_channels"] != 3:
        raise ValueError(f"`{at}num_channels` must be 3 (RGB), but got {vision['num_channels']!r}.")
    config_real(f"{at}layer_norm_eps", vision["layer_norm_eps"], 0, 1, low_open=True)
    config_int("projection_dim", projection)


def open_clip_vision_cfg(config: dict) -> Tuple[int, dict, bool]:
    """``(embed_dim, vision_cfg, quick_gelu)`` for open_clip's ``_build_vision_tower``.

    Example:
        >>> embed, cfg, quick = open_clip_vision_cfg({"model_type": "clip_vision_model", "hidden_size": 1408,
        ...                                           "intermediate_size": 6144, "num_attention_heads": 16})
        >>> embed, cfg["head_width"], int(cfg["width"] * cfg["mlp_ratio"]), quick
        (512, 88, 6144, True)
    """
    vision, projection = vision_config(config)
    hidden = vision["hidden_size"]
    cfg = {
        "image_size": vision["image_size"], "patch_size": vision["patch_size"], "width": hidden,
        "layers": vision["num_hidden_layers"], "head_width": hidden // vision["num_attention_heads"],
        # open_clip sizes the MLP as int(width * mlp_ratio); half a unit over keeps it exact for any
        # intermediate size (6144 / 1408, ViT-g's, is not exact in floating point).
        "mlp_ratio": (vision["intermediate_size"] + 0.5) / hidden,
        "norm_kwargs": {"eps": vision["layer_norm_eps"]},
    }
    return projection, cfg, _ACTIVATIONS[vision["hidden_act"]]


def build_hf_clip(files) -> nn.Module:
    """open_clip's ViT built from a transformers CLIP config; output is ``get_image_features``."""
    from open_clip.model import _build_vision_tower

    embed_dim, vision_cfg, quick_gelu = open_clip_vision_cfg(files.config)
    state = read_weights(files)
    if _PROJECTION not in state:
        raise ValueError(f"{files.weights} has no {_PROJECTION!r}; the metric's embedding is the pooled output "
                         "through the projection (a CLIPModel or CLIPVisionModelWithProjection checkpoint), and "
                         "a CLIPVisionModel without one is not supported.")
    try:
        state = convert_hf_clip(state)
    except ValueError as err:
        raise ValueError(f"{files.weights}: {err}") from None
    return build_checked(lambda: _build_vision_tower(embed_dim, with_custom_block(vision_cfg), quick_gelu=quick_gelu),
                         state, config=str(files.config_path), weights=str(files.weights))


# PIL's resampling filters by number, as CLIPImageProcessor stores them.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def hf_clip_preprocessing(config: dict, extras: dict) -> Preprocessing:
    """Preprocessing from ``preprocessor_config.json`` (a CLIPImageProcessor's): resize the shortest
    edge (or to a square), centre-crop, mean/std; without that file, CLIP's at the model's size.

    Example:
        >>> pp = hf_clip_preprocessing({"model_type": "clip", "vision_config": {"image_size": 336}},
        ...     {"preprocessor_config.json": {"size": {"shortest_edge": 336}, "crop_size": 336, "resample": 3}})
        >>> pp.image_size, pp.resize_size, pp.interpolation
        (336, 336, 'bicubic')
    """
    vision, _ = vision_config(config)
    size = vision["image_size"]
    pp = extras.get("preprocessor_config.json")
    if pp is None:
        return Preprocessing(image_size=size, resize_size=size, interpolation="bicubic",
                             mean=OPENAI_MEAN, std=OPENAI_STD)
    if pp.get("do_resize", True) is not True:
        raise ValueError(f"`do_resize` is {pp.get('do_resize')!r}; the metric resizes every image to the model's "
                         "input, so it must be true.")
    resize, mode = _resize_size(pp.get("size", {"shortest_edge": size}))
    crop = _square("crop_size", pp.get("crop_size", size)) if pp.get("do_center_crop", True) is True else resize
    if mode == "shortest" and pp.get("do_center_crop", True) is not True:
        raise ValueError("`do_center_crop` is false with a shortest-edge resize, which leaves images non-square; "
                         "the model takes squares.")
    if crop != size:
        raise ValueError(f"`crop_size` is {crop}, but the model's `image_size` (config.json) is {size}; they must "
                         "agree, since the model's position embeddings fix its input size.")
    resample = pp.get("resample", 3)
    if resample not in _RESAMPLE or isinstance(resample, bool):
        raise ValueError(f"`resample` must be one of {tuple(_RESAMPLE)} ({', '.join(_RESAMPLE.values())}), "
                         f"but got {resample!r}.")
    normalize = pp.get("do_normalize", True) is True
    return Preprocessing(
        image_size=crop, resize_size=resize, interpolation=_RESAMPLE[resample], resize_mode=mode,
        mean=pp.get("image_mean", OPENAI_MEAN) if normalize else (0.0, 0.0, 0.0),
        std=pp.get("image_std", OPENAI_STD) if normalize else (1.0, 1.0, 1.0),
    )


def _resize_size(value) -> Tuple[int, str]:
    """``size`` of a CLIPImageProcessor: an int or ``{"shortest_edge": n}`` (shorter side), or
    ``{"height": n, "width": n}`` (a square, squashed)."""
    if isinstance(value, dict) and set(value) == {"shortest_edge"}:
        return config_int("size.shortest_edge", value["shortest_edge"], high=2 * MAX_IMAGE_SIZE), "shortest"
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        return _square("size", value, high=2 * MAX_IMAGE_SIZE), "squash"
    if isinstance(value, dict):
        raise ValueError(f"`size` must be an integer, {{'shortest_edge': n}} or {{'height': n, 'width': n}}, "
                         f"but got {value!r}.")
    return config_int("size", value, high=2 * MAX_IMAGE_SIZE), "shortest"


def _square(name: str, value, high: int = MAX_IMAGE_SIZE) -> int:
    if isinstance(value, dict):
        if set(value) != {"height", "width"} or value["height"] != value["width"]:
            raise ValueError(f"`{name}` must be a square {{'height': n, 'width': n}}, but got {value!r}; "
                             "non-square model inputs are not supported.")
        value = value["height"]
    return config_int(name, value, high=high)
