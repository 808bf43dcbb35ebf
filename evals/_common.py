"""Shared bits of the benchmark scripts: a random-weight model in the Hub layout, and timing."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def save_random_open_clip(arch: str = "ViT-B-32", folder: Path = None, seed: int = 0):
    """An open_clip architecture with random weights, saved in the Hub layout.

    Returns (folder, open_clip model): the model is the reference for raw-encoder timings.
    """
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.create_model(arch).eval()
    folder = Path(folder or tempfile.mkdtemp(prefix=f"rpmetric-bench-{arch}-"))
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": open_clip.get_model_config(arch),
              "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic"}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder, model


def interleaved_timings(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> Dict[str, List[float]]:
    """Seconds per call of each function, alternating them so that machine load hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: List[float]) -> float:
    return statistics.median(values)
