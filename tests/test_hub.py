import json
import pickle

import pytest
import torch

import rpmetric
import tinymodels
from rpmetric.errors import CheckpointError
from rpmetric.models import hub
from rpmetric.models.spec import Family
from subproc import run_cli


def test_resolve_hub_reference_with_revision():
    spec = hub.parse("hf-hub:org/model-1.0@v2")
    assert (spec.hub_id, spec.revision, spec.family) == ("org/model-1.0", "v2", None)
    assert spec.source == "hf-hub:org/model-1.0@v2"


def test_resolve_zoo_name_and_folder(vit_folder):
    assert hub.parse("r-clip-t-convnext").hub_id == "chs20/TeCoA4-convnext_base_w-laion2B-s13B-b82K-augreg"
    spec = hub.parse(vit_folder)  # os.PathLike accepted
    assert spec.local_path == str(vit_folder.resolve())


@pytest.mark.parametrize("arg,exc,match", [
    ("chs20/unknown-model", ValueError, r"looks like a Hub repo id.*use 'hf-hub:chs20/unknown-model'"),
    ("hf-hub:not a repo", ValueError, r"not a valid Hub reference"),
    ("r-clip-x", ValueError, r"Unknown model 'r-clip-x'"),
    (3.5, TypeError, r"Argument `model` must be a zoo name"),
])
def test_resolve_errors(arg, exc, match):
    with pytest.raises(exc, match=match):
        hub.parse(arg)


