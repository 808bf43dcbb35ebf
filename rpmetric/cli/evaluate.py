"""``rpmetric eval nights|bapps|jnd|things ROOT`` and ``rpmetric eval triplets FILE.csv``: agreement with
human judgements (2AFC score, JND mAP, odd-one-out accuracy)."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from ..distributed import local_device
from ..files import check_writable, write_csv, write_json
from .eval_common import add_run_options as _add_run_options, check_distinct_outputs as _check_distinct_outputs
from .eval_common import log_path as _log_path, no_empty_logs as _no_empty_logs
from .eval_common import preprocess_settings as _preprocess_settings, report_skipped as _report_skipped
from .common import check_html_option, format_table

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
    from ..datasets import BAPPS_JND_CATEGORIES, BAPPS_SUBSETS, NIGHTS_SPLITS, bapps_2afc_categories

    p = sub.add_parser("eval", help="score a metric against human judgements (NIGHTS, BAPPS 2AFC, BAPPS JND, THINGS, triplet CSV)",
                       description="Score a metric against human judgements. Runs under torchrun too: "
                                   "`torchrun --nproc_per_node K -m rpmetric eval ...` shards the batches.")
    datasets = p.add_subparsers(dest="dataset", metavar="DATASET")
    datasets.required = True
    for name, (summary, layout) in DESCRIPTIONS.items():
        q = datasets.add_parser(name, help=summary, description=f"{summary}. {layout}")
        q.add_argument("root", type=Path, metavar="ROOT", help="dataset folder")
        if name == "nights":
            # extend: a repeated option adds to the list (argparse's default would keep the last one only)
            q.add_argument("--split", nargs="+", action="extend", default=None, choices=NIGHTS_SPLITS,
                           metavar="SPLIT", help=f"split(s) to evaluate, of {', '.join(NIGHTS_SPLITS)}; "
                                                 "repeatable (default: test)")
            q.add_argument("--allow-outside-root", action="store_true",
                           help="accept data.csv paths that lead out of ROOT (../, absolute paths, symlinks to "
                                "elsewhere); by default such a row is a bad triplet")
        elif name == "jnd":
            q.add_argument("--categories", nargs="+", action="extend", default=None, choices=BAPPS_JND_CATEGORIES,
                           metavar="CATEGORY", help=f"categories, of {', '.join(BAPPS_JND_CATEGORIES)}; repeatable "
                                                    "(default: all)")
        else:  # the choices depend on --subset: mix is in 2afc/train only
            every = bapps_2afc_categories("train", every=True)
            q.add_argument("--categories", nargs="+", action="extend", default=None, choices=every,
                           metavar="CATEGORY",
                           help=f"categories, of {', '.join(every)}; repeatable (mix: --subset train only; default: "
                                f"all of the subset: {', '.join(bapps_2afc_categories('val'))} for val, "
                                f"{', '.join(bapps_2afc_categories('train'))} for train)")
        if name == "bapps":
            q.add_argument("--subset", default="val", choices=BAPPS_SUBSETS,
                           help="2afc/train (lpips' training triplets, 2 raters each) or 2afc/val (default: val)")
        _add_run_options(q)
        _add_preprocess_option(q, name)
        add_counterattack_options(q)
        if name != "jnd":  # the robust protocol is a 2AFC decision
            add_attack_options(q, curves=True, threats=True)
            _add_certify_options(q)
        q.set_defaults(func=run, rerun=(("--resume",), ()))
    _register_file_datasets(datasets)
    from .embed import register_eval_retrieval  # retrieval decisions over embedding stores

    register_eval_retrieval(datasets)
    from .iqa import register_eval_iqa  # correlations with opinion scores: IQA datasets, pair files

    register_eval_iqa(datasets)


def _add_preprocess_option(q, dataset: str) -> None:
    from ..evaluation import DEFAULT_PREPROCESS
    from ..models.spec import PREPROCESS_CONVENTIONS

    q.add_argument("--preprocess", default=None, choices=list(PREPROCESS_CONVENTIONS),
                   help="how images are resized for the model, in the clean pass and under --attack: `model`, the "
                        "model's own (e.g. ConvNeXt: bicubic 256, centre crop 224); `paper`, fra31/perceptual-metrics' "
                        "bilinear resize of the shorter side to the model's input size (224), no crop; `dreamsim`, "
                        "DreamSim's bicubic squash to that size, 224x224 (default: the one that reproduces the "
                        "published protocol, "
                        f"here {DEFAULT_PREPROCESS[dataset]}; not for pixel baselines)")


def _add_certify_options(q) -> None:
    from ..attacks.certify_cli import add_certify_options

    add_certify_options(q)


def _certify_settings(args, attack, counterattack):
    """``(CertifyConfig, radii)`` of ``--certify``, after refusing what it does not combine with;
    None without it."""
    from ..attacks.certify_cli import certify_settings_from_args

    settings = certify_settings_from_args(args) if hasattr(args, "certify") else None
    if settings is None:
        return None
    for option, given in (("--attack", attack is not None), ("--counterattack", counterattack is not None),
                          ("--html", args.html is not None)):
        if given:
            raise ValueError(f"--certify does not combine with {option}; run them as two commands.")
    return settings


def _certify_log(log: Path) -> Path:
    """The default run log of a certification: the clean run's name with ``.certify``, so that the
    two never share (or block) one."""
    return log.with_name(log.name[:-len(".log.jsonl")] + ".certify.log.jsonl")


def _certify_total(results: dict, records: list, radii) -> None:
    """The certified figures of the NIGHTS total: those of the two test parts' triplets together
    (the size-weighted mean of each part's)."""
    from ..attacks.certify import certified_summary

    rows = [r for r in records if r["group"] in ("test_imagenet", "test_no_imagenet")]
    results["total"]["certify"] = certified_summary(rows, radii)


def run(args) -> int:
    from .. import distributed
    from ..attacks.cli import attack_config_from_args
    from ..counterattack import counterattack_from_args
    from ..evaluation import (DEFAULT_PREPROCESS, PIXEL_BASELINES, TASKS, evaluate, load_distances, load_groups,
                              nights_total)
    from ..evaluation import FILE_DATASETS, load_file_groups

    counterattack = counterattack_from_args(args)
    attack = attack_config_from_args(args) if hasattr(args, "attack") else None
    certify = _certify_settings(args, attack, counterattack)
    for option, given in (("--counterattack", counterattack is not None), ("--attack", attack is not None),
                          ("--certify", certify is not None)):
        if given and args.model in PIXEL_BASELINES:
            raise ValueError(f"{option} needs a model with an encoder, but --model is the {args.model} pixel baseline; "
                             "choose a model (see `rpmetric models`).")
    if args.model in PIXEL_BASELINES and args.preprocess is not None:
        raise ValueError(f"--preprocess needs a model with an encoder, but --model is the {args.model} pixel baseline, "
                         "which compares the images as loaded; drop --preprocess.")
    if args.model not in PIXEL_BASELINES and args.preprocess is None:
        args.preprocess = DEFAULT_PREPROCESS[args.dataset]  # resolved here, so that the JSON records it
    if attack is not None and args.max_batches is not None:
        raise ValueError("--max-batches applies to the clean evaluation only; drop it or drop --attack.")
    _check_distinct_outputs(args)
    if args.html_examples is not None and args.html is None:
        raise ValueError("--html-examples sets what the review page shows; add --html PAGE.html or drop it.")
    check_html_option(args)
    for option in ("out", "per_sample"):  # before the run, not after it
        if getattr(args, option) is not None:
            check_writable(getattr(args, option), "--" + option.replace("_", "-"))
    rank, world = distributed.init_from_env()
    if attack is not None and world > 1:
        raise ValueError("--attack runs in a single process; launch it without torchrun.")
    if attack is not None and counterattack is not None and args.dataset == "things":
        raise ValueError("--attack on things evaluates the plain metric; drop --counterattack (the adaptive "
                         "evaluation of a counterattack is for 2AFC: nights, bapps, triplets).")
    try:
        subset = getattr(args, "subset", "val")
        if args.dataset in FILE_DATASETS:  # one file, one group
            task, groups, skipped = load_file_groups(args.dataset, args.root, triplets=getattr(args, "triplets", None),
                                                     skip_bad=args.skip_bad)
            names = list(groups)
        else:
            names = _selection(args)
            task, groups, skipped = load_groups(args.dataset, args.root, names, subset, skip_bad=args.skip_bad,
                                                allow_outside_root=getattr(args, "allow_outside_root", False))
        distances = load_distances(args.model, device=local_device(args.device), counterattack=counterattack,
                                   preprocess=args.preprocess)
        log, default_log = _log_path(args, distances, names, subset)
        if certify is not None and args.log is None and args.out is None:
            log = _certify_log(log)
        args.progress = log  # what --resume continues after an interruption (see cli.main)
        # The model is not recorded as typed: evaluate() records its resolved location and files, so
        # that the same folder spelled another way resumes and another folder of the same name does not.
        run_config = {"dataset": args.dataset, "root": str(args.root.resolve()),
                      **({"subset": subset} if args.dataset == "bapps" else {}),
                      **({"preprocess": args.preprocess} if args.preprocess is not None else {}),
                      **_file_selection(args)}
        if certify is not None:
            from ..attacks.certify import certify_task

            certify_spec = certify_task(*certify)
        with _no_empty_logs([log], rank == 0):
            result = evaluate(distances, task if certify is None else certify_spec, groups, batch_size=args.batch_size, workers=args.workers, log=log,
                              resume=args.resume, run_config=run_config, skip_bad=args.skip_bad, skipped=skipped,
                              progress=True, max_batches=args.max_batches)
    finally:
        distributed.shutdown()
    if rank != 0:
        return 0  # rank 0 alone reports and writes files
    spec = TASKS[task] if certify is None else certify_spec
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
        if certify is not None:
            _certify_total(results, result.records, certify[1])
    if args.dataset == "triplets":
        _add_binary_accuracy(results, result.records)
    attacked, details = None, {}
    if attack is not None:
        with _no_empty_logs(_log_files(log, groups)[1:], True):
            attacked = (_attack_odd_one_out(args, distances, groups, result, attack, log) if task == "odd-one-out"
                        else _attack(args, distances, groups, result, attack, log, details))
    label = "split" if args.dataset == "nights" else "set" if args.dataset in FILE_DATASETS else "category"
    headers = [label, "n", _SCORE_HEADERS.get(task, "2AFC (%)")]
    rows = [[g, r["n"], f"{100 * r['score']:.2f}"] for g, r in results.items()]
    if args.dataset == "triplets":
        headers.append("binary acc (%)")
        rows = [row + [f"{100 * results[row[0]]['accuracy']:.2f}"] for row in rows]
    if attacked is not None:
        from ..attacks.cli import attack_columns, attack_headers

        headers += attack_headers(counterattack is not None, attack)
        rows = [row + attack_columns(attacked.get(row[0]), counterattack is not None, attack) for row in rows]
    if certify is not None:
        from ..attacks.certify_cli import certify_columns, certify_headers

        headers += certify_headers(certify[1])
        rows = [row + certify_columns(results[row[0]].get("certify")) for row in rows]
    print(format_table(rows, headers))
    if args.out is not None:
        summary = _summary(args, distances, task, names, subset, results, result, world)
        summary["settings"].update(_defences(args, counterattack, attack))
        if attacked is not None:
            summary["attack"] = attacked
        if certify is not None:
            from ..attacks.certify_cli import certify_settings_record

            summary["settings"]["certify"] = certify_settings_record(*certify)
        write_json(args.out, summary)
    if args.per_sample is not None:
        columns = ["group", "id", *spec.outputs, spec.target]
        records = result.records
        if certify is not None:
            from ..attacks.certify import typed_records

            records = typed_records(records)
        write_csv(args.per_sample, columns, ([r[c] for c in columns] for r in records))
    if args.html is not None:
        _page(args, distances, task, names, results, result, groups, attacked, details, counterattack)
    if default_log:  # complete: everything is in the outputs now
        for path in _log_files(log, groups):
            path.unlink(missing_ok=True)
    return 0


def _selection(args) -> list:
    """The splits or categories asked for, each once, in the order given (the default when none)."""
    from ..datasets import BAPPS_JND_CATEGORIES, bapps_2afc_categories

    given = args.split if args.dataset == "nights" else args.categories
    if not given:
        given = (["test"] if args.dataset == "nights" else list(BAPPS_JND_CATEGORIES) if args.dataset == "jnd"
                 else list(bapps_2afc_categories(getattr(args, "subset", "val"))))
    return list(dict.fromkeys(given))


def _attack(args, distances, groups, result, options, log, details):
    """Robust 2AFC accuracy per group (rpmetric.attacks), on the triplets the clean run did not skip;
    with --html, ``details`` receives each group's AttackResult and its first attacked references."""
    from ..attacks.cli import attack_groups

    bad = {(item["group"], item["id"]) for item in result.skipped}
    kept = {g: [t for t in records if (g, t.id) not in bad] for g, records in groups.items()}
    return attack_groups(distances.metric, kept, options, batch_size=args.batch_size, workers=args.workers,
                         log=log, resume=args.resume, progress=True,
                         keep_images=_html_examples(args) if args.html is not None else 0, details=details)


def _html_examples(args) -> int:
    from ..report.evaluation import EXAMPLES

    return EXAMPLES if args.html_examples is None else args.html_examples


def _page(args, distances, task, names, results, result, groups, attacked, details, counterattack) -> None:
    """``--html``: the review page, from the results of this run (nothing is evaluated again)."""
    from ..report import write_eval_page

    settings = {"model": distances.name, "dataset": f"{args.dataset} {args.root.resolve()}",
                "selection": ", ".join(names), "skipped": str(len(result.skipped))}
    if attacked:
        first = next(iter(attacked.values()))["attack"] or {}
        settings["attack"] = ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in first.items())
    if counterattack is not None:
        settings["counterattack"] = repr(counterattack)
    page = write_eval_page(args.html, task=task, results=results, records=result.records, groups=groups,
                           title=f"rpmetric eval {args.dataset}: {distances.name}", settings=settings,
                           attack=attacked, attack_details=details,
                           tau_threshold=getattr(counterattack, "tau_threshold", None),
                           examples=_html_examples(args), progress=True)
    print(f"rpmetric eval: review page written to {page}", file=sys.stderr)


