"""Cost of the test-time counterattack in encoder-pass equivalents.

Seconds per batch of ``Counterattack.defended_features`` divided by the seconds of one plain
encoder forward of the same batch, measured interleaved in the same run, on the ViT-B/32
architecture (random weights) at 224 px, CPU:

- all images stable (``tau_threshold=0`` flags none): target <= 2.5 (f(x) and f(x + delta0), the
  latter with autograd on, as it may give the first PGD step too);
- all images falsely stable (``tau_threshold=inf``): target <= 8, the official cost of
  4 forward and 2 backward passes, which the counterattack now matches: f(x), f(x + delta0) with
  its backward (tau and the first PGD step), the second step's forward+backward, f(x + Delta).

The encoder is the one rpmetric builds: its ViTs use open_clip's own attention block, not
``nn.MultiheadAttention`` (same weights and outputs), because in grad mode PyTorch's
MultiheadAttention takes a slow path (its input projection becomes a batched matmul over a
transposed input) that makes a forward+backward pass about 3.5 plain forwards instead of about
2.4. The report names the attention module measured.

Both wall-clock and process CPU time are reported: on a machine shared with other jobs, wall
time swings with their load, while the CPU time of a single-threaded run (``--threads 1``)
counts only this process's own work.

    python evals/bench_counterattack.py [--batch 8] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile

import torch

from _common import interleaved_clock_timings, save_random_open_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import rpmetric
    from rpmetric.counterattack import Counterattack

    with tempfile.TemporaryDirectory(prefix="rpmetric-bench-ttc-") as tmp:  # ~600 MB: do not leave it behind
        folder, _ = save_random_open_clip("ViT-B-32", folder=tmp)
        encoder = rpmetric.RobustDistance(str(folder), device="cpu").encoder
    x = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    stable, flagged = Counterattack(tau_threshold=0.0), Counterattack(tau_threshold=math.inf)

    with torch.inference_mode():  # how the metric is used for scoring
        # The two cases must really be what they claim, or the ratios mean nothing.
        if stable(encoder, x).flagged.any() or not flagged(encoder, x).flagged.all():
            raise RuntimeError("the stable/flagged cases did not flag none/all images")
        times = interleaved_clock_timings({
            "plain_forward": lambda: encoder(x),
            "all_stable": lambda: stable.defended_features(encoder, x),
            "all_falsely_stable": lambda: flagged.defended_features(encoder, x),
        }, repeats=args.repeats, warmup=1)
    attention = type(encoder.backbone.transformer.resblocks[0].attn)
    report = {"model": "ViT-B-32 (random weights), 224 px, CPU",
              "attention": f"{attention.__module__}.{attention.__qualname__}", "batch": args.batch, "threads": args.threads,
              "repeats": args.repeats, "targets": {"all_stable": "<= 2.5", "all_falsely_stable": "<= 8"}}
    for clock, by_name in times.items():
        plain = statistics.median(by_name["plain_forward"])
        report[clock] = {
            "plain_forward_seconds": round(plain, 4),
            "all_stable_ratio": round(statistics.median(by_name["all_stable"]) / plain, 3),
            "all_falsely_stable_ratio": round(statistics.median(by_name["all_falsely_stable"]) / plain, 3),
            "seconds": {name: [round(t, 3) for t in values] for name, values in by_name.items()},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
