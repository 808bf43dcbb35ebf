"""Benchmarks for dataset-scale screening.

(dedup) ``near_pairs`` by each method on clustered unit vectors with planted near-duplicate groups
    (tests/planted.py: groups within the threshold and groups just outside it): wall time, pair
    recall against the exact method's pairs, pairs reported outside them (0 by construction), and
    the peak resident memory of a fresh process that loads the vectors and runs the method.
    Targets at 1 M x 512: recall >= 0.99 and >= 20x faster than exact.

(store) the whole ``rpmetric dedup STORE --threshold T`` command on a real store on disk: N x D
    float16 planted vectors (tests/planted.py's ``planted_shards``) written shard by shard through
    the store's own writer (tests/synthstore.py), rows named ``img/000000123.jpg``. Reports the
    command's wall time and peak RSS (``wait4`` of that process) and the recall of the planted
    pairs: the pairs of the groups planted within T whose exact distance (float64, from the stored
    values) is within T, found when the CSV puts both rows in one group. An exact scan of all
    pairs is infeasible at 10 M, so pairs that occur by chance are not counted (at T = 0.05 on this
    set there are next to none: at 300 k the exact scan found 37,684 pairs, all planted).
    Targets at 10 M x 512: under 30 minutes and under 8 GB.

Usage::

    python evals/bench_scale.py --part dedup --n 200000 --dim 512
    python evals/bench_scale.py --part dedup --n 200000 --methods cluster --probes 1,2,3 --clusters 447
    python evals/bench_scale.py --part store --n 1000000 --dim 512
    python evals/bench_scale.py --part store --n 10000000 --dim 512 --work /big/disk
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common  # noqa: F401  (puts tests/ on sys.path)
from planted import planted_shards, planted_vectors


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


def bench_store(args) -> None:
    import torch

    from synthstore import write_store

    work = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.work))
    try:
        start = time.perf_counter()
        shards, inside, inside_values = planted_shards(args.n, args.dim, args.threshold, centres=args.centres,
                                                       seed=args.seed, shard_size=args.shard_size)
        store = write_store(work / "store", shards, shard_size=args.shard_size)
        built = time.perf_counter() - start
        a, b = np.triu_indices(inside.shape[1], 1)
        d = np.concatenate([planted_distances(inside_values()[g:g + 65536], a, b)
                            for g in range(0, len(inside), 65536)])  # [groups, pairs] exact distances
        del shards, inside_values  # the generator's planted values: a GB or more at 10 M
        true = d <= args.threshold
        pi, pj = inside[:, a][true], inside[:, b][true]
        size = sum(f.stat().st_size for f in store.iterdir())
        print(f"(store) {args.n:,} x {args.dim} float16 clustered unit vectors ({args.centres} centres) in "
              f"{args.n // args.shard_size + (args.n % args.shard_size > 0):,} shards of {args.shard_size}, "
              f"{size / 2**30:.2f} GiB on disk (built in {built:.0f} s); {len(inside):,} planted groups of "
              f"{inside.shape[1]} within T = {args.threshold} ({len(pi):,} planted pairs within T) and as many just "
              f"outside; torch threads {torch.get_num_threads()}", flush=True)
        out = work / "groups.csv"
        cmd = [sys.executable, "-m", "rpmetric", "dedup", str(store), "--threshold", str(args.threshold), "--out", str(out)]
        cmd += args.extra
        start = time.perf_counter()
        log = work / "stderr.txt"
        with open(log, "w") as err_file:
            proc = subprocess.Popen(cmd, stderr=err_file)
        while True:  # progress every minute: a 10 M run takes a while
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            elapsed = time.perf_counter() - start
            if pid:
                break
            if elapsed > args.timeout:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                raise SystemExit(f"    rpmetric dedup did not finish in {args.timeout} s (killed); peak RSS "
                                 f"{usage.ru_maxrss / 2**20:.2f} GiB so far")
            time.sleep(min(60.0, 1.0 + elapsed / 10))
            if elapsed > 60:
                print(f"    ... {elapsed:.0f} s, resident {proc_rss(proc.pid)}", flush=True)
        err = log.read_text()
        if status != 0:
            raise SystemExit(f"rpmetric dedup failed ({status}): {err}")
        group = np.full(args.n, -1, dtype=np.int64)
        with open(out, newline="") as f:
            for row in csv.DictReader(f):
                group[int(Path(row["path"]).stem)] = int(row["group"])
        found = (group[pi] >= 0) & (group[pi] == group[pj])
        planted_rows = np.zeros(args.n, dtype=bool)
        planted_rows[inside.ravel()] = True
        extra = int(((group >= 0) & ~planted_rows).sum())
        print(f"    {' '.join(['rpmetric', 'dedup', 'STORE', '--threshold', str(args.threshold)] + args.extra)}: "
              f"{elapsed:.0f} s ({usage.ru_utime + usage.ru_stime:.0f} CPU s), peak RSS {usage.ru_maxrss / 2**20:.2f} GiB; "
              f"planted-pair recall "
              f"{found.mean() if len(found) else 1.0:.4f} ({int(found.sum()):,} of {len(found):,}); {extra} rows "
              f"grouped outside the planted groups; {err.strip()}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def planted_distances(values: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - cos`` in float64 between positions ``a`` and ``b`` of each planted group."""
    v = values.astype(np.float64)
    v /= np.linalg.norm(v, axis=2, keepdims=True)
    return 1.0 - np.einsum("gpd,gpd->gp", v[:, a], v[:, b])


def proc_rss(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = {line.split(":")[0]: line.split()[1] for line in f if line.startswith(("VmRSS", "VmHWM"))}
        return f"{int(fields['VmRSS']) / 2**20:.2f} GiB (peak {int(fields['VmHWM']) / 2**20:.2f} GiB)"
    except (OSError, KeyError):
        return "?"


def parse_list(text: str):
    return [None if t == "default" else int(t) for t in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["dedup", "store"], default="dedup")
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--centres", type=int, default=1000, help="centres of the clustered vectors")
    p.add_argument("--threshold", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", type=lambda t: t.split(","), default=["exact", "cluster", "ivf"])
    p.add_argument("--clusters", type=int, default=None, help="cells of cluster and ivf (default: the library's)")
    p.add_argument("--probes", type=parse_list, default=[None], help="comma-separated; 'default' for the library's")
    p.add_argument("--shard-size", type=int, default=1024, help="(store) rows per store shard")
    p.add_argument("--work", type=Path, default=None, help="(store) folder for the store (default: TMPDIR); deleted after")
    p.add_argument("--keep", action="store_true", help="(store) keep the store and the CSV")
    p.add_argument("--timeout", type=float, default=3000, help="(store) seconds before the dedup run is killed")
    p.add_argument("--extra", type=lambda t: t.split(), default=[],
                   help="(store) more `rpmetric dedup` options, e.g. '--method cluster --nprobe 2'")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--pairs-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_method(args.vectors, args.pairs_out, args.child, args.threshold, args.clusters,
                                    args.probes[0] if isinstance(args.probes, list) else args.probes)))
        return
    bench_store(args) if args.part == "store" else bench_dedup(args)


if __name__ == "__main__":
    main()
