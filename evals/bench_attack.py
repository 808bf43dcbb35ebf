"""Cost of the robust 2AFC evaluation against the attack's irreducible work, same run.

Baseline: one forward+backward pass of the encoder w.r.t. the input, on the same batch of
references at the model's input size. The evaluation (data loading, left/right embeddings, clean
judgement, APGD, re-check, bookkeeping) is timed end to end with `evaluate_attack`, and

    ratio = seconds per batch / (steps x seconds per forward+backward)

Target (issue 4): ratio <= 1.15. Work that does not grow with the steps (embedding left and right,
the clean judgement, the re-check, APGD's gradient at its random start) is amortised over the
steps, so the script runs two step counts, fits `seconds = fixed + steps x per_step`, and also
reports the ratio extrapolated to the protocol's 100 steps.

The triplets' labels are the model's own clean decisions, so APGD attacks every row of every
batch (a row already wrong would be skipped and make the attack look cheaper than it is).

    python evals/bench_attack.py [--arch ViT-B-32] [--batch 8] [--batches 1] [--steps 5 10] [--threads 1] [--clock cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def random_weight_metric(arch: str, folder: Path):
    import open_clip
    import tinymodels

    import rpmetric

    tinymodels.save_open_clip(folder / "model", open_clip.get_model_config(arch))
    return rpmetric.RobustDistance(str(folder / "model"), device="cpu")


def triplets_judged_correctly(metric, folder: Path, n: int):
    """``n`` triplets of smooth random images at the model's size, labelled with the metric's own choice."""
    from PIL import Image

    from rpmetric.datasets import Triplet
    from rpmetric.images import load_image

    size = metric.encoder.image_size
    rng = np.random.default_rng(0)
    triplets = []
    for i in range(n):
        paths = []
        for name in ("ref", "left", "right"):
            coarse = torch.from_numpy(rng.random((1, 3, 8, 8))).float()
            image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")[0]
            path = folder / f"{i}_{name}.png"
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
            paths.append(path)
        ref, left, right = (load_image(p) for p in paths)
        with torch.no_grad():
            p = 1.0 if float(metric(ref, right)) < float(metric(ref, left)) else 0.0
        triplets.append(Triplet(str(i), *paths, p))
    return triplets


def forward_backward_seconds(encoder, x: torch.Tensor, repeats: int, clock) -> float:
    """Median seconds of one forward+backward pass w.r.t. the input (the unit APGD repeats)."""
    times = []
    for _ in range(repeats + 1):
        xi = x.clone().requires_grad_(True)
        start = clock()
        torch.autograd.grad(encoder(xi).sum(), xi)
        times.append(clock() - start)
    return statistics.median(times[1:])  # the first call warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture, random weights")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=1, help="batches attacked per step count")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10], help="APGD step counts to time")
    parser.add_argument("--repeats", type=int, default=3, help="forward+backward repeats per baseline")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: this process's CPU time, robust to other jobs on shared cores (use with "
                             "--threads 1, where it is not inflated by threads waiting for each other); "
                             "wall: elapsed time, for a quiet machine")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)

    from rpmetric.attacks import evaluate_attack

    with tempfile.TemporaryDirectory(prefix="rpmetric-bench-attack-") as tmp:
        tmp = Path(tmp)
        metric = random_weight_metric(args.arch, tmp)
        n = args.batch * args.batches
        triplets = triplets_judged_correctly(metric, tmp, n)
        size = metric.encoder.image_size
        x = torch.rand(args.batch, 3, size, size)
        evaluate_attack(metric, triplets[: args.batch], steps=1, batch_size=args.batch, progress=False)  # warm-up

        rows = []
        for steps in args.steps:
            # Baseline before and after each attack run, so machine load hits both alike.
            before = forward_backward_seconds(metric.encoder, x, args.repeats, clock)
            start = clock()
            result = evaluate_attack(metric, triplets, steps=steps, batch_size=args.batch, progress=False)
            per_batch = (clock() - start) / args.batches
            fb = (before + forward_backward_seconds(metric.encoder, x, args.repeats, clock)) / 2
            rows.append({"steps": steps, "seconds_per_batch": per_batch, "seconds_per_triplet": per_batch / args.batch,
                         "forward_backward_seconds": fb, "ratio": per_batch / (steps * fb),
                         "clean_accuracy": result.clean_accuracy, "robust_accuracy": result.robust_accuracy})

    report = {"arch": args.arch, "batch": args.batch, "batches": args.batches, "threads": args.threads,
              "clock": args.clock,
              "target_ratio": 1.15, "runs": rows}
    if len(rows) >= 2:
        # Least squares fit of seconds per batch = fixed + steps * per_step, in forward+backward units.
        steps = np.array([r["steps"] for r in rows], dtype=float)
        units = np.array([r["seconds_per_batch"] / r["forward_backward_seconds"] for r in rows])
        per_step, fixed = np.polyfit(steps, units, 1)
        report["fit_in_forward_backward_units"] = {"fixed": float(fixed), "per_step": float(per_step)}
        report["ratio_at_100_steps"] = float((fixed + 100 * per_step) / 100)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
