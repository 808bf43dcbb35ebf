"""Figures of evaluation results: grouped bars of the score and the attack accuracies, and
accuracy-vs-eps robustness curves, drawn from the JSON that ``rpmetric eval --out`` writes.

Each builder takes results (dicts as that JSON holds them, or paths to such files) and returns a
:class:`matplotlib.figure.Figure` on the Agg canvas, without pyplot's global state: a notebook
shows it as a cell's value, a script saves it with :func:`save_figure`. matplotlib comes with the
``plot`` extra (``pip install "rpmetric[plot]"``) and is imported only when a figure is drawn.

- :func:`score_bars`: per group (split or category), one bar per result for the 2AFC score (or
  JND mAP), and with ``--attack`` for the clean and the robust accuracy (one bar per radius).
- :func:`robustness_curve`: per group, robust accuracy against the radius, one line per result,
  starting at eps = 0 with the clean accuracy (and dashed, the worst case under a counterattack).
- :func:`comparison_figure`: what ``rpmetric plot`` draws: the bars, and the curves below them when
  a result has several radii.
- :func:`read_result`: one result file, checked, with errors that name the file.

In the figures, accuracies are percentages and l-inf radii are in units of 1/255, as the command
line states them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..errors import MissingDependencyError

__all__ = ["FIGURE_FORMATS", "read_result", "score_bars", "robustness_curve", "comparison_figure", "save_figure"]

FIGURE_FORMATS = ("png", "svg", "pdf")
# A result of `rpmetric eval --out` is kilobytes (megabytes with many skipped items); anything far
# larger is the wrong file, and is refused before it is read into memory.
_MAX_RESULT_BYTES = 256 * 2**20
_TASKS = ("2afc", "jnd")
_TASKS += ("odd-one-out",)  # THINGS
# `rpmetric eval iqa|pairs`: the score is an SRCC in [-1, 1]; under attack, the SRCC after it.
_CORRELATION_TASKS = ("correlation", "correlation-inverse")
_FIX = "give a result file written by `rpmetric eval nights|bapps|jnd|things|triplets|iqa|pairs --out`"

Results = Union[dict, str, Path, Sequence[Union[dict, str, Path]]]


# -- reading and checking results ------------------------------------------------------------
def read_result(path: Union[str, Path]) -> dict:
    """The result JSON at ``path``, checked for what the figures read.

    Raises:
        ValueError: the file cannot be read, is not JSON, or is not a result of ``rpmetric eval``
            (a missing or non-numeric field); the message names the file and the field.

    Example:
        >>> import tempfile
        >>> bad = Path(tempfile.mkdtemp()) / "bad.json"
        >>> _ = bad.write_text('{"results": {}}')
        >>> read_result(bad)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: .../bad.json is not a result of `rpmetric eval`: its 'task' is missing; give a result file ...
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise ValueError(f"{path} is a folder; {_FIX}.")
        size = path.stat().st_size
        if size > _MAX_RESULT_BYTES:
            raise ValueError(f"{path} holds {size / 2**20:.0f} MiB, far more than a result of `rpmetric eval`; "
                             f"{_FIX}.")
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"Cannot read {path}: {err.strerror or err}; {_FIX}.") from None
    try:
        result = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not JSON ({err}); {_FIX}.") from None
    _check_result(result, str(path))
    return result


