"""open_clip checkpoints: only the vision tower is built, since the metric never uses text."""

from __future__ import annotations

from torch import nn

from ..spec import Preprocessing
from .weights import load_strict, read_state_dict, split_prefix

__all__ = ["build_open_clip", "open_clip_preprocessing"]

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_open_clip(files) -> nn.Module:
    """The vision tower of an open_clip model; its output is ``encode_image`` before L2 norm.

    For ViTs that is the CLS token after ``ln_post`` times ``proj``; for timm trunks
    (ConvNeXt) the pooled features through the head projection.
    """
    from open_clip.model import _build_vision_tower

    model_cfg = files.config.get("model_cfg")
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "embed_dim" not in model_cfg:
        raise ValueError(f"{files.weights.parent}/open_clip_config.json has no model_cfg with embed_dim and vision_cfg.")
    visual = _build_vision_tower(
        model_cfg["embed_dim"], _with_custom_block(model_cfg["vision_cfg"]),
        quick_gelu=bool(model_cfg.get("quick_gelu", False)),
    )
    state, found = split_prefix(read_state_dict(files.weights), "visual.")
    if not found:
        raise ValueError(f"{files.weights} has no 'visual.*' tensors; it is not an open_clip CLIP checkpoint.")
    load_strict(visual, state, where=str(files.weights))
    return visual


def _with_custom_block(vision_cfg: dict) -> dict:
    """``vision_cfg`` asking for open_clip's own ViT attention block, when open_clip has one.

    Why: open_clip's default ViT block calls ``nn.MultiheadAttention``, which in grad mode takes a
    slow path (its in-projection becomes a batched matmul over a transposed input): attacks,
    counterattacks and LoRA training pay about 30% more per forward+backward pass. The "custom"
    block (``open_clip.transformer.Attention``) has the same parameter names, so checkpoints load
    unchanged, and computes the same outputs (up to float rounding). Timm trunks (``timm_model_name``)
    and ResNets (``layers`` a list) have no such block; a config that sets ``block_type`` keeps it.
    """
    from open_clip.model import CLIPVisionCfg

    is_vit = not vision_cfg.get("timm_model_name") and not isinstance(vision_cfg.get("layers"), (list, tuple))
    if not is_vit or "block_type" in vision_cfg or "block_type" not in CLIPVisionCfg.__dataclass_fields__:
        return vision_cfg
    return dict(vision_cfg, block_type="custom")


def open_clip_preprocessing(config: dict) -> Preprocessing:
    """Preprocessing an open_clip config prescribes (for models outside the zoo)."""
    size = config["model_cfg"]["vision_cfg"].get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise ValueError(f"Non-square model input {tuple(size)} is not supported.")
        size = size[0]
    pp = config.get("preprocess_cfg", {})
    return Preprocessing(
        image_size=int(size),
        resize_size=int(size),
        interpolation=pp.get("interpolation", "bicubic"),
        resize_mode="squash" if pp.get("resize_mode") == "squash" else "shortest",
        mean=tuple(pp.get("mean", _OPENAI_MEAN)),
        std=tuple(pp.get("std", _OPENAI_STD)),
    )
