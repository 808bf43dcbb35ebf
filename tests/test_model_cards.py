import importlib.util
from pathlib import Path

import rpmetric

SCRIPT = Path(__file__).resolve().parents[1] / "weights" / "model_cards.py"


def _module():
    spec = importlib.util.spec_from_file_location("model_cards", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cards_carry_hub_id_preprocessing_and_published_numbers(tmp_path, monkeypatch):
    cards = _module()
    monkeypatch.setattr("sys.argv", ["model_cards.py", "--out", str(tmp_path)])
    cards.main()
    assert sorted(p.stem for p in tmp_path.glob("*.md")) == sorted(rpmetric.list_models())
    text = (tmp_path / "r-clip-t-convnext.md").read_text()
    assert "chs20/TeCoA4-convnext_base_w-laion2B-s13B-b82K-augreg" in text
    assert "| 92.3 | 81.9 | 78.5 | fra31/perceptual-metrics README |" in text
    assert "resize shorter side to 256 (bicubic), centre crop 224" in text
    assert "None published" in (tmp_path / "r-clip-f-vitb32.md").read_text()
    assert "TeCoA" not in (tmp_path / "clip-vitb16.md").read_text()


def test_cards_describe_each_family_s_embedding_and_geometry():
    cards = _module()
    for name in ("r-dino-vitb16", "dino-vitb16"):
        assert "CLS token after the final layer norm (no projection)" in cards.card(name)
    assert "projected image embedding" not in cards.card("r-dino-vitb16")
    assert "projected image embedding (open_clip's `encode_image`)" in cards.card("r-clip-f-vitb16")
    from rpmetric.models.spec import Preprocessing

    assert cards._geometry(Preprocessing(resize_mode="squash")) == "resize to 224x224 (bicubic, no crop)"
