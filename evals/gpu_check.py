"""One-shot check of rpmetric on one CUDA GPU: precision, overhead, every command, torchrun + nccl.

Meant for a short loan of a GPU machine with no network, torch preinstalled (2.11 on the project's
loan machines; any torch >= 2.1 works) and the other packages carried as wheels:

    python evals/gpu_check.py --wheels wheels --out gpu_check.json      # on the GPU machine: < 6 min by design
    python evals/gpu_check.py --print-download                           # where there is a network
    python evals/gpu_check.py --cpu-smoke --out smoke.json               # no GPU: the same steps, tiny

Steps (run in the order of ``STEPS``, throughput last; each in its own process, a fresh interpreter
on the GPU, with its own timeout; a failure is recorded and the others still run; the exit status
is 1 if any step failed; the install and the steps share ``--budget``):

- ``setup``: random-weight models at their real architectures (the zoo's ViT-B/32, ViT-B/16 and
  ConvNeXt-B configs), saved in the Hub's open_clip layout and loaded through rpmetric's own model
  loading; a generated NIGHTS folder whose 2AFC scores are known by construction (tests/datagen.py).
- ``precision``: max |distance| and |unit embedding| difference of float16 and bfloat16 autocast
  against float32, per model, on near and far image pairs; gradients under float16 are finite.
- ``throughput``: ``metric(x, y)`` against two raw open_clip ``encode_image`` calls (same weights,
  same inputs, pre-normalised for the raw side), batch 64 and 256, float32 and float16 autocast;
  warm-up, ``torch.cuda.synchronize``, median of interleaved rounds; the ratio of the medians.
- ``eval_nights``, ``eval_attack``, ``eval_counterattack``, ``train_lora``, ``embed``, ``dedup``: one
  short run of each command on the generated data with ``--device cuda``, through
  ``rpmetric.cli.main`` in a fresh process: wall time, peak GPU memory (``max_memory_allocated``),
  peak RSS, and checks of the outputs (scores equal to the known ones; planted duplicates found).
- ``torchrun``: ``torch.distributed.run --nproc_per_node 1`` with nccl (gloo on the CPU): the process
  group is joined first and rpmetric's collectives are made to run over it at world size 1 (by
  itself rpmetric skips them in one process), then ``eval nights``; its scores must match.

The JSON (``--out``) is rewritten after every step, so an interrupted run keeps what it measured.
``--cpu-smoke`` runs every step on the CPU with the tests' tiny models and data (tests/test_gpu_check.py
runs it, so this script cannot rot).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

CHECKOUT = Path(__file__).resolve().parents[1]
# In order of what the check must prove; throughput, a measurement rather than a proof, goes last.
STEPS = ["setup", "precision", "eval_nights", "torchrun", "eval_attack", "eval_counterattack", "train_lora", "embed",
         "dedup", "throughput"]
# Seconds each step may take on the GPU (the CPU smoke run uses the same caps); the run as a whole
# stops starting steps once --budget is spent, so that it stays under 6 minutes.
TIMEOUTS = {"install": 120, "setup": 120, "precision": 60, "throughput": 120, "eval_nights": 60, "eval_attack": 60,
            "eval_counterattack": 60, "train_lora": 60, "embed": 45, "dedup": 30, "torchrun": 60}
# The extras whose packages the check needs besides the core dependencies (pyautoattack for --attack).
CHECK_EXTRAS = ("attack",)
# What `pip download` targets: the loan machines' Python and platform.
TARGET = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}
DOWNLOAD_FLAGS = ["--only-binary=:all:", "--python-version", "3.12", "--platform", "manylinux2014_x86_64",
                  "--platform", "manylinux_2_28_x86_64"]


# -- requirements: from pyproject.toml, never listed a second time here -------------------------
def _packaging():
    """``packaging`` (requirements, markers, specifiers), or the copy pip vendors where it is missing."""
    import importlib

    for base in ("packaging", "pip._vendor.packaging"):
        try:
            for part in ("requirements", "markers", "specifiers"):
                importlib.import_module(f"{base}.{part}")
            return importlib.import_module(base)
        except ImportError:
            continue
    raise ImportError("neither packaging nor pip is importable; pip install packaging")


def pyproject_requirements(pyproject: Path = CHECKOUT / "pyproject.toml", extras: Sequence[str] = CHECK_EXTRAS
                           ) -> List[str]:
    """The core dependencies and those of ``extras``, as pyproject.toml writes them (duplicates dropped)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    out: List[str] = []
    for req in list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]:
        if req not in out:
            out.append(req)
    return out


def _name(req: str) -> str:
    return _canonical(_packaging().requirements.Requirement(req).name)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(req, extra: str = "") -> bool:
    """Whether a requirement's marker holds on the target platform (no extra requested)."""
    return req.marker is None or req.marker.evaluate({**TARGET, "extra": extra})


def _installed_requires(name: str) -> Optional[List[str]]:
    """The requirements an installed distribution declares for the target, or None if not installed."""
    import importlib.metadata as md

    try:
        declared = md.requires(name) or []
    except md.PackageNotFoundError:
        return None
    reqs = [_packaging().requirements.Requirement(r) for r in declared]
    return [str(r).split(";")[0].strip() for r in reqs if _applies(r)]