def _check_result(result, source: str) -> None:
    def fail(problem: str):
        raise ValueError(f"{source} is not a result of `rpmetric eval`: {problem}; {_FIX}.")

    if not isinstance(result, dict):
        fail(f"it holds a JSON {type(result).__name__}, not an object")
    if result.get("task") in _CORRELATION_TASKS:
        return _check_correlation(result, fail)
    if result.get("task") not in _TASKS:
        fail("its 'task' is missing" if "task" not in result else
             f"its 'task' is {result['task']!r}, not one of {_TASKS}")
    groups = result.get("results")
    if not isinstance(groups, dict) or not groups:
        fail("it has no 'results' of any split or category")
    for group, summary in groups.items():
        _number(summary, "score", f"results[{group!r}]", fail)
    attack = result.get("attack")
    if attack is None:
        return
    if not isinstance(attack, dict):
        fail("its 'attack' is not an object of splits or categories")
    for group, summary in attack.items():
        where = f"attack[{group!r}]"
        _number(summary, "clean_accuracy", where, fail, unit=True)
        config = summary.get("attack")
        if not isinstance(config, dict) or config.get("norm") not in ("linf", "l2"):
            fail(f"{where} has no 'attack' with a 'norm' of 'linf' or 'l2'")
        if "per_eps" in summary:
            points = summary["per_eps"]
            if not isinstance(points, list) or not points:
                fail(f"{where}['per_eps'] is not a list of radii")
            for k, point in enumerate(points):
                _number(point, "eps", f"{where}['per_eps'][{k}]", fail)
                _number(point, "robust_accuracy", f"{where}['per_eps'][{k}]", fail, unit=True)
            radii = [point["eps"] for point in points]
            if radii != sorted(set(radii)):
                fail(f"{where}['per_eps'] radii {radii} are not increasing")
        else:
            _number(summary, "robust_accuracy", where, fail, unit=True)
            _number(config, "eps", f"{where}['attack']", fail)


def _check_correlation(result: dict, fail) -> None:
    """A result of ``rpmetric eval iqa|pairs``: correlations in [-1, 1] (None where undefined)."""
    groups = result.get("results")
    if not isinstance(groups, dict) or not groups:
        fail("it has no 'results' of any group")
    for group, summary in groups.items():
        if not isinstance(summary, dict) or "score" not in summary:
            fail(f"results[{group!r}] has no 'score'")
        value = summary["score"]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not -1 <= value <= 1):
            fail(f"results[{group!r}]['score'] is {value!r}, not a correlation in [-1, 1]")
    for group, summary in (result.get("attack") or {}).items():
        if not isinstance(summary, dict) or not isinstance(summary.get("attacked"), dict) \
                or not isinstance(summary.get("attack"), dict) or summary["attack"].get("norm") not in ("linf", "l2"):
            fail(f"attack[{group!r}] is not a correlation attack summary (attacked, attack with a norm)")


def _number(container, name: str, where: str, fail, unit: bool = False) -> None:
    if not isinstance(container, dict) or name not in container:
        fail(f"{where} has no {name!r}")
    value = container[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        fail(f"{where}[{name!r}] is {value!r}, not a finite number >= 0")
    if unit and value > 1:
        fail(f"{where}[{name!r}] is {value!r}, not an accuracy in [0, 1]")


# -- what the figures draw -------------------------------------------------------------------
@dataclass
class _Run:
    """One result, as the figures read it."""

    label: str
    source: str
    model: str
    task: str
    score_name: str
    scores: Dict[str, float]
    clean: Dict[str, float] = field(default_factory=dict)
    norm: Optional[str] = None
    # per group: [(eps, robust accuracy)] over the radii measured, increasing
    robust: Dict[str, List[Tuple[float, float]]] = field(default_factory=dict)
    defended_clean: Dict[str, float] = field(default_factory=dict)
    defended: Dict[str, List[Tuple[float, float]]] = field(default_factory=dict)  # worst case per radius

    @property
    def several_radii(self) -> bool:
        return any(len(points) > 1 for points in self.robust.values())


def _runs(results: Results, labels: Optional[Sequence[str]]) -> List[_Run]:
    items = [results] if isinstance(results, (dict, str, Path)) else list(results)
    if not items:
        raise ValueError("Argument `results` holds no result; pass at least one.")
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"Argument `labels` must give one label per result ({len(items)}), but got {len(labels)}.")
    runs = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            source, result = str(item), read_result(item)
        else:
            source, result = f"results[{i}]", item
            _check_result(result, source)
        runs.append(_run(result, source))
    tasks = {run.task for run in runs}
    if len(tasks) > 1:
        first = next(run for run in runs if run.task != runs[0].task)
        raise ValueError(f"{first.source} is a {first.task} result but {runs[0].source} is a {runs[0].task} one; "
                         "plot results of one task together.")
    for run, label in zip(runs, labels if labels is not None else _default_labels(runs)):
        run.label = label
    return runs


