"""A head folder's model card: the ``README.md`` the Hugging Face Hub shows for a shared head.

:func:`write_head_card` reads what the folder's ``rpmetric_config.json`` records (base model, head,
training record with the scores the run measured) and writes YAML front matter that the Hub
reads (``library_name: rpmetric``, ``base_model``, ``license``, ``tags``, ``datasets``, and a
``model-index`` with the measured scores), then how to load the head and how it was made. The
front matter is written by huggingface_hub's own :class:`~huggingface_hub.ModelCardData`, so the
Hub parses what it wrote.

The card's ``license`` is the base model's, as the zoo records it (``unknown`` where the zoo says
the licence was not checked, and for bases outside the zoo); ``base_model`` is the base model's
Hub id, absent for a local folder (which is not on the Hub).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple

from ..files import atomic_write
from .hub import HUB_PREFIX, parse
from .spec import CONFIG_NAME, WEIGHTS_NAME

__all__ = ["CARD_NAME", "hub_licence", "base_model_facts", "head_card", "write_head_card"]

CARD_NAME = "README.md"

# Licence identifiers of the Hub that the zoo's licences map to; anything else is "other".
_HUB_LICENCES = ("mit", "apache-2.0", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "openrail")
# NIGHTS splits in the order a card lists them; "total" is both test splits together.
_SPLITS = (("val", "val"), ("test_imagenet", "test_imagenet"), ("test_no_imagenet", "test_no_imagenet"),
           ("total", "test"))
_DATASETS = {"nights": "NIGHTS"}


def hub_licence(licence: str) -> str:
    """The Hub's licence identifier for a zoo entry's ``licence`` text.

    Example:
        >>> hub_licence("apache-2.0 (timm's pretrained_cfg)"), hub_licence("MIT"), hub_licence("unknown (not checked)")
        ('apache-2.0', 'mit', 'unknown')
        >>> hub_licence(""), hub_licence("OpenAI terms of use")
        ('unknown', 'other')
    """
    words = licence.split()
    first = words[0].lower() if words else "unknown"
    return first if first in _HUB_LICENCES or first == "unknown" else "other"


def base_model_facts(base_model: str) -> Tuple[Optional[str], str, str]:
    """``(hub_id, licence, where the licence comes from)`` of a head's base model.

    Example:
        >>> base_model_facts("dino-vitb16")
        ('timm/vit_base_patch16_224.dino', 'apache-2.0', "rpmetric's zoo: apache-2.0 (timm's pretrained_cfg)")
        >>> base_model_facts("hf-hub:org/base")[:2]
        ('org/base', 'unknown')
    """
    try:
        spec = parse(base_model)
    except ValueError:  # e.g. a relative folder name, read from the head's folder when it loads
        return None, "unknown", f"the base model {base_model!r} is neither a zoo name nor a Hub id"
    if spec.local_path:
        return None, "unknown", f"the base model is a local folder ({spec.local_path}), not a Hub repo"
    if base_model.startswith(HUB_PREFIX):
        return spec.hub_id, "unknown", "the base model is not in rpmetric's zoo; see its Hub page"
    return spec.hub_id, hub_licence(spec.licence), f"rpmetric's zoo: {spec.licence or 'not recorded'}"


def _scores(training: dict) -> List[Tuple[str, Optional[int], float]]:
    """``(split, n, score)`` of every score the training record holds (none for a converted head)."""
    out = []
    if training.get("val_2afc") is not None:
        out.append(("val", training.get("val_n"), float(training["val_2afc"])))
    test = training.get("test") or {}
    for key, split in _SPLITS[1:]:
        if test.get(key):
            out.append((split, test[key].get("n"), float(test[key]["score"])))
    return out


def head_card(meta: dict, name: str, command: Optional[str] = None) -> str:
    """The model card text of a head whose ``rpmetric_config.json`` holds ``meta``.

    Args:
        meta: the head folder's config (base model, head, training record).
        name: the head's name (the folder's name), for the model index and the title.
        command: the command that made the head, shown as given; None leaves it out.

    Example:
        >>> meta = {"base_model": "dino-vitb16", "head": {"type": "mlp", "dim": 768, "hidden": 512},
        ...         "training": {"dataset": "nights", "val_2afc": 0.9, "test": {}}}
        >>> text = head_card(meta, "my-head")
        >>> text.splitlines()[:3]
        ['---', 'base_model: timm/vit_base_patch16_224.dino', 'datasets:']
    """
    from huggingface_hub import EvalResult, ModelCardData

    training = meta.get("training") or {}
    head = meta.get("head") or {}
    base_model = meta["base_model"]
    hub_id, licence, licence_source = base_model_facts(base_model)
    dataset = _DATASETS.get(str(training.get("dataset", "")).lower(), training.get("dataset"))
    scores = _scores(training)
    tags = ["rpmetric", "perceptual-similarity", "image-similarity", "adversarial-robustness",
            f"{head.get('type', 'head')}-head"]
    if training.get("adversarial"):
        tags.append("adversarial-training")
    results = [EvalResult(task_type="image-similarity", task_name="Perceptual similarity (2AFC)",
                          dataset_type=str(dataset).lower(), dataset_name=dataset, dataset_split=split,
                          metric_type="accuracy", metric_name="2AFC score", metric_value=score)
               for split, _, score in scores] if dataset else []
    data = ModelCardData(library_name="rpmetric", base_model=hub_id, license=licence, tags=tags,
                         datasets=[dataset] if dataset else None, model_name=name, eval_results=results or None)
    lines = ["---", data.to_yaml(), "---", "", f"# {name}", ""]
    what = {"mlp": "An MLP head", "lora": "A LoRA head"}.get(head.get("type"), "A head")
    base = f"`{base_model}`" + (f" ([{hub_id}](https://huggingface.co/{hub_id}))" if hub_id else "")
    lines += [f"{what} for [rpmetric](https://pypi.org/project/rpmetric/) on the base model {base}: the "
              "distance is 1 − cosine between the embeddings of the base model with this head.", ""]
    lines += ["## Use", "", "```python", "import rpmetric", "",
              '# ORG/NAME: this repository. The base model is fetched with the head.',
              'metric = rpmetric.RobustDistance("hf-hub:ORG/NAME")',
              "d = metric(x, y)  # x, y: [N, 3, H, W] images in [0, 1] -> [N] distances", "```", "",
              "or `rpmetric distance A.png B.png --model hf-hub:ORG/NAME`.", ""]
    lines += ["## Scores", ""]
    if scores:
        kept = training.get("best_epoch")
        lines += [f"{dataset} 2AFC scores the training run measured itself"
                  + (f" (the head of epoch {kept}, kept as the best on val)" if kept is not None else "") + ":", "",
                  "| split | n | 2AFC % |", "|---|---|---|"]
        lines += [f"| {split} | {'' if n is None else n} | {100 * score:.2f} |" for split, n, score in scores]
    else:
        lines += ["None: whatever made this head measured nothing. Measure it with "
                  "`rpmetric eval nights ROOT --model DIR` before quoting a figure."]
    lines += ["", "## How it was made", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    if training.get("origin"):
        lines += [f"Converted from {training['origin']}" + (f", `{training['converted_from']}`"
                                                            if training.get("converted_from") else "") + ".", ""]
    lines += [f"Head: `{json.dumps(head, sort_keys=True)}`."]
    if meta.get("preprocessing"):
        lines += [f"Preprocessing differs from the base model's: `{json.dumps(meta['preprocessing'], sort_keys=True)}`."]
    if meta.get("rpmetric_version"):
        lines += [f"Written by rpmetric {meta['rpmetric_version']}; `{CONFIG_NAME}` holds the full record."]
    lines += ["", "## Licence", "",
              f"`license: {licence}` is the base model's ({licence_source}); the base model's own terms apply.", "",
              "## Files", "",
              f"`{CONFIG_NAME}` (base model, head, training record), `{WEIGHTS_NAME}` (the head's tensors only) "
              f"and this card. Share the folder with `hf upload ORG/NAME DIR --exclude 'checkpoint/*'`.", ""]
    return "\n".join(lines)


def write_head_card(folder, command: Optional[str] = None) -> Path:
    """Write ``README.md`` into a head folder, from its ``rpmetric_config.json``; returns its path.

    Args:
        folder: the head folder (as :func:`~rpmetric.models.heads.save_head_folder` wrote it).
        command: the command that made the head (e.g. the ``rpmetric train`` line), or None.
    """
    folder = Path(folder)
    meta = json.loads((folder / CONFIG_NAME).read_text())
    text = head_card(meta, folder.resolve().name, command)
    path = folder / CARD_NAME
    atomic_write(path, lambda f: f.write(text.encode()))
    return path
