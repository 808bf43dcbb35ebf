"""Convert the authors' released MLP and LoRA heads (fra31/perceptual-metrics, DreamSim-style) into
rpmetric head folders (``rpmetric_config.json`` + ``head.safetensors``).

What their public code shows (fra31/perceptual-metrics ``eval.py``, ``utils_lora.py``,
``utils_perceptual_models.py``; DreamSim ``dreamsim/model.py``):

- MLP heads are PyTorch Lightning checkpoints whose ``state_dict`` holds
  ``perceptual_model.mlp.fc1.weight/bias`` and ``perceptual_model.mlp.fc2.weight/bias``; the head is
  DreamSim's ``fc2(relu(fc1(e))) + e`` on the open_clip visual embedding ``e``.
- LoRA heads are PEFT adapter folders (``adapter_config.json`` + ``adapter_model.safetensors`` or
  ``.bin``), r 16, alpha 0.5, dropout 0.3. For ConvNeXt the adapters sit on every ``...mlp.fc1`` /
  ``...mlp.fc2`` of the open_clip visual tower itself. For ViT-B/16 and B/32 the open_clip weights are
  remapped into a DINO-style ViT (``in_proj_weight`` -> ``blocks.i.attn.qkv.weight``, same layout)
  and the adapters sit on ``blocks.i.attn.qkv``; the embedding is that ViT's normalised CLS token
  times open_clip's ``proj``.
- With a head, the authors squash images to 224x224 (bicubic, no crop), as DreamSim does; the
  converted folders say so in their ``preprocessing``.

Key names are matched by their tail, so the prefixes PEFT and the authors' wrappers add
(``base_model.model.``, ``model.``, the wrapper's duplicate ``blocks`` alias) do not matter.

Not converted, or not exactly:

- ViT LoRA heads are applied to open_clip's own tower, not to the authors' DINO-style re-implementation.
  That ViT uses LayerNorm eps 1e-6 where open_clip uses 1e-5 (their code has the fix commented out), so
  distances differ slightly from the authors'; the adapter tensors themselves map one to one.
- DreamSim's own heads (``dreamsim:*``: DINO/CLIP/OpenCLIP ensembles with their own backbones and
  embedding concatenation) are not converted: their backbones are not rpmetric models.
- Checkpoints that ``torch.load(weights_only=True)`` refuses (pickled objects in a Lightning
  checkpoint) are not unpickled: re-save ``ckpt["state_dict"]`` as a plain dict of tensors (or as
  safetensors) in a trusted environment first.

Usage:

    python weights/convert_dreamsim_heads.py mlp  CKPT        --base-model r-clip-f-vitb16   --out DIR
    python weights/convert_dreamsim_heads.py lora ADAPTER_DIR --base-model r-clip-t-convnext --out DIR

then ``RobustDistance(model="DIR")`` or ``rpmetric eval nights ROOT --model DIR``. The converter
does not load the base model; the first load checks every tensor's name and shape. It writes the
head's model card (``README.md``) too, without scores: it measures none.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import shlex
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from rpmetric.models.cards import write_head_card
from rpmetric.models.heads import HeadConfig, save_head_folder
from rpmetric.models.spec import PREPROCESS_CONVENTIONS

DREAMSIM_PREPROCESSING = dict(PREPROCESS_CONVENTIONS["dreamsim"])  # bicubic squash to the model size, no crop

# (pattern on the tail of an authors' key, how to name it in rpmetric). peft's adapter name
# ("default") is dropped when PEFT saves, and added back for rpmetric's peft-wrapped Linear layers.
_MLP_KEY = re.compile(r"(?:^|\.)mlp\.(fc[12])\.(weight|bias)$")
_VIT_QKV_KEY = re.compile(r"(?:^|\.)blocks\.(\d+)\.attn\.qkv\.lora_([AB])(?:\.default)?\.weight$")
_CONVNEXT_KEY = re.compile(r"(?:^|\.)(trunk\.stages\.\d+\.blocks\.\d+\.mlp\.fc[12])\.lora_([AB])(?:\.default)?\.weight$")


def read_tensors(path: Path) -> Dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a torch checkpoint (loaded with ``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # what weights_only=True raises on pickled objects
        raise ValueError(f"{path} cannot be read with torch.load(weights_only=True) ({type(err).__name__}); "
                         "it holds pickled objects. Re-save its 'state_dict' as plain tensors in a trusted "
                         "environment and convert that file.") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # PyTorch Lightning checkpoint
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a dict of tensors.")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _unique(found: Dict[str, torch.Tensor], key: str, value: torch.Tensor, source: str) -> None:
    # The authors' ViT wrapper registers the blocks twice, so a tensor may appear under two prefixes.
    if key in found and not torch.equal(found[key], value):
        raise ValueError(f"{source}: two different tensors map to {key!r}.")
    found[key] = value


def convert_mlp(state: Dict[str, torch.Tensor], source: str = "checkpoint") -> Tuple[HeadConfig, Dict[str, torch.Tensor]]:
    """An MLP head's config and tensors from the authors' ``...mlp.fc1/fc2`` tensors.

    Example:
        >>> cfg, out = convert_mlp({"perceptual_model.mlp.fc1.weight": torch.zeros(8, 4),
        ...                         "perceptual_model.mlp.fc1.bias": torch.zeros(8),
        ...                         "perceptual_model.mlp.fc2.weight": torch.zeros(4, 8),
        ...                         "perceptual_model.mlp.fc2.bias": torch.zeros(4)})
        >>> cfg.dim, cfg.hidden, sorted(out)[0]
        (4, 8, 'mlp_head.fc1.bias')
    """
    found: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _MLP_KEY.search(key)
        if match:
            _unique(found, f"mlp_head.{match.group(1)}.{match.group(2)}", value, source)
    expected = {f"mlp_head.{layer}.{kind}" for layer in ("fc1", "fc2") for kind in ("weight", "bias")}
    if set(found) != expected:
        raise ValueError(f"{source} has no complete MLP head: found {sorted(found)}, expected keys ending in "
                         "mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias.")
    hidden, dim = found["mlp_head.fc1.weight"].shape
    return HeadConfig("mlp", dim=int(dim), hidden=int(hidden)), found


def convert_lora(state: Dict[str, torch.Tensor], adapter_config: dict,
                 source: str = "adapter") -> Tuple[HeadConfig, Dict[str, torch.Tensor]]:
    """A LoRA head's config and tensors from a PEFT adapter of the authors' ViT or ConvNeXt.

    ViT ``blocks.i.attn.qkv`` adapters become LoRA on open_clip's ``transformer.resblocks.i.attn``
    in-projection; ConvNeXt ``trunk....mlp.fc1/fc2`` adapters keep their module names.
    """
    found: Dict[str, torch.Tensor] = {}
    targets = set()
    for key, value in state.items():
        vit, convnext = _VIT_QKV_KEY.search(key), _CONVNEXT_KEY.search(key)
        if vit:
            target = f"transformer.resblocks.{vit.group(1)}.attn"
            _unique(found, f"{target}.lora_{vit.group(2)}", value, source)
        elif convnext:
            target = convnext.group(1)
            _unique(found, f"{target}.lora_{convnext.group(2)}.default.weight", value, source)
        else:
            continue
        targets.add(target)
    if not targets:
        raise ValueError(f"{source} has no LoRA tensors on 'blocks.N.attn.qkv' (ViT) or "
                         "'trunk.stages.N.blocks.M.mlp.fc1/fc2' (ConvNeXt); it is not one of the authors' heads.")
    lone = sorted(k for k in found if _partner(k) not in found)
    if lone:
        raise ValueError(f"{source}: {lone[0]!r} has no matching A/B partner.")
    if adapter_config.get("use_rslora") or adapter_config.get("use_dora"):
        raise ValueError(f"{source}: rsLoRA/DoRA adapters are not supported (plain LoRA only).")
    rank = int(next(v for k, v in found.items() if "lora_A" in k).shape[0])
    config = HeadConfig("lora", r=int(adapter_config.get("r", rank)), alpha=float(adapter_config.get("lora_alpha", 0.5)),
                        dropout=float(adapter_config.get("lora_dropout", 0.3)), targets=tuple(sorted(targets, key=_natural)))
    if config.r != rank:
        raise ValueError(f"{source}: adapter_config.json says r={config.r} but the tensors have rank {rank}.")
    return config, found


def _partner(key: str) -> str:
    return key.replace("lora_A", "lora_B") if "lora_A" in key else key.replace("lora_B", "lora_A")


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def convert(kind: str, source: Path, base_model: str, out: Path, command: Optional[str] = None) -> Path:
    """Convert one released head into the head folder ``out``, with its model card (``README.md``:
    base model, licence, the command that converted it; no scores, since the converter measures
    none).

    Args:
        command: the command line shown in the card; None leaves it out.
    """
    if kind == "mlp":
        config, state = convert_mlp(read_tensors(source), str(source))
    elif kind == "lora":
        if not source.is_dir():
            raise ValueError(f"A LoRA head is a PEFT adapter folder, but {source} is not a folder.")
        weights = next((source / n for n in ("adapter_model.safetensors", "adapter_model.bin")
                        if (source / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{source} has no adapter_model.safetensors or adapter_model.bin.")
        config_path = source / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        config, state = convert_lora(read_tensors(weights), adapter_config, str(weights))
    else:
        raise ValueError(f"Argument `kind` must be one of ('mlp', 'lora'), but got {kind!r}.")
    # The authors trained their heads on NIGHTS (DreamSim's recipe); their scores are not in the files.
    training = {"dataset": "nights", "converted_from": str(source),
                "origin": "fra31/perceptual-metrics (DreamSim-style head)"}
    save_head_folder(out, base_model, config, state, training=training, preprocessing=DREAMSIM_PREPROCESSING)
    write_head_card(out, command)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("mlp", "lora"))
    parser.add_argument("source", type=Path, help="MLP checkpoint file, or PEFT adapter folder")
    parser.add_argument("--base-model", required=True,
                        help="the backbone the head was trained on: zoo name (e.g. r-clip-f-vitb16) or hf-hub:ORG/NAME")
    parser.add_argument("--out", required=True, type=Path, help="head folder to write")
    args = parser.parse_args(argv)
    try:
        command = shlex.join(["python", "weights/convert_dreamsim_heads.py", *(sys.argv[1:] if argv is None else argv)])
        out = convert(args.kind, args.source, args.base_model, args.out, command)
    except (ValueError, FileNotFoundError) as err:
        print(f"convert_dreamsim_heads: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}; load it with RobustDistance(model={str(out)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