def _log_files(log: Path, groups) -> list:
    """The clean run's log, then the attack's log of each group."""
    from ..attacks.cli import attack_log_path

    return [log, *(attack_log_path(log, g) for g in groups)]


def _defences(args, counterattack, attack) -> dict:
    """The counterattack and the attack as the JSON's settings record them: None for what is off,
    nothing for what the dataset does not offer (JND has no attack)."""
    settings = {"counterattack": None if counterattack is None else counterattack.to_dict()}
    if hasattr(args, "attack"):
        settings["attack"] = attack if attack is None or counterattack is not None else {
            k: v for k, v in attack.items() if k != "eot_samples"}  # it applies to a counterattack only
    return settings


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
        "score": _SCORE_NAMES.get(task, "2AFC score"),
        "selection": _file_selection(args, names) if args.dataset in _FILE_DATASETS else
                     {"splits" if args.dataset == "nights" else "categories": list(names),
                      **({"subset": subset} if args.dataset == "bapps" else {})},
        "results": results,
        "skipped": {"n": len(result.skipped), "items": result.skipped},
        "spec": metric.spec.to_dict() if metric is not None else None,
        "settings": {"batch_size": args.batch_size, "workers": args.workers, "processes": world,
                     "device": str(distances.device),
                     "precision": described.get("precision", "float32"),
                     **(_preprocess_settings(args.preprocess, metric.spec.preprocessing)
                        if metric is not None else {})},
        "version": __version__,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# -- datasets of one file: THINGS odd-one-out and triplet CSV files ------------------------------
