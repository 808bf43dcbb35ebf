"""Peak memory of loading a CLIP checkpoint whose text tower is large: the metric reads only the vision tower.

A transformers CLIPModel with a small vision tower and a large text tower (random weights) is saved
in four layouts: one model.safetensors, safetensors shards with model.safetensors.index.json, one
pytorch_model.bin, and .bin shards with pytorch_model.bin.index.json. Each is loaded by
``rpmetric.models.load_encoder`` in a fresh process, whose peak RSS (VmHWM, Linux) is compared with
the same process after its imports only. Baselines in the same run: loading a checkpoint of the
vision tower alone (what the metric needs), and reading the whole checkpoint
(safetensors.torch.load_file with every tensor touched, or torch.load), what a loader that does
not filter holds.

    python evals/bench_load.py [--text-width 1280] [--text-layers 12] [--shard-mb 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import tinymodels  # noqa: F401  (puts tests/ on sys.path for the children too)

# VmHWM (the process's own peak RSS), not ru_maxrss: Linux carries ru_maxrss over from the parent
# across exec, so a child would report the benchmark's own peak.
_CHILD = r"""
import re, sys, torch
sys.path.insert(0, {tests!r})
from rpmetric.models import load_encoder
from safetensors.torch import load_file
def hwm_kib():
    return int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1))
mode, folder = sys.argv[1], sys.argv[2]
before = hwm_kib()
if mode == "rpmetric":
    enc = load_encoder(folder)
    assert enc(torch.rand(1, 3, 224, 224)).shape[-1] > 0
elif mode == "whole-safetensors":  # every tensor touched, as building a whole model from it would
    state = load_file(folder + "/model.safetensors")
    total = sum(float(t.sum()) for t in state.values())
elif mode == "whole-bin":
    state = torch.load(folder + "/pytorch_model.bin", map_location="cpu", weights_only=True)
print(before, hwm_kib())
"""


def save_checkpoint(folder: Path, text_width: int, text_layers: int, vision_width: int, vision_layers: int) -> dict:
    """A CLIPModel with random weights saved as model.safetensors; returns byte counts per tower."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=text_width, intermediate_size=4 * text_width, num_hidden_layers=text_layers,
                         num_attention_heads=text_width // 64),
        vision_config=dict(hidden_size=vision_width, intermediate_size=4 * vision_width,
                           num_hidden_layers=vision_layers, num_attention_heads=vision_width // 64,
                           image_size=224, patch_size=32, hidden_act="quick_gelu"),
        projection_dim=512)
    with torch.device("meta"):  # shapes only; the random values are drawn below, tensor by tensor
        shapes = {k: v.shape for k, v in CLIPModel(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    save_file(state, str(folder / "model.safetensors"))
    vision = sum(v.numel() * 4 for k, v in state.items() if k.startswith(("vision_model.", "visual_projection.")))
    return {"total_bytes": sum(v.numel() * 4 for v in state.values()), "vision_bytes": vision}


def peak_mb(mode: str, folder: Path) -> dict:
    code = _CHILD.format(tests=str(Path(__file__).resolve().parents[1] / "tests"))
    out = subprocess.run([sys.executable, "-c", code, mode, str(folder)], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split()[-2:])
    return {"imports_mb": before / 1024, "peak_mb": after / 1024, "added_mb": (after - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-width", type=int, default=1280)
    parser.add_argument("--text-layers", type=int, default=12)
    parser.add_argument("--vision-width", type=int, default=384)
    parser.add_argument("--vision-layers", type=int, default=6)
    parser.add_argument("--shard-mb", type=int, default=200)
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(prefix="rpmetric-bench-load-") as tmp:  # about 4 GB: do not leave it behind
        base = Path(tmp) / "single"
        sizes = save_checkpoint(base, args.text_width, args.text_layers, args.vision_width, args.vision_layers)
        results["checkpoint"] = {k: v / 2 ** 20 for k, v in sizes.items()}
        vision_only = Path(tmp) / "vision-only"
        shutil.copytree(base, vision_only)
        from safetensors.torch import load_file, save_file

        save_file({k: v for k, v in load_file(str(base / "model.safetensors")).items()
                   if k.startswith(("vision_model.", "visual_projection."))}, str(vision_only / "model.safetensors"))
        results["baseline: vision tower alone"] = peak_mb("rpmetric", vision_only)
        shutil.rmtree(vision_only)
        results["baseline: whole safetensors"] = peak_mb("whole-safetensors", base)
        results["rpmetric model.safetensors"] = peak_mb("rpmetric", base)
        shards = Path(tmp) / "shards"
        shutil.copytree(base, shards)
        tinymodels.shard_safetensors(shards, "model.safetensors", max_shard_size=args.shard_mb * 2 ** 20)
        results["rpmetric safetensors shards"] = peak_mb("rpmetric", shards)
        shutil.rmtree(shards)
        bins = Path(tmp) / "bins"
        shutil.copytree(base, bins)
        tinymodels.shard_to_bin(bins, "model.safetensors", "pytorch_model.bin.index.json",
                                max_shard_size=args.shard_mb * 2 ** 20)
        results["rpmetric .bin shards"] = peak_mb("rpmetric", bins)
        shutil.rmtree(bins)
        one_bin = Path(tmp) / "bin"
        shutil.copytree(base, one_bin)
        import torch

        torch.save(load_file(str(one_bin / "model.safetensors")), one_bin / "pytorch_model.bin")
        (one_bin / "model.safetensors").unlink()
        results["baseline: whole .bin (torch.load)"] = peak_mb("whole-bin", one_bin)
        results["rpmetric pytorch_model.bin"] = peak_mb("rpmetric", one_bin)
    print(json.dumps(results, indent=2))
    ck = results["checkpoint"]
    print(f"\ncheckpoint {ck['total_bytes']:.0f} MB, of which the vision tower {ck['vision_bytes']:.0f} MB")
    alone = results["baseline: vision tower alone"]["added_mb"]
    print(f"{'load':36s} {'peak RSS MB':>12s} {'added MB':>9s} {'/ vision alone':>15s}")
    for name, r in results.items():
        if name != "checkpoint":
            print(f"{name:36s} {r['peak_mb']:12.0f} {r['added_mb']:9.0f} {r['added_mb'] / alone:15.2f}")


if __name__ == "__main__":
    main()
