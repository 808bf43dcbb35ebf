"""Benchmarks for dataset-scale screening.

(dedup) ``near_pairs`` by each method on clustered unit vectors with planted near-duplicate groups
    (tests/planted.py: groups within the threshold and groups just outside it): wall time, pair
    recall against the exact method's pairs, pairs reported outside them (0 by construction), and
    the peak resident memory (VmHWM) of a fresh process that loads the vectors and runs the method.
    Targets at 1 M x 512: recall >= 0.99 and >= 20x faster than exact.
    With ``--exact-sample R`` the exact baseline is a sample instead of the full quadratic scan
    (which at 1 M x 512 costs about 90 CPU-minutes on this machine): R random rows are compared
    with all N rows (float32 blocks, every candidate confirmed in float64 numpy), which gives every
    true pair that touches a sampled row. Recall is then measured on those pairs, and the exact
    scan's time is *estimated* as the sample's time x (N / 2) / R, since the scan's cost is linear
    in the rows it compares (N^2 / 2 row pairs in all). The output says "estimated".
(store) the whole ``rpmetric dedup STORE --threshold T`` command on a real store on disk: N x D
    float16 planted vectors (tests/planted.py's ``planted_shards``) written shard by shard through
    the store's own writer (tests/synthstore.py), rows named ``img/000000123.jpg``. Reports the
    command's wall time, CPU time and peak RSS (``wait4`` of that process, started by a small helper:
    see ``Launcher``), the machine's load average while it ran (wall times on a shared machine
    depend on it), and the recall of the planted
    pairs: the pairs of the groups planted within T whose exact distance (float64, from the stored
    values) is within T, found when the CSV puts both rows in one group. An exact scan of all
    pairs is infeasible at 10 M, so pairs that occur by chance are not counted (at T = 0.05 on this
    set there are next to none: at 300 k the exact scan found 37,684 pairs, all planted).
    Targets at 10 M x 512: under 30 minutes and under 8 GB.
(ray) ``rpmetric embed`` of one folder of JPEGs (ViT-B/32, random weights) by one process and by
    the Ray engine on a local cluster of ``--ray-cpus`` CPUs with ``--num-workers`` actors, in
    alternating rounds: whether the stores are the same (records, paths, row order; the largest
    embedding difference), and the throughput ratio Ray / one process. The cluster starts once,
    and is timed apart; each Ray build includes starting its actors and loading the model in each.

(webdataset) ``build_store`` on WebDataset tar shards (img2dataset's layout: ``.jpg`` with ``.json``
    and ``.txt``; decoded in build_store's default DataLoader workers) against the raw encoder on
    the same images, decoded and resized beforehand, in the same batches: images/s of each, as a
    ratio per round, each build between two raw runs. ViT-B/32 (open_clip's config) with random
    weights, saved in the Hub layout; JPEGs of 256-512 px (smooth colour fields, shapes and noise).
    Target: ratio >= 0.9.

Usage::

    python evals/bench_scale.py --part dedup --n 200000 --dim 512
    python evals/bench_scale.py --part dedup --n 1000000 --dim 512 --exact-sample 20000
    python evals/bench_scale.py --part dedup --n 200000 --methods cluster --probes 1,2,3 --clusters 447
    python evals/bench_scale.py --part store --n 1000000 --dim 512
    python evals/bench_scale.py --part store --n 10000000 --dim 512 --work /big/disk
    python evals/bench_scale.py --part ray --images 256 --rounds 2
    python evals/bench_scale.py --part webdataset              # 256 JPEGs in 8 shards, 5 rounds
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import signal
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
    peak = own_peak_rss_kb()
    return {"seconds": elapsed, "rss_loaded_mb": loaded / 1024, "rss_peak_mb": peak / 1024, "pairs": len(i)}


def run_sampled_exact(vectors: Path, pairs_out: Path, threshold: float, rows: int, seed: int) -> dict:
    """In this process: every pair (i, j), i a sampled row, within ``threshold``; time and RSS."""
    import torch

    x = np.load(vectors)
    loaded = current_rss_kb()
    sample = np.sort(np.random.default_rng(seed + 1).choice(len(x), rows, replace=False))
    xt = torch.from_numpy(x)
    start = time.perf_counter()
    found = []
    for a in range(0, rows, 1024):  # the exact scan's own block shape: 1024 rows x 16384 columns
        q = sample[a:a + 1024]
        qt = xt[torch.from_numpy(q)]
        for b in range(0, len(x), 16384):
            ii, jj = torch.nonzero(qt @ xt[b:b + 16384].T >= 1.0 - threshold - 1e-4, as_tuple=True)
            found.append(np.stack([q[ii.numpy()], jj.numpy() + b]))
    elapsed = time.perf_counter() - start
    cand = np.concatenate(found, axis=1) if found else np.zeros((2, 0), np.int64)
    cand = cand[:, cand[0] != cand[1]]
    d = 1.0 - np.einsum("ij,ij->i", x[cand[0]].astype(np.float64), x[cand[1]].astype(np.float64))
    pairs = cand[:, d <= threshold + 1e-6]
    np.save(pairs_out, np.stack([pairs.min(0), pairs.max(0)]))
    np.save(pairs_out.with_suffix(".sample.npy"), sample)
    peak = own_peak_rss_kb()
    return {"seconds": elapsed, "rss_loaded_mb": loaded / 1024, "rss_peak_mb": peak / 1024,
            "pairs": pairs.shape[1]}


def current_rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def own_peak_rss_kb() -> int:
    """This process's peak RSS since its exec (VmHWM). Not getrusage's ru_maxrss: Linux keeps in it
    the peak of the image the process was forked from, here the benchmark's parent with its GBs of
    planted vectors (see :class:`Launcher`)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