_FILE_DATASETS = ("things", "triplets")  # rpmetric.evaluation.FILE_DATASETS, without importing torch here
_SCORE_HEADERS = {"jnd": "mAP (%)", "2afc": "2AFC (%)", "odd-one-out": "accuracy (%)"}
_SCORE_NAMES = {"jnd": "JND mean average precision", "2afc": "2AFC score", "odd-one-out": "odd-one-out accuracy"}
FILE_DESCRIPTIONS = {
    "things": ("THINGS odd-one-out accuracy (DreamSim's layout)",
               "ROOT is the image folder, {id}.png (or .jpg), and holds the triplet file things_valset.txt "
               "unless --triplets names another: three image ids a line, the third the people's odd one out. The "
               "metric's odd one out is the image outside the closest pair; a tie between k candidates counts 1/k."),
    "triplets": ("2AFC score and binary accuracy of a ref,left,right,p CSV file",
                 "FILE.csv has the header ref,left,right,p (and optionally id); image paths are relative to its "
                 "folder and stay inside it; p is the share of people who judged right closer to ref."),
}


def _register_file_datasets(datasets) -> None:
    from ..attacks.cli import add_attack_options
    from ..counterattack import add_counterattack_options

    for name, (summary, layout) in FILE_DESCRIPTIONS.items():
        q = datasets.add_parser(name, help=summary, description=f"{summary}. {layout}")
        if name == "things":
            q.add_argument("root", type=Path, metavar="ROOT", help="THINGS image folder")
            q.add_argument("--triplets", type=Path, default=None, metavar="FILE",
                           help="the triplet file, three image ids a line (default: ROOT/things_valset.txt, "
                                "DreamSim's file from https://osf.io/b2a4j)")
        else:
            q.add_argument("root", type=Path, metavar="FILE.csv", help="the triplet CSV file")
        _add_run_options(q)
        _add_preprocess_option(q, name)
        add_counterattack_options(q)
        if name == "things":
            add_attack_options(q, target="one image at a time: each of the three in turn, the others clean",
                               samples="triplets", counterattack=False)
        else:
            add_attack_options(q, curves=True)
        q.set_defaults(func=run, rerun=(("--resume",), ()))


