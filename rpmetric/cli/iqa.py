"""``rpmetric eval iqa ROOT --dataset ...`` and ``rpmetric eval pairs FILE.csv``: correlation of the
distance with opinion scores (SRCC, KRCC, PLCC after the 4-parameter logistic, and raw), per
distortion type and overall; with ``--attack``, how far APGD can shift the distances and the SRCC."""

from __future__ import annotations

import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict

from ..distributed import local_device
from ..files import check_writable, write_csv, write_json
from .common import format_table
from .eval_common import (add_run_options, check_distinct_outputs, log_path, no_empty_logs, preprocess_settings,
                          report_skipped)

OVERALL = "overall"  # the row pooling every distortion type


def register_eval_iqa(datasets) -> None:
    """Add ``iqa`` and ``pairs`` to ``rpmetric eval``'s datasets (called by :mod:`rpmetric.cli.evaluate`;
    the run options, log naming and output checks they share are :mod:`rpmetric.cli.eval_common`'s)."""
    from ..attacks.cli import add_attack_options
    from ..counterattack import add_counterattack_options
    from ..datasets import IQA_DATASETS

    layouts = "; ".join(f"{name}: {info.score_name}, {'higher' if info.higher_is_better else 'lower'} is better"
                        for name, info in IQA_DATASETS.items())
    q = datasets.add_parser(
        "iqa", help="full-reference IQA: correlation of the distance with opinion scores (TID2013, KADID-10k, CSIQ, "
                    "PIPAL, PieAPP, or a csv)",
        description="Correlation of the distance with opinion scores, per distortion type and overall: SRCC, KRCC, "
                    "PLCC after the 4-parameter logistic (VQEG) and raw, oriented so that a good metric scores "
                    f"positive. Scores: {layouts}. PieAPP also reports its pairwise preferences as a 2AFC score and "
                    "accuracy. See the README for each layout.")
    q.add_argument("root", type=Path, metavar="ROOT", help="dataset folder (with --dataset csv: the CSV file)")
    q.add_argument("--dataset", dest="dataset_name", required=True, choices=list(IQA_DATASETS), help="which layout ROOT has")
    q.add_argument("--split", default=None, metavar="SPLIT",
                   help="pipal: train or val (default train); pieapp: train, val or test (default test; train and val "
                        "have pairwise labels only); csv: a value of its split column (default: every row)")
    q.add_argument("--higher-is-worse", action="store_true",
                   help="csv only: a higher mos means a worse image (a DMOS); by default higher is better")
    q.add_argument("--allow-outside-root", action="store_true",
                   help="csv only: accept paths that lead out of the CSV's folder")
    _add_common(q, add_run=add_run_options, add_attack=add_attack_options,
                add_counterattack=add_counterattack_options)

    p = datasets.add_parser(
        "pairs", help="a pair file a,b,score: correlation of the distance with the score",
        description="Correlation of the distance with the score of each pair of FILE.csv (columns a,b,score and an "
                    "optional id; paths relative to the file's folder, staying inside it): SRCC, KRCC, PLCC after the "
                    "logistic fit and raw. By default a higher score means more similar, so a good metric (small "
                    "distance for similar pairs) scores positive; --higher-is-different for a dissimilarity score.")
    p.add_argument("root", type=Path, metavar="FILE.csv", help="the pair file")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--higher-is-similar", dest="higher_is_different", action="store_false",
                       help="a higher score means a more similar pair (default)")
    order.add_argument("--higher-is-different", dest="higher_is_different", action="store_true",
                       help="a higher score means a more different pair (a distance, a DMOS)")
    p.set_defaults(higher_is_different=False)
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept paths that lead out of the CSV's folder")
    _add_common(p, add_run=add_run_options, add_attack=add_attack_options,
                add_counterattack=add_counterattack_options)


def _add_common(q, *, add_run, add_attack, add_counterattack) -> None:
    from ..models.spec import PREPROCESS_CONVENTIONS

    add_run(q)
    q.add_argument("--preprocess", default=None, choices=list(PREPROCESS_CONVENTIONS),
                   help="how images are resized for the model (default: model, the model's own; see `rpmetric eval "
                        "nights --help`; not for pixel baselines)")
    add_counterattack(q)
    add_attack(q, target="each distorted image (pushing its distance towards the wrong rank)",
               samples="pairs", counterattack=False)
    q.set_defaults(func=run, rerun=(("--resume",), ()))


