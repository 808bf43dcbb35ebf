"""Command-line options of the attack, for any command that evaluates 2AFC (``rpmetric eval``)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from ..counterattack import pixel_unit_notice
from ..evaluation import nights_total
from .config import SQUARE_QUERIES, AttackConfig, Norm, Target, radius_label

__all__ = ["add_attack_options", "attack_config_from_args", "attack_groups", "attack_log_path", "attack_columns",
           "attack_headers"]

_OPTIONS = ("eps", "steps", "restarts", "n_samples", "seed", "eot_samples")
_THREAT_OPTIONS = ("attack_target", "attack_suite", "square_queries")


def add_attack_options(parser: argparse.ArgumentParser, *, target: str = "the reference image",
                       samples: str = "triplets of each split or category", counterattack: bool = True,
                       curves: bool = False, threats: bool = False) -> None:
    """Add ``--attack linf|l2`` and its knobs; all default to None so that
    :func:`attack_config_from_args` can tell what was given.

    Args:
        target: what the attack perturbs, for the help text.
        samples: what ``--n-samples`` counts, for the help text.
        counterattack: offer ``--eot-samples`` (only meaningful where ``--counterattack`` exists).
        curves: accept several radii after ``--eps`` (a robustness curve in one run); otherwise
            more than one is refused with a one-line error by :func:`attack_config_from_args`.
        threats: offer the 2AFC threat models and the ensemble: ``--attack-target``,
            ``--attack-suite`` and ``--square-queries``.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_attack_options(parser)
        >>> attack_config_from_args(parser.parse_args(["--attack", "linf", "--eps", "8"]))["eps"] == 8 / 255
        True
    """
    group = parser.add_argument_group(f"robust evaluation (APGD-CE on {target})")
    group.add_argument("--attack", choices=[n.value for n in Norm], default=None,
                       help=f"also report accuracy under APGD-CE in this norm, on {target} "
                            "at the model's input size, in [0, 1]")
    several = (" Several radii (--eps 0 1 2 4 8) give robust accuracy at each, in increasing order, in one run "
               "that embeds the clean images once; a triplet fooled at a smaller radius counts as fooled at the "
               "larger ones." if curves else "")
    # One radius where the command takes one, so that `--eps 4 STORE` still reads STORE as positional.
    group.add_argument("--eps", type=_radius if curves else float, nargs="+" if curves else None, default=None,
                       metavar="E", help="attack radius: in units of 1/255 for linf (default 4, i.e. 4/255), "
                                         f"absolute for l2 (default 3).{several}")
    parser.set_defaults(eps_curves=curves)
    group.add_argument("--steps", type=int, default=None, metavar="S", help="APGD iterations (default 100)")
    group.add_argument("--restarts", type=int, default=None, metavar="R", help="APGD random restarts (default 1)")
    group.add_argument("--n-samples", type=int, default=None, metavar="N",
                       help=f"attack only the first N {samples} (default: all)")
    group.add_argument("--seed", type=int, default=None, metavar="S", help="APGD seed (default 0)")
    if counterattack:
        group.add_argument("--eot-samples", type=int, default=None, metavar="K",
                           help="with --counterattack: gradient samples per step of the adaptive attack, each "
                                "through the defence with another seed (default 4)")
    if threats:
        group.add_argument("--attack-target", choices=[t.value for t in Target], default=None,
                           help="what the attack perturbs: `ref`, the reference (the published protocol; default); "
                                "`distorted`, the image people judged closer (left when p = 0.5), pushed away from "
                                "the reference (Ghildyal & Liu, TMLR 2023); `both`, all three images at once, each "
                                "in its own eps-ball")
        group.add_argument("--attack-suite", action="store_true", default=None,
                           help="per triplet the worst case over APGD-CE, APGD on the margin, APGD on the target "
                                "logit (not with --attack-target distorted) and the black-box Square; robust only if "
                                "every attack fails; reports each attack's robust accuracy and the ensemble's")
        group.add_argument("--square-queries", type=int, default=None, metavar="Q",
                           help=f"with --attack-suite: Square's query budget (default {SQUARE_QUERIES}, "
                                "pyautoattack's)")


def attack_config_from_args(args: argparse.Namespace) -> Optional[dict]:
    """Keyword arguments for :func:`rpmetric.attacks.evaluate_attack` from the parsed options, with
    ``eps`` in absolute units; None when ``--attack`` was not given.

    With several ``--eps`` radii (where :func:`add_attack_options` was given ``curves=True``),
    ``eps`` is their list in increasing order.

    Raises:
        ValueError: an attack option without ``--attack``, ``--eot-samples`` without
            ``--counterattack``, several radii where the command takes one, a radius given twice, or a
            bad value (checked now, not after the clean evaluation).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_attack_options(parser)
        >>> attack_config_from_args(parser.parse_args([]))
        >>> attack_config_from_args(parser.parse_args(["--attack", "l2"]))
        {'norm': 'l2', 'eps': 3.0, 'steps': 100, 'restarts': 1, 'seed': 0, 'eot_samples': 4, 'n_samples': None}
    """
    given = {name: getattr(args, name, None) for name in _OPTIONS + _THREAT_OPTIONS}
    if args.attack is None:
        stray = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
        if stray:
            raise ValueError(f"{', '.join(stray)} only apply to a robust evaluation; add --attack linf or --attack l2.")
        return None
    norm = Norm.parse(args.attack)
    if given["eot_samples"] is not None and not getattr(args, "counterattack", None):
        # Otherwise it would be ignored, yet recorded in the run's configuration (so blocking a resume).
        raise ValueError("--eot-samples only applies to the adaptive attack on a counterattack; add --counterattack "
                         "or drop --eot-samples.")
    if given["square_queries"] is not None and not given["attack_suite"]:
        raise ValueError("--square-queries sets the Square attack of the ensemble; add --attack-suite or drop "
                         "--square-queries.")
    if given["square_queries"] is not None and given["square_queries"] < 1:
        raise ValueError(f"Argument `--square-queries` must be at least 1, but got {given['square_queries']}.")
    threats = {}
    if hasattr(args, "attack_target"):  # the 2AFC evaluation; other commands do not offer them
        threats = {"target": given["attack_target"] or "ref", "suite": bool(given["attack_suite"]),
                   "square_queries": SQUARE_QUERIES if given["square_queries"] is None else given["square_queries"]}
    radii = _cli_radii(args, norm, given["eps"])
    defaults = AttackConfig()
    configs = [AttackConfig.create(
        norm, eps,
        steps=defaults.steps if given["steps"] is None else given["steps"],
        restarts=defaults.restarts if given["restarts"] is None else given["restarts"],
        seed=defaults.seed if given["seed"] is None else given["seed"],
        eot_samples=defaults.eot_samples if given["eot_samples"] is None else given["eot_samples"], **threats)
        for eps in radii]
    config = configs[0]
    n_samples = given["n_samples"]
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"Argument `--n-samples` must be at least 1, but got {n_samples}.")
    from .apgd import apgd_class

    apgd_class()  # a missing pyautoattack fails now, not after the clean evaluation
    eps = config.eps if len(configs) == 1 else [c.eps for c in configs]
    options = {"norm": config.norm.value, "eps": eps, "steps": config.steps, "restarts": config.restarts,
               "seed": config.seed, "eot_samples": config.eot_samples, "n_samples": n_samples}
    if threats:
        options.update(target=config.target.value, suite=list(config.suite))
        if config.suite:
            from .square import square_class

            square_class()
            options["square_queries"] = config.square_queries
    return options


def _cli_radii(args: argparse.Namespace, norm: Norm, given) -> list:
    """The ``--eps`` radii in absolute units, in increasing order: ``[None]`` (the default radius)
    when none was given."""
    if given is None:
        return [None]
    values = list(given) if isinstance(given, (list, tuple)) else [given]
    if len(values) > 1 and not getattr(args, "eps_curves", False):
        raise ValueError(f"--eps takes one radius here, but got {len(values)} ({' '.join(f'{v:g}' for v in values)}); "
                         "robustness curves over several radii are for `rpmetric eval nights|bapps`.")
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise ValueError(f"--eps gives the radius {twice:g} twice; give each radius once.")
    radii = []
    for eps in sorted(values):
        _check_cli_eps(norm, eps)
        notice = pixel_unit_notice("--eps", eps) if norm is Norm.LINF else None
        if notice:
            print(f"rpmetric {getattr(args, 'command', '')}: warning: {notice}", file=sys.stderr)
        # the command line states l-inf radii as the papers do, in 1/255 units
        radii.append(eps / 255 if norm is Norm.LINF else eps)
    return radii


def attack_groups(metric, groups: Mapping[str, Sequence], options: dict, *, batch_size: int, workers: int = 0,
                  log: Optional[Path] = None, resume: bool = False, progress: bool = True, keep_images: int = 0,
                  details: Optional[dict] = None) -> Dict[str, dict]:
    """Run :func:`~rpmetric.attacks.evaluate_attack` on each group (split or category) with the
    options from :func:`attack_config_from_args`; ``{group: AttackResult.to_dict()}``.

    Each group has its own run log, ``LOG.attack-GROUP.jsonl`` beside ``log``. When both NIGHTS test
    parts were attacked, ``"total"`` holds their mean weighted by the attacked counts (with
    ``n_samples``, the first N of each part), like the 2AFC total.

    A ``details`` dict receives each group's :class:`~rpmetric.attacks.AttackResult` (its
    per-triplet records, and with ``keep_images`` the first attacked references), for a review page.

    Example:
        >>> results = attack_groups(metric, {"test_imagenet": triplets}, options, batch_size=16)  # doctest: +SKIP
    """
    from .evaluate import evaluate_attack

    results = {}
    for group, records in groups.items():
        runlog = None if log is None else attack_log_path(log, group)
        result = evaluate_attack(metric, records, batch_size=batch_size, workers=workers, runlog_path=runlog,
                                 resume=resume and runlog is not None and runlog.exists(), progress=progress,
                                 keep_images=keep_images, **options)
        results[group] = result.to_dict()
        if details is not None:
            details[group] = result
    if all(g in results for g in _NIGHTS_TEST):
        results["total"] = _weighted_total(results)
    return results


def attack_log_path(log, group: str) -> Path:
    """The run log of the attack on ``group`` beside the clean run's ``log``: ``LOG.attack-GROUP.jsonl``."""
    return Path(log).with_name(f"{Path(log).name}.attack-{group}.jsonl")