def _correlation_run(result: dict, source: str) -> _Run:
    """A correlation result: the SRCC per group (PieAPP's pairwise 2AFC row left out) and, under
    attack, the SRCC before and after it; both score directions plot together as ``correlation``."""
    run = _Run(label="", source=source, model=str(result.get("model", "result")), task="correlation",
               score_name="SRCC (x100)",
               scores={g: s["score"] for g, s in result["results"].items() if "srcc" in s and s["score"] is not None})
    for group, summary in (result.get("attack") or {}).items():
        clean, attacked = summary.get("clean", {}).get("srcc"), summary["attacked"].get("srcc")
        if clean is None or attacked is None:
            continue
        run.norm = summary["attack"]["norm"]
        run.clean[group] = clean
        run.robust[group] = [(summary["attack"]["eps"], attacked)]
    return run


def _run(result: dict, source: str) -> _Run:
    if result["task"] in _CORRELATION_TASKS:
        return _correlation_run(result, source)
    run = _Run(label="", source=source, model=str(result.get("model", "result")), task=result["task"],
               score_name=str(result.get("score", "score")),
               scores={g: s["score"] for g, s in result["results"].items()})
    for group, summary in (result.get("attack") or {}).items():
        run.norm = summary["attack"]["norm"]
        run.clean[group] = summary["clean_accuracy"]
        # one radius: the summary is its own single point, its counterattack figures beside it
        points = summary.get("per_eps") or [{**summary, "eps": summary["attack"]["eps"]}]
        run.robust[group] = [(p["eps"], p["robust_accuracy"]) for p in points]
        defended = summary.get("counterattack")
        if isinstance(defended, dict) and "clean_accuracy" in defended:
            run.defended_clean[group] = defended["clean_accuracy"]
            run.defended[group] = [(p["eps"], p["counterattack"]["worst_case_accuracy"]) for p in points
                                   if "worst_case_accuracy" in (p.get("counterattack") or {})]
    return run


def _default_labels(runs: List[_Run]) -> List[str]:
    """Each result's model name; results of one model are told apart by their file names."""
    # a local model folder is recorded by its path; its name is what tells the models apart
    names = [run.model if run.model.startswith("hf-hub:") else Path(run.model).name or run.model for run in runs]
    labels = []
    for i, (name, run) in enumerate(zip(names, runs)):
        if names.count(name) > 1:
            name = f"{name} ({Path(run.source).stem})" if run.source.endswith(".json") else f"{name} #{i + 1}"
        labels.append(name)
    return [label if labels.count(label) == 1 else f"{label} #{i + 1}" for i, label in enumerate(labels)]


def _groups(runs: List[_Run], table: str) -> List[str]:
    """The groups of ``table`` ("scores", "clean", "robust") over all runs, in first-seen order."""
    seen: Dict[str, None] = {}
    for run in runs:
        seen.update(dict.fromkeys(getattr(run, table)))
    return list(seen)


def _radius(norm: str, eps: float) -> float:
    """A radius on the figure's axis: 1/255 units for linf, absolute for l2."""
    return eps * 255 if norm == "linf" else eps


def _radius_text(norm: str, eps: float) -> str:
    from ..attacks.config import radius_label

    return radius_label(norm, eps)


# -- drawing ---------------------------------------------------------------------------------
def _matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError as err:
        if err.name is not None and err.name.split(".")[0] == "matplotlib":
            raise MissingDependencyError('Figures need matplotlib: pip install "rpmetric[plot]".',
                                         name="matplotlib") from None
        raise
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def _new_figure(width: float, height: float):
    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # the non-interactive Agg canvas, set on this figure only
    return figure


def _bar_panels(runs: List[_Run]) -> List[Tuple[str, str, List[str]]]:
    """``(axes label, title, groups)`` of each bar panel the runs have data for."""
    if runs[0].task == "correlation":
        if not any(run.robust for run in runs):
            return [("score", runs[0].score_name, _groups(runs, "scores"))]
        return [("score", runs[0].score_name, _groups(runs, "scores")),
                ("clean", "SRCC of the attacked pairs, clean (x100)", _groups(runs, "clean")),
                ("robust", "SRCC under attack (x100)", _groups(runs, "robust"))]
    panels = [("score", f"{runs[0].score_name} (%)", _groups(runs, "scores"))]
    if any(run.robust for run in runs):
        panels += [("clean", "clean accuracy (%)", _groups(runs, "clean")),
                   ("robust", "robust accuracy (%)", _groups(runs, "robust"))]
    return panels


