"""Head model cards (rpmetric.models.cards): written by `rpmetric train` and the converter, read
back with huggingface_hub's ModelCard and with plain YAML."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

import rpmetric
from rpmetric.models.cards import head_card


def _front_matter(text: str) -> dict:
    """The YAML between the card's first two '---' lines, parsed without huggingface_hub."""
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "no front matter"
    return yaml.safe_load(match[1])


def _printed_scores(printed: str) -> dict:
    """{split: 2AFC %} from the table `rpmetric train` prints."""
    rows = {}
    for line in printed.splitlines():
        cells = line.split()
        if cells and cells[0] in ("test_imagenet", "test_no_imagenet", "total"):
            rows[cells[0]] = float(cells[-1])
        if line.startswith("val (epoch"):
            rows["val"] = float(cells[-1])
    return rows


def test_train_writes_a_card_holding_the_scores_it_measured(nights_known, vit_folder, tmp_path, capsys):
    from rpmetric.cli import main

    root, expected = nights_known
    out = tmp_path / "heads" / "mlp-tiny"
    argv = ["train", "nights", str(root), "--model", str(vit_folder), "--head", "mlp", "--out", str(out),
            "--epochs", "1", "--hidden", "8", "--device", "cpu", "--overwrite"]
    assert main(argv) == 0
    printed = _printed_scores(capsys.readouterr().out)
    text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "rpmetric" and data.datasets == ["NIGHTS"]
    assert data.license == "unknown" and data.base_model is None  # a local base folder is not on the Hub
    assert "mlp-head" in data.tags and "rpmetric" in data.tags
    scores = {r.dataset_split: r.metric_value for r in data.eval_results}
    assert {r.dataset_name for r in data.eval_results} == {"NIGHTS"} and data.model_name == "mlp-tiny"
    # The test scores are fixed by construction (a distorted image equal to the reference is
    # closer whatever the head), worked by hand in datagen.nights_known.
    for split, key in (("test_imagenet", "test_imagenet"), ("test_no_imagenet", "test_no_imagenet"), ("test", "total")):
        assert scores[split] == pytest.approx(expected[key]["score"], abs=1e-12)
        assert 100 * scores[split] == pytest.approx(printed[key], abs=0.005)  # what the run printed
    record = json.loads((out / "rpmetric_config.json").read_text())["training"]
    assert scores["val"] == record["val_2afc"] == record["val_history"][record["best_epoch"]]
    assert 100 * scores["val"] == pytest.approx(printed["val"], abs=0.005)
    # The same front matter, read as plain YAML.
    raw = _front_matter(text)
    assert raw["library_name"] == "rpmetric" and raw["license"] == "unknown" and raw["datasets"] == ["NIGHTS"]
    results = raw["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in results] == ["val", "test_imagenet", "test_no_imagenet", "test"]
    # Usage and the command that trained it (without --overwrite, which only cleared the folder).
    assert 'rpmetric.RobustDistance("hf-hub:ORG/NAME")' in card.text
    assert shlex.join(["rpmetric", *argv[:-1]]) in card.text
    assert f"| val | {expected['val']['n']} |" in card.text
    assert "hf upload ORG/NAME DIR --exclude 'checkpoint/*'" in card.text


@pytest.mark.parametrize("base, hub_id, licence", [
    ("r-clip-f-vitb16", "chs20/FARE4-ViT-B-16-laion2B-s34B-b88K", "unknown"),  # the zoo: not checked
    ("dino-vitb16", "timm/vit_base_patch16_224.dino", "apache-2.0"),
    ("leaf-fare2-vitl14", "LEAF-CLIP/CLIP-ViT-L-FARE2", "mit"),
    ("delta-clip-l14-224", "zw123/delta_clip_l14_224", "cc-by-4.0"),
    ("hf-hub:someone/base@v1", "someone/base", "unknown"),  # not in the zoo
])
def test_card_names_the_base_model_s_hub_id_and_licence(base, hub_id, licence):
    meta = {"base_model": base, "head": {"type": "lora", "r": 4}, "training": {"dataset": "nights"}}
    data = ModelCard(head_card(meta, "h")).data
    assert (data.base_model, data.license) == (hub_id, licence)
    assert data.eval_results is None  # no scores recorded, none invented


def test_converted_head_gets_a_card_without_scores(tmp_path):
    path = Path(__file__).resolve().parents[1] / "weights" / "convert_dreamsim_heads.py"
    spec = importlib.util.spec_from_file_location("convert_dreamsim_heads", path)
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    tensors = {"fc1.weight": torch.zeros(8, 512), "fc1.bias": torch.zeros(8), "fc2.weight": torch.zeros(512, 8),
               "fc2.bias": torch.zeros(512)}
    torch.save({f"perceptual_model.mlp.{k}": v for k, v in tensors.items()}, tmp_path / "epoch=06.ckpt")
    argv = ["mlp", str(tmp_path / "epoch=06.ckpt"), "--base-model", "r-clip-f-vitb16", "--out", str(tmp_path / "head")]
    assert converter.main(argv) == 0
    card = ModelCard.load(tmp_path / "head" / "README.md")
    assert card.data.base_model == rpmetric.get_spec("r-clip-f-vitb16").hub_id
    assert card.data.library_name == "rpmetric" and card.data.datasets == ["NIGHTS"]
    assert card.data.eval_results is None and "measured nothing" in card.text
    assert shlex.join(["python", "weights/convert_dreamsim_heads.py", *argv]) in card.text
    assert "fra31/perceptual-metrics" in card.text and '"resize_mode": "squash"' in card.text
