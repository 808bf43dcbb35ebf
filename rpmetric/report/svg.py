"""Small inline SVG charts for the review pages: grouped bars, histograms, curves.

Pages need no plotting package: each chart is a string of SVG markup with its numbers in
``data-*`` attributes (what the tests read back) and a ``<title>`` on every mark (the browser's
tooltip). For publication figures see ``rpmetric plot``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

from .page import escape

__all__ = ["bar_chart", "histogram", "line_chart", "COLOURS"]

COLOURS = ("#2c5aa0", "#e08a1e", "#2f9e5b", "#b03a48", "#7b5ea7", "#5b8e9e", "#8c6d31", "#d45087")
_W, _H = 720, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 28, 70


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _frame(width: int, height: int, title: str, body: List[str], legend: Sequence[Tuple[str, str]]) -> str:
    items = []
    x = _LEFT
    for name, colour in legend:
        items.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="17">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
            + "".join(items) + "".join(body) + "</svg>")


def _y_axis(lo: float, hi: float, ticks: Sequence[float], fmt, label: str, height: int = _H) -> List[str]:
    plot_h = height - _TOP - _BOTTOM
    out = []
    for t in ticks:
        y = _TOP + plot_h * (1 - (t - lo) / (hi - lo))
        out.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{_num(y)}" y2="{_num(y)}" stroke="#e4e4e4"/>'
                   f'<text x="{_LEFT - 6}" y="{_num(y + 4)}" text-anchor="end">{fmt(t)}</text>')
    out.append(f'<text x="14" y="{_TOP + plot_h / 2}" transform="rotate(-90 14 {_TOP + plot_h / 2})" '
               f'text-anchor="middle">{escape(label)}</text>')
    return out


def bar_chart(categories: Sequence[str], series: Sequence[Tuple[str, Sequence[Optional[float]]]],
              *, title: str, label: str = "%") -> str:
    """Grouped bars of values in [0, 1], drawn as percentages: one group of bars per category,
    one bar per series (a missing value, None, draws no bar).

    Example:
        >>> svg = bar_chart(["a", "b"], [("score", [0.5, 0.75])], title="2AFC")
        >>> svg.count('class="bar"'), 'data-value="0.75"' in svg
        (2, True)
    """
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    slot = plot_w / max(1, len(categories))
    width = min(48.0, 0.8 * slot / max(1, len(series)))
    body = _y_axis(0, 1, [0, 0.25, 0.5, 0.75, 1], lambda t: f"{100 * t:.0f}", label)
    for i, category in enumerate(categories):
        x0 = _LEFT + i * slot + (slot - width * len(series)) / 2
        for j, (name, values) in enumerate(series):
            value = values[i]
            if value is None or not math.isfinite(value):
                continue
            h = plot_h * min(1.0, max(0.0, value))
            x = x0 + j * width
            body.append(f'<rect class="bar" data-series="{escape(name)}" data-category="{escape(category)}" '
                        f'data-value="{value!r}" x="{_num(x)}" y="{_num(_TOP + plot_h - h)}" width="{_num(width - 2)}" '
                        f'height="{_num(h)}" fill="{COLOURS[j % len(COLOURS)]}"><title>{escape(category)}, '
                        f'{escape(name)}: {100 * value:.2f}%</title></rect>')
        cx = _LEFT + (i + 0.5) * slot
        body.append(f'<text x="{_num(cx)}" y="{_H - _BOTTOM + 16}" text-anchor="end" '
                    f'transform="rotate(-25 {_num(cx)} {_H - _BOTTOM + 16})">{escape(category)}</text>')
    legend = [(name, COLOURS[j % len(COLOURS)]) for j, (name, _) in enumerate(series)]
    return _frame(_W, _H, title, body, legend)


def histogram(series: Sequence[Tuple[str, Sequence[float]]], *, title: str, threshold: Optional[float] = None,
              bins: int = 30, label: str = "") -> str:
    """Overlaid histograms of several samples on common bins, with an optional vertical threshold.

    Example:
        >>> svg = histogram([("clean", [0.1, 0.2, 0.2]), ("attacked", [0.05])], title="tau", threshold=0.15)
        >>> 'class="threshold"' in svg, svg.count('class="bin"') > 0
        (True, True)
    """
    values = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    lo = min(values + ([threshold] if threshold is not None else []), default=0.0)
    hi = max(values + ([threshold] if threshold is not None else []), default=1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.02
    lo, hi = lo - pad, hi + pad
    step = (hi - lo) / bins
    counts = []
    for _, vs in series:
        c = [0] * bins
        for v in vs:
            if v is not None and math.isfinite(v):
                c[min(bins - 1, int((v - lo) / step))] += 1
        counts.append(c)
    top = max((max(c) for c in counts), default=1) or 1
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    ticks = sorted({0, top // 2, top}) if top > 1 else [0, 1]
    body = _y_axis(0, top, ticks, lambda t: str(int(t)), "count")
    for j, c in enumerate(counts):
        colour = COLOURS[j % len(COLOURS)]
        for b, n in enumerate(c):
            if not n:
                continue
            h = plot_h * n / top
            x = _LEFT + plot_w * b / bins
            body.append(f'<rect class="bin" data-series="{escape(series[j][0])}" data-count="{n}" x="{_num(x)}" '
                        f'y="{_num(_TOP + plot_h - h)}" width="{_num(plot_w / bins - 1)}" height="{_num(h)}" '
                        f'fill="{colour}" fill-opacity="0.55"><title>{escape(series[j][0])}: {n} in '
                        f'[{lo + b * step:.4g}, {lo + (b + 1) * step:.4g})</title></rect>')
    for k in range(5):
        t = lo + (hi - lo) * k / 4
        x = _LEFT + plot_w * k / 4
        body.append(f'<text x="{_num(x)}" y="{_H - _BOTTOM + 16}" text-anchor="middle">{t:.3g}</text>')
    body.append(f'<text x="{_LEFT + plot_w / 2}" y="{_H - _BOTTOM + 36}" text-anchor="middle">{escape(label)}</text>')
    if threshold is not None:
        x = _LEFT + plot_w * (threshold - lo) / (hi - lo)
        body.append(f'<line class="threshold" data-value="{threshold!r}" x1="{_num(x)}" x2="{_num(x)}" y1="{_TOP}" '
                    f'y2="{_TOP + plot_h}" stroke="#c00" stroke-width="2" stroke-dasharray="5 3"/>'
                    f'<text x="{_num(x + 4)}" y="{_TOP + 12}" fill="#c00">threshold {threshold:.4g}</text>')
    legend = [(name, COLOURS[j % len(COLOURS)]) for j, (name, _) in enumerate(series)]
    return _frame(_W, _H, title, body, legend)


def line_chart(curves: Sequence[Tuple[str, Sequence[float], Sequence[float]]], *, title: str, xlabel: str,
               ylabel: str, max_points: int = 600) -> str:
    """Curves in the unit square (e.g. precision against recall), one polyline each; a long curve
    is drawn through at most ``max_points`` of its points (always with its first and last).

    Example:
        >>> svg = line_chart([("a", [0.5, 1.0], [1.0, 0.6])], title="PR", xlabel="recall", ylabel="precision")
        >>> svg.count("<polyline"), 'data-points="2"' in svg
        (1, True)
    """
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    body = _y_axis(0, 1, [0, 0.25, 0.5, 0.75, 1], lambda t: f"{t:g}", ylabel)
    for k in range(5):
        x = _LEFT + plot_w * k / 4
        body.append(f'<text x="{_num(x)}" y="{_H - _BOTTOM + 16}" text-anchor="middle">{k / 4:g}</text>')
    body.append(f'<text x="{_LEFT + plot_w / 2}" y="{_H - _BOTTOM + 36}" text-anchor="middle">{escape(xlabel)}</text>')
    for j, (name, xs, ys) in enumerate(curves):
        n = len(xs)
        keep = range(n) if n <= max_points else sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
        points = " ".join(f"{_num(_LEFT + plot_w * xs[i])},{_num(_TOP + plot_h * (1 - ys[i]))}" for i in keep)
        body.append(f'<polyline data-series="{escape(name)}" data-points="{n}" points="{points}" fill="none" '
                    f'stroke="{COLOURS[j % len(COLOURS)]}" stroke-width="2"><title>{escape(name)}</title></polyline>')
    legend = [(name, COLOURS[j % len(COLOURS)]) for j, (name, _, _) in enumerate(curves)]
    return _frame(_W, _H, title, body, legend)
