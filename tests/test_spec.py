import csv
from pathlib import Path

import pytest

import rpmetric
from rpmetric.models.spec import Family, Preprocessing, default_model

REQUIRED_HUB_IDS = {
    "chs20/FARE4-ViT-B-32-laion2B-s34B-b79K", "chs20/FARE4-ViT-B-16-laion2B-s34B-b88K",
    "chs20/FARE4-convnext_base_w-laion2B-s13B-b82K-augreg", "chs20/fare2-clip", "chs20/fare4-clip",
    "chs20/TeCoA4-ViT-B-32-laion2B-s34B-b79K", "chs20/TeCoA4-ViT-B-16-laion2B-s34B-b88K",
    "chs20/TeCoA4-convnext_base_w-laion2B-s13B-b82K-augreg", "chs20/tecoa2-clip", "chs20/tecoa4-clip",
    "chs20/dino-vitb16-fare4", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
    "laion/CLIP-convnext_base_w-laion2B-s13B-b82K-augreg", "timm/vit_base_patch16_224.dino",
    # issue 15: the newer robust encoders and their clean baselines
    "LEAF-CLIP/CLIP-ViT-L-FARE2", "LEAF-CLIP/CLIP-ViT-L-rho50-k1-constrained-FARE2", "LEAF-CLIP/OpenCLIP-ViT-H-FARE2",
    "LEAF-CLIP/OpenCLIP-ViT-g-FARE2", "zw123/delta_clip_l14_224", "zw123/delta_clip_l14_336", "zw123/delta_clip_h14_336",
    "openai/clip-vit-large-patch14", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "laion/CLIP-ViT-g-14-laion2B-s12B-b42K",
    "timm/vit_base_patch14_dinov2.lvd142m",
}
# Entries from before issue 15, whose notes do not repeat that no NIGHTS figure is published.
_OLDER_ENTRIES = {"r-clip-f-vitb32", "r-clip-f-vitl14-eps2", "r-clip-f-vitl14-eps4", "r-clip-t-vitl14-eps2",
                  "r-clip-t-vitl14-eps4", "r-dino-vitb16", "clip-vitb32", "dino-vitb16"}
PUBLISHED = Path(__file__).resolve().parent / "fixtures" / "published_nights.csv"


def test_zoo_has_every_published_checkpoint():
    assert {rpmetric.get_spec(n).hub_id for n in rpmetric.list_models()} == REQUIRED_HUB_IDS


def test_default_is_documented_model():
    assert default_model() == "r-clip-f-convnext"
    assert rpmetric.get_spec(default_model()).training == {"method": "FARE", "eps": "4/255"}


@pytest.mark.parametrize("name", rpmetric.list_models())
def test_every_spec_is_complete(name):
    spec = rpmetric.get_spec(name)
    assert spec.name == name and spec.hub_id and spec.architecture and spec.role
    assert isinstance(spec.family, Family)
    pp = spec.preprocessing
    # 336 px: ΔCLIP's 336 models; 518 px: DINOv2 (timm's pretrained_cfg); bilinear: ΔCLIP's CLIPA preprocessing
    assert pp.image_size in (224, 336, 518) and pp.interpolation in ("bicubic", "bilinear")
    assert len(pp.mean) == len(pp.std) == 3
    assert ("336" in name) == (pp.image_size == 336)
    if spec.training is not None:
        assert spec.training["method"] in ("FARE", "TeCoA", "adversarial pre-training")
        assert spec.training["eps"] in ("2/255", "4/255")
    assert spec.licence and spec.paper and spec.format
    if not spec.published:
        assert "not published" in spec.notes or spec.name in _OLDER_ENTRIES


@pytest.mark.parametrize("name,family,resize,mean0", [
    ("r-clip-f-convnext", Family.OPEN_CLIP, 256, 0.48145466),
    ("r-clip-t-vitb16", Family.OPEN_CLIP, 224, 0.48145466),
    ("r-dino-vitb16", Family.HF_VIT, 256, 0.485),
    ("dino-vitb16", Family.TIMM, 256, 0.485),
])
def test_preprocessing_follows_the_authors(name, family, resize, mean0):
    spec = rpmetric.get_spec(name)
    assert spec.family is family
    assert spec.preprocessing.resize_size == resize
    assert spec.preprocessing.mean[0] == mean0


def _published_rows():
    """{hub id: [clean, linf, l2]} of tests/fixtures/published_nights.csv (None: not published)."""
    lines = [line for line in PUBLISHED.read_text().splitlines() if line and not line.startswith("#")]
    rows = {}
    for row in csv.DictReader(lines):
        rows[row["hub_id"]] = [float(row[k]) if row[k] else None for k in ("clean", "linf", "l2")]
    return rows


def test_published_numbers_match_the_papers_table():
    rows = _published_rows()
    assert len(rows) == 7
    with_numbers = {rpmetric.get_spec(n).hub_id: rpmetric.get_spec(n) for n in rpmetric.list_models()
                    if rpmetric.get_spec(n).published}
    assert set(with_numbers) == set(rows)  # no model carries figures the table lacks, and none is missing
    for hub_id, (clean, linf, l2) in rows.items():
        pub = with_numbers[hub_id].published[0]
        assert (pub.clean, pub.linf, pub.l2) == (clean, linf, l2), hub_id
        assert pub.source


def test_get_spec_is_case_insensitive():
    assert rpmetric.get_spec(" R-DINO-VITB16 ").name == "r-dino-vitb16"


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"Unknown model 'r-clip-f-convnex'.*Did you mean 'r-clip-f-convnext'"):
        rpmetric.get_spec("r-clip-f-convnex")


def test_get_spec_rejects_non_string():
    with pytest.raises(TypeError, match="must be a string"):
        rpmetric.get_spec(3)


@pytest.mark.parametrize("kwargs,match", [
    ({"interpolation": "lanczos"}, r"`interpolation` must be one of .*'lanczos'"),
    ({"resize_mode": "pad"}, r"`resize_mode` must be one of .*'pad'"),
    ({"image_size": 224, "resize_size": 200}, r"`resize_size` \(200\) must be at least `image_size` \(224\)"),
])
def test_preprocessing_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Preprocessing(**kwargs)


def test_family_parse_error():
    with pytest.raises(ValueError, match=r"`family` must be one of .*'onnx'"):
        Family.parse("onnx")
