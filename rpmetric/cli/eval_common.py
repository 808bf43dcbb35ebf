"""What every ``rpmetric eval`` dataset shares: the run options, the run log's name, the output
checks, the clean-up of empty logs and the report of skipped items. ``cli.evaluate`` (NIGHTS,
BAPPS, THINGS, triplet files) and ``cli.iqa`` (IQA datasets, pair files) both import it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from pathlib import Path

from .common import add_device_option, add_html_option, add_model_option, at_least

__all__ = ["add_run_options", "log_path", "check_distinct_outputs", "no_empty_logs", "report_skipped",
           "preprocess_settings"]


def add_run_options(q) -> None:
    add_model_option(q, extra_help="; or a pixel baseline, which needs no weights and compares the images as loaded: "
                                   "`l2` (mean squared difference of RGB in [0, 1]) or `l2-lab` (lpips' L2 baseline, "
                                   "lpips.L2's default colorspace='Lab': 0.5 * mean squared difference of "
                                   "CIELAB / 100)")
    add_device_option(q)
    q.add_argument("--batch-size", type=at_least(1), default=32, help="triplets or pairs per batch (default: 32)")
    q.add_argument("--workers", type=at_least(0), default=min(4, os.cpu_count() or 1),
                   help="DataLoader processes decoding images (default: min(4, CPUs)); 0 decodes in the main process")
    q.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    q.add_argument("--per-sample", type=Path, default=None, metavar="FILE.csv",
                   help="write one row per triplet (group,id,d0,d1,p) or pair (group,id,d,same)")
    # --log alone is ambiguous to torchrun (--log-dir, --logs-specs), which parses the whole command line
    q.add_argument("--run-log", "--log", dest="log", type=Path, default=None, metavar="FILE.jsonl",
                   help="run log of per-sample results, written as the run proceeds; under torchrun spell it "
                        "--run-log (default: OUT.log.jsonl beside "
                        "--out, else ./rpmetric-eval-DATASET-ROOT-SPLITS-MODEL-HASH.log.jsonl, HASH of the resolved "
                        "ROOT, splits or categories and model; a default log is deleted once the run completes, "
                        "and any new log that holds no finished batch when the run fails or is interrupted)")
    q.add_argument("--resume", action="store_true", help="continue an interrupted run from its log")
    q.add_argument("--skip-bad", action="store_true",
                   help="skip triplets with missing or unreadable files and report them, instead of stopping")
    q.add_argument("--max-batches", type=at_least(1), default=None, metavar="N",
                   help="stop after N batches (time-boxed runs); finish later with --resume")
    add_html_option(q, "the score table, a bar chart per group, the triplets where the metric disagrees most with "
                       "people (JND: the precision-recall curve), and with --attack the first attacked references "
                       "and, with --counterattack, the tau histogram")
    q.add_argument("--html-examples", type=at_least(1), default=None, metavar="N",
                   help="with --html: triplets in each example section (most disagreeing; first attacked of each "
                        "group) (default: 24)")


def log_path(args, distances, names, subset: str):
    """``(log, whether it is a default one)``. A default log beside no ``--out`` is named by what the
    run reads, so that runs on other data, splits or models never share (or block) one: readable
    parts, and a short hash of the resolved root, the selection and the model's resolved source
    (so that the model folder spelled another way finds the same log)."""
    if args.log is not None:
        return args.log, False
    if args.out is not None:
        return args.out.with_name(args.out.name + ".log.jsonl"), True
    root = args.root.resolve()
    subset = subset if args.dataset == "bapps" else None
    metric = getattr(distances, "metric", None)
    source = metric.spec.source if metric is not None else distances.name
    model_name = Path(source).name if metric is not None and metric.spec.local_path else distances.name
    identity = json.dumps([args.dataset, str(root), subset, list(names), source])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    parts = [args.dataset, root.name, *([subset] if subset else []), "+".join(names), model_name]
    slug = "-".join(re.sub(r"[^A-Za-z0-9._+]+", "_", part).strip("_")[:40] for part in parts)
    return Path(f"rpmetric-eval-{slug}-{digest}.log.jsonl"), True


def check_distinct_outputs(args) -> None:
    """Refuse --out, --per-sample and --run-log (given, or the default beside --out) that name one file,
    however spelled, before any work: each would overwrite another."""
    named = [("--out", args.out), ("--per-sample", args.per_sample), ("--html", args.html),
             ("--run-log", args.log if args.log is not None or args.out is None
              else args.out.with_name(args.out.name + ".log.jsonl"))]
    seen = {}
    for option, path in named:
        if path is None:
            continue
        resolved = path.resolve()
        if resolved in seen:
            other, first = seen[resolved]
            default = " (the default run log beside --out)" if option == "--run-log" and args.log is None else ""
            raise ValueError(f"{other} {first} and {option} {path}{default} are the same file; give each its own.")
        seen[resolved] = (option, path)


@contextlib.contextmanager
def no_empty_logs(paths, enabled: bool):
    """On an error or Ctrl-C, delete the logs among ``paths`` that this block created and that hold no
    finished batch, so that the same command can start again; a log with finished batches stays, for
    --resume."""
    new = [path for path in paths if not path.exists()]
    try:
        yield
    except BaseException:
        if enabled:
            from ..runlog import remove_if_empty

            for path in new:
                remove_if_empty(path)
        raise


def report_skipped(skipped, unit: str) -> None:
    print(f"rpmetric eval: skipped {len(skipped)} bad {unit}(s):", file=sys.stderr)
    for item in skipped:
        print(f"  {item['group']}/{item['id']}: {item['reason']}", file=sys.stderr)


def preprocess_settings(name: str, pp) -> dict:
    """The resize convention and the geometry it gave the model (normalisation is the model's)."""
    geometry = {k: getattr(pp, k) for k in ("image_size", "resize_size", "interpolation", "resize_mode")}
    return {"preprocess": name, "preprocessing": geometry}