def _installed_version(name: str) -> Optional[str]:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def torchvision_for(torch_version: str) -> str:
    """The torchvision release series built against a torch release (torch 2.x pairs with 0.(x+15)).

    Example:
        >>> torchvision_for("2.11.0+cu128")
        '0.26.*'
    """
    major, minor = (int(p) for p in re.match(r"(\d+)\.(\d+)", torch_version).groups())
    if major != 2:
        raise ValueError(f"torch {torch_version}: only torch 2.x pairs with a known torchvision series")
    return f"0.{minor + 15}.*"


def download_plan(torch_version: str = "2.11", requirements: Optional[Sequence[str]] = None
                  ) -> Tuple[List[str], List[str], List[str]]:
    """What fills a wheels folder, without torch: ``(no_deps, resolved, unknown)``.

    - ``no_deps``: packages that require torch (torchvision, open_clip, timm, ...), downloaded with
      ``--no-deps`` so that pip does not fetch torch and its multi-GB CUDA wheels (the GPU machine
      has torch). Pinned to the versions installed here, whose declared requirements are read, and
      torchvision to the series of ``torch_version``.
    - ``resolved``: everything else, pyproject's requirements and the non-torch requirements of the
      first group, for pip to resolve with their own dependencies.
    - ``unknown``: requirements not installed here, whose dependencies could not be read (pip
      resolves them, which may fetch torch: install ``.[test]`` here first).
    """
    requirements = list(pyproject_requirements() if requirements is None else requirements)
    req_cls = _packaging().requirements.Requirement
    torch_bound: Dict[str, Optional[str]] = {}  # canonical name -> pinned requirement
    resolved: Dict[str, str] = {}
    unknown: List[str] = []

    def needs_torch(name: str, seen=()) -> Optional[bool]:
        reqs = _installed_requires(name)
        if reqs is None:
            return None
        names = [_name(r) for r in reqs]
        return "torch" in names or any(n not in seen and needs_torch(n, seen + (name,)) for n in names)

    queue = list(requirements)
    while queue:
        req = req_cls(queue.pop(0))
        name = _canonical(req.name)
        if name == "torch" or name in torch_bound or not _applies(req):
            continue
        bound = needs_torch(name)
        if bound:
            pin = f"torchvision=={torchvision_for(torch_version)}" if name == "torchvision" else \
                f"{req.name}=={_installed_version(name)}"
            torch_bound[name] = pin
            resolved.pop(name, None)
            queue.extend(_installed_requires(name))
        else:
            if bound is None and name not in [_canonical(u) for u in unknown]:
                unknown.append(req.name)
            text = str(req).split(";")[0].strip()
            if name not in resolved or len(text) > len(resolved[name]):  # keep the one with a specifier
                resolved[name] = text
    return list(torch_bound.values()), list(resolved.values()), unknown


def pip_download_command(folder: str = "wheels", torch_version: str = "2.11") -> str:
    """The shell command that fills ``folder`` with the wheels this check needs for Python 3.12
    manylinux x86-64 (two ``pip download`` calls; see :func:`download_plan`)."""
    no_deps, resolved, _ = download_plan(torch_version)
    base = ["pip", "download", *DOWNLOAD_FLAGS, "-d", folder]
    quote = lambda r: f'"{r}"' if re.search(r"[<>=!*;\[ ]", r) else r  # noqa: E731
    first = " ".join(base + ["--no-deps"] + [quote(r) for r in no_deps])
    second = " ".join(base + [quote(r) for r in resolved])
    return f"{first} && {second}"


def missing_requirements(requirements: Sequence[str], version_of: Callable[[str], Optional[str]] = None,
                         torch_version: Optional[str] = None) -> List[str]:
    """The requirements (of ``requirements``, torch left out) not satisfied by what is installed.

    ``version_of(name)`` gives an installed version or None (default: importlib.metadata). A
    torchvision not of ``torch_version``'s series counts as missing.

    Example:
        >>> missing_requirements(["torch>=2.1", "numpy", "scipy>=1.10", "tqdm"],
        ...                      {"numpy": "2.0", "scipy": "1.9", "torch": "2.11.0"}.get)
        ['scipy>=1.10', 'tqdm']
    """
    pk = _packaging()
    version_of = version_of or _installed_version
    out = []
    for text in requirements:
        req = pk.requirements.Requirement(text)
        if _canonical(req.name) == "torch" or not _applies(req):
            continue
        spec = req.specifier
        if _canonical(req.name) == "torchvision" and torch_version:
            spec = spec & pk.specifiers.SpecifierSet(f"=={torchvision_for(torch_version)}")
        version = version_of(req.name)
        if version is None or not spec.contains(version, prereleases=True):
            out.append(f"{req.name}{spec}")
    return out