def run(args) -> int:
    from .. import distributed
    from ..attacks.cli import attack_config_from_args, attack_log_path
    from ..counterattack import counterattack_from_args
    from ..evaluation import PIXEL_BASELINES, correlation_task, load_distances
    from ..evaluation import evaluate as evaluate_records

    counterattack = counterattack_from_args(args)
    attack = attack_config_from_args(args)
    for option, given in (("--counterattack", counterattack is not None), ("--attack", attack is not None),
                          ("--preprocess", args.preprocess is not None)):
        if given and args.model in PIXEL_BASELINES:
            raise ValueError(f"{option} needs a model with an encoder, but --model is the {args.model} pixel baseline; "
                             "choose a model (see `rpmetric models`).")
    if attack is not None and counterattack is not None:
        raise ValueError("--attack with --counterattack is not offered for correlations yet; drop one of them.")
    if attack is not None and args.max_batches is not None:
        raise ValueError("--max-batches applies to the clean evaluation only; drop it or drop --attack.")
    iqa = args.dataset == "iqa"
    if iqa and args.dataset_name != "csv":
        for option, given in (("--higher-is-worse", args.higher_is_worse),
                              ("--allow-outside-root", args.allow_outside_root)):
            if given:
                raise ValueError(f"{option} applies to --dataset csv only; {args.dataset_name} states its own layout.")
    if args.model not in PIXEL_BASELINES and args.preprocess is None:
        args.preprocess = "model"
    check_distinct_outputs(args)
    if args.html_examples is not None and args.html is None:
        raise ValueError("--html-examples sets what the review page shows; add --html PAGE.html or drop it.")
    from .common import check_html_option

    check_html_option(args)
    for option in ("out", "per_sample"):
        if getattr(args, option) is not None:
            check_writable(getattr(args, option), "--" + option.replace("_", "-"))
    rank, world = distributed.init_from_env()
    if attack is not None and world > 1:
        raise ValueError("--attack runs in a single process; launch it without torchrun.")
    try:
        pairs, higher_is_better, triplets, skipped, names = _read(args)
        groups = _by_kind(pairs)
        task = correlation_task(higher_is_better)
        distances = load_distances(args.model, device=local_device(args.device), counterattack=counterattack,
                                   preprocess=args.preprocess)
        log, default_log = log_path(args, distances, names, "")
        args.progress = log
        run_config = {"dataset": args.dataset, "root": str(args.root.resolve()), "selection": names,
                      **({"preprocess": args.preprocess} if args.preprocess is not None else {})}
        logs = [log, _pairwise_log(log)]
        with no_empty_logs(logs, rank == 0):
            result = evaluate_records(distances, task, groups, batch_size=args.batch_size, workers=args.workers, log=log,
                              resume=args.resume, run_config=run_config, skip_bad=args.skip_bad,
                              skipped={names[0]: skipped["pairs"]} if skipped["pairs"] else None,
                              progress=True, max_batches=args.max_batches) if groups else None
            pairwise = None
            if triplets:
                pairwise = evaluate_records(distances, "2afc", {"pairwise": triplets}, batch_size=args.batch_size,
                                    workers=args.workers, log=logs[1], resume=args.resume and logs[1].exists(),
                                    run_config=run_config, skip_bad=args.skip_bad,
                                    skipped={"pairwise": skipped["triplets"]} if skipped["triplets"] else None,
                                    progress=True, max_batches=args.max_batches)
    finally:
        distributed.shutdown()
    if rank != 0:
        return 0
    finished = [r for r in (result, pairwise) if r is not None]
    bad = [item for r in finished for item in r.skipped]
    if bad:
        report_skipped(bad, "pair")
    if not all(r.complete for r in finished):
        done, total = sum(r.done for r in finished), sum(r.total for r in finished)
        print(f"rpmetric eval: stopped after --max-batches {args.max_batches}: {done} of {total} done, saved in "
              f"{log}; run the same command with --resume to finish.", file=sys.stderr)
        return 3
    results = _results(task, result, pairwise)
    attacked = None
    if attack is not None and result is not None:
        shift_log = attack_log_path(log, "shift")
        with no_empty_logs([shift_log], True):
            attacked = _attack(args, distances, pairs, groups, result, higher_is_better, attack, shift_log)
    print(_table(results, attacked))
    if args.out is not None:
        write_json(args.out, _summary(args, distances, task, names, higher_is_better, results, finished, world,
                                      counterattack, attack, attacked, preprocess_settings))
    if args.per_sample is not None:
        if result is not None:
            columns = ["group", "id", "d", "score"]
            write_csv(args.per_sample, columns, ([r[c] for c in columns] for r in result.records))
        if pairwise is not None:  # PieAPP's pairwise triplets, beside it: another row layout
            columns = ["group", "id", "d0", "d1", "p"]
            write_csv(pairwise_samples(args.per_sample), columns, ([r[c] for c in columns] for r in pairwise.records))
    if args.html is not None:
        from ..report.correlation import write_correlation_page

        page = write_correlation_page(
            args.html, results=results, records=result.records if result is not None else [], groups=groups,
            higher_is_better=higher_is_better, attack=attacked,
            title=f"rpmetric eval {args.dataset}: {distances.name}",
            settings={"model": distances.name, "dataset": " ".join(names), "root": str(args.root.resolve()),
                      "score": f"higher is {'better' if higher_is_better else 'worse'}",
                      "skipped": str(len(bad))},
            examples=args.html_examples or 24, progress=True)
        print(f"rpmetric eval: review page written to {page}", file=sys.stderr)
    if default_log:
        for path in [*logs, attack_log_path(log, "shift")]:
            path.unlink(missing_ok=True)
    return 0