def attack_columns(summary: Optional[dict], defended: bool, options: Optional[dict] = None) -> List[str]:
    """Table cells for one group's attack summary, the attacked count then percentages;
    ``attack_headers(defended, options)`` names them. A summary with ``per_eps`` (several radii)
    gives its robust accuracy per radius (and with a counterattack its non-adaptive, then adaptive,
    accuracy per radius)."""
    if summary is None:
        return [""] * len(attack_headers(defended, options))
    ca = summary.get("counterattack") or {}
    points = summary.get("per_eps")
    if points is None:
        cells = [summary["clean_accuracy"], summary["robust_accuracy"]]
        if defended:
            cells += [ca.get("clean_accuracy"), ca.get("nonadaptive_accuracy"), ca.get("adaptive_accuracy")]
    else:
        cells = [summary["clean_accuracy"], *(point["robust_accuracy"] for point in points)]
        if defended:
            cells += [ca.get("clean_accuracy"), *(point["counterattack"][key] for key in
                                                  ("nonadaptive_accuracy", "adaptive_accuracy") for point in points)]
    cells += _suite_cells(summary, defended, options)
    return [str(summary["n"])] + ["" if v is None else f"{100 * v:.2f}" for v in cells]


def _suite_cells(summary: dict, defended: bool, options: Optional[dict]) -> list:
    """With ``--attack-suite``: each attack's robust accuracy (per radius), then through the defence."""
    suite = (options or {}).get("suite") or []
    points = summary.get("per_eps") or [summary]
    cells = [(point.get("suite") or {}).get(name) for name in suite for point in points]
    if defended:
        cells += [((point.get("counterattack") or {}).get("adaptive_suite") or {}).get(name)
                  for name in suite for point in points]
    return cells


