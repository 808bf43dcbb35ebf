"""``rpmetric eval nights|bapps|jnd ROOT``: agreement with human judgements (2AFC score, JND mAP)."""

from __future__ import annotations

import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from ..distributed import local_device
from ..files import write_csv, write_json
from .common import add_device_option, add_model_option, at_least, format_table

DESCRIPTIONS = {
    "nights": ("NIGHTS 2AFC score (DreamSim's benchmark)",
               "ROOT holds data.csv, ref/ and distort/. Split `test` is reported as test_imagenet, "
               "test_no_imagenet and their size-weighted mean, `total`."),
    "bapps": ("BAPPS 2AFC score per category (LPIPS' benchmark)",
              "ROOT holds 2afc/{train,val}/CATEGORY/{ref,p0,p1,judge}."),
    "jnd": ("BAPPS JND mean average precision per category",
            "ROOT holds jnd/val/CATEGORY/{p0,p1,same}."),
}


def register(sub) -> None:
    from ..attacks.cli import add_attack_options
    from ..counterattack import add_counterattack_options
    from ..datasets import BAPPS_2AFC_CATEGORIES, BAPPS_JND_CATEGORIES, BAPPS_SUBSETS, NIGHTS_SPLITS

    p = sub.add_parser("eval", help="score a metric against human judgements (NIGHTS, BAPPS 2AFC, BAPPS JND)",
                       description="Score a metric against human judgements. Runs under torchrun too: "
                                   "`torchrun --nproc_per_node K -m rpmetric eval ...` shards the batches.")
    datasets = p.add_subparsers(dest="dataset", metavar="DATASET")
    datasets.required = True
    for name, (summary, layout) in DESCRIPTIONS.items():
        q = datasets.add_parser(name, help=summary, description=f"{summary}. {layout}")
        q.add_argument("root", type=Path, metavar="ROOT", help="dataset folder")
        if name == "nights":
            q.add_argument("--split", nargs="+", default=["test"], choices=NIGHTS_SPLITS, metavar="SPLIT",
                           help=f"split(s) to evaluate, of {', '.join(NIGHTS_SPLITS)} (default: test)")
        else:
            categories = BAPPS_2AFC_CATEGORIES if name == "bapps" else BAPPS_JND_CATEGORIES
            q.add_argument("--categories", nargs="+", default=list(categories), choices=categories,
                           metavar="CATEGORY", help=f"categories, of {', '.join(categories)} (default: all)")
        if name == "bapps":
            q.add_argument("--subset", default="val", choices=BAPPS_SUBSETS, help="2afc/train or 2afc/val (default: val)")
        _add_run_options(q)
        add_counterattack_options(q)
        if name != "jnd":  # the robust protocol is a 2AFC decision
            add_attack_options(q)
        q.set_defaults(func=run, rerun=(("--resume",), ()))
    from .embed import register_eval_retrieval  # retrieval decisions over embedding stores

    register_eval_retrieval(datasets)


def _add_run_options(q) -> None:
    add_model_option(q, extra_help="; `l2` for the pixel baseline (mean squared difference, images as loaded; "
                                   "needs no weights)")
    add_device_option(q)
    q.add_argument("--batch-size", type=at_least(1), default=32, help="triplets or pairs per batch (default: 32)")
    q.add_argument("--workers", type=at_least(0), default=min(4, os.cpu_count() or 1),
                   help="DataLoader processes decoding images (default: min(4, CPUs)); 0 decodes in the main process")
    q.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    q.add_argument("--per-sample", type=Path, default=None, metavar="FILE.csv",
                   help="write one row per triplet (group,id,d0,d1,p) or pair (group,id,d,same)")
    q.add_argument("--log", type=Path, default=None, metavar="FILE.jsonl",
                   help="run log of per-sample results, written as the run proceeds (default: OUT.log.jsonl beside "
                        "--out, else ./rpmetric-eval-DATASET-MODEL.log.jsonl; a default log is deleted once the run "
                        "completes)")
    q.add_argument("--resume", action="store_true", help="continue an interrupted run from its log")
    q.add_argument("--skip-bad", action="store_true",
                   help="skip triplets with missing or unreadable files and report them, instead of stopping")
    q.add_argument("--max-batches", type=at_least(1), default=None, metavar="N",
                   help="stop after N batches (time-boxed runs); finish later with --resume")


