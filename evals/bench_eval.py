"""Benchmark: evaluation throughput against the raw encoder throughput of the same model, same run.

The evaluation (``rpmetric.evaluation.evaluate`` on a generated NIGHTS folder of 256x256 PNGs:
DataLoader decoding and resizing, the encoder pass over cat([ref, left, right]), distances,
run log on disk) should be limited by the encoder alone, so its images/s must reach at least 0.9
of the encoder's own images/s on ready-made 224x224 tensors in the same batch sizes.

The model is the ViT-B/32 architecture (open_clip's 'ViT-B-32' config) with random weights saved in
the Hub layout, so no download is needed and decoding is far from dominant. The two measurements
alternate; the figure is the median over rounds of the per-round ratio. On a shared machine the
wall clock is noisy, so the script also reports the ratio in images per CPU second (this process
plus its DataLoader workers) and the share of the evaluation's wall time spent inside the encoder.

Usage:
    python evals/bench_eval.py [--triplets 96] [--batch-size 8] [--workers 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import datagen  # noqa: E402  (the tests' known-answer NIGHTS generator)
from _common import save_random_open_clip  # noqa: E402

from rpmetric import RobustDistance  # noqa: E402
from rpmetric.evaluation import EncoderDistances, evaluate, load_groups  # noqa: E402


def clock():
    """(wall seconds, CPU seconds of this process and of its finished children, e.g. DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(run):
    """``run()`` returns a number of images; gives (images per wall second, images per CPU second)."""
    wall0, cpu0 = clock()
    images = run()
    wall1, cpu1 = clock()
    return images / (wall1 - wall0), images / (cpu1 - cpu0)


def run_encoder(metric: RobustDistance, images: int, batch_images: int) -> int:
    """The bare encoder on ready 224x224 tensors, in the evaluation's batch sizes."""
    size = metric.encoder.image_size
    x = torch.rand(batch_images, 3, size, size)
    done = 0
    with torch.inference_mode():
        while done < images:
            n = min(batch_images, images - done)
            metric.encoder(x[:n])
            done += n
    return images


def run_evaluation(metric: RobustDistance, root: Path, batch_size: int, workers: int, log: Path,
                   in_encoder: list) -> int:
    """The whole evaluation (reading, decoding, encoder, distances, run log); adds encoder time to in_encoder."""
    starts = []
    hooks = [metric.encoder.register_forward_pre_hook(lambda m, i: starts.append(time.perf_counter())),
             metric.encoder.register_forward_hook(lambda m, i, o: in_encoder.append(time.perf_counter() - starts.pop()))]
    log.unlink(missing_ok=True)
    try:
        task, groups, _ = load_groups("nights", root, ["test"])
        result = evaluate(EncoderDistances(metric), task, groups, batch_size=batch_size, workers=workers, log=log)
    finally:
        for hook in hooks:
            hook.remove()
    if not result.complete:
        raise RuntimeError("the evaluation did not complete")
    return 3 * result.total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip model config (default: ViT-B-32)")
    parser.add_argument("--triplets", type=int, default=96,
                        help="triplets per round; enough that DataLoader start-up is amortised (default: 96)")
    parser.add_argument("--batch-size", type=int, default=8, help="triplets per batch (default: 8)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=256, help="side of the generated PNGs (default: 256)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [dict(id=f"t{i}", kind=("left", "right", "tie")[i % 3], p=1.0, votes=6, split="test",
                     is_imagenet=bool(i % 2)) for i in range(args.triplets)]
        datagen.write_nights(tmp / "nights", rows, size=(args.image_size, args.image_size))
        metric = RobustDistance(str(save_random_open_clip(args.arch, tmp / "model")[0]), device="cpu")
        images, batch_images = 3 * args.triplets, 3 * args.batch_size
        run_encoder(metric, batch_images, batch_images)  # warm-up
        enc, ev, share = [], [], []
        for _ in range(args.rounds):
            enc.append(measure(lambda: run_encoder(metric, images, batch_images)))
            in_encoder: list = []
            ev.append(measure(lambda: run_evaluation(metric, tmp / "nights", args.batch_size, args.workers,
                                                     tmp / "log.jsonl", in_encoder)))
            share.append(sum(in_encoder) * ev[-1][0] / images)  # encoder seconds / evaluation wall seconds

    wall = [e[0] / b[0] for e, b in zip(ev, enc)]
    cpu = [e[1] / b[1] for e, b in zip(ev, enc)]
    ratio = statistics.median(wall)
    print(f"model {args.arch} (random weights), {args.triplets} triplets of {args.image_size}px PNGs, "
          f"batch {args.batch_size} triplets, {args.workers} worker(s), torch threads {torch.get_num_threads()}, "
          f"{args.rounds} alternating rounds")
    print(f"encoder alone, images/s      : {', '.join(f'{b[0]:.2f}' for b in enc)}")
    print(f"evaluation, images/s         : {', '.join(f'{e[0]:.2f}' for e in ev)}")
    print(f"ratio per round (wall clock) : {', '.join(f'{r:.3f}' for r in wall)}")
    print(f"ratio per round (images per CPU second)     : {', '.join(f'{r:.3f}' for r in cpu)}")
    print(f"share of evaluation wall time inside the encoder: {', '.join(f'{v:.3f}' for v in share)}")
    print(f"evaluation / encoder throughput = {ratio:.3f} (median over rounds; target >= 0.9): "
          f"{'PASS' if ratio >= 0.9 else 'FAIL'}")
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