def install_missing(wheels: Path, log: Path) -> dict:
    """``pip install --no-index --find-links WHEELS`` of the missing requirements (never torch)."""
    torch_version = _installed_version("torch")
    if torch_version is None:
        return {"ok": False, "error": "torch is not installed; this check uses the machine's own torch"}
    missing = missing_requirements(pyproject_requirements(), torch_version=torch_version)
    record = {"ok": True, "torch": torch_version, "missing": missing}
    if not missing:
        return record
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), *missing]
    for attempt in (cmd, cmd + ["--break-system-packages"]):
        done = subprocess.run(attempt, capture_output=True, text=True, timeout=TIMEOUTS["install"])
        log.write_text(done.stdout + done.stderr)
        if done.returncode == 0 or "externally-managed" not in done.stderr:
            break
    record.update(command=" ".join(attempt), ok=done.returncode == 0)
    if done.returncode:
        record["error"] = _tail(done.stdout + done.stderr)
    return record


# -- sizes --------------------------------------------------------------------------------------
def sizes(cpu_smoke: bool) -> dict:
    """What each step runs on: real architectures on the GPU, the tests' tiny ones in the smoke run."""
    if cpu_smoke:
        return {"device": "cpu", "models": {"tiny-vit": "TINY_VIT_CFG", "tiny-convnext": "TINY_CONVNEXT_CFG"},
                "cli_model": "tiny-vit", "image": (40, 48), "n": {"train": 8, "val": 4, "test": 8},
                "precision_batch": 2, "throughput_batches": [1, 2], "rounds": 1, "warmup": 1, "batch": 4,
                "workers": 1, "attack": {"steps": 2, "n_samples": 2},
                "counterattack": {"steps": 1, "n_samples": 1, "counterattack_steps": 1},
                "threads": 1}
    return {"device": "cuda", "models": {"vit-b32": "r-clip-f-vitb32", "vit-b16": "r-clip-f-vitb16",
                                         "convnext-b": "r-clip-f-convnext"},
            "cli_model": "vit-b32", "image": (256, 256), "n": {"train": 64, "val": 32, "test": 128},
            "precision_batch": 16, "throughput_batches": [64, 256], "rounds": 7, "warmup": 2, "batch": 32,
            "workers": 4, "attack": {"steps": 10, "n_samples": 64},
            "counterattack": {"steps": 5, "n_samples": 32, "counterattack_steps": 2},
            "threads": None}


# -- the steps, each run in a child process -----------------------------------------------------
KINDS = ("left", "right", "tie")
VOTES = (0.0, 0.25, 0.5, 0.75, 1.0)


