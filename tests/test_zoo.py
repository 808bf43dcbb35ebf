"""Every zoo entry, in timm's habit: built at its real architecture with random weights, so that a
wrong config fails here and not a user.

The checkpoint a format must contain comes from the format's own library, built from the entry's
``config`` on the meta device (no memory): open_clip's ``CLIP`` (both towers), transformers'
``CLIPModel`` / ``ViTModel``, timm's model. rpmetric's builder then gets those keys and shapes
through its real code path (key remap included) and must fit them exactly, and a forward pass on
the meta device checks that the entry's input size is the one the architecture takes. Entries up to
ViT-B are also built for real and compared with the library's own forward pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rpmetric.models import backbones, hub
from rpmetric.models.backbones import hf_clip, hf_vit, openclip, timm_model, weights
from rpmetric.models.spec import Family, get_spec, list_models

_MODULES = {Family.OPEN_CLIP: openclip, Family.HF_CLIP: hf_clip, Family.HF_VIT: hf_vit, Family.TIMM: timm_model}
# One real forward pass per distinct architecture up to ViT-B (the zoo repeats some); those that take
# over ~5 s on 2 shared cores (random init of a whole CLIP, DINOv2 at 518 px) are marked slow.
_SMALL = {"r-clip-f-vitb32": [], "r-dino-vitb16": [pytest.mark.slow], "r-clip-f-vitb16": [pytest.mark.slow],
          "r-clip-f-convnext": [pytest.mark.slow], "dino-vitb16": [pytest.mark.slow], "dinov2-vitb14": [pytest.mark.slow]}


def reference_model(spec):
    """The format's own library's model for the entry's config (both towers, for CLIP)."""
    config = spec.checkpoint_config()
    if spec.family is Family.OPEN_CLIP:
        from open_clip.model import CLIP, CustomTextCLIP

        cfg = dict(config["model_cfg"])
        return (CustomTextCLIP if cfg.pop("custom_text", False) else CLIP)(**cfg)
    if spec.family is Family.HF_CLIP:
        from transformers import CLIPConfig, CLIPModel

        return CLIPModel(CLIPConfig(**config))
    if spec.family is Family.HF_VIT:
        from transformers import ViTConfig, ViTModel

        return ViTModel(ViTConfig(**config))
    import timm

    return timm.create_model(config["architecture"], pretrained=False, num_classes=0, **config.get("model_args", {}))


def checkpoint_state(model) -> dict:
    """The keys and shapes a checkpoint of ``model`` holds: what its library saves. transformers 5
    renames some modules in memory (ViT's attention) and reverts the names on save_pretrained."""
    state = model.state_dict()
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: saved names are the module names
        return state
    from transformers import PreTrainedModel

    return revert_weight_conversion(model, state) if isinstance(model, PreTrainedModel) else state


def files_of(spec) -> hub.ModelFiles:
    return hub.ModelFiles(family=spec.family, config=spec.checkpoint_config(), weights=Path(f"{spec.name}.checkpoint"),
                          extras={}, config_path=f"zoo.json[{spec.name}].config",
                          prefixes=hub.VISION_PREFIXES.get(spec.family))


def _serve(monkeypatch, spec, state):
    """Make the entry's builder read ``state`` as its checkpoint (filtered as read_weights filters)."""
    monkeypatch.setattr(_MODULES[spec.family], "read_weights",
                        lambda files: {k: v for k, v in state.items() if files.keeps(k)})


@pytest.mark.parametrize("name", list_models())
def test_zoo_entry_fits_its_checkpoint_format(name, monkeypatch):
    spec = get_spec(name)
    assert spec.config is not None and spec.licence and spec.paper and spec.format, "every entry states these"
    with torch.device("meta"):
        reference = reference_model(spec)
    _serve(monkeypatch, spec, checkpoint_state(reference))

    def on_meta(make, state, config, weights_path, ignore=lambda module: ()):
        with torch.device("meta"):
            skeleton = make()
        prefixes = tuple(ignore(skeleton))
        weights.check_fit(skeleton, {k: v for k, v in state.items() if not k.startswith(prefixes)}, weights_path)
        return skeleton

    monkeypatch.setattr(_MODULES[spec.family], "build_checked",
                        lambda make, state, config, weights, ignore=lambda m: (): on_meta(make, state, config, weights,
                                                                                          ignore))
    backbone = backbones.build_backbone(files_of(spec))
    size = spec.preprocessing.image_size
    out = backbone(torch.zeros(2, 3, size, size, device="meta"))
    assert out.shape[0] == 2 and out.ndim == 2


@pytest.mark.parametrize("name", [pytest.param(n, marks=m) for n, m in _SMALL.items()])
def test_small_zoo_entry_runs_like_its_library(name, monkeypatch):
    """Random weights in the checkpoint format, through rpmetric's builder, against the library's forward."""
    spec = get_spec(name)
    torch.manual_seed(0)
    reference = reference_model(spec).eval()
    _serve(monkeypatch, spec, checkpoint_state(reference))
    backbone = backbones.build_backbone(files_of(spec)).eval()
    size = spec.preprocessing.image_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = backbone(x)
        if spec.family is Family.OPEN_CLIP:
            expected = reference.encode_image(x)
        elif spec.family is Family.HF_VIT:
            expected = reference(pixel_values=x).last_hidden_state[:, 0]
        else:
            expected = reference(x)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_every_zoo_entry_is_covered():
    """Each entry's family has a builder, and the 336-px entries take 336-px inputs."""
    assert {get_spec(n).family for n in list_models()} <= set(_MODULES)
    for name in ("delta-clip-l14-336", "delta-clip-h14-336"):
        spec = get_spec(name)
        assert spec.preprocessing.image_size == 336
        assert spec.checkpoint_config()["model_cfg"]["vision_cfg"]["image_size"] == 336


def test_models_lists_licences_and_filters(capsys):
    from rpmetric.cli import main

    assert main(["models", "--robust", "--family", "hf_clip"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "licence" in lines[0]
    names = [line.split()[0] for line in lines[2:]]
    assert names == ["leaf-fare2-vitl14", "leaf-fare2-vitl14-rho50", "leaf-fare2-vith14", "leaf-fare2-vitg14"]
    assert all("MIT*" in line and "not published" in line for line in lines[2:])
    assert main(["models", "--family", "timm"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == ["dino-vitb16", "dinov2-vitb14"]