_LAUNCHER = r"""
import json, os, subprocess, sys
for line in sys.stdin:
    cmd, stderr_path = json.loads(line)
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(cmd, stderr=err)
    print(json.dumps({"pid": proc.pid}), flush=True)
    _, status, usage = os.wait4(proc.pid, 0)
    print(json.dumps({"status": status, "maxrss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}),
          flush=True)
"""


class Launcher:
    """Runs commands from a small helper process, started before this one grows, and reports each
    one's ``wait4`` resources.

    Why: when a process forks and execs, Linux keeps the peak RSS of the image it was forked from
    in the new program's ``ru_maxrss``. Started directly from this process, after it has built a
    10 M-row store and its planted pairs, ``rpmetric dedup`` reported this process's 8.21 GiB peak
    as its own (its own peak, VmHWM, was 2.29 GiB). The helper holds tens of MB.
    """

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def start(self, cmd, stderr_path: Path) -> int:
        """Start ``cmd`` (its stderr to ``stderr_path``) and return its pid."""
        self.proc.stdin.write(json.dumps([cmd, str(stderr_path)]) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def result(self, timeout: float):
        """``{"status", "maxrss_kib", "cpu_s"}`` once the command has ended, or None after ``timeout`` s."""
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return json.loads(self.proc.stdout.readline()) if ready else None

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def child(args, tmp: Path, method: str, clusters, probes) -> dict:
    out = tmp / f"pairs-{method}-{clusters}-{probes}.npy"
    cmd = [sys.executable, __file__, "--child", method, "--vectors", str(tmp / "x.npy"), "--pairs-out", str(out),
           "--threshold", str(args.threshold)]
    cmd += ["--clusters", str(clusters)] if clusters else []
    cmd += ["--probes", str(probes)] if probes else []
    cmd += ["--exact-sample", str(args.exact_sample), "--seed", str(args.seed)] if method == "sampled-exact" else []
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
            runs.append(("sampled-exact" if args.exact_sample else "exact", None, None))
        sample = None
        for method in [m for m in args.methods if m != "exact"]:
            runs += [(method, args.clusters, p) for p in args.probes]
        exact = None
        for method, clusters, probes in runs:  # exact first: the others' recall is against it
            r = child(args, tmp, method, clusters, probes)
            if method == "sampled-exact":
                sample = np.load(tmp / f"pairs-{method}-{clusters}-{probes}.sample.npy")
                r["seconds_sample"] = r["seconds"]
                r["seconds"] *= (args.n / 2) / args.exact_sample  # the estimate: see the module docstring
                r["pairs_sample"] = r["pairs"]
            if method.endswith("exact"):
                exact = r
            elif sample is not None:  # recall on the pairs that touch a sampled row
                pairs = np.array(sorted(r["keys"]), dtype=np.int64)
                i, j = pairs // args.n, pairs % args.n
                r["keys"] = set(pairs[np.isin(i, sample) | np.isin(j, sample)].tolist())
            label = method + ("" if method.endswith("exact") else f" clusters={clusters or 'default'} probes={probes or 'default'}")
            if method == "sampled-exact":
                label = f"exact, estimated from {args.exact_sample:,} rows"
                line = (f"    {label:<40} {r['seconds']:8.2f} s  (sample scan {r['seconds_sample']:.2f} s, "
                        f"{r['pairs']:,} true pairs touch the sample)  peak RSS {r['rss_peak_mb']:7.0f} MB")
            else:
                line = (f"    {label:<40} {r['seconds']:8.2f} s  {r['pairs']:>9,} pairs  peak RSS {r['rss_peak_mb']:7.0f} MB "
                        f"(before the method: {r['rss_loaded_mb']:.0f} MB)")
            if exact is not None and not method.endswith("exact"):
                found = len(r["keys"] & exact["keys"])
                line += (f"  recall {found / max(1, len(exact['keys'])):.4f}  extra {len(r['keys'] - exact['keys'])}"
                         f"  speed-up {exact['seconds'] / r['seconds']:.1f}x")
            print(line, flush=True)


def bench_store(args) -> None:
    import torch

    from synthstore import write_store

    launcher = Launcher()  # before this process holds GBs: see Launcher
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)  # a fresh machine's /tmp has no --work folder yet
    work = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.work))
    try:
        start = time.perf_counter()
        shards, inside, inside_values = planted_shards(args.n, args.dim, args.threshold, centres=args.centres,
                                                       seed=args.seed, shard_size=args.store_shard_size)
        store = write_store(work / "store", shards, shard_size=args.store_shard_size)
        built = time.perf_counter() - start
        a, b = np.triu_indices(inside.shape[1], 1)
        d = np.concatenate([planted_distances(inside_values()[g:g + 65536], a, b)
                            for g in range(0, len(inside), 65536)])  # [groups, pairs] exact distances
        del shards, inside_values  # the generator's planted values: a GB or more at 10 M
        true = d <= args.threshold
        pi, pj = inside[:, a][true], inside[:, b][true]
        size = sum(f.stat().st_size for f in store.iterdir())
        print(f"(store) {args.n:,} x {args.dim} float16 clustered unit vectors ({args.centres} centres) in "
              f"{args.n // args.store_shard_size + (args.n % args.store_shard_size > 0):,} shards of {args.store_shard_size}, "
              f"{size / 2**30:.2f} GiB on disk (built in {built:.0f} s); {len(inside):,} planted groups of "
              f"{inside.shape[1]} within T = {args.threshold} ({len(pi):,} planted pairs within T) and as many just "
              f"outside; torch threads {torch.get_num_threads()}", flush=True)
        out = work / "groups.csv"
        cmd = [sys.executable, "-m", "rpmetric", "dedup", str(store), "--threshold", str(args.threshold), "--out", str(out)]
        cmd += args.extra
        start = time.perf_counter()
        log = work / "stderr.txt"
        pid = launcher.start(cmd, log)
        loads = [os.getloadavg()[0]]  # the machine's 1-minute load average: wall times depend on it
        report = 60.0
        while True:  # polled every second (the wall time's resolution), progress every minute
            done = launcher.result(timeout=1.0)
            elapsed = time.perf_counter() - start
            if done is not None:
                break
            if elapsed > args.timeout:
                os.kill(pid, signal.SIGKILL)
                done = launcher.result(timeout=60.0) or {"maxrss_kib": float("nan")}
                raise SystemExit(f"    rpmetric dedup did not finish in {args.timeout} s (killed); peak RSS "
                                 f"{done['maxrss_kib'] / 2**20:.2f} GiB so far")
            if elapsed > report:
                report += 60.0
                loads.append(os.getloadavg()[0])
                print(f"    ... {elapsed:.0f} s, resident {proc_rss(pid)}, load average {loads[-1]:.1f}", flush=True)
        status = done["status"]
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
              f"{elapsed:.0f} s ({done['cpu_s']:.0f} CPU s), peak RSS {done['maxrss_kib'] / 2**20:.2f} GiB; "
              f"planted-pair recall "
              f"{found.mean() if len(found) else 1.0:.4f} ({int(found.sum()):,} of {len(found):,}); {extra} rows "
              f"grouped outside the planted groups; {err.strip()}", flush=True)
        print(f"    load average (1 min) of the machine ({os.cpu_count()} CPUs) during the run: mean "
              f"{np.mean(loads):.1f}, min {min(loads):.1f}, max {max(loads):.1f} ({len(loads)} samples)", flush=True)
    finally:
        launcher.close()
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