def nights_rows(n: Dict[str, int]) -> List[dict]:
    """Triplets of every kind and vote share; test is half ImageNet, half not."""
    rows = []
    for split in ("train", "val", "test"):
        for i in range(n[split]):
            k = len(rows)
            rows.append(dict(id=f"{split}-{i}", kind=KINDS[k % 3], p=VOTES[(k // 3) % len(VOTES)], votes=6,
                             split=split, is_imagenet=(i % 2 == 0)))
    return rows


def expected_scores(rows: Sequence[dict]) -> Dict[str, float]:
    """2AFC score per reported group, known by construction: a copy of the reference is at distance
    0 and a different image is not, so left scores 1 - p, right p, and a tie 0.5."""
    score = {"left": lambda p: 1 - p, "right": lambda p: p, "tie": lambda p: 0.5}
    groups: Dict[str, List[float]] = {}
    for r in rows:
        names = [r["split"]] if r["split"] != "test" else \
            ["test_imagenet" if r["is_imagenet"] else "test_no_imagenet", "total"]
        for g in names:
            groups.setdefault(g, []).append(score[r["kind"]](r["p"]))
    return {g: sum(v) / len(v) for g, v in groups.items()}


def planted_pairs(rows: Sequence[dict]) -> List[Tuple[str, str]]:
    """The two files of each triplet that are copies (datagen's layout), relative to the root."""
    out = []
    for n, r in enumerate(rows):
        ref, left, right = f"ref/{n // 4:03d}/{n:03d}.png", f"distort/{n // 4:03d}/{n:03d}_0.png", \
            f"distort/{n // 4:03d}/{n:03d}_1.png"
        out.append({"left": (ref, left), "right": (ref, right), "tie": (left, right)}[r["kind"]])
    return out


def step_setup(work: Path, size: dict) -> dict:
    import torch
    import open_clip

    sys.path.insert(0, str(CHECKOUT / "tests"))
    import datagen
    import tinymodels

    import rpmetric

    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "open_clip": open_clip.__version__,
           "rpmetric": rpmetric.__version__, "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
           "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32}
    if size["device"] == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available to torch here; run with --cpu-smoke on a machine without a GPU")
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                   capability=list(torch.cuda.get_device_capability(0)), bf16=torch.cuda.is_bf16_supported(),
                   gpus=torch.cuda.device_count(), nccl=_nccl_version(torch))
    models, archs = {}, {}
    for key, source in size["models"].items():
        if hasattr(tinymodels, source):
            model_cfg = getattr(tinymodels, source)
        else:  # a zoo entry's architecture, as its `config` gives it; random weights
            model_cfg = rpmetric.get_spec(source).checkpoint_config()["model_cfg"]
        folder = tinymodels.save_open_clip(work / "models" / key, model_cfg, seed=0)
        models[key] = str(folder)
        archs[key] = source
    rows = nights_rows(size["n"])
    root = datagen.write_nights(work / "nights", rows, size=tuple(size["image"]))
    config = {"size": size, "models": models, "nights": str(root), "expected": expected_scores(rows),
              "planted": planted_pairs(rows), "env": env}
    (work / "config.json").write_text(json.dumps(config, indent=1))
    return {"env": env, "models": archs, "triplets": {s: size["n"][s] for s in size["n"]},
            "image_size": list(size["image"])}


def _nccl_version(torch) -> str:
    """NCCL's version as torch reports it (a tuple in torch 2, an int before), or why not."""
    try:
        version = torch.cuda.nccl.version()
    except Exception as err:  # informative only: the torchrun step is the real test
        return f"unknown ({type(err).__name__}: {err})"
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _device_type(size: dict) -> str:
    return "cuda" if size["device"] == "cuda" else "cpu"


def _sync(size: dict) -> None:
    import torch

    if size["device"] == "cuda":
        torch.cuda.synchronize()


def step_precision(work: Path, size: dict, config: dict) -> dict:
    import torch

    import rpmetric

    dev, out = size["device"], {}
    for key, folder in config["models"].items():
        metric = rpmetric.RobustDistance(folder, device=dev)
        s = metric.encoder.image_size
        gen = torch.Generator().manual_seed(0)
        b = size["precision_batch"]
        x = torch.rand(b, 3, s, s, generator=gen)
        pairs = {"near": (x + 0.03 * torch.randn(b, 3, s, s, generator=gen)).clamp(0, 1),
                 "far": torch.rand(b, 3, s, s, generator=gen)}
        x = x.to(dev)
        record = {"image_size": s}
        with torch.inference_mode():
            e32 = metric.embed(x)
            d32 = {name: metric(x, y.to(dev)) for name, y in pairs.items()}
        record["fp32_distance_range"] = {n: [d.min().item(), d.max().item()] for n, d in d32.items()}
        for label, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            with torch.inference_mode(), torch.autocast(_device_type(size), dtype=dtype):
                e = metric.embed(x)
                d = {name: metric(x, y.to(dev)) for name, y in pairs.items()}
            record[label] = {"max_abs_embedding_diff": (e - e32).abs().max().item(),
                             **{f"max_abs_distance_diff_{n}": (d[n] - d32[n]).abs().max().item() for n in d},
                             "distance_dtype": str(d["far"].dtype).replace("torch.", "")}
        xg = x.clone().requires_grad_(True)
        with torch.autocast(_device_type(size), dtype=torch.float16):
            metric(xg, pairs["far"].to(dev)).sum().backward()
        record["fp16_grad_finite"] = bool(torch.isfinite(xg.grad).all().item())
        record["fp16_grad_nonzero"] = bool((xg.grad != 0).any().item())
        out[key] = record
        del metric
    bad = [k for k, r in out.items() if not (r["fp16_grad_finite"] and r["fp16_grad_nonzero"])
           or any(v > 0.05 for lab in ("fp16", "bf16") for n, v in r[lab].items() if n.startswith("max_abs"))]
    return {"models": out, "ok": not bad, **({"error": f"large or non-finite differences: {bad}"} if bad else {})}


def step_throughput(work: Path, size: dict, config: dict) -> dict:
    import statistics

    import torch

    sys.path.insert(0, str(CHECKOUT / "evals"))
    from _common import interleaved_timings, tinymodels

    import rpmetric

    dev, out = size["device"], {}
    mean = torch.tensor(tinymodels.CLIP_MEAN).view(1, 3, 1, 1).to(dev)  # what the saved configs state
    std = torch.tensor(tinymodels.CLIP_STD).view(1, 3, 1, 1).to(dev)
    for key, folder in config["models"].items():
        metric = rpmetric.RobustDistance(folder, device=dev)
        reference = tinymodels.load_reference_open_clip(Path(folder)).to(dev)
        s = metric.encoder.image_size
        record = {"image_size": s}
        for batch in size["throughput_batches"]:
            gen = torch.Generator().manual_seed(batch)
            x = torch.rand(batch, 3, s, s, generator=gen).to(dev)
            y = torch.rand(batch, 3, s, s, generator=gen).to(dev)
            xn, yn = (x - mean) / std, (y - mean) / std  # the raw side gets normalised input for free

            def raw():
                reference.encode_image(xn)
                reference.encode_image(yn)
                _sync(size)

            def ours():
                metric(x, y)
                _sync(size)

            for label, amp in (("fp32", None), ("fp16", torch.float16)):
                ctx = torch.autocast(_device_type(size), dtype=amp) if amp else contextlib.nullcontext()
                with torch.inference_mode(), ctx:
                    ex = reference.encode_image(xn, normalize=True)
                    ey = reference.encode_image(yn, normalize=True)
                    same = (metric(x, y) - (1 - (ex.float() * ey.float()).sum(-1))).abs().max().item()
                    times = interleaved_timings({"raw": raw, "metric": ours}, repeats=size["rounds"],
                                                warmup=size["warmup"])
                med = {k: statistics.median(v) for k, v in times.items()}
                record[f"batch{batch}_{label}"] = {
                    "ratio_median": round(med["metric"] / med["raw"], 4),
                    "metric_images_per_s": round(2 * batch / med["metric"], 1),
                    "raw_images_per_s": round(2 * batch / med["raw"], 1),
                    "max_abs_distance_diff_vs_raw": same}
        out[key] = record
        del metric, reference
    return {"models": out, "rounds": size["rounds"], "warmup": size["warmup"],
            "ratio": "median seconds of metric(x, y) / median seconds of two raw encode_image calls"}


def cli_argv(step: str, work: Path, size: dict, config: dict) -> List[str]:
    """The rpmetric command line of a CLI step."""
    model, root, dev = config["models"][size["cli_model"]], config["nights"], size["device"]
    common = ["--model", model, "--device", dev, "--batch-size", str(size["batch"]), "--workers", str(size["workers"])]
    out = work / "out"
    if step in ("eval_nights", "torchrun"):
        return ["eval", "nights", root, "--split", "test", *common, "--out", str(out / f"{step}.json")]
    if step == "eval_attack":
        a = size["attack"]
        return ["eval", "nights", root, "--split", "test", *common, "--attack", "linf", "--eps", "4", "--steps",
                str(a["steps"]), "--n-samples", str(a["n_samples"]), "--out", str(out / f"{step}.json")]
    if step == "eval_counterattack":
        a = size["counterattack"]
        return ["eval", "nights", root, "--split", "test", *common, "--counterattack", "--attack", "linf", "--eps",
                "4", "--steps", str(a["steps"]), "--n-samples", str(a["n_samples"]), "--eot-samples", "2",
                "--counterattack-steps", str(a["counterattack_steps"]),
                "--out", str(out / f"{step}.json")]
    if step == "train_lora":
        return ["train", "nights", root, *common, "--head", "lora", "--epochs", "1", "--out", str(out / "lora-head"),
                "--overwrite"]
    if step == "embed":
        return ["embed", root, "--out", str(out / "store"), "--model", model, "--device", dev, "--batch-size",
                str(size["batch"]), "--workers", str(size["workers"]), "--quiet", "--overwrite"]
    if step == "dedup":
        return ["dedup", str(out / "store"), "--threshold", "0.01", "--out", str(out / "dups.csv")]
    raise ValueError(step)


def run_cli(argv: List[str], size: dict) -> dict:
    """``rpmetric.cli.main(argv)`` in this process: exit status, wall time, peak GPU memory and RSS."""
    import resource

    import torch

    from rpmetric.cli import main

    cuda = size["device"] == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    rc = main(argv)
    wall = time.perf_counter() - start
    record = {"argv": ["rpmetric", *argv], "rc": rc, "wall_s": round(wall, 2),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "peak_gpu_allocated_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if cuda else None,
              "peak_gpu_reserved_mb": round(torch.cuda.max_memory_reserved() / 2 ** 20, 1) if cuda else None}
    if rc != 0:
        record.update(ok=False, error=f"rpmetric exited with status {rc} (its stderr is in the step's log)")
    return record


def _scores_match(result: dict, expected: Dict[str, float]) -> List[str]:
    """The groups whose 2AFC score is not the known one (exact by construction, up to float sums)."""
    got = {g: r["score"] for g, r in result["results"].items()}
    return [f"{g}: {got.get(g)} != {want}" for g, want in expected.items()
            if got.get(g) is None or abs(got[g] - want) > 1e-9]


def check_cli(step: str, work: Path, config: dict, record: dict) -> dict:
    """What the command's outputs must hold (only when it exited 0)."""
    out = work / "out"
    expected = {g: v for g, v in config["expected"].items() if g.startswith("test") or g == "total"}
    if step in ("eval_nights", "torchrun"):
        result = json.loads((out / f"{step}.json").read_text())
        wrong = _scores_match(result, expected)
        record.update(scores={g: r["score"] for g, r in result["results"].items()},
                      precision=result["settings"].get("precision"))
        if wrong:
            record.update(ok=False, error="2AFC scores differ from the known ones: " + "; ".join(wrong))
    elif step in ("eval_attack", "eval_counterattack"):
        result = json.loads((out / f"{step}.json").read_text())
        record["attack"] = {g: {k: v for k, v in a.items() if k != "attack"} for g, a in result["attack"].items()}
        wrong = _scores_match(result, expected)
        bad = [g for g, a in result["attack"].items() if not a["robust_accuracy"] <= a["clean_accuracy"] + 1e-9]
        if wrong or bad:
            record.update(ok=False, error="; ".join(wrong + [f"{g}: robust accuracy above clean" for g in bad]))
    elif step == "train_lora":
        head = out / "lora-head"
        files = sorted(p.name for p in head.iterdir())
        record["files"] = files
        missing = {"rpmetric_config.json", "head.safetensors"} - set(files)
        if missing:
            record.update(ok=False, error=f"the head folder lacks {sorted(missing)}")
        else:  # a head keeps d(x, x) = 0 < d(x, y), so its test scores are the known ones too
            training = json.loads((head / "rpmetric_config.json").read_text())["training"]
            record.update(best_epoch=training["best_epoch"], scores={g: r["score"] for g, r in training["test"].items()})
            wrong = _scores_match({"results": training["test"]}, expected)
            if wrong:
                record.update(ok=False, error="test scores of the head differ from the known ones: " + "; ".join(wrong))
    elif step == "embed":
        from rpmetric.stores.store import EmbeddingStore  # the store's own reader, whatever its format version

        store = EmbeddingStore(out / "store")
        record.update(rows=len(store), dim=store.dim, dtype=str(store.dtype))
    elif step == "dedup":
        import csv

        with open(out / "dups.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        root = Path(config["nights"]).resolve()
        group_of = {}
        for r in rows:
            p = Path(r["path"])
            group_of[(p.resolve().relative_to(root) if p.is_absolute() else p).as_posix()] = r["group"]
        planted = config["planted"]
        found = sum(1 for a, b in planted if a in group_of and group_of.get(a) == group_of.get(b))
        # On the real architectures distinct images lie far apart, so the groups should be exactly the
        # planted pairs; the tiny smoke models chain distinct images too (not a failure: recall is checked).
        record.update(groups=len(set(group_of.values())), grouped_files=len(group_of), planted_pairs=len(planted),
                      planted_found=found, groups_are_the_planted_pairs=len(group_of) == 2 * len(planted) == 2 * len(
                          set(group_of.values())))
        if found != len(planted):
            record.update(ok=False, error=f"found {found} of {len(planted)} planted duplicate pairs")
    return record


def step_cli(step: str, work: Path, size: dict, config: dict) -> dict:
    (work / "out").mkdir(exist_ok=True)
    record = run_cli(cli_argv(step, work, size, config), size)
    if record["rc"] == 0:
        record = check_cli(step, work, config, record)
    return record


def step_torchrun_child(work: Path, size: dict, config: dict) -> dict:
    """Inside torchrun: join the group (nccl on CUDA), run a collective, then ``eval nights`` with
    rpmetric's collectives over the group (world size 1, where rpmetric alone would skip them)."""
    import torch
    import torch.distributed as dist

    import rpmetric.distributed as rd

    backend = "nccl" if size["device"] == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        # One node: NCCL needs a socket only to bootstrap, and the loan machines may have no other interface up.
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    device = f"cuda:{local_rank}" if backend == "nccl" else "cpu"
    t = torch.full((4,), float(dist.get_rank() + 1), device=device)
    dist.all_reduce(t)
    gathered = [None]
    dist.all_gather_object(gathered, {"rank": dist.get_rank()})
    rd.is_distributed = lambda: dist.is_available() and dist.is_initialized()
    record = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "all_reduce_sum": t[0].item(),
              "all_gather_object": gathered, "launcher_env": {k: os.environ.get(k) for k in
                                                              ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT",
                                                               "NCCL_SOCKET_IFNAME")}}
    if t[0].item() != 1.0 or gathered != [{"rank": 0}]:
        record.update(ok=False, error=f"collectives returned {t.tolist()} and {gathered}")
        return record
    record.update(step_cli("torchrun", work, size, config))
    return record