def attack_headers(defended: bool, options: Optional[dict] = None) -> List[str]:
    """The names of :func:`attack_columns`' cells; ``options`` (from :func:`attack_config_from_args`)
    with several radii names one column per radius, e.g. ``robust @4/255 (%)``.

    Example:
        >>> attack_headers(False, {"norm": "linf", "eps": [0.0, 4 / 255]})
        ['n attacked', 'clean acc (%)', 'robust @0 (%)', 'robust @4/255 (%)']
    """
    radii = None if options is None or not isinstance(options["eps"], list) else options["eps"]
    if radii is None:
        headers = ["n attacked", "clean acc (%)", "robust acc (%)"]
        headers = headers + ["defended clean (%)", "non-adaptive (%)", "adaptive (%)"] if defended else headers
        return headers + _suite_headers(defended, options, [""])
    names = [radius_label(options["norm"], eps) for eps in radii]
    headers = ["n attacked", "clean acc (%)", *(f"robust @{name} (%)" for name in names)]
    if defended:
        headers += ["defended clean (%)", *(f"{kind} @{name} (%)" for kind in ("non-adaptive", "adaptive")
                                            for name in names)]
    return headers + _suite_headers(defended, options, [f" @{name}" for name in names])


def _suite_headers(defended: bool, options: Optional[dict], at: List[str]) -> List[str]:
    """Names of :func:`_suite_cells`: ``apgd-margin (%)``, ``adaptive square @4/255 (%)``...; with
    the suite, the robust (and adaptive) columns before them are the worst case over these."""
    suite = (options or {}).get("suite") or []
    headers = [f"{name}{radius} (%)" for name in suite for radius in at]
    return headers + ([f"adaptive {name}{radius} (%)" for name in suite for radius in at] if defended else [])


