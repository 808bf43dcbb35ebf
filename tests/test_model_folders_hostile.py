"""Malformed and hostile model, head and checkpoint folders: one row per folder.

Each row copies a small valid folder (tests/tinymodels.py) into tmp_path, breaks one thing and runs
``rpmetric distance a.png b.png --model FOLDER``. Every row must end in exit 2 with one line that
names the broken file, never a traceback (an exception escaping ``cli.main``) nor a result.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct

import pytest
import torch
from PIL import Image

from rpmetric.cli import main
from rpmetric.models.heads import HeadConfig, attach_head, head_state_dict, save_head_folder

OC, OC_W = "open_clip_config.json", "open_clip_model.safetensors"
CFG, W = "config.json", "model.safetensors"
HEAD, HEAD_W = "rpmetric_config.json", "head.safetensors"
PRE = "preprocessor_config.json"
INDEX, BIN_INDEX = "model.safetensors.index.json", "pytorch_model.bin.index.json"


@pytest.fixture(scope="module")
def valid(tmp_path_factory, vit_folder, convnext_folder, timm_folder, hf_vit, hf_clip, hf_clip_sharded):
    """Valid folders by kind, and two images."""
    import tinymodels

    root = tmp_path_factory.mktemp("hostile-valid")
    folders = {"vit": vit_folder, "convnext": convnext_folder, "timm": timm_folder, "hf": hf_vit[0],
               "clip": hf_clip[0], "clip-shards": hf_clip_sharded[0]}
    folders["clip-bin-shards"] = root / "clip-bin-shards"
    shutil.copytree(hf_clip[0], folders["clip-bin-shards"])
    tinymodels.shard_to_bin(folders["clip-bin-shards"], W, BIN_INDEX)
    from rpmetric.models import load_encoder

    encoder = load_encoder(str(vit_folder))
    module, config = attach_head(encoder.backbone, HeadConfig("mlp", hidden=8), dim=24)
    folders["head"] = save_head_folder(root / "head", str(vit_folder), config, head_state_dict(module))
    encoder = load_encoder(str(vit_folder))
    module, config = attach_head(encoder.backbone, HeadConfig("lora", r=2))
    folders["lora"] = save_head_folder(root / "lora", str(vit_folder), config, head_state_dict(module))
    for name, seed in (("a.png", 0), ("b.png", 1)):
        g = torch.Generator().manual_seed(seed)
        pixels = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / name)
    return folders, root


# -- mutations ------------------------------------------------------------------------------------
def edit(name, change):
    """Rewrite the JSON file `name`: `change(data)` edits it in place."""
    def mutate(folder):
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))
    return mutate


def setkey(name, path, value):
    """Set data[path[0]][path[1]]... = value in the JSON file `name`."""
    def change(data):
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value
    return edit(name, change)


def delkey(name, path):
    def change(data):
        for key in path[:-1]:
            data = data[key]
        del data[path[-1]]
    return edit(name, change)


def write(name, content):
    def mutate(folder):
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return mutate


def truncate(name, keep=0.5):
    def mutate(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:int(len(data) * keep)])
    return mutate


def safetensors_header(header: dict, size=None, tail=b"\0" * 16):
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if size is None else size) + blob + tail


def as_bin(state_fn):
    """Replace the open_clip safetensors by a .bin holding `state_fn(state)`."""
    def mutate(folder):
        from safetensors.torch import load_file

        state = load_file(str(folder / OC_W))
        (folder / OC_W).unlink()
        torch.save(state_fn(state), folder / "open_clip_pytorch_model.bin")
    return mutate


class _Payload:
    """An object whose unpickling would call a function (harmless here: os.getcwd)."""

    def __reduce__(self):
        import os

        return os.getcwd, ()


def pickle_bin(folder):
    (folder / OC_W).unlink()
    (folder / "open_clip_pytorch_model.bin").write_bytes(pickle.dumps({"visual.proj": _Payload()}))


def mlp_weights(folder, dim, hidden):
    """head.safetensors of an MLP head with these sizes."""
    from safetensors.torch import save_file

    save_file({"mlp_head.fc1.weight": torch.zeros(hidden, dim), "mlp_head.fc1.bias": torch.zeros(hidden),
               "mlp_head.fc2.weight": torch.zeros(dim, hidden), "mlp_head.fc2.bias": torch.zeros(dim)},
              str(folder / HEAD_W))


def drop_tensor(name, key):
    """Rewrite the safetensors file `name` without tensor `key`."""
    def mutate(folder):
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / name))
        del state[key]
        save_file(state, str(folder / name))
    return mutate


def set_shard(index, value, key_prefix="vision_model."):
    """Point the first tensor under `key_prefix` in `index` at the shard `value`."""
    def change(data):
        key = next(k for k in data["weight_map"] if k.startswith(key_prefix))
        data["weight_map"][key] = value
    return edit(index, change)


def first_vision_shard(folder):
    data = json.loads((folder / BIN_INDEX).read_text())["weight_map"]
    return folder / next(v for k, v in data.items() if k.startswith("vision_model."))


NESTED = "[" * 100000 + "]" * 100000
HUGE = 10 ** 9

# (id, folder kind, mutation, file the message must name, text the message must contain)
ROWS = [
    # open_clip ViT: open_clip_config.json
    ("oc-not-json", "vit", write(OC, "{ not json"), OC, "JSON"),
    ("oc-nested", "vit", write(OC, NESTED), OC, "nest"),
    ("oc-list", "vit", write(OC, "[]"), OC, "object"),
    ("oc-not-utf8", "vit", write(OC, b"\xff\xfe{}"), OC, ""),
    ("oc-no-model-cfg", "vit", delkey(OC, ["model_cfg"]), OC, "model_cfg"),
    ("oc-vision-cfg-list", "vit", setkey(OC, ["model_cfg", "vision_cfg"], [1, 2]), OC, "vision_cfg"),
    ("oc-image-size-negative", "vit", setkey(OC, ["model_cfg", "vision_cfg", "image_size"], -32), OC, "image_size"),
    ("oc-image-size-huge", "vit", setkey(OC, ["model_cfg", "vision_cfg", "image_size"], HUGE), OC, "image_size"),
    ("oc-image-size-not-square", "vit", setkey(OC, ["model_cfg", "vision_cfg", "image_size"], [32, 16]), OC,
     "image_size"),
    ("oc-width-negative", "vit", setkey(OC, ["model_cfg", "vision_cfg", "width"], -3), OC, "width"),
    ("oc-width-huge", "vit", setkey(OC, ["model_cfg", "vision_cfg", "width"], HUGE), OC, "width"),
    ("oc-width-float", "vit", setkey(OC, ["model_cfg", "vision_cfg", "width"], 32.5), OC, "width"),
    ("oc-layers-huge", "vit", setkey(OC, ["model_cfg", "vision_cfg", "layers"], HUGE), OC, "layers"),
    ("oc-layers-zero", "vit", setkey(OC, ["model_cfg", "vision_cfg", "layers"], 0), OC, "layers"),
    ("oc-patch-zero", "vit", setkey(OC, ["model_cfg", "vision_cfg", "patch_size"], 0), OC, "patch_size"),
    ("oc-patch-beyond-image", "vit", setkey(OC, ["model_cfg", "vision_cfg", "patch_size"], 64), OC, "patch_size"),
    ("oc-head-width-not-dividing", "vit", setkey(OC, ["model_cfg", "vision_cfg", "head_width"], 7), OC,
     "head_width"),
    ("oc-embed-dim-string", "vit", setkey(OC, ["model_cfg", "embed_dim"], "24"), OC, "embed_dim"),
    ("oc-embed-dim-huge", "vit", setkey(OC, ["model_cfg", "embed_dim"], 10 ** 12), OC, "embed_dim"),
    ("oc-unknown-vision-key", "vit", setkey(OC, ["model_cfg", "vision_cfg", "wdith"], 32), OC, "wdith"),
    ("oc-mean-length-2", "vit", setkey(OC, ["preprocess_cfg", "mean"], [0.5, 0.5]), OC, "mean"),
    ("oc-mean-number", "vit", setkey(OC, ["preprocess_cfg", "mean"], 0.5), OC, "mean"),
    ("oc-std-zero", "vit", setkey(OC, ["preprocess_cfg", "std"], [0, 0, 0]), OC, "std"),
    ("oc-std-nan", "vit", edit(OC, lambda d: d["preprocess_cfg"].update(std=[float("nan")] * 3)), OC, "std"),
    ("oc-interpolation", "vit", setkey(OC, ["preprocess_cfg", "interpolation"], "lanczos"), OC, "interpolation"),
    # open_clip with a timm trunk (ConvNeXt)
    ("oc-timm-pretrained", "convnext", setkey(OC, ["model_cfg", "vision_cfg", "timm_model_pretrained"], True), OC,
     "timm_model_pretrained"),
    ("oc-timm-unknown-arch", "convnext", setkey(OC, ["model_cfg", "vision_cfg", "timm_model_name"], "no_such_net"),
     OC, "no_such_net"),
    ("oc-timm-hub-arch", "convnext", setkey(OC, ["model_cfg", "vision_cfg", "timm_model_name"], "hf-hub:org/x"),
     OC, "hf-hub:org/x"),
    # open_clip weights
    ("oc-weights-truncated", "vit", truncate(OC_W), OC_W, ""),
    ("oc-weights-garbage", "vit", write(OC_W, b"\x07" * 64), OC_W, ""),
    ("oc-weights-empty", "vit", write(OC_W, b""), OC_W, ""),
    ("oc-weights-header-size-absurd", "vit", write(OC_W, struct.pack("<Q", 2 ** 62) + b"{}"), OC_W, ""),
    ("oc-weights-header-not-json", "vit", write(OC_W, struct.pack("<Q", 8) + b"not json" + b"\0" * 8), OC_W, ""),
    ("oc-weights-tensor-beyond-file", "vit", write(OC_W, safetensors_header(
        {"visual.proj": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 40000000000]}})), OC_W, ""),
    ("oc-bin-pickle-payload", "vit", pickle_bin, "open_clip_pytorch_model.bin", "weights_only"),
    ("oc-bin-ints", "vit", as_bin(lambda s: {k: 3 for k in s}), "open_clip_pytorch_model.bin", "tensor"),
    ("oc-bin-list", "vit", as_bin(lambda s: list(s.values())), "open_clip_pytorch_model.bin", "dictionary"),
    ("oc-bin-truncated", "vit", lambda f: (as_bin(lambda s: s)(f), truncate("open_clip_pytorch_model.bin")(f)),
     "open_clip_pytorch_model.bin", ""),
    # timm: config.json + model.safetensors
    ("timm-unknown-arch", "timm", setkey(CFG, ["architecture"], "no_such_vit"), CFG, "no_such_vit"),
    ("timm-hub-arch", "timm", setkey(CFG, ["architecture"], "hf-hub:org/x"), CFG, "hf-hub:org/x"),
    ("timm-arch-number", "timm", setkey(CFG, ["architecture"], 7), CFG, "architecture"),
    ("timm-model-args-list", "timm", setkey(CFG, ["model_args"], [1]), CFG, "model_args"),
    ("timm-checkpoint-path", "timm", setkey(CFG, ["model_args", "checkpoint_path"], "/etc/hostname"), CFG,
     "checkpoint_path"),
    ("timm-pretrained-cfg-overlay", "timm", setkey(CFG, ["model_args", "pretrained_cfg_overlay"],
                                                   {"file": "/etc/hostname"}), CFG, "pretrained_cfg_overlay"),
    ("timm-pretrained", "timm", setkey(CFG, ["model_args", "pretrained"], True), CFG, "pretrained"),
    ("timm-embed-dim-huge", "timm", setkey(CFG, ["model_args", "embed_dim"], 10 ** 7), CFG, ""),
    ("timm-depth-negative", "timm", setkey(CFG, ["model_args", "depth"], -1), CFG, "depth"),
    ("timm-unknown-kwarg", "timm", setkey(CFG, ["model_args", "wdith"], 3), CFG, "wdith"),
    ("timm-input-size-negative", "timm", setkey(CFG, ["pretrained_cfg", "input_size"], [3, -32, -32]), CFG,
     "input_size"),
    ("timm-crop-pct-zero", "timm", setkey(CFG, ["pretrained_cfg", "crop_pct"], 0), CFG, "crop_pct"),
    ("timm-std-zero", "timm", setkey(CFG, ["pretrained_cfg", "std"], [0, 0, 0]), CFG, "std"),
    ("timm-mean-length-2", "timm", setkey(CFG, ["pretrained_cfg", "mean"], [0.5, 0.5]), CFG, "mean"),
    ("timm-weights-truncated", "timm", truncate(W), W, ""),
    # transformers ViT (R-DINO's layout): config.json + model.safetensors (+ preprocessor_config.json)
    ("hf-hidden-negative", "hf", setkey(CFG, ["hidden_size"], -3), CFG, "hidden_size"),
    ("hf-hidden-huge", "hf", setkey(CFG, ["hidden_size"], HUGE), CFG, "hidden_size"),
    ("hf-heads-zero", "hf", setkey(CFG, ["num_attention_heads"], 0), CFG, "num_attention_heads"),
    ("hf-heads-not-dividing", "hf", setkey(CFG, ["num_attention_heads"], 5), CFG, "num_attention_heads"),
    ("hf-layers-huge", "hf", setkey(CFG, ["num_hidden_layers"], HUGE), CFG, "num_hidden_layers"),
    ("hf-image-size-negative", "hf", setkey(CFG, ["image_size"], -32), CFG, "image_size"),
    ("hf-patch-huge", "hf", setkey(CFG, ["patch_size"], HUGE), CFG, "patch_size"),
    ("hf-intermediate-string", "hf", setkey(CFG, ["intermediate_size"], "big"), CFG, "intermediate_size"),
    ("hf-eps-negative", "hf", setkey(CFG, ["layer_norm_eps"], -1), CFG, "layer_norm_eps"),
    ("hf-channels-zero", "hf", setkey(CFG, ["num_channels"], 0), CFG, "num_channels"),
    ("hf-config-nested", "hf", write(CFG, NESTED), CFG, "nest"),
    ("hf-preprocessor-not-json", "hf", write(PRE, "{"), PRE, "JSON"),
    ("hf-preprocessor-std-zero", "hf", write(PRE, json.dumps({"image_std": [0, 0, 0]})), PRE, "std"),
    ("hf-preprocessor-mean-length-2", "hf", write(PRE, json.dumps({"image_mean": [0.5, 0.5]})), PRE, "mean"),
    ("hf-weights-garbage", "hf", write(W, b"\x00" * 7), W, ""),
    # transformers CLIP (LEAF's layout): config.json of model_type clip + model.safetensors (+ preprocessor)
    ("clip-act-relu", "clip", setkey(CFG, ["vision_config", "hidden_act"], "relu"), CFG, "hidden_act"),
    ("clip-vision-config-list", "clip", setkey(CFG, ["vision_config"], [1]), CFG, "vision_config"),
    ("clip-hidden-huge", "clip", setkey(CFG, ["vision_config", "hidden_size"], HUGE), CFG, "hidden_size"),
    ("clip-heads-not-dividing", "clip", setkey(CFG, ["vision_config", "num_attention_heads"], 5), CFG,
     "num_attention_heads"),
    ("clip-layers-huge", "clip", setkey(CFG, ["vision_config", "num_hidden_layers"], HUGE), CFG, "num_hidden_layers"),
    ("clip-intermediate-huge", "clip", setkey(CFG, ["vision_config", "intermediate_size"], HUGE), CFG,
     "intermediate_size"),
    ("clip-image-size-huge", "clip", setkey(CFG, ["vision_config", "image_size"], HUGE), CFG, "image_size"),
    ("clip-patch-zero", "clip", setkey(CFG, ["vision_config", "patch_size"], 0), CFG, "patch_size"),
    ("clip-eps-zero", "clip", setkey(CFG, ["vision_config", "layer_norm_eps"], 0), CFG, "layer_norm_eps"),
    ("clip-channels-one", "clip", setkey(CFG, ["vision_config", "num_channels"], 1), CFG, "num_channels"),
    ("clip-projection-huge", "clip", setkey(CFG, ["projection_dim"], 10 ** 12), CFG, "projection_dim"),
    ("clip-projection-not-the-weights", "clip", setkey(CFG, ["projection_dim"], 16), W, "wrong shape"),
    ("clip-width-not-the-weights", "clip", setkey(CFG, ["vision_config", "hidden_size"], 4096), W, "wrong shape"),
    ("clip-no-projection", "clip", drop_tensor(W, "visual_projection.weight"), W, "visual_projection"),
    ("clip-no-q-proj", "clip", drop_tensor(W, "vision_model.encoder.layers.0.self_attn.q_proj.bias"), W, "k/v"),
    ("clip-pre-resample-lanczos", "clip", write(PRE, json.dumps({"resample": 1})), PRE, "resample"),
    ("clip-pre-crop-not-the-model", "clip", write(PRE, json.dumps({"crop_size": 64, "size": 64})), PRE, "crop_size"),
    ("clip-pre-size-huge", "clip", write(PRE, json.dumps({"size": {"shortest_edge": HUGE}})), PRE, "shortest_edge"),
    ("clip-pre-size-unknown", "clip", write(PRE, json.dumps({"size": {"longest_edge": 32}})), PRE, "size"),
    ("clip-pre-crop-not-square", "clip", write(PRE, json.dumps({"crop_size": {"height": 32, "width": 16}})), PRE,
     "square"),
    ("clip-pre-no-resize", "clip", write(PRE, json.dumps({"do_resize": False})), PRE, "do_resize"),
    ("clip-pre-std-zero", "clip", write(PRE, json.dumps({"image_std": [0, 0, 0]})), PRE, "std"),
    # sharded checkpoints: the index is data, and its shard names must stay in the folder
    ("shards-index-not-json", "clip-shards", write(INDEX, "{"), INDEX, "JSON"),
    ("shards-no-weight-map", "clip-shards", write(INDEX, json.dumps({"metadata": {}})), INDEX, "weight_map"),
    ("shards-parent-folder", "clip-shards", set_shard(INDEX, "../model-00001-of-00007.safetensors"), INDEX,
     "no folder"),
    ("shards-absolute", "clip-shards", set_shard(INDEX, "/etc/hostname.safetensors"), INDEX, "no folder"),
    ("shards-subfolder", "clip-shards", set_shard(INDEX, "sub/x.safetensors"), INDEX, "no folder"),
    ("shards-hidden", "clip-shards", set_shard(INDEX, ".x.safetensors"), INDEX, "no folder"),
    ("shards-pickle-in-safetensors-index", "clip-shards", set_shard(INDEX, "x.bin"), INDEX, ".safetensors"),
    ("shards-not-a-string", "clip-shards", set_shard(INDEX, 7), INDEX, "shard"),
    ("shards-missing", "clip-shards", set_shard(INDEX, "model-00009-of-00009.safetensors"),
     "model-00009-of-00009.safetensors", "index"),
    ("shards-text-only", "clip-shards", edit(INDEX, lambda d: d.update(weight_map={
        k: v for k, v in d["weight_map"].items() if k.startswith("text_model.")})), INDEX, "vision_model."),
    ("shards-garbage", "clip-shards", lambda f: [p.write_bytes(b"\x07" * 64) for p in f.glob("model-0000*")],
     ".safetensors", ""),
    ("bin-shards-pickle-payload", "clip-bin-shards",
     lambda f: first_vision_shard(f).write_bytes(pickle.dumps({"vision_model.x": _Payload()})), "pytorch_model-",
     "weights_only"),
    ("bin-shards-safetensors-in-bin-index", "clip-bin-shards", set_shard(BIN_INDEX, "x.safetensors"), BIN_INDEX,
     ".bin"),
    # head folders: rpmetric_config.json + head.safetensors
    ("head-not-json", "head", write(HEAD, "{"), HEAD, "JSON"),
    ("head-nested", "head", write(HEAD, NESTED), HEAD, "nest"),
    ("head-format-string", "head", setkey(HEAD, ["format"], "1"), HEAD, "integer"),
    ("head-format-newer", "head", setkey(HEAD, ["format"], 2), HEAD, "upgrade"),
    ("head-dim-negative", "head", setkey(HEAD, ["head", "dim"], -3), HEAD, "dim"),
    ("head-dim-huge", "head", setkey(HEAD, ["head", "dim"], HUGE), HEAD, "dim"),
    ("head-hidden-huge", "head", setkey(HEAD, ["head", "hidden"], HUGE), HEAD, "hidden"),
    ("head-hidden-not-the-weights", "head", setkey(HEAD, ["head", "hidden"], 16), HEAD_W, "hidden 16"),
    ("head-dim-not-the-embedding", "head", lambda f: (setkey(HEAD, ["head", "dim"], 16)(f), mlp_weights(f, 16, 8)),
     HEAD, "embeds into 24"),
    ("head-lora-r-huge", "lora", setkey(HEAD, ["head", "r"], HUGE), HEAD, "r"),
    ("head-lora-alpha-string", "lora", setkey(HEAD, ["head", "alpha"], "x"), HEAD, "alpha"),
    ("head-pp-image-size-negative", "head", setkey(HEAD, ["preprocessing"], {"image_size": -32}), HEAD,
     "image_size"),
    ("head-pp-std-zero", "head", setkey(HEAD, ["preprocessing"], {"std": [0, 0, 0]}), HEAD, "std"),
    ("head-pp-list", "head", setkey(HEAD, ["preprocessing"], [1]), HEAD, "preprocessing"),
    ("head-base-number", "head", setkey(HEAD, ["base_model"], 12), HEAD, "base_model"),
    ("head-weights-truncated", "head", truncate(HEAD_W), HEAD_W, ""),
    ("head-weights-garbage", "head", write(HEAD_W, b"\x01" * 40), HEAD_W, ""),
    ("head-weights-header-size-absurd", "head", write(HEAD_W, struct.pack("<Q", 2 ** 62) + b"{}"), HEAD_W, ""),
]


@pytest.mark.parametrize("kind, mutate, filename, text", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_hostile_folder_is_one_line_exit_2(valid, tmp_path, capsys, kind, mutate, filename, text):
    folders, root = valid
    folder = tmp_path / f"model-{kind}"
    shutil.copytree(folders[kind], folder)
    mutate(folder)
    try:
        status = main(["distance", str(root / "a.png"), str(root / "b.png"), "--model", str(folder)])
    except BaseException as err:  # what would reach the user as a traceback
        pytest.fail(f"traceback: {type(err).__name__}: {err}")
    out, err = capsys.readouterr()
    assert status == 2, f"exit {status}, printed {out!r} {err!r}"
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert filename in err and folder.name in err, err
    assert text.lower() in err.lower(), err


def test_hostile_folder_from_a_fresh_process_prints_no_traceback(valid, tmp_path):
    """The same through the installed command, where a traceback would be printed."""
    from subproc import run_cli

    folders, root = valid
    folder = tmp_path / "model"
    shutil.copytree(folders["hf"], folder)
    setkey(CFG, ["hidden_size"], -3)(folder)
    out = run_cli(["distance", root / "a.png", root / "b.png", "--model", folder])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert CFG in out.stderr and "hidden_size" in out.stderr