def _draw_bars(ax, kind: str, title: str, groups: List[str], runs: List[_Run]) -> None:
    """One bar per series and group; ``kind`` "robust" has a series per run and radius."""
    series = []  # (label, colour, alpha, {group: value})
    for i, run in enumerate(runs):
        if kind == "score":
            series.append((run.label, f"C{i}", 1.0, run.scores))
        elif kind == "clean":
            series.append((run.label, f"C{i}", 1.0, run.clean))
        else:
            radii = sorted({eps for points in run.robust.values() for eps, _ in points})
            for k, eps in enumerate(radii):
                values = {g: acc for g, points in run.robust.items() for e, acc in points if e == eps}
                alpha = 1.0 - 0.6 * k / max(1, len(radii) - 1)
                series.append((f"{run.label} @{_radius_text(run.norm, eps)}", f"C{i}", alpha, values))
    width = 0.8 / len(series)
    for s, (label, colour, alpha, values) in enumerate(series):
        x = [g + (s - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [100 * values[g] if g in values else math.nan for g in groups]
        ax.bar(x, heights, width, label=label, color=colour, alpha=alpha)
    ax.set_label(kind)
    ax.set_title(title)
    slanted = len(groups) > 3 or sum(len(g) for g in groups) > 30  # long names would overlap
    ax.set_xticks(range(len(groups)), groups, rotation=20 if slanted else 0, ha="right" if slanted else "center")
    ax.set_ylim(0, 100)
    if any(v < 0 for *_, values in series for v in values.values()):  # a correlation below zero
        ax.set_ylim(-100, 100)
    # below the panel: a legend inside would hide bars (constrained layout makes room for it)
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.3 if slanted else -0.12),
              ncols=min(len(series), 2))