def _radius(text: str) -> float:
    """An argparse ``type`` for one of several ``--eps`` radii, whose error says why a positional
    argument after them was read as a radius."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be numbers, but got {text!r}; --eps takes every value up to the next option, so put "
            "positional arguments (ROOT) before --eps") from None


def _check_cli_eps(norm: Norm, eps: float) -> None:
    """Check ``--eps`` as typed, before the l-inf value is converted from 1/255 units."""
    if norm is Norm.LINF and not 0 <= eps <= 255:
        raise ValueError(f"Argument `--eps` must be in [0, 255] for --attack linf, in units of 1/255 (4 means "
                         f"4/255), but got {eps:g}.")
    if norm is Norm.L2 and not (0 <= eps and math.isfinite(eps)):
        raise ValueError(f"Argument `--eps` must be a finite number >= 0 for --attack l2 (absolute, e.g. 3), "
                         f"but got {eps:g}.")


_NIGHTS_TEST = ("test_imagenet", "test_no_imagenet")


def _weighted_total(results: Dict[str, dict]) -> dict:
    """The NIGHTS total of every figure of the two test parts' summaries (:func:`nights_total`)."""
    def mean(get):
        return nights_total({g: {"n": results[g]["n"], "score": get(results[g])} for g in _NIGHTS_TEST})["score"]

    first = results[_NIGHTS_TEST[0]]
    if "per_eps" in first:
        return _weighted_curve_total(results, mean)
    total = {"n": sum(results[g]["n"] for g in _NIGHTS_TEST),
             "clean_accuracy": mean(lambda p: p["clean_accuracy"]),
             "robust_accuracy": mean(lambda p: p["robust_accuracy"]), "attack": first["attack"]}
    if "counterattack" in first:
        total["counterattack"] = {"config": first["counterattack"]["config"], **{
            key: mean(lambda p, key=key: p["counterattack"][key])
            for key in ("clean_accuracy", "nonadaptive_accuracy", "adaptive_accuracy", "worst_case_accuracy")}}
    _add_suite_totals(total, first, mean, lambda p: p)
    return total


def _add_suite_totals(total: dict, first: dict, mean, get) -> None:
    """The NIGHTS total of each attack's figure in the suite's summaries (``suite`` and the
    counterattack's ``adaptive_suite``) of the parts (``get`` finds the summary in a part's)."""
    if "suite" in first:
        total["suite"] = {name: mean(lambda p, name=name: get(p)["suite"][name]) for name in first["suite"]}
    adaptive = (first.get("counterattack") or {}).get("adaptive_suite")
    if adaptive is not None:
        total["counterattack"]["adaptive_suite"] = {
            name: mean(lambda p, name=name: get(p)["counterattack"]["adaptive_suite"][name]) for name in adaptive}


def _weighted_curve_total(results: Dict[str, dict], mean) -> dict:
    """:func:`_weighted_total` of summaries with ``per_eps``: each radius's figures averaged alike."""
    first = results[_NIGHTS_TEST[0]]
    per_eps = []
    for k, point in enumerate(first["per_eps"]):
        item = {"eps": point["eps"], "robust_accuracy": mean(lambda p, k=k: p["per_eps"][k]["robust_accuracy"])}
        if "counterattack" in point:
            item["counterattack"] = {key: mean(lambda p, k=k, key=key: p["per_eps"][k]["counterattack"][key])
                                     for key in point["counterattack"] if key != "adaptive_suite"}
        _add_suite_totals(item, point, mean, lambda p, k=k: p["per_eps"][k])
        per_eps.append(item)
    total = {"n": sum(results[g]["n"] for g in _NIGHTS_TEST), "clean_accuracy": mean(lambda p: p["clean_accuracy"]),
             "attack": first["attack"], "per_eps": per_eps}
    if "counterattack" in first:
        total["counterattack"] = {"config": first["counterattack"]["config"],
                                  "clean_accuracy": mean(lambda p: p["counterattack"]["clean_accuracy"])}
    return total
