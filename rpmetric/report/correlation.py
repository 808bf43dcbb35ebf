"""Review page of ``rpmetric eval iqa|pairs``: the correlations per distortion type, and the pairs the
metric ranks furthest from people.

It takes what the evaluation already has (results, per-pair records ``group, id, d, score``, the
records read from the dataset for the image paths, and with ``--attack`` the shift summaries);
nothing is embedded again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from .page import Page, cell, escape
from .svg import bar_chart
from .thumbnails import DEFAULT_SIZE

__all__ = ["write_correlation_page", "rank_disagreements"]

_FIGURES = (("srcc", "SRCC"), ("krcc", "KRCC"), ("plcc", "PLCC (logistic)"), ("plcc_raw", "PLCC raw"))


def rank_disagreements(d: Sequence[float], score: Sequence[float], higher_is_better: bool) -> np.ndarray:
    """Per pair, how far apart the metric's rank and people's rank are, as a share of the pairs:
    ``|rank(-d) - rank(score)| / n`` with the score oriented higher-is-better (average ranks for ties).

    Example:
        >>> rank_disagreements([0.1, 0.2, 0.3], [1.0, 2.0, 3.0], True).round(3).tolist()
        [0.667, 0.0, 0.667]
    """
    from scipy.stats import rankdata

    d, score = np.asarray(d, dtype=np.float64), np.asarray(score, dtype=np.float64)
    quality = rankdata(-d)
    people = rankdata(score if higher_is_better else -score)
    return np.abs(quality - people) / max(1, len(d))


def write_correlation_page(path: Union[str, Path], *, results: Mapping[str, Mapping], records: Sequence[Mapping],
                           groups: Mapping[str, Sequence], higher_is_better: bool, title: str = "",
                           settings: Optional[Mapping[str, str]] = None, attack: Optional[Mapping[str, Mapping]] = None,
                           examples: int = 24, thumb_size: int = DEFAULT_SIZE, progress: bool = False) -> Path:
    """The page of one correlation run.

    Args:
        path: the page file; thumbnails go into ``PAGE_files/`` beside it.
        results: ``{group: {"n", "srcc", "krcc", "plcc", "plcc_raw", ...}}`` (and PieAPP's ``pairwise``).
        records: per-pair records ``group, id, d, score``.
        groups: ``{group: [ScoredPair]}`` as evaluated, for the image paths.
        higher_is_better: which way the scores run.
        attack: ``{group: shift summary}`` (:func:`rpmetric.attacks.correlation.shift_summary`).
        examples: pairs shown in the gallery.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "iqa.html"
        >>> write_correlation_page(out, results={"all": {"n": 2, "srcc": 1.0, "krcc": 1.0, "plcc": None,
        ...                        "plcc_raw": 1.0}}, records=[], groups={}, higher_is_better=True).name
        'iqa.html'
    """
    page = Page(path, title or "Correlation", thumb_size)
    if settings:
        page.add_html('<dl class="settings">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>"
                                                       for k, v in settings.items()) + "</dl>")
    page.add_html(_table(results, attack))
    correlated = [g for g, r in results.items() if "srcc" in r]
    series = [(label, [results[g].get(key) for g in correlated]) for key, label in _FIGURES]
    if attack:
        series.append(("SRCC attacked", [(attack.get(g) or {}).get("attacked", {}).get("srcc") for g in correlated]))
    page.add_html("<h2>Per group</h2><p class=\"note\">Oriented so that a good metric is positive; a negative value "
                  "draws no bar.</p>" + bar_chart(correlated, series, title="correlations per group (x100)"))
    _gallery(page, records, groups, higher_is_better, examples, progress)
    return page.write()


def _fmt(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table(results, attack) -> str:
    headers = ["group", "n", *(label for _, label in _FIGURES)]
    if attack:
        headers += ["SRCC attacked", "mean |dd|", "max |dd|"]
    rows = []
    for group, r in results.items():
        if "srcc" not in r:
            cells = [group, r["n"], f"2AFC {100 * r['score']:.2f}%", f"accuracy {100 * r.get('accuracy', 0):.2f}%"]
        else:
            cells = [group, r["n"], *(_fmt(r.get(key)) for key, _ in _FIGURES)]
            if attack:
                a = attack.get(group) or {}
                cells += [_fmt((a.get("attacked") or {}).get("srcc")), _fmt(a.get("mean_shift"), 6),
                          _fmt(a.get("max_shift"), 6)]
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return ('<h2>Scores</h2><table class="scores"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in headers)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _gallery(page: Page, records, groups, higher_is_better: bool, examples: int, progress: bool) -> None:
    by_id = {(g, str(p.id)): p for g, items in groups.items() for p in items}
    rows = [r for r in records if (r["group"], str(r["id"])) in by_id]
    if not rows:
        return
    gap = rank_disagreements([r["d"] for r in rows], [r["score"] for r in rows], higher_is_better)
    order = np.argsort(-gap, kind="stable")[:max(0, examples)]
    chosen = [(rows[i], float(gap[i])) for i in order]
    pairs = [by_id[(r["group"], str(r["id"]))] for r, _ in chosen]
    page.thumbs.of_files((f for p in pairs for f in (p.ref, p.dist)), progress=progress)
    out = []
    for (r, g), p in zip(chosen, pairs):
        out.append({"title": f"{r['group']}/{r['id']} \u00b7 score {r['score']:.6g} \u00b7 distance {r['d']:.6g} "
                             f"\u00b7 ranks {100 * g:.0f}% of the pairs apart", "n": 2,
                    "tone": "bad" if g > 0.5 else None, "cells": [
                        cell(page.thumbs.of_file(p.ref), str(p.ref), f"{p.ref}, the reference", ["reference"]),
                        cell(page.thumbs.of_file(p.dist), str(p.dist), f"{p.dist}, distance {r['d']:.6g}",
                             [f"d = {r['d']:.6g}", f"score {r['score']:.6g}"])]})
    page.add_gallery(f"The {len(out)} pairs the metric ranks furthest from people", out,
                     note="Ranks over all pairs: the metric's by ascending distance, people's by the score (best "
                          "first); the gap is their difference as a share of the pairs.")