def run(args) -> int:
    from .. import distributed
    from ..attacks.cli import attack_config_from_args
    from ..counterattack import counterattack_from_args
    from ..evaluation import TASKS, evaluate, load_distances, load_groups, nights_total

    counterattack = counterattack_from_args(args)
    attack = attack_config_from_args(args) if hasattr(args, "attack") else None
    for option, given in (("--counterattack", counterattack is not None), ("--attack", attack is not None)):
        if given and args.model == "l2":
            raise ValueError(f"{option} needs a model with an encoder, but --model is the l2 pixel baseline; "
                             "choose a model (see `rpmetric models`).")
    if attack is not None and args.max_batches is not None:
        raise ValueError("--max-batches applies to the clean evaluation only; drop it or drop --attack.")
    rank, world = distributed.init_from_env()
    if attack is not None and world > 1:
        raise ValueError("--attack runs in a single process; launch it without torchrun.")
    try:
        names = args.split if args.dataset == "nights" else args.categories
        subset = getattr(args, "subset", "val")
        task, groups, skipped = load_groups(args.dataset, args.root, names, subset, skip_bad=args.skip_bad)
        distances = load_distances(args.model, device=local_device(args.device), counterattack=counterattack)
        log, default_log = _log_path(args, distances.name)
        args.progress = log  # what --resume continues after an interruption (see cli.main)
        run_config = {"dataset": args.dataset, "root": str(args.root.resolve()), "subset": subset,
                      "model_argument": args.model}
        result = evaluate(distances, task, groups, batch_size=args.batch_size, workers=args.workers, log=log,
                          resume=args.resume, run_config=run_config, skip_bad=args.skip_bad, skipped=skipped,
                          progress=True, max_batches=args.max_batches)
    finally:
        distributed.shutdown()
    if rank != 0:
        return 0  # rank 0 alone reports and writes files
    spec = TASKS[task]
    if result.skipped:
        _report_skipped(result.skipped, spec.unit)
    if not result.complete:
        print(f"rpmetric eval: stopped after --max-batches {args.max_batches}: {result.done} of {result.total} "
              f"done, saved in {log}; run the same command with --resume to finish.", file=sys.stderr)
        return 3
    results = dict(result.results)
    total = nights_total(results) if args.dataset == "nights" else None
    if total is not None:
        results["total"] = total
    attacked = _attack(args, distances, groups, result, attack, log) if attack is not None else None
    label = "split" if args.dataset == "nights" else "category"
    headers = [label, "n", "mAP (%)" if task == "jnd" else "2AFC (%)"]
    rows = [[g, r["n"], f"{100 * r['score']:.2f}"] for g, r in results.items()]
    if attacked is not None:
        from ..attacks.cli import attack_columns, attack_headers

        headers += attack_headers(counterattack is not None)
        rows = [row + attack_columns(attacked.get(row[0]), counterattack is not None) for row in rows]
    print(format_table(rows, headers))
    if args.out is not None:
        summary = _summary(args, distances, task, names, subset, results, result, world)
        if attacked is not None:
            summary["attack"] = attacked
        write_json(args.out, summary)
    if args.per_sample is not None:
        columns = ["group", "id", *spec.outputs, spec.target]
        write_csv(args.per_sample, columns, ([r[c] for c in columns] for r in result.records))
    if default_log:  # complete: everything is in the outputs now
        for path in [log, *(log.with_name(f"{log.name}.attack-{g}.jsonl") for g in groups)]:
            path.unlink(missing_ok=True)
    return 0


def _attack(args, distances, groups, result, options, log):
    """Robust 2AFC accuracy per group (rpmetric.attacks), on the triplets the clean run did not skip."""
    from ..attacks.cli import attack_groups

    bad = {(item["group"], item["id"]) for item in result.skipped}
    kept = {g: [t for t in records if (g, t.id) not in bad] for g, records in groups.items()}
    return attack_groups(distances.metric, kept, options, batch_size=args.batch_size, workers=args.workers,
                         log=log, resume=args.resume, progress=True)


def _log_path(args, model_name: str):
    if args.log is not None:
        return args.log, False
    if args.out is not None:
        return args.out.with_name(args.out.name + ".log.jsonl"), True
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("_")
    return Path(f"rpmetric-eval-{args.dataset}-{slug}.log.jsonl"), True


def _report_skipped(skipped, unit: str) -> None:
    print(f"rpmetric eval: skipped {len(skipped)} bad {unit}(s):", file=sys.stderr)
    for item in skipped:
        print(f"  {item['group']}/{item['id']}: {item['reason']}", file=sys.stderr)


def _summary(args, distances, task, names, subset, results, result, world) -> dict:
    from .._version import __version__

    metric = getattr(distances, "metric", None)
    described = distances.describe()
    return {
        "model": distances.name,
        "model_argument": args.model,
        "dataset": args.dataset,
        "root": str(args.root.resolve()),
        "task": task,
        "score": "JND mean average precision" if task == "jnd" else "2AFC score",
        "selection": {"splits" if args.dataset == "nights" else "categories": list(names),
                      **({"subset": subset} if args.dataset == "bapps" else {})},
        "results": results,
        "skipped": {"n": len(result.skipped), "items": result.skipped},
        "spec": metric.spec.to_dict() if metric is not None else None,
        "settings": {"batch_size": args.batch_size, "workers": args.workers, "processes": world,
                     "device": str(distances.device),
                     "precision": described.get("precision", "float32")},
        "version": __version__,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