def pairwise_samples(per_sample: Path) -> Path:
    """Where ``--per-sample FILE.csv`` puts PieAPP's pairwise rows: ``FILE.pairwise.csv``.

    Example:
        >>> pairwise_samples(Path("out/s.csv")).as_posix()
        'out/s.pairwise.csv'
    """
    return per_sample.with_name(f"{per_sample.stem}.pairwise{per_sample.suffix or '.csv'}")


def _pairwise_log(log: Path) -> Path:
    return log.with_name(f"{log.name}.pairwise.jsonl")


def _read(args):
    """``(pairs, higher_is_better, pieapp triplets, {"pairs": skipped, "triplets": skipped}, names)``."""
    from ..datasets import read_iqa, read_pairs, read_pieapp_pairs

    bad_pairs = [] if args.skip_bad else None
    bad_triplets = [] if args.skip_bad else None
    triplets = []
    if args.dataset == "pairs":
        pairs = read_pairs(args.root, skipped=bad_pairs, allow_outside_root=args.allow_outside_root)
        higher_is_better = not args.higher_is_different
        names = ["pairs", args.root.name]
    else:
        dataset = args.dataset_name
        pairs, higher_is_better = read_iqa(dataset, args.root, args.split, skipped=bad_pairs,
                                           higher_is_better=(not args.higher_is_worse) if dataset == "csv" else None,
                                           allow_outside_root=args.allow_outside_root)
        if dataset == "pieapp":
            triplets = read_pieapp_pairs(args.root, args.split or "test", skipped=bad_triplets)
        from ..datasets import IQA_DATASETS

        names = [dataset, args.split or IQA_DATASETS[dataset].default_split]
    return pairs, higher_is_better, triplets, {"pairs": bad_pairs or [], "triplets": bad_triplets or []}, names


def _by_kind(pairs) -> Dict[str, list]:
    """The pairs grouped by distortion type, types in sorted order; ``all`` when there are none."""
    kinds = sorted({p.kind for p in pairs if p.kind is not None})
    if not kinds:
        return {"all": list(pairs)} if pairs else {}
    groups = {k: [p for p in pairs if p.kind == k] for k in kinds}
    untyped = [p for p in pairs if p.kind is None]
    if untyped:
        groups["untyped"] = untyped
    if OVERALL in groups:
        raise ValueError(f"A distortion type is called {OVERALL!r}, the name of the pooled row; rename it.")
    return groups


def _results(task, result, pairwise) -> Dict[str, dict]:
    from ..evaluation import pooled_result
    from ..scoring import binary_accuracy

    results: Dict[str, dict] = dict(result.results) if result is not None else {}
    if len(results) > 1:
        results[OVERALL] = pooled_result(task, result.records)
    for figures in results.values():  # an undefined SRCC (one pair, a constant side) is null in JSON, not NaN
        if figures["score"] is not None and not math.isfinite(figures["score"]):
            figures["score"] = None
    if pairwise is not None:
        rows = pairwise.records
        results["pairwise"] = {"n": len(rows), "score": pairwise.results["pairwise"]["score"],
                               "accuracy": binary_accuracy([r["d0"] for r in rows], [r["d1"] for r in rows],
                                                           [r["p"] for r in rows]),
                               "kind": "2afc"}
    return results


