"""Write a Markdown model card for each zoo entry, from rpmetric/zoo.json (the one source of truth).

    python weights/model_cards.py [--out DIR]        # one NAME.md per model; default: print all

The cards say where the weights live, how the model sees images, how it was trained and what was
published about it, so a user can cite and reproduce a figure without reading the code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import rpmetric
from rpmetric.models.spec import Family


def _geometry(pp) -> str:
    if pp.resize_mode == "squash":
        return f"resize to {pp.image_size}x{pp.image_size} ({pp.interpolation}, no crop)"
    return f"resize shorter side to {pp.resize_size} ({pp.interpolation}), centre crop {pp.image_size}"


def _embedding(spec) -> str:
    if spec.family is Family.OPEN_CLIP:
        return "the projected image embedding (open_clip's `encode_image`) before L2 normalisation"
    # DINO ViTs (timm, or transformers for R-DINO) have no projection head.
    return "the CLS token after the final layer norm (no projection), before L2 normalisation"


def card(name: str) -> str:
    spec = rpmetric.get_spec(name)
    pp = spec.preprocessing
    training = f"{spec.training['method']}, adversarial fine-tuning at eps {spec.training['eps']} (l-inf)" \
        if spec.training else "none (clean baseline)"
    lines = [
        f"# {spec.name}", "",
        f"- Role: {spec.role}; architecture: {spec.architecture}",
        f"- Weights: https://huggingface.co/{spec.hub_id} (`hf-hub:{spec.hub_id}`), layout `{spec.family.value}`",
        f"- Training: {training}",
        f"- Preprocessing: {_geometry(pp)}; mean {pp.mean}, std {pp.std} (applied inside the model)",
        f"- Embedding: {_embedding(spec)}; distance = 1 - cosine",
        "", "## Published NIGHTS 2AFC accuracy (%)", "",
    ]
    if spec.published:
        lines += ["| clean | l-inf 4/255 | l2 3 | source |", "|---|---|---|---|"]
        for p in spec.published:
            cells = ["-" if v is None else f"{v:.1f}" for v in (p.clean, p.linf, p.l2)]
            lines.append(f"| {' | '.join(cells)} | {p.source} |")
    else:
        lines.append("None published for this checkpoint.")
    if spec.notes:
        lines += ["", f"Note: {spec.notes}"]
    lines += ["", "## Use", "", "```python", "import rpmetric",
              f'metric = rpmetric.RobustDistance("{spec.name}")', "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for NAME.md files (default: print)")
    args = parser.parse_args()
    for name in rpmetric.list_models():
        text = card(name)
        if args.out is None:
            print(text)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.md").write_text(text)


if __name__ == "__main__":
    main()
