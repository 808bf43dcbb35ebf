"""Benchmark: evaluation throughput against the raw encoder throughput of the same model, same run.

The evaluation (``rpmetric.evaluation.evaluate`` on a generated NIGHTS folder of 256x256 PNGs:
DataLoader decoding and resizing, the encoder pass over cat([ref, left, right]), distances,
run log on disk) should be limited by the encoder alone, so its images/s must reach at least 0.9
of the encoder's own images/s on ready-made 224x224 tensors in the same batch sizes.

The model is the ViT-B/32 architecture (open_clip's 'ViT-B-32' config) with random weights saved in
the Hub layout, so no download is needed and decoding is far from dominant. The two measurements
alternate, and each is summarised by its best round, which is the least disturbed by other load
on a shared machine.

Usage:
    python evals/bench_eval.py [--triplets 32] [--batch-size 8] [--workers 1] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import datagen  # noqa: E402  (the tests' known-answer NIGHTS generator)

from rpmetric import RobustDistance  # noqa: E402
from rpmetric.evaluation import EncoderDistances, evaluate, load_groups  # noqa: E402

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def save_random_open_clip(folder: Path, arch: str) -> Path:
    """An open_clip architecture with random weights, in the Hub's file layout."""
    import open_clip
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ValueError(f"open_clip has no model config {arch!r}; see open_clip.list_models().")
    torch.manual_seed(0)
    model = CLIP(**model_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD,
                                                          "interpolation": "bicubic", "resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def encoder_throughput(metric: RobustDistance, images: int, batch_images: int) -> float:
    """Images/s of the bare encoder on ready 224x224 tensors, in the evaluation's batch sizes."""
    size = metric.encoder.image_size
    x = torch.rand(batch_images, 3, size, size)
    done = 0
    start = time.perf_counter()
    with torch.inference_mode():
        while done < images:
            n = min(batch_images, images - done)
            metric.encoder(x[:n])
            done += n
    return images / (time.perf_counter() - start)


def eval_throughput(metric: RobustDistance, root: Path, batch_size: int, workers: int, log: Path) -> float:
    task, groups, _ = load_groups("nights", root, ["test"])
    n = sum(len(g) for g in groups.values())
    log.unlink(missing_ok=True)
    start = time.perf_counter()
    result = evaluate(EncoderDistances(metric), task, groups, batch_size=batch_size, workers=workers, log=log)
    elapsed = time.perf_counter() - start
    if not result.complete:
        raise RuntimeError("the evaluation did not complete")
    return 3 * n / elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip model config (default: ViT-B-32)")
    parser.add_argument("--triplets", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="triplets per batch (default: 8)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=256, help="side of the generated PNGs (default: 256)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [dict(id=f"t{i}", kind=("left", "right", "tie")[i % 3], p=1.0, votes=6, split="test",
                     is_imagenet=bool(i % 2)) for i in range(args.triplets)]
        datagen.write_nights(tmp / "nights", rows, size=(args.image_size, args.image_size))
        metric = RobustDistance(str(save_random_open_clip(tmp / "model", args.arch)), device="cpu")
        images = 3 * args.triplets
        encoder_throughput(metric, 3 * args.batch_size, 3 * args.batch_size)  # warm-up
        enc, ev = [], []
        for _ in range(args.rounds):
            enc.append(encoder_throughput(metric, images, 3 * args.batch_size))
            ev.append(eval_throughput(metric, tmp / "nights", args.batch_size, args.workers, tmp / "log.jsonl"))
    ratio = max(ev) / max(enc)
    print(f"model {args.arch} (random weights), {args.triplets} triplets of {args.image_size}px PNGs, "
          f"batch {args.batch_size} triplets, {args.workers} worker(s), torch threads {torch.get_num_threads()}")
    print(f"encoder alone : {', '.join(f'{v:.2f}' for v in enc)} images/s (best {max(enc):.2f})")
    print(f"evaluation    : {', '.join(f'{v:.2f}' for v in ev)} images/s (best {max(ev):.2f})")
    print(f"ratio evaluation / encoder = {ratio:.3f} (target >= 0.9): {'PASS' if ratio >= 0.9 else 'FAIL'}")
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