def _attack(args, distances, pairs, groups, result, higher_is_better, options, log) -> Dict[str, dict]:
    """Per group and overall: :func:`rpmetric.attacks.correlation.shift_summary` of one attack on all
    the pairs the clean run did not skip."""
    from ..attacks.correlation import evaluate_shift, shift_summary

    bad = {(item["group"], item["id"]) for item in result.skipped}
    # In the dataset's own order, not by type, so that --n-samples takes the first pairs of the file.
    group_of_pair = {id(p): g for g, records in groups.items() for p in records}
    kept = [(group_of_pair[id(p)], p) for p in pairs if (group_of_pair[id(p)], p.id) not in bad]
    shifted = evaluate_shift(distances.metric, [p for _, p in kept], higher_is_better, batch_size=args.batch_size,
                             workers=args.workers, runlog_path=log, resume=args.resume and log.exists(),
                             progress=True, **options)
    config = shifted.config["attack"]
    group_of = {str(p.id): g for g, p in kept}
    attacked = {}
    for group in groups:
        rows = [r for r in shifted.records if group_of[r["key"]] == group]
        if rows:
            attacked[group] = shift_summary(rows, higher_is_better, config)
    if len(groups) > 1:
        attacked[OVERALL] = shift_summary(shifted.records, higher_is_better, config)
    return attacked


def _cell(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table(results: Dict[str, dict], attacked) -> str:
    headers = ["group", "n", "SRCC", "KRCC", "PLCC", "PLCC raw"]
    if attacked:
        headers += ["n attacked", "SRCC attacked", "mean |dd|", "max |dd|"]
    rows = []
    for group, r in results.items():
        if r.get("kind") == "2afc":
            continue
        row = [group, r["n"], _cell(r["srcc"]), _cell(r["krcc"]), _cell(r["plcc"]), _cell(r["plcc_raw"])]
        if attacked:
            a = attacked.get(group)
            row += ["", "", "", ""] if a is None else [a["n"], _cell(a["attacked"]["srcc"]), _cell(a["mean_shift"], 6),
                                                      _cell(a["max_shift"], 6)]
        rows.append(row)
    text = format_table(rows, headers) if rows else ""
    pairwise = results.get("pairwise")
    if pairwise is not None:
        extra = format_table([["pairwise", pairwise["n"], f"{100 * pairwise['score']:.2f}",
                               f"{100 * pairwise['accuracy']:.2f}"]], ["group", "n", "2AFC (%)", "accuracy (%)"])
        text = f"{text}\n\n{extra}" if text else extra
    return text


def _summary(args, distances, task, names, higher_is_better, results, finished, world, counterattack, attack,
             attacked, _preprocess_settings) -> dict:
    from .._version import __version__

    metric = getattr(distances, "metric", None)
    described = distances.describe()
    skipped = [item for r in finished for item in r.skipped]
    summary = {
        "model": distances.name,
        "model_argument": args.model,
        "dataset": args.dataset if args.dataset == "pairs" else names[0],
        "root": str(args.root.resolve()),
        "task": task,
        "score": "Spearman rank correlation (SRCC) of -distance with the score oriented higher-is-better",
        "higher_is_better": higher_is_better,
        "selection": {"dataset": names[0], "split": names[1]} if args.dataset == "iqa" else {"file": names[1]},
        "results": results,
        "skipped": {"n": len(skipped), "items": skipped},
        "spec": metric.spec.to_dict() if metric is not None else None,
        "settings": {"batch_size": args.batch_size, "workers": args.workers, "processes": world,
                     "device": str(distances.device), "precision": described.get("precision", "float32"),
                     **(_preprocess_settings(args.preprocess, metric.spec.preprocessing) if metric is not None else {}),
                     "counterattack": None if counterattack is None else counterattack.to_dict(),
                     "attack": attack},
        "version": __version__,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if attacked is not None:
        summary["attack"] = attacked
    return summary
