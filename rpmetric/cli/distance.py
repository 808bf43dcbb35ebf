"""``rpmetric distance``: the distance between two images, or for every pair in a CSV."""

from __future__ import annotations

from pathlib import Path

import torch

from .common import add_device_option, add_model_option, at_least, format_distance


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
    p.add_argument("--batch-size", type=at_least(1), default=32, help="pairs per batch with --pairs (default: 32)")
    add_model_option(p)
    add_device_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..files import write_csv
    from ..images import load_image
    from ..metric import RobustDistance

    if args.pairs is None and len(args.images) != 2:
        raise ValueError(f"give two images A B, or --pairs FILE.csv (got {len(args.images)} image arguments)")
    if args.pairs is not None and args.images:
        raise ValueError("give either two images or --pairs, not both")
    pairs = _read_pairs(args.pairs) if args.pairs else [(Path(args.images[0]), Path(args.images[1]))]
    _check_files(pairs, args.pairs)  # before the model loads (or downloads)
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
        print(format_distance(results[0]))
        return 0
    write_csv(args.out, ["a", "b", "distance"], [(a, b, format_distance(d)) for (a, b), d in zip(pairs, results)])
    return 0


def _read_pairs(path: Path):
    from ..files import read_csv_columns

    rows = [(path.parent / r["a"], path.parent / r["b"]) for r in read_csv_columns(path, ("a", "b"))]
    if not rows:
        raise ValueError(f"{path} lists no pairs")
    return rows


def _check_files(pairs, source) -> None:
    """Every image exists, or a one-line error naming the first missing one (and the CSV listing it)."""
    for path in (p for pair in pairs for p in pair):
        if not path.is_file():
            raise FileNotFoundError(f"Image file not found: {path}" + (f" (listed in {source})" if source else ""))