CHILD_STEPS = {"setup": None, "precision": step_precision, "throughput": step_throughput,
               "torchrun": step_torchrun_child}


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (DataLoader workers)."""
    import resource

    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def child_main(step: str, work: Path, result: Path, cpu_smoke: bool) -> int:
    """Run one step in this (child) process and write its record to ``result``."""
    size = sizes(cpu_smoke)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    try:
        import torch

        if size["threads"]:
            torch.set_num_threads(size["threads"])
        if step == "setup":
            record = step_setup(work, size)
        else:
            config = json.loads((work / "config.json").read_text())
            fn = CHILD_STEPS.get(step)
            record = fn(work, size, config) if fn else step_cli(step, work, size, config)
        record.setdefault("ok", True)
    except BaseException as err:  # noqa: B036 - any failure, KeyboardInterrupt included, is this step's record
        record = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": _tail(traceback.format_exc())}
    record["step_wall_s"] = round(time.perf_counter() - start, 2)
    record["step_cpu_s"] = round(_cpu_seconds() - cpu_start, 2)
    if os.environ.get("RANK", "0") == "0":
        result.write_text(json.dumps(record, indent=1, default=str))
    return 0 if record["ok"] else 1


# -- the parent: runs the steps, each in a fresh process with a timeout -------------------------
def _tail(text: str, n: int = 2000) -> str:
    return text[-n:]


def child_command(step: str, work: Path, result: Path, cpu_smoke: bool) -> List[str]:
    args = [str(Path(__file__).resolve()), "--child", step, "--work", str(work), "--result", str(result)]
    args += ["--cpu-smoke"] if cpu_smoke else []
    if step == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args]
    return [sys.executable, *args]


def preimport() -> List[str]:
    """Import what the steps use, once, in the parent, so that forked children start at once; the
    ones that fail are left to the children, whose records then say why."""
    failed = []
    for name in ("torch", "numpy", "PIL.Image", "open_clip", "rpmetric", "rpmetric.cli", "rpmetric.metric",
                 "rpmetric.evaluation", "rpmetric.training", "rpmetric.attacks", "rpmetric.counterattack"):
        try:
            __import__(name)
        except Exception:
            failed.append(name)
    return failed


def can_fork() -> bool:
    """Whether forking is possible and this process holds no CUDA context (one cannot cross a fork).
    A CUDA driver initialised without a context (``torch.cuda.is_available()``) is not detected:
    hence exec on the GPU."""
    torch = sys.modules.get("torch")
    return hasattr(os, "fork") and (torch is None or not torch.cuda.is_initialized())


def _wait(pid: int, timeout: float) -> Optional[int]:
    """The exit status of ``pid`` (a session leader), or None after killing its session at ``timeout``."""
    def kill():
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)

    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8
            if time.monotonic() > deadline:
                kill()
                return None
            time.sleep(0.05)
    except BaseException:  # Ctrl-C or SIGTERM of this process: leave no step behind
        kill()
        raise


def _fork_step(step: str, work: Path, result: Path, cpu_smoke: bool, log: Path) -> int:
    """A child that runs ``step`` in a copy of this process (imports done), in its own session, with
    its output in ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(str(work))
        code = child_main(step, work, result, cpu_smoke)
    except BaseException:  # noqa: B036 - the child must reach os._exit whatever happens
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_child(step: str, work: Path, cpu_smoke: bool, timeout: float, fork: bool = False) -> dict:
    """One step in a child process in its own session (so that a timeout also kills torchrun's
    worker and DataLoader workers): forked from this process when ``fork`` and :func:`can_fork`
    allow, else a fresh interpreter (always for torchrun). Its record, or what went wrong."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result, log = logs / f"{step}.json", logs / f"{step}.log"
    if result.exists():
        result.unlink()
    start = time.perf_counter()
    if fork and step != "torchrun" and can_fork():
        launcher = "fork"
        rc = _wait(_fork_step(step, work, result, cpu_smoke, log), timeout)
    else:
        launcher = "exec"
        with open(log, "w") as out:
            proc = subprocess.Popen(child_command(step, work, result, cpu_smoke), stdout=out, stderr=subprocess.STDOUT,
                                    env=child_env(), cwd=str(work), start_new_session=True)
            rc = _wait(proc.pid, timeout)
            proc.returncode = -signal.SIGKILL if rc is None else rc  # reaped by _wait: Popen must not wait
    wall = round(time.perf_counter() - start, 2)
    output = log.read_text(errors="replace") if log.exists() else ""
    if rc is None:
        record = {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    elif result.exists():
        record = json.loads(result.read_text())
    else:
        record = {"ok": False, "error": f"the step's process exited with status {rc} and wrote no record"}
    if rc not in (0, None) and record.get("ok"):
        record.update(ok=False, error=f"the step's process exited with status {rc}")
    record.update(process_wall_s=wall, launcher=launcher)
    if not record["ok"]:
        record["log_tail"] = _tail(output)
    return record


def child_env() -> Dict[str, str]:
    """The environment of a child interpreter: this checkout first on the path, and no Hub requests."""
    path = [str(CHECKOUT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(path))


def run_steps(steps: Sequence[str], run: Callable[[str, float], dict], budget: float, report: Callable[[dict], None],
              clock: Callable[[], float] = time.monotonic) -> Dict[str, dict]:
    """Each step through ``run(step, timeout)``, in order; a failure (or an exception of ``run``) is
    recorded and the next step still runs; steps that would start with less than 5 s of ``budget``
    left are recorded as skipped. ``report(records)`` is called after each step.

    Example:
        >>> def run(step, timeout):
        ...     if step == "b":
        ...         raise RuntimeError("boom")
        ...     return {"ok": True}
        >>> records = run_steps(["a", "b", "c"], run, budget=60, report=lambda r: None)
        >>> [(s, r["ok"]) for s, r in records.items()], records["b"]["error"]
        ([('a', True), ('b', False), ('c', True)], 'RuntimeError: boom')
    """
    start, records = clock(), {}
    for step in steps:
        left = budget - (clock() - start)
        if left < 5:
            records[step] = {"ok": False, "skipped": True, "error": f"not run: the time budget of {budget:.0f} s is spent"}
        else:
            try:
                records[step] = run(step, min(TIMEOUTS.get(step, 60), left))
            except Exception as err:  # the runner itself failed; the next steps still run
                records[step] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        report(records)
    return records


def summary_lines(report: dict) -> List[str]:
    """The printed summary: one line per step with its time, peak GPU memory and key figures."""
    lines = [f"rpmetric GPU check ({report['mode']}), {report['total_wall_s']} s in all"]
    env = report["steps"].get("setup", {}).get("env", {})
    if env:
        lines.append("  " + ", ".join(f"{k} {env[k]}" for k in ("gpu", "torch", "torch_cuda", "nccl", "python") if k in env))
    for step, r in report["steps"].items():
        status = "ok" if r["ok"] else ("SKIPPED" if r.get("skipped") else "FAILED")
        wall = r.get("wall_s", r.get("process_wall_s"))
        gpu = r.get("peak_gpu_allocated_mb")
        bits = [f"{step:<19} {status:<7}", f"{wall} s" if wall is not None else ""]
        if gpu is not None:
            bits.append(f"peak GPU {gpu:.0f} MB")
        elif "peak_rss_mb" in r:
            bits.append(f"peak RSS {r['peak_rss_mb']:.0f} MB")
        if step == "precision" and r.get("models"):
            bits.append("max |d16-d32| " + ", ".join(
                f"{k} {max(v['fp16'][n] for n in v['fp16'] if n.startswith('max_abs_distance')):.2g}"
                for k, v in r["models"].items()))
        if step == "throughput" and r.get("models"):
            bits.append("metric/raw " + ", ".join(f"{k} {n.replace('batch', 'b')} {v['ratio_median']}"
                                                  for k, m in r["models"].items() for n, v in m.items()
                                                  if isinstance(v, dict)))
        if "scores" in r:
            bits.append("total " + str(round(r["scores"].get("total", float("nan")), 4)))
        if step == "torchrun" and "backend" in r:
            bits.append(f"backend {r['backend']}")
        if not r["ok"]:
            bits.append(str(r.get("error", ""))[:200])
        lines.append("  " + "  ".join(b for b in bits if b))
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report (default: %(default)s)")
    parser.add_argument("--wheels", type=Path, default=None, metavar="DIR",
                        help="install missing packages from this folder of wheels first (pip --no-index)")
    parser.add_argument("--cpu-smoke", action="store_true", help="no GPU: every step on the CPU, tiny models and data")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--budget", type=float, default=330, help="seconds after which no step starts (default: 330)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, deleted)")
    parser.add_argument("--print-download", action="store_true",
                        help="print the pip download command that fills a wheels folder, and exit")
    parser.add_argument("--torch-version", default="2.11", help="the GPU machine's torch, for torchvision's pin in "
                                                                "--print-download (default: %(default)s)")
    parser.add_argument("--launcher", choices=("exec", "fork"), default=None,
                        help="how each step's process starts: exec, a fresh interpreter (the default on the GPU: "
                             "a CUDA driver initialised before a fork breaks CUDA in the child); fork, a copy of this "
                             "process after the imports (the default with --cpu-smoke, which saves an import of "
                             "torch per step); torchrun is always exec")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(CHECKOUT))  # the checkout's rpmetric, not an installed copy
    os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: no step may ask the Hub
    if args.child:
        return child_main(args.child, args.work, args.result, args.cpu_smoke)
    if args.print_download:
        print(pip_download_command("wheels", args.torch_version))
        unknown = download_plan(args.torch_version)[2]
        if unknown:
            print(f"warning: {', '.join(unknown)} not installed here, so pip resolves their dependencies, which may "
                  "fetch torch; install rpmetric[test] here first for the exact command", file=sys.stderr)
        return 0
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {','.join(STEPS)}")
    start = time.monotonic()
    # SIGTERM (a timeout of whoever runs this) ends the run as Ctrl-C does: the running step is killed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = args.work or Path(tempfile.mkdtemp(prefix="rpmetric-gpu-check-"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    report = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(["python", "evals/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "budget_s": args.budget, "steps": {}, "total_wall_s": None}

    def write(records=None):
        if records is not None:
            report["steps"] = records
        report["total_wall_s"] = round(time.monotonic() - start, 1)
        report["failed"] = [s for s, r in report["steps"].items() if not r["ok"]]
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str))
        os.replace(tmp, args.out)

    try:
        if args.wheels is not None:
            try:
                report["install"] = install_missing(args.wheels.resolve(), work / "install.log")
            except Exception as err:
                report["install"] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            print("install:", json.dumps(report["install"]), flush=True)
        fork = (args.launcher or ("fork" if args.cpu_smoke else "exec")) == "fork"
        report["launcher"] = "fork" if fork else "exec"
        if fork:  # after the install, so that the children import what it installed
            report["preimport_failed"] = preimport()
        write()
        budget = args.budget - (time.monotonic() - start)

        def one(step, timeout):
            print(f"[{time.monotonic() - start:6.1f} s] {step} ...", flush=True)
            return run_child(step, work, args.cpu_smoke, timeout, fork=fork)

        write(run_steps(steps, one, budget, write))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    try:
        report["pip_download"] = pip_download_command("wheels", args.torch_version)
    except Exception as err:  # printing the command must not fail the check
        report["pip_download"] = f"unavailable here: {type(err).__name__}: {err}"
    write()
    print("\n".join(summary_lines(report)))
    print(f"report written to {args.out}")
    failed = report["failed"] or ([] if report.get("install", {"ok": True})["ok"] else ["install"])
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
