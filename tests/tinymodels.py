"""Tiny models built from small configs and saved in the Hub's exact file layouts.

They are loaded through rpmetric's real code path (local folder, or a pre-filled Hugging Face
cache with HF_HUB_OFFLINE=1), and compared against the libraries' own forward passes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

IMAGE_SIZE = 32
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

TINY_VIT_CFG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
# At the zoo's 224 px, so a tiny model can stand in for a zoo entry in a pre-filled Hub cache.
TINY_VIT224_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
TINY_CONVNEXT_CFG = {
    "embed_dim": 24,
    "vision_cfg": {"timm_model_name": "test_convnext", "timm_model_pretrained": False, "timm_pool": "",
                   "timm_proj": "linear", "image_size": IMAGE_SIZE},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


def save_open_clip(folder: Path, model_cfg: dict, seed: int = 0, safetensors: bool = True) -> Path:
    """A random open_clip CLIP saved as open_clip's push_to_hf_hub lays it out."""
    import open_clip
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**model_cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg,
              "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic", "resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(folder / "open_clip_model.safetensors"))
    else:
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    assert open_clip  # the real library builds the reference model
    return folder


def load_reference_open_clip(folder: Path):
    """open_clip's own model for a saved folder, loaded with open_clip's own loader."""
    import open_clip

    return open_clip.create_model(f"local-dir:{folder}").eval()


def save_timm_vit(folder: Path, seed: int = 0) -> Path:
    """A random timm ViT in timm's Hub layout (config.json with 'architecture')."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    args = {"img_size": IMAGE_SIZE, "patch_size": 8}
    model = timm.create_model("test_vit", pretrained=False, num_classes=0, **args).eval()
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architecture": "test_vit", "num_classes": 0, "model_args": args,
              "pretrained_cfg": {"input_size": [3, IMAGE_SIZE, IMAGE_SIZE], "crop_pct": 0.875,
                                 "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225], "classifier": "head"}}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def hf_vit_config():
    from transformers import ViTConfig

    return ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     image_size=IMAGE_SIZE, patch_size=8, qkv_bias=True)


def save_hf_vit(folder: Path, seed: int = 0):
    """A random transformers ViTModel saved with save_pretrained (R-DINO's layout)."""
    from transformers import ViTModel

    torch.manual_seed(seed)
    model = ViTModel(hf_vit_config()).eval()
    model.save_pretrained(folder)
    return model


def fill_hf_cache(hf_home: Path, repo_id: str, folder: Path, commit: str = "0" * 40) -> Path:
    """Place a folder's files where huggingface_hub keeps a downloaded snapshot of `repo_id`."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        shutil.copy(f, snapshot / f.name)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def hf_clip_config(hidden_act: str = "quick_gelu", image_size: int = IMAGE_SIZE):
    """A tiny transformers CLIPConfig (vision 32 wide, 2 layers; text 16 wide, 1 layer)."""
    from transformers import CLIPConfig

    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=8, hidden_act=hidden_act, layer_norm_eps=1e-5)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


def save_hf_clip(folder: Path, seed: int = 0, hidden_act: str = "quick_gelu", vision_only: bool = False,
                 max_shard_size=None, preprocessor: dict = None):
    """A random transformers CLIPModel (or CLIPVisionModelWithProjection) saved with save_pretrained,
    as LEAF's and OpenAI's repos are; sharded (model-0000K-of-0000N.safetensors + index) with
    ``max_shard_size``. Returns the transformers model."""
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = hf_clip_config(hidden_act)
    if vision_only:
        vision_config = config.vision_config
        vision_config.projection_dim = config.projection_dim
        model = CLIPVisionModelWithProjection(vision_config).eval()
    else:
        model = CLIPModel(config).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model


def shard_to_bin(folder: Path, weights: str, index: str, max_shard_size: int = 4000) -> Path:
    """Replace ``folder/weights`` (safetensors) by pickled shards and their index, as transformers 4
    (``save_pretrained(safe_serialization=False)``) writes them: ``pytorch_model-0000K-of-0000N.bin``
    with ``pytorch_model.bin.index.json``; ``index`` names the index (its stem names the shards)."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import load_file

    state = load_file(str(folder / weights))
    stem = index[:-len(".bin.index.json")]
    split = split_torch_state_dict_into_shards(state, filename_pattern=stem + "{suffix}.bin",
                                               max_shard_size=max_shard_size)
    for shard, keys in split.filename_to_tensors.items():
        torch.save({k: state[k].clone() for k in keys}, folder / shard)
    (folder / index).write_text(json.dumps({"metadata": split.metadata, "weight_map": split.tensor_to_filename}))
    (folder / weights).unlink()
    return folder


def shard_safetensors(folder: Path, weights: str, max_shard_size: int = 4000) -> Path:
    """Replace ``folder/weights`` by safetensors shards and ``{weights}.index.json`` (huggingface_hub's
    ``save_torch_state_dict``, as open_clip and transformers shard)."""
    from huggingface_hub import save_torch_state_dict
    from safetensors.torch import load_file

    state = load_file(str(folder / weights))
    (folder / weights).unlink()
    save_torch_state_dict(state, folder, filename_pattern=weights[:-len(".safetensors")] + "{suffix}.safetensors",
                          max_shard_size=max_shard_size)
    return folder
