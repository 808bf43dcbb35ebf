"""Benchmarks for embedding stores and search, each against a baseline measured in the same run.

(a) ``build_store`` throughput (decoding in DataLoader workers, resize, encoder, shard writing)
    against the raw encoder on ready 224x224 tensors, for ViT-B/32 with random weights saved in
    the Hub layout. Target: ratio >= 0.9.
(b) Exact torch search against FAISS (flat, and IVF) for random 512-d unit vectors: time and
    recall@10 against the exact answer.

Usage::

    python evals/bench_retrieval.py                 # both parts
    python evals/bench_retrieval.py --part search --n 100000 --queries 1000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tinymodels: Hub-layout model builder


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    """Smooth random JPEGs of several sizes, so every image needs a real resize and crop."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(320, 256), (256, 384), (300, 300), (480, 360)]
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        small.resize(sizes[i % len(sizes)], Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)


def raw_encoder_rate(metric, n: int, batch_size: int) -> float:
    size = metric.encoder.image_size
    x = torch.rand(batch_size, 3, size, size)
    done, start = 0, time.perf_counter()
    with torch.inference_mode():
        while done < n:
            metric.encoder(x[: min(batch_size, n - done)])
            done += batch_size
    return n / (time.perf_counter() - start)


def store_rate(metric, images: Path, out: Path, n: int, batch_size: int, workers):
    """``(images/s of build_store, share of its wall time spent inside the encoder)``."""
    from rpmetric.stores.store import build_store

    inside = [0.0]
    started = []
    pre = metric.encoder.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
    post = metric.encoder.register_forward_hook(lambda *_: inside.__setitem__(0, inside[0] + time.perf_counter() - started.pop()))
    try:
        start = time.perf_counter()
        store = build_store(images, out, metric, batch_size=batch_size, num_workers=workers, overwrite=True,
                            progress=False)
        elapsed = time.perf_counter() - start
    finally:
        pre.remove()
        post.remove()
    assert len(store) == n  # a benchmark of a build that skipped images would mean nothing
    return n / elapsed, inside[0] / elapsed


def bench_embed(args) -> None:
    import open_clip
    import tinymodels

    import rpmetric

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tinymodels.save_open_clip(tmp / "vit-b-32", open_clip.get_model_config("ViT-B-32"))
        metric = rpmetric.RobustDistance(str(folder), device="cpu")
        make_images(tmp / "images", args.images)
        raw_encoder_rate(metric, args.batch_size, args.batch_size)  # warm-up
        raws, stores, ratios, shares = [], [], [], []
        previous = raw_encoder_rate(metric, args.images, args.batch_size)
        for _ in range(args.rounds):
            # Each build is sandwiched between two raw runs and compared with their mean, so the load
            # other processes put on the machine drifts out of the ratio.
            rate, share = store_rate(metric, tmp / "images", tmp / "store", args.images, args.batch_size, args.workers)
            after = raw_encoder_rate(metric, args.images, args.batch_size)
            raws.append((previous + after) / 2)
            stores.append(rate)
            shares.append(share)
            ratios.append(rate / raws[-1])
            previous = after
        print(f"(a) ViT-B/32, {args.images} images per round, batch {args.batch_size}, workers "
              f"{'default' if args.workers is None else args.workers}, torch threads {torch.get_num_threads()}")
        print(f"    raw encoder img/s (mean of the runs before and after): {', '.join(f'{r:.2f}' for r in raws)}")
        print(f"    build_store img/s per round: {', '.join(f'{r:.2f}' for r in stores)}")
        print(f"    ratio store/raw per round: {', '.join(f'{r:.3f}' for r in ratios)}")
        print(f"    median ratio: {float(np.median(ratios)):.3f} (target >= 0.9)")
        print(f"    share of build_store wall time inside the encoder (same build, immune to load drift): "
              f"{', '.join(f'{r:.3f}' for r in shares)}; median {float(np.median(shares)):.3f}")


def recall_at(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = [len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist())]
    return sum(hits) / truth.numel()


def bench_search(args) -> None:
    g = torch.Generator().manual_seed(0)
    db = torch.nn.functional.normalize(torch.randn(args.n, args.dim, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=g), dim=1)
    print(f"(b) {args.n} x {args.dim} random unit vectors, {args.queries} queries, k=10, "
          f"torch threads {torch.get_num_threads()}")
    compare_indexes(db, queries)
    # Real embeddings cluster; IVF is built for that. Same sizes, points around 1,000 random centres.
    centres = torch.randn(1000, args.dim, generator=g)
    db = torch.nn.functional.normalize(centres[torch.randint(0, 1000, (args.n,), generator=g)]
                                       + 0.5 * torch.randn(args.n, args.dim, generator=g) / args.dim ** 0.5 * 8, dim=1)
    queries = torch.nn.functional.normalize(centres[torch.randint(0, 1000, (args.queries,), generator=g)]
                                            + 0.5 * torch.randn(args.queries, args.dim, generator=g) / args.dim ** 0.5 * 8,
                                            dim=1)
    print(f"    the same sizes, clustered (1,000 centres):")
    compare_indexes(db, queries)


def compare_indexes(db: torch.Tensor, queries: torch.Tensor) -> None:
    from rpmetric.stores.index import search

    timings = {}
    for name, kwargs in [("exact", {}), ("faiss", {}), ("ivf", {}), ("ivf", {"nprobe": 8})]:
        start = time.perf_counter()
        hits = search(db, queries, 10, index=name, **kwargs)
        elapsed = time.perf_counter() - start
        label = name + (f" nprobe={kwargs['nprobe']}" if kwargs else "")
        timings[label] = (elapsed, hits.indices)
    truth = timings["exact"][1]
    for label, (elapsed, indices) in timings.items():
        print(f"    {label:<16} {elapsed:7.2f} s   recall@10 {recall_at(indices, truth):.4f}"
              + ("   (index build included)" if label.startswith(("faiss", "ivf")) else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "embed", "search"], default="all")
    p.add_argument("--images", type=int, default=128, help="images per round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: build_store's default)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    args = p.parse_args()
    if args.part in ("all", "embed"):
        bench_embed(args)
    if args.part in ("all", "search"):
        bench_search(args)


if __name__ == "__main__":
    main()
