"""``rpmetric distance``: the distance between two images, or for every pair in a CSV."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

from .common import add_device_option, add_model_option


def register(sub) -> None:
    p = sub.add_parser(
        "distance", help="distance between two images, or between the pairs listed in a CSV",
        description="Print the perceptual distance (1 - cosine, in [0, 2]) between image A and image B, "
                    "or, with --pairs, between every pair of a CSV file with columns `a,b` (paths relative "
                    "to the CSV's folder); then the output is CSV `a,b,distance`.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="two image files A and B")
    p.add_argument("--pairs", type=Path, default=None, help="CSV with a header and columns a,b")
    p.add_argument("--out", type=Path, default=None, help="with --pairs: write the CSV here instead of stdout")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per batch with --pairs (default: 32)")
    add_model_option(p)
    add_device_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..images import load_image
    from ..metric import RobustDistance

    if args.pairs is None and len(args.images) != 2:
        raise ValueError(f"give two images A B, or --pairs FILE.csv (got {len(args.images)} image arguments)")
    if args.pairs is not None and args.images:
        raise ValueError("give either two images or --pairs, not both")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, but got {args.batch_size}")
    pairs = _read_pairs(args.pairs) if args.pairs else [(Path(args.images[0]), Path(args.images[1]))]
    metric = RobustDistance(args.model, device=args.device)
    prepare = metric.encoder.prepare  # images differ in size: bring each to the model's input first
    results = []
    with torch.inference_mode():
        for start in range(0, len(pairs), args.batch_size):
            chunk = pairs[start:start + args.batch_size]
            a = torch.cat([prepare(load_image(p[0])) for p in chunk])
            b = torch.cat([prepare(load_image(p[1])) for p in chunk])
            results.extend(metric(a, b).tolist())
    if args.pairs is None:
        print(f"{results[0]:.6f}")
        return 0
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow(["a", "b", "distance"])
        for (a, b), d in zip(pairs, results):
            writer.writerow([a, b, f"{d:.6f}"])
    finally:
        if args.out:
            out.close()
    return 0


def _read_pairs(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"a", "b"} <= set(reader.fieldnames):
            raise ValueError(f"{path} must have a header with columns a,b (found: {reader.fieldnames})")
        rows = [(path.parent / r["a"], path.parent / r["b"]) for r in reader]
    if not rows:
        raise ValueError(f"{path} lists no pairs")
    return rows