def bench_ray(args) -> None:
    import ray
    import torch

    import rpmetric
    from bench_retrieval import make_images
    from rpmetric.stores import ray as engine
    from rpmetric.stores.store import EmbeddingStore, build_store
    from _common import save_random_open_clip
    from storecheck import records

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder, _ = save_random_open_clip("ViT-B-32", tmp / "vit-b-32")
        metric = rpmetric.RobustDistance(str(folder), device="cpu")
        make_images(tmp / "images", args.images)
        start = time.perf_counter()
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter() - start
        builds = {"one process": lambda out: build_store(tmp / "images", out, metric, batch_size=args.batch_size,
                                                         shard_size=args.shard_size, overwrite=True, progress=False),
                  "ray": lambda out: engine.build_store(tmp / "images", out, metric, num_workers=args.num_workers,
                                                        batch_size=args.batch_size, shard_size=args.shard_size,
                                                        overwrite=True, progress=False)}
        seconds: dict = {name: [] for name in builds}
        for _ in range(args.rounds):
            for name, build in builds.items():
                begin = time.perf_counter()
                store = build(tmp / name.replace(" ", "-"))
                seconds[name].append(time.perf_counter() - begin)
                assert len(store) == args.images
        ray.shutdown()
        one, other = EmbeddingStore(tmp / "one-process"), EmbeddingStore(tmp / "ray")
        same = records(one.path) == records(other.path)
        diff = float((one.embeddings() - other.embeddings()).abs().max())
        rates = {name: [args.images / s for s in times] for name, times in seconds.items()}
        ratios = [r / o for r, o in zip(rates["ray"], rates["one process"])]
        print(f"(ray) ViT-B/32 (random weights), {args.images} JPEGs of 256-480 px, batch {args.batch_size}, shards of "
              f"{args.shard_size}; one process: torch threads {torch.get_num_threads()}, default DataLoader workers; "
              f"Ray: local cluster of {args.ray_cpus} CPUs (started in {started:.1f} s), {args.num_workers} actors")
        for name, values in rates.items():
            print(f"    {name:<12} img/s per round: {', '.join(f'{r:.2f}' for r in values)}  "
                  f"(s: {', '.join(f'{t:.1f}' for t in seconds[name])})")
        print(f"    same store (manifest and shard records, paths, row order): {same}; largest embedding difference "
              f"{diff:.3g} ({one.dtype})")
        print(f"    throughput ratio ray / one process per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
              f"median {float(np.median(ratios)):.3f}")