def test_resolve_rejects_a_file(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file; a local model must be a folder"):
        hub.parse(str(f))


@pytest.mark.parametrize("fixture,family", [
    ("vit_folder", Family.OPEN_CLIP), ("convnext_folder", Family.OPEN_CLIP), ("timm_folder", Family.TIMM),
])
def test_fetch_detects_layout(request, fixture, family):
    files = hub.fetch(hub.parse(str(request.getfixturevalue(fixture))))
    assert files.family is family and files.weights.suffix == ".safetensors"


def test_fetch_detects_transformers_vit(hf_vit):
    files = hub.fetch(hub.parse(str(hf_vit[0])))
    assert files.family is Family.HF_VIT and files.config["model_type"] == "vit"


def test_folder_without_weights_names_what_it_holds(tmp_path, vit_folder):
    (tmp_path / "open_clip_config.json").write_text((vit_folder / "open_clip_config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"has no open_clip_model.safetensors or open_clip_pytorch_model.bin.*open_clip_config.json"):
        hub.fetch(hub.parse(str(tmp_path)))


def test_unknown_config_layout(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match=r"model_type 'bert'.*supported layouts"):
        hub.fetch(hub.parse(str(tmp_path)))


def test_pickled_bin_loads_with_weights_only(tmp_path, vit_folder):
    folder = tinymodels.save_open_clip(tmp_path / "bin", tinymodels.TINY_VIT_CFG, safetensors=False)
    assert not list(folder.glob("*.safetensors"))
    x = torch.rand(2, 3, 32, 32)
    a = rpmetric.RobustDistance(str(folder), device="cpu").embed(x)
    b = rpmetric.RobustDistance(str(vit_folder), device="cpu").embed(x)  # same seed, safetensors
    torch.testing.assert_close(a, b)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_arbitrary_pickles_are_refused(tmp_path, vit_folder):
    (tmp_path / "open_clip_config.json").write_text((vit_folder / "open_clip_config.json").read_text())
    with open(tmp_path / "open_clip_pytorch_model.bin", "wb") as f:
        pickle.dump({"visual.x": _Payload()}, f)
    with pytest.raises(CheckpointError, match=r"weights_only=True.*never unpickles"):
        rpmetric.RobustDistance(str(tmp_path), device="cpu")


def test_mismatched_weights_name_the_keys(tmp_path, vit_folder):
    from safetensors.torch import load_file, save_file

    (tmp_path / "open_clip_config.json").write_text((vit_folder / "open_clip_config.json").read_text())
    state = load_file(str(vit_folder / "open_clip_model.safetensors"))
    del state["visual.proj"]
    state["visual.extra"] = torch.zeros(1)
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): proj.*unexpected \(1\): extra"):
        rpmetric.RobustDistance(str(tmp_path), device="cpu")


def test_zoo_name_loads_from_prefilled_cache_offline(zoo_cache, tmp_path):
    """`rpmetric distance` with a zoo name, HF_HUB_OFFLINE=1 and a pre-filled HF_HOME: the real Hub path."""
    from PIL import Image

    hf_home, folder = zoo_cache
    gen = torch.Generator().manual_seed(0)
    arrays = [(torch.rand(224, 224, 3, generator=gen) * 255).to(torch.uint8).numpy() for _ in range(2)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    out = run_cli(["distance", tmp_path / "0.png", tmp_path / "1.png", "--model", "r-clip-f-vitb32", "--device", "cpu"],
                  env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    # Independent computation: open_clip's own loader and encode_image on the same files.
    ref = tinymodels.load_reference_open_clip(folder)
    x = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays])
    mean = torch.tensor(tinymodels.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(tinymodels.CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        e = ref.encode_image((x - mean) / std, normalize=True)
    assert float(out.stdout) == pytest.approx(1 - float(e[0] @ e[1]), abs=1e-5)


def test_missing_weights_offline_give_one_clear_error(tmp_path):
    from PIL import Image

    for name in ("a.png", "b.png"):  # inputs that exist: they are checked before the model
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    out = run_cli(["distance", tmp_path / "a.png", tmp_path / "b.png", "--model", "r-clip-t-vitb16"],
                  env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert out.returncode == 2
    err = out.stderr
    assert "Traceback" not in err and len(err.strip().splitlines()) == 3
    for needle in ("'r-clip-t-vitb16'", "chs20/TeCoA4-ViT-B-16-laion2B-s34B-b88K", "HF_HUB_OFFLINE",
                   "rpmetric download r-clip-t-vitb16", "local folder"):
        assert needle in err


def test_download_reports_cached_files(zoo_cache):
    hf_home, _ = zoo_cache
    out = run_cli(["download", "r-clip-f-vitb32"], env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("open_clip_model.safetensors") and str(hf_home) in out.stdout


def test_download_head_repo_brings_its_base(zoo_cache, tmp_path):
    from rpmetric.models.heads import HeadConfig, attach_head, head_state_dict, save_head_folder

    hf_home, base_folder = zoo_cache
    encoder = rpmetric.RobustDistance(str(base_folder), device="cpu").encoder
    module, config = attach_head(encoder.backbone, HeadConfig("mlp", dim=16))
    head_dir = save_head_folder(tmp_path / "head", "r-clip-f-vitb32", config, head_state_dict(module))
    tinymodels.fill_hf_cache(hf_home, "someone/tiny-head", head_dir)
    out = run_cli(["download", "hf-hub:someone/tiny-head"], env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].endswith("head.safetensors") and "models--someone--tiny-head" in lines[0]
    assert lines[1].endswith("open_clip_model.safetensors") and "FARE4-ViT-B-32" in lines[1]


def _cache_with_a_head_on_a_hub_base(vit_folder, tmp_path, monkeypatch):
    """A head repo and its plain hf-hub base, fully cached as huggingface_hub leaves them after a
    first load (a 404 on the base's rpmetric_config.json is recorded under .no_exist/COMMIT/)."""
    import huggingface_hub

    from rpmetric.models.heads import HeadConfig, attach_head, head_state_dict, save_head_folder

    encoder = rpmetric.RobustDistance(str(vit_folder), device="cpu").encoder
    module, config = attach_head(encoder.backbone, HeadConfig("mlp", dim=24, hidden=8))
    head = save_head_folder(tmp_path / "head", "hf-hub:tiny/base", config, head_state_dict(module))
    home = tmp_path / "home"
    tinymodels.fill_hf_cache(home, "tiny/base", vit_folder)
    tinymodels.fill_hf_cache(home, "tiny/head", head)
    marker = home / "hub" / "models--tiny--base" / ".no_exist" / ("0" * 40) / "rpmetric_config.json"
    marker.parent.mkdir(parents=True)
    marker.touch()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    downloads = []
    real = huggingface_hub.hf_hub_download

    def counting(repo_id, filename, **kwargs):
        downloads.append((repo_id, filename))
        cached = huggingface_hub.try_to_load_from_cache(repo_id, filename)
        if cached is not None and not isinstance(cached, str):  # a recorded 404: the Hub answers the same
            raise huggingface_hub.errors.EntryNotFoundError(f"404: {filename}")
        return real(repo_id, filename, local_files_only=True, **kwargs)  # never the network

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", counting)
    # rpmetric's quick check that the Hub answers, before hf_hub_download (which retries for ~25 s).
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kw: downloads.append(("HEAD", url)))
    return downloads


def test_cached_hub_models_load_without_asking_the_hub(vit_folder, tmp_path, monkeypatch):
    downloads = _cache_with_a_head_on_a_hub_base(vit_folder, tmp_path, monkeypatch)
    probes = []
    real_fetch_head = hub.fetch_head
    monkeypatch.setattr(hub, "fetch_head", lambda spec, **kw: probes.append(spec.name) or real_fetch_head(spec, **kw))
    rpmetric.RobustDistance("hf-hub:tiny/base", device="cpu")
    rpmetric.RobustDistance("hf-hub:tiny/head", device="cpu")
    assert downloads == []
    # The head's base is probed for a head of its own once (heads do not stack), not twice.
    assert probes == ["hf-hub:tiny/base", "hf-hub:tiny/head", "hf-hub:tiny/base"]


def test_download_asks_the_hub_even_when_cached(vit_folder, tmp_path, monkeypatch):
    downloads = _cache_with_a_head_on_a_hub_base(vit_folder, tmp_path, monkeypatch)
    paths = hub.download("hf-hub:tiny/head")
    assert [p.name for p in paths] == ["head.safetensors", "open_clip_model.safetensors"]
    assert ("tiny/head", "rpmetric_config.json") in downloads
    assert ("tiny/base", "rpmetric_config.json") in downloads
    assert ("tiny/base", "open_clip_model.safetensors") in downloads


def _cached_head_repo(tmp_path, monkeypatch, meta, weights=True):
    """A Hub head repo `tiny/head` in an offline cache, with this rpmetric_config.json."""
    import json

    import huggingface_hub

    folder = tmp_path / "head"
    folder.mkdir()
    (folder / "rpmetric_config.json").write_text(json.dumps(meta))
    if weights:
        (folder / "head.safetensors").write_bytes(b"")
    tinymodels.fill_hf_cache(tmp_path / "home", "tiny/head", folder)
    if not weights:  # as huggingface_hub records a 404
        marker = tmp_path / "home" / "hub" / "models--tiny--head" / ".no_exist" / ("0" * 40) / "head.safetensors"
        marker.parent.mkdir(parents=True)
        marker.touch()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "home" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


HEAD = {"type": "mlp", "dim": 24, "hidden": 8}


@pytest.mark.parametrize("meta, match", [
    ({"head": HEAD}, r"hf-hub:tiny/head/rpmetric_config.json must name a 'base_model' \(string\) and a 'head'"),
    ({"base_model": "hf-hub:tiny/head", "head": HEAD}, r"base_model 'hf-hub:tiny/head' is itself a head folder"),
    ({"format": 2, "base_model": "r-clip-f-vitb32", "head": HEAD}, r"format 2, but rpmetric .* upgrade rpmetric"),
    ({"base_model": "r-clip-f-vitb32", "head": {"type": "mlp", "rank": 4}}, r"'head': Unknown head setting"),
])
def test_download_and_load_refuse_the_same_bad_head_configs(tmp_path, monkeypatch, meta, match):
    _cached_head_repo(tmp_path, monkeypatch, meta)
    with pytest.raises(ValueError, match=match):
        hub.download("hf-hub:tiny/head", force_check=False)
    with pytest.raises(ValueError, match=match):
        rpmetric.RobustDistance("hf-hub:tiny/head", device="cpu")


def test_hub_head_without_weights_is_reported_as_a_head(tmp_path, monkeypatch):
    _cached_head_repo(tmp_path, monkeypatch, {"base_model": "r-clip-f-vitb32", "head": HEAD}, weights=False)
    with pytest.raises(FileNotFoundError, match=r"'tiny/head' has no head.safetensors; it has rpmetric_config.json, "
                                                r"so it is a trained head"):
        rpmetric.RobustDistance("hf-hub:tiny/head", device="cpu")


# -- caches as timm, transformers and `hf download` leave them: files only, no .no_exist records --
def _reference_embedding(kind, folder, x):
    """The embedding of `x` ([0, 1] pixels, 32 px) by the library that owns the layout."""
    from safetensors.torch import load_file

    imagenet = [torch.tensor(v).view(1, 3, 1, 1) for v in ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    if kind == "open_clip":
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (tinymodels.CLIP_MEAN, tinymodels.CLIP_STD))
        return tinymodels.load_reference_open_clip(folder).encode_image((x - mean) / std)
    if kind == "timm":
        import timm

        model = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32, patch_size=8).eval()
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model((x - imagenet[0]) / imagenet[1])
    from transformers import ViTModel

    model = ViTModel.from_pretrained(str(folder)).eval()
    return model(pixel_values=(x - imagenet[0]) / imagenet[1]).last_hidden_state[:, 0]


def _files_only_cache(tmp_path, monkeypatch, repo, folder):
    """`folder` cached under `repo` with nothing but its files (and refs/main), offline."""
    import huggingface_hub

    home = tmp_path / "home"
    snapshot = tinymodels.fill_hf_cache(home, repo, folder)
    assert not list(home.rglob(".no_exist"))
    assert {p.name for p in snapshot.iterdir()} == {p.name for p in folder.iterdir()}
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return home


@pytest.mark.parametrize("fixture, kind, family", [
    ("vit_folder", "open_clip", Family.OPEN_CLIP),
    ("timm_folder", "timm", Family.TIMM),
    ("hf_vit", "transformers", Family.HF_VIT),  # R-DINO's layout, without preprocessor_config.json
])
def test_cached_files_load_offline_without_absence_records(request, tmp_path, monkeypatch, fixture, kind, family):
    folder = request.getfixturevalue(fixture)
    folder = folder[0] if isinstance(folder, tuple) else folder
    _files_only_cache(tmp_path, monkeypatch, "org/tiny", folder)
    metric = rpmetric.RobustDistance("hf-hub:org/tiny", device="cpu", resize=False)
    assert metric.spec.family is family
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(metric.embed(x, normalize=False), _reference_embedding(kind, folder, x),
                                   atol=1e-5, rtol=1e-5)


def test_r_dino_zoo_entry_loads_offline_without_a_preprocessor_record(hf_vit, tmp_path, monkeypatch):
    """The zoo's R-DINO (family fixed to transformers ViT) probes preprocessor_config.json, which its repo lacks."""
    folder, _ = hf_vit
    spec = rpmetric.get_spec("r-dino-vitb16")
    _files_only_cache(tmp_path, monkeypatch, spec.hub_id, folder)
    files = hub.fetch(spec)
    assert files.family is Family.HF_VIT and files.extras == {}


def test_head_on_a_files_only_cached_base_loads_offline(timm_folder, tmp_path, monkeypatch):
    from rpmetric.models.heads import HeadConfig, attach_head, head_state_dict, save_head_folder

    encoder = rpmetric.RobustDistance(str(timm_folder), device="cpu").encoder
    module, config = attach_head(encoder.backbone, HeadConfig("mlp", dim=64, hidden=8))
    with torch.no_grad():
        module.mlp_head.fc2.weight.normal_(generator=torch.Generator().manual_seed(3))
    head = save_head_folder(tmp_path / "head", "hf-hub:org/tiny-timm", config, head_state_dict(module))
    home = _files_only_cache(tmp_path, monkeypatch, "org/tiny-timm", timm_folder)
    tinymodels.fill_hf_cache(home, "org/tiny-head", head)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = module.mlp_head(_reference_embedding("timm", timm_folder, x))
        for model in ("hf-hub:org/tiny-head", str(head)):
            got = rpmetric.RobustDistance(model, device="cpu", resize=False).embed(x, normalize=False)
            torch.testing.assert_close(got, expected)


def test_missing_weights_in_a_cached_snapshot_are_reported_as_not_cached(timm_folder, tmp_path, monkeypatch):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((timm_folder / "config.json").read_text())
    _files_only_cache(tmp_path, monkeypatch, "org/tiny-timm", partial)
    with pytest.raises(rpmetric.ModelNotAvailableError, match=r"model.safetensors .*not in the Hugging Face cache.*"
                                                              r"HF_HUB_OFFLINE is set"):
        rpmetric.RobustDistance("hf-hub:org/tiny-timm", device="cpu")


# An unreachable Hub, without HF_HUB_OFFLINE: loopback port 9, where nothing listens.
UNREACHABLE = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}


def _two_pngs(folder):
    from PIL import Image

    gen = torch.Generator().manual_seed(1)
    arrays = [(torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy() for _ in range(2)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i}.png")
    return arrays, [folder / "0.png", folder / "1.png"]


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, UNREACHABLE], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_cli_distance_on_a_files_only_timm_cache(timm_folder, tmp_path, env):
    """The issue's repro, `HF_HUB_OFFLINE=1 rpmetric distance a b --model hf-hub:org/tiny-timm`, and the
    same without HF_HUB_OFFLINE where the Hub cannot be reached."""
    arrays, images = _two_pngs(tmp_path)
    tinymodels.fill_hf_cache(tmp_path / "home", "org/tiny-timm", timm_folder)
    out = run_cli(["distance", *images, "--model", "hf-hub:org/tiny-timm", "--device", "cpu"],
                  env=dict(env, HF_HOME=str(tmp_path / "home")), timeout=120)
    assert out.returncode == 0, out.stderr
    x = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays])
    with torch.no_grad():
        e = torch.nn.functional.normalize(_reference_embedding("timm", timm_folder, x), dim=1)
    assert float(out.stdout) == pytest.approx(1 - float(e[0] @ e[1]), abs=2e-6)


def test_unreachable_hub_fails_fast_and_suggests_offline_mode(tmp_path):
    import time

    _, images = _two_pngs(tmp_path)
    start = time.monotonic()
    out = run_cli(["distance", *images, "--model", "hf-hub:org/tiny-timm", "--device", "cpu"],
                  env=dict(UNREACHABLE, HF_HOME=str(tmp_path / "home")), timeout=120)
    elapsed = time.monotonic() - start
    assert out.returncode == 2 and "Traceback" not in out.stderr and "Retrying" not in out.stderr
    assert "cannot be reached" in out.stderr and "set HF_HUB_OFFLINE=1" in out.stderr
    assert elapsed < 15, f"{elapsed:.1f} s before the error"


def test_download_with_an_unreachable_hub_says_the_cache_was_not_checked(zoo_cache):
    hf_home, _ = zoo_cache
    out = run_cli(["download", "r-clip-f-vitb32"], env=dict(UNREACHABLE, HF_HOME=str(hf_home)), timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in out.stderr
    for needle in ("'r-clip-f-vitb32'", "http://127.0.0.1:9", "cannot be reached", "not checked",
                   "HF_HUB_OFFLINE=1"):
        assert needle in err[0]


@pytest.mark.parametrize("kind, file, path, value, key", [
    ("convnext", "open_clip_config.json", ["model_cfg", "vision_cfg", "timm_model_pretrained"], True,
     "timm_model_pretrained"),
    ("timm", "config.json", ["model_args", "pretrained"], True, "pretrained"),
    ("timm", "config.json", ["model_args", "pretrained_cfg_overlay"], {"hf_hub_id": "timm/test_vit.r160_in1k"},
     "pretrained_cfg_overlay"),
    ("timm", "config.json", ["architecture"], "hf-hub:timm/test_vit.r160_in1k", "architecture"),
    ("timm", "config.json", ["model_args", "checkpoint_path"], "/etc/hostname", "checkpoint_path"),
], ids=["open_clip-timm_model_pretrained", "timm-pretrained", "timm-pretrained_cfg_overlay", "timm-hf-hub-arch",
        "timm-checkpoint_path"])
def test_a_local_folder_never_reaches_the_network(request, tmp_path, monkeypatch, capsys, kind, file, path,
                                                  value, key):
    """Keys with which open_clip or timm would fetch weights or configs from the Hub, or open another
    file, are refused naming the key; with HF_HUB_OFFLINE unset and a Hub endpoint on loopback, no
    connection is even attempted."""
    import shutil
    import socket

    import huggingface_hub

    from rpmetric.cli import main

    folder = tmp_path / "model"
    shutil.copytree(request.getfixturevalue(f"{kind}_folder"), folder)
    config = json.loads((folder / file).read_text())
    node = config
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    (folder / file).write_text(json.dumps(config))
    _, images = _two_pngs(tmp_path)

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise ConnectionRefusedError("tests allow no connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE["HF_ENDPOINT"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", UNREACHABLE["HF_ENDPOINT"])
    status = main(["distance", *map(str, images), "--model", str(folder)])
    err = capsys.readouterr().err
    assert attempts == []
    assert status == 2 and file in err and repr(key)[1:-1] in err, err
