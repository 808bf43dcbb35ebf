"""Benchmarks for dataset-scale screening.

(dedup) ``near_pairs`` by each method on clustered unit vectors with planted near-duplicate groups
    (tests/planted.py: groups within the threshold and groups just outside it): wall time, pair
    recall against the exact method's pairs, pairs reported outside them (0 by construction), and
    the peak resident memory of a fresh process that loads the vectors and runs the method.
    Targets at 1 M x 512: recall >= 0.99 and >= 20x faster than exact.

Usage::

    python evals/bench_scale.py --part dedup --n 200000 --dim 512
    python evals/bench_scale.py --part dedup --n 200000 --methods cluster --probes 1,2,3 --clusters 447
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common  # noqa: F401  (puts tests/ on sys.path)
from planted import planted_vectors


def run_method(vectors: Path, pairs_out: Path, method: str, threshold: float, clusters, probes) -> dict:
    """In this process: load the vectors, find the pairs, save them; time and peak RSS."""
    import torch

    from rpmetric.stores.dedup import near_pairs

    x = torch.from_numpy(np.load(vectors))
    loaded = current_rss_kb()
    start = time.perf_counter()
    i, j, _ = near_pairs(x, threshold, method=method, clusters=clusters, probes=probes)
    elapsed = time.perf_counter() - start
    np.save(pairs_out, np.stack([i.numpy(), j.numpy()]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": elapsed, "rss_loaded_mb": loaded / 1024, "rss_peak_mb": peak / 1024, "pairs": len(i)}


def current_rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def child(args, tmp: Path, method: str, clusters, probes) -> dict:
    out = tmp / f"pairs-{method}-{clusters}-{probes}.npy"
    cmd = [sys.executable, __file__, "--child", method, "--vectors", str(tmp / "x.npy"), "--pairs-out", str(out),
           "--threshold", str(args.threshold)]
    cmd += ["--clusters", str(clusters)] if clusters else []
    cmd += ["--probes", str(probes)] if probes else []
    result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    pairs = np.load(out)
    result["keys"] = set((pairs[0] * args.n + pairs[1]).tolist())
    return result


def bench_dedup(args) -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x = planted_vectors(args.n, args.dim, args.threshold, centres=args.centres, seed=args.seed)
        np.save(tmp / "x.npy", x)
        del x
        print(f"(dedup) {args.n:,} x {args.dim} clustered unit vectors ({args.centres} centres), float32, "
              f"{args.n // 20:,} planted groups of 3 within T = {args.threshold} and as many just outside; "
              f"torch threads {torch.get_num_threads()}")
        runs = []
        if "exact" in args.methods:
            runs.append(("exact", None, None))
        for method in [m for m in args.methods if m != "exact"]:
            runs += [(method, args.clusters, p) for p in args.probes]
        exact = None
        for method, clusters, probes in runs:  # exact first: the others' recall is against it
            r = child(args, tmp, method, clusters, probes)
            exact = r if method == "exact" else exact
            label = method + ("" if method == "exact" else f" clusters={clusters or 'default'} probes={probes or 'default'}")
            line = (f"    {label:<40} {r['seconds']:8.2f} s  {r['pairs']:>9,} pairs  peak RSS {r['rss_peak_mb']:7.0f} MB "
                    f"(before the method: {r['rss_loaded_mb']:.0f} MB)")
            if exact is not None and method != "exact":
                found = len(r["keys"] & exact["keys"])
                line += (f"  recall {found / max(1, len(exact['keys'])):.4f}  extra {len(r['keys'] - exact['keys'])}"
                         f"  speed-up {exact['seconds'] / r['seconds']:.1f}x")
            print(line, flush=True)


def parse_list(text: str):
    return [None if t == "default" else int(t) for t in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["dedup"], default="dedup")
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--centres", type=int, default=1000, help="centres of the clustered vectors")
    p.add_argument("--threshold", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", type=lambda t: t.split(","), default=["exact", "cluster", "ivf"])
    p.add_argument("--clusters", type=int, default=None, help="cells of cluster and ivf (default: the library's)")
    p.add_argument("--probes", type=parse_list, default=[None], help="comma-separated; 'default' for the library's")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--pairs-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_method(args.vectors, args.pairs_out, args.child, args.threshold, args.clusters,
                                    args.probes[0] if isinstance(args.probes, list) else args.probes)))
        return
    bench_dedup(args)


if __name__ == "__main__":
    main()