def _file_selection(args, names=None) -> dict:
    """What a one-file dataset reads, for the run log (``names`` None) or the JSON's ``selection``."""
    if args.dataset not in _FILE_DATASETS:
        return {}
    if args.dataset == "triplets":
        chosen = {"file": str(args.root.resolve())}
    else:
        from ..datasets import THINGS_TRIPLETS

        chosen = {"triplets": str((args.triplets or args.root / THINGS_TRIPLETS).resolve())}
    return chosen if names is None else {**chosen, "sets": list(names)}


def _add_binary_accuracy(results, records) -> None:
    """Each group's binary accuracy beside its 2AFC score (see :func:`rpmetric.scoring.binary_accuracy`)."""
    from ..scoring import binary_accuracy

    for group, summary in results.items():
        rows = [r for r in records if r["group"] == group]
        summary["accuracy"] = binary_accuracy([r["d0"] for r in rows], [r["d1"] for r in rows], [r["p"] for r in rows])


def _attack_odd_one_out(args, distances, groups, result, options, log):
    """Robust odd-one-out accuracy per group (rpmetric.attacks.oddoneout), on the triplets the clean
    run did not skip."""
    from ..attacks.oddoneout import attack_odd_one_out_groups

    bad = {(item["group"], item["id"]) for item in result.skipped}
    kept = {g: [t for t in records if (g, t.id) not in bad] for g, records in groups.items()}
    return attack_odd_one_out_groups(distances.metric, kept, options, batch_size=args.batch_size,
                                     workers=args.workers, log=log, resume=args.resume, progress=True)
