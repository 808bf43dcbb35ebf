"""open_clip checkpoints: only the vision tower is built, since the metric never uses text."""

from __future__ import annotations

from torch import nn

from ..spec import MAX_IMAGE_SIZE, MAX_LAYERS, Preprocessing, config_int, config_real
from .weights import build_checked, read_weights, split_prefix

__all__ = ["build_open_clip", "open_clip_preprocessing", "check_open_clip_config", "with_custom_block", "OPENAI_MEAN",
           "OPENAI_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def check_open_clip_config(config: dict) -> None:
    """Raise ValueError unless ``open_clip_config.json`` describes a vision tower within bounds
    (see :mod:`rpmetric.models.spec`) that is built from the folder alone.

    ``timm_model_pretrained`` is refused: it makes timm download ImageNet weights from the Hub, and a
    model folder carries its own weights.
    """
    from .timm_model import check_timm_name

    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("vision_cfg"), dict) or "embed_dim" not in model_cfg:
        raise ValueError("it has no 'model_cfg' object with 'embed_dim' and a 'vision_cfg' object.")
    config_int("model_cfg.embed_dim", model_cfg["embed_dim"])
    vision = model_cfg["vision_cfg"]
    size = _image_size(vision)
    if vision.get("timm_model_pretrained"):
        raise ValueError("'timm_model_pretrained' is true, which would download weights from the Hub; a model "
                         "folder carries its own weights: set it to false.")
    if vision.get("timm_model_name"):
        check_timm_name("model_cfg.vision_cfg.timm_model_name", vision["timm_model_name"])
        return
    layers = vision.get("layers", 12)
    if isinstance(layers, (list, tuple)):  # ModifiedResNet: blocks per stage
        for i, n in enumerate(layers):
            config_int(f"model_cfg.vision_cfg.layers[{i}]", n, high=MAX_LAYERS)
        return
    config_int("model_cfg.vision_cfg.layers", layers, high=MAX_LAYERS)
    width = config_int("model_cfg.vision_cfg.width", vision.get("width", 768))
    head_width = config_int("model_cfg.vision_cfg.head_width", vision.get("head_width", 64), high=width)
    if width % head_width:
        raise ValueError(f"`model_cfg.vision_cfg.head_width` ({head_width}) must divide `width` ({width}).")
    config_int("model_cfg.vision_cfg.patch_size", vision.get("patch_size", 16), high=size)
    config_real("model_cfg.vision_cfg.mlp_ratio", vision.get("mlp_ratio", 4.0), 0, 16, low_open=True)


def _image_size(vision: dict) -> int:
    size = vision.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"`model_cfg.vision_cfg.image_size` must be square, but got {size!r}; "
                             "non-square model inputs are not supported.")
        size = size[0]
    return config_int("model_cfg.vision_cfg.image_size", size, high=MAX_IMAGE_SIZE)


def build_open_clip(files) -> nn.Module:
    """The vision tower of an open_clip model; its output is ``encode_image`` before L2 norm.

    For ViTs that is the CLS token after ``ln_post`` times ``proj``; for timm trunks
    (ConvNeXt) the pooled features through the head projection.
    """
    from open_clip.model import _build_vision_tower

    model_cfg = files.config["model_cfg"]
    state, found = split_prefix(read_weights(files), "visual.")
    if not found:
        raise ValueError(f"{files.weights} has no 'visual.*' tensors; it is not an open_clip CLIP checkpoint.")
    return build_checked(
        lambda: _build_vision_tower(model_cfg["embed_dim"], with_custom_block(model_cfg["vision_cfg"]),
                                    quick_gelu=bool(model_cfg.get("quick_gelu", False))),
        state, config=str(files.config_path), weights=str(files.weights))


def with_custom_block(vision_cfg: dict) -> dict:
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
    size = _image_size(config["model_cfg"]["vision_cfg"])
    pp = config.get("preprocess_cfg", {})
    if not isinstance(pp, dict):
        raise ValueError(f"'preprocess_cfg' must be an object, but got {pp!r}.")
    return Preprocessing(
        image_size=size,
        resize_size=size,
        interpolation=pp.get("interpolation", "bicubic"),
        resize_mode="squash" if pp.get("resize_mode") == "squash" else "shortest",
        mean=pp.get("mean", OPENAI_MEAN),
        std=pp.get("std", OPENAI_STD),
    )