def realistic_jpeg(rng: np.random.Generator) -> bytes:
    """A JPEG of 256-512 px a side: a smooth colour field, a few filled shapes and sensor-like noise,
    so that it costs what a photo costs to decode (tens of KB), not what a flat image costs."""
    from PIL import Image, ImageDraw

    w, h = (int(v) for v in rng.integers(256, 513, 2))
    image = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x, y = np.sort(rng.integers(0, w, 2)), np.sort(rng.integers(0, h, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x[0]), int(y[0]), int(x[1]), int(y[1])], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    pixels = np.asarray(image, np.float32) + rng.normal(0, 10, (h, w, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_webdataset(folder: Path, n: int, shards: int, seed: int = 0) -> list:
    """``shards`` tar files of ``n`` samples as img2dataset writes them (webdataset's TarWriter:
    ``{key}.jpg``, ``{key}.json`` with url and caption, ``{key}.txt``); returns the JPEG bytes in order."""
    import webdataset

    rng = np.random.default_rng(seed)
    images = [realistic_jpeg(rng) for _ in range(n)]
    per = -(-n // shards)
    for s in range(shards):
        with webdataset.TarWriter(str(folder / f"{s:05d}.tar"), encoder=False) as tar:
            for i in range(s * per, min(n, (s + 1) * per)):
                meta = {"url": f"https://example.com/{i}.jpg", "caption": f"image {i}"}
                tar.write({"__key__": f"{i:09d}", "jpg": images[i], "json": json.dumps(meta).encode(),
                           "txt": meta["caption"].encode()})
    return images


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_webdataset(args) -> None:
    import torch

    import rpmetric
    from _common import save_random_open_clip
    from rpmetric.images import unit_float
    from rpmetric.stores.store import build_store, default_workers, sample_input

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder, _ = save_random_open_clip("ViT-B-32", tmp / "vit-b-32")
        metric = rpmetric.RobustDistance(str(folder), device="cpu")
        (tmp / "shards").mkdir()
        images = write_webdataset(tmp / "shards", args.wds_images, args.wds_shards)
        pattern = str(tmp / "shards" / f"{{00000..{args.wds_shards - 1:05d}}}.tar")
        # The raw encoder's input: the same images, decoded and resized as the store does it, in the
        # store's batches (batch_size decoded images, never across an input shard).
        per, pp, bs = -(-args.wds_images // args.wds_shards), metric.spec.preprocessing, args.wds_batch_size
        ready = [sample_input(data, str(i), pp) for i, data in enumerate(images)]
        batches = [torch.stack(ready[i:min(i + bs, s + per, len(ready))]) for s in range(0, len(ready), per)
                   for i in range(s, min(s + per, len(ready)), bs)]

        def raw_rate():
            """``(images per wall second, images per CPU second)`` of the bare encoder."""
            start, cpu = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                for batch in batches:
                    metric.encoder(unit_float(batch))
            return len(ready) / (time.perf_counter() - start), len(ready) / (time.process_time() - cpu)

        def store_rate():
            """``(images per wall second, per CPU second of this process and its reaped workers, share of
            the wall time inside the encoder)`` of one build."""
            inside, started = [0.0], []
            pre = metric.encoder.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
            post = metric.encoder.register_forward_hook(
                lambda *_: inside.__setitem__(0, inside[0] + time.perf_counter() - started.pop()))
            try:
                start, cpu, workers_cpu = time.perf_counter(), time.process_time(), children_cpu()
                store = build_store(pattern, tmp / "store", metric, batch_size=bs, num_workers=args.wds_workers,
                                    overwrite=True, progress=False)
                elapsed = time.perf_counter() - start
                cpu = time.process_time() - cpu + children_cpu() - workers_cpu  # the loader joins its workers
            finally:
                pre.remove()
                post.remove()
            assert len(store) == len(ready) and not store.skipped  # a build that skipped images would mean nothing
            return len(ready) / elapsed, len(ready) / cpu, inside[0] / elapsed

        raw_rate()  # warm-up
        previous = raw_rate()
        raws, stores, ratios, cpu_ratios, shares = [], [], [], [], []
        for _ in range(args.wds_rounds):
            rate, cpu_rate, share = store_rate()
            after = raw_rate()
            raws.append((previous[0] + after[0]) / 2)
            stores.append(rate)
            shares.append(share)
            ratios.append(rate / raws[-1])
            cpu_ratios.append(cpu_rate / ((previous[1] + after[1]) / 2))
            previous = after
        kb = np.mean([len(b) for b in images]) / 1024
        workers = default_workers() if args.wds_workers is None else args.wds_workers
        print(f"(webdataset) ViT-B/32 (random weights), {len(ready)} JPEGs of 256-512 px (mean {kb:.0f} KB) in "
              f"{args.wds_shards} tar shards, batch {bs}, workers {workers}"
              f"{' (default)' if args.wds_workers is None else ''}, torch threads {torch.get_num_threads()}")
        print(f"    raw encoder img/s (mean of the runs before and after): {', '.join(f'{r:.2f}' for r in raws)}")
        print(f"    build_store img/s per round: {', '.join(f'{r:.2f}' for r in stores)}")
        print(f"    ratio store/raw per round: {', '.join(f'{r:.3f}' for r in ratios)}")
        print(f"    median ratio: {float(np.median(ratios)):.3f} (target >= 0.9)")
        print(f"    ratio of images per CPU second (workers included) per round: "
              f"{', '.join(f'{r:.3f}' for r in cpu_ratios)}; median {float(np.median(cpu_ratios)):.3f}")
        print(f"    share of build_store wall time inside the encoder: {', '.join(f'{r:.3f}' for r in shares)}; "
              f"median {float(np.median(shares)):.3f}", flush=True)


def parse_list(text: str):
    return [None if t == "default" else int(t) for t in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["dedup", "store", "ray", "webdataset"], default="dedup")
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--centres", type=int, default=1000, help="centres of the clustered vectors")
    p.add_argument("--threshold", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", type=lambda t: t.split(","), default=["exact", "cluster", "ivf"])
    p.add_argument("--clusters", type=int, default=None, help="cells of cluster and ivf (default: the library's)")
    p.add_argument("--probes", type=parse_list, default=[None], help="comma-separated; 'default' for the library's")
    p.add_argument("--exact-sample", type=int, default=None,
                   help="estimate the exact baseline from this many sampled rows (see above)")
    p.add_argument("--images", type=int, default=256, help="(ray) JPEGs embedded per build")
    p.add_argument("--rounds", type=int, default=2, help="(ray) alternating builds of each engine")
    p.add_argument("--batch-size", type=int, default=32, help="(ray) images per forward pass")
    p.add_argument("--shard-size", type=int, default=64, help="(ray) files per store shard")
    p.add_argument("--ray-cpus", type=int, default=2, help="(ray) CPUs of the local Ray cluster")
    p.add_argument("--num-workers", type=int, default=2, help="(ray) actors in the pool")
    wds = p.add_argument_group("webdataset")
    wds.add_argument("--wds-images", type=int, default=256, help="images per round")
    wds.add_argument("--wds-shards", type=int, default=8, help="tar shards they are cut into")
    wds.add_argument("--wds-batch-size", type=int, default=32)
    wds.add_argument("--wds-rounds", type=int, default=5)
    wds.add_argument("--wds-workers", type=int, default=None, help="DataLoader workers (default: build_store's)")
    p.add_argument("--store-shard-size", type=int, default=1024, help="(store) rows per store shard")
    p.add_argument("--work", type=Path, default=None, help="(store) folder for the store, made if missing (default: TMPDIR); deleted after")
    p.add_argument("--keep", action="store_true", help="(store) keep the store and the CSV")
    p.add_argument("--timeout", type=float, default=3000, help="(store) seconds before the dedup run is killed")
    p.add_argument("--extra", type=lambda t: t.split(), default=[],
                   help="(store) more `rpmetric dedup` options, e.g. '--method cluster --nprobe 2'")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--pairs-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "sampled-exact":
        print(json.dumps(run_sampled_exact(args.vectors, args.pairs_out, args.threshold, args.exact_sample, args.seed)))
        return
    if args.child:
        print(json.dumps(run_method(args.vectors, args.pairs_out, args.child, args.threshold, args.clusters,
                                    args.probes[0] if isinstance(args.probes, list) else args.probes)))
        return
    {"dedup": bench_dedup, "store": bench_store, "ray": bench_ray, "webdataset": bench_webdataset}[args.part](args)


if __name__ == "__main__":
    main()
