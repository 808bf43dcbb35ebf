"""Cost of the test-time counterattack in encoder-pass equivalents.

Seconds per batch of ``Counterattack.defended_features`` divided by the seconds of one plain
encoder forward of the same batch, measured interleaved in the same run, on the ViT-B/32
architecture (random weights) at 224 px, CPU:

- all images stable (``tau_threshold=0`` flags none): target <= 2.5 (f(x) and f(x + delta0));
- all images falsely stable (``tau_threshold=inf``): target <= 8, the official cost of
  4 forward and 2 backward passes.

    python evals/bench_counterattack.py [--batch 8] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from _common import interleaved_timings, median, save_random_open_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import rpmetric
    from rpmetric.counterattack import Counterattack

    folder, _ = save_random_open_clip("ViT-B-32")
    encoder = rpmetric.RobustDistance(str(folder), device="cpu").encoder
    x = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    stable, flagged = Counterattack(tau_threshold=0.0), Counterattack(tau_threshold=math.inf)

    with torch.inference_mode():  # how the metric is used for scoring
        # The two cases must really be what they claim, or the ratios mean nothing.
        if stable(encoder, x).flagged.any() or not flagged(encoder, x).flagged.all():
            raise RuntimeError("the stable/flagged cases did not flag none/all images")
        times = interleaved_timings({
            "plain_forward": lambda: encoder(x),
            "all_stable": lambda: stable.defended_features(encoder, x),
            "all_falsely_stable": lambda: flagged.defended_features(encoder, x),
        }, repeats=args.repeats)
    plain = median(times["plain_forward"])
    print(json.dumps({
        "model": "ViT-B-32 (random weights), 224 px, CPU", "batch": args.batch, "threads": args.threads,
        "repeats": args.repeats, "plain_forward_seconds": round(plain, 4),
        "all_stable_ratio": round(median(times["all_stable"]) / plain, 3), "all_stable_target": "<= 2.5",
        "all_falsely_stable_ratio": round(median(times["all_falsely_stable"]) / plain, 3),
        "all_falsely_stable_target": "<= 8",
    }, indent=2))


if __name__ == "__main__":
    main()