def _draw_curves(ax, group: str, runs: List[_Run]) -> None:
    """Robust accuracy against the radius for ``group``: each line starts at eps = 0 with the clean
    accuracy (no perturbation changes no judgement); a defended run adds its worst case, dashed."""
    for i, run in enumerate(runs):
        if group not in run.robust:
            continue
        for label, clean, points, style in ((run.label, run.clean[group], run.robust[group], "-"),
                                            (f"{run.label} + counterattack", run.defended_clean.get(group),
                                             run.defended.get(group), "--")):
            if clean is None or not points:
                continue
            if points[0][0] != 0:
                points = [(0.0, clean), *points]
            ax.plot([_radius(run.norm, eps) for eps, _ in points], [100 * acc for _, acc in points], style,
                    marker="o", color=f"C{i}", label=label)
    norm = next(run.norm for run in runs if group in run.robust)
    ax.set_label(f"curve:{group}")
    ax.set_title(group)
    ax.set_xlabel("eps (1/255, l-inf)" if norm == "linf" else "eps (l2)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _check_one_norm(runs: List[_Run]) -> None:
    attacked = [run for run in runs if run.norm is not None]
    other = next((run for run in attacked if run.norm != attacked[0].norm), None)
    if other is not None:
        raise ValueError(f"{other.source} attacks in {other.norm} but {attacked[0].source} in {attacked[0].norm}; "
                         "robustness curves share one radius axis, so plot results of one norm together.")


# -- the builders ----------------------------------------------------------------------------
def score_bars(results: Results, labels: Optional[Sequence[str]] = None):
    """Grouped bars per split or category: the score, and for attacked results the clean and the
    robust accuracy (one bar per radius), one series per result.

    Args:
        results: result dicts (the JSON of ``rpmetric eval --out``) or paths to such files.
        labels: one legend label per result (default: the model names, with the file names added
            where two results share a model).

    Returns:
        A :class:`matplotlib.figure.Figure`; each panel's axes is labelled ``score``, ``clean`` or
        ``robust`` (``axes.get_label()``), and each bar series carries its legend label.

    Example:
        >>> result = {"model": "m", "task": "2afc", "score": "2AFC score",
        ...           "results": {"test_imagenet": {"n": 4, "score": 0.8}}}
        >>> figure = score_bars([result])
        >>> [float(bar.get_height()) for bar in figure.axes[0].containers[0]]
        [80.0]
    """
    runs = _runs(results, labels)
    panels = _bar_panels(runs)
    figure = _new_figure(4.2 * len(panels), 3.6)
    for ax, (kind, title, groups) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        _draw_bars(ax, kind, title, groups, runs)
    return figure


def robustness_curve(results: Results, labels: Optional[Sequence[str]] = None,
                     groups: Optional[Sequence[str]] = None):
    """Robust accuracy against the attack radius, one panel per split or category and one line per
    result; a result with one radius is a line of two points, its clean and its robust accuracy.

    Args:
        results: attacked result dicts or paths (``rpmetric eval ... --attack linf --eps 0 1 2 4``).
        labels: one legend label per result, as for :func:`score_bars`.
        groups: the splits or categories to draw (default: every attacked one).

    Raises:
        ValueError: no result has an attack, the results attack in different norms, or a group is
            in none of them.

    Example:
        >>> import rpmetric.report
        >>> figure = rpmetric.report.robustness_curve(["vit.json", "convnext.json"])  # doctest: +SKIP
        >>> figure.savefig("curve.png")  # doctest: +SKIP
    """
    runs = _runs(results, labels)
    attacked = _groups(runs, "robust")
    if not attacked:
        raise ValueError(f"None of the results has an attack ({', '.join(run.source for run in runs)}); run "
                         "`rpmetric eval ... --attack linf --eps 0 1 2 4 --out RESULT.json` first.")
    _check_one_norm(runs)
    chosen = list(groups) if groups is not None else attacked
    missing = next((g for g in chosen if g not in attacked), None)
    if missing is not None:
        raise ValueError(f"Argument `groups` must be among the attacked ones {attacked}, but got {missing!r}.")
    figure = _new_figure(4.2 * len(chosen), 3.6)
    for ax, group in zip(figure.subplots(1, len(chosen), squeeze=False)[0], chosen):
        _draw_curves(ax, group, runs)
    return figure


def comparison_figure(results: Results, labels: Optional[Sequence[str]] = None):
    """What ``rpmetric plot`` draws: :func:`score_bars`' panels in the top row and, when a result has
    several radii, :func:`robustness_curve`'s panels below them, in one figure.

    Example:
        >>> figure = comparison_figure(["vit.json", "convnext.json"], labels=["ViT", "ConvNeXt"])  # doctest: +SKIP
    """
    runs = _runs(results, labels)
    panels = _bar_panels(runs)
    curves = _groups(runs, "robust") if any(run.several_radii for run in runs) else []
    if curves:
        _check_one_norm(runs)
    columns = max(len(panels), len(curves))
    figure = _new_figure(4.2 * columns, 3.6 * (2 if curves else 1))
    grid = figure.add_gridspec(2 if curves else 1, 1)
    top = grid[0].subgridspec(1, len(panels))
    for k, (kind, title, groups) in enumerate(panels):
        _draw_bars(figure.add_subplot(top[0, k]), kind, title, groups, runs)
    if curves:
        bottom = grid[1].subgridspec(1, len(curves))
        for k, group in enumerate(curves):
            _draw_curves(figure.add_subplot(bottom[0, k]), group, runs)
    return figure


def save_figure(figure, path: Union[str, Path]) -> None:
    """Write ``figure`` to ``path`` in the format its suffix names (``.png``, ``.svg`` or ``.pdf``).

    Raises:
        ValueError: another suffix.

    Example:
        >>> save_figure(None, "figure.jpg")
        Traceback (most recent call last):
        ...
        ValueError: Argument `path` must end in one of .png, .svg, .pdf, but got 'figure.jpg'.
    """
    path = Path(path)
    check_figure_path(path, "Argument `path`")
    from ..files import atomic_path

    with atomic_path(path) as part:
        figure.savefig(part, format=path.suffix[1:].lower(), dpi=110)


def check_figure_path(path: Union[str, Path], what: str) -> None:
    """Refuse a figure path whose suffix names no format of :data:`FIGURE_FORMATS`."""
    if Path(path).suffix[1:].lower() not in FIGURE_FORMATS:
        raise ValueError(f"{what} must end in one of {', '.join('.' + f for f in FIGURE_FORMATS)}, but got "
                         f"{str(path)!r}.")
