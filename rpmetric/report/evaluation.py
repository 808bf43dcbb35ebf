"""Review page of ``rpmetric eval``: scores, where the metric disagrees with people, attacked images.

The page takes what the evaluation already has: the per-group results, the per-sample records
(``d0, d1, p`` or ``d, same``), the records read from the dataset (for the image paths), and with
``--attack`` each group's :class:`~rpmetric.attacks.AttackResult` (its per-triplet records, the
first attacked references it kept, and with a counterattack the ``tau`` it measured). Nothing
is embedded or attacked again.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Union

import numpy as np

from ..scoring import jnd_precision_recall, twoafc_scores
from ..scoring import odd_one_out_choices, odd_one_out_credits
from .page import Page, cell, escape
from .svg import bar_chart, histogram, line_chart
from .thumbnails import DEFAULT_SIZE

__all__ = ["write_eval_page", "EXAMPLES"]

EXAMPLES = 24  # triplets per section: the most disagreeing ones, and the first attacked ones


def _choice(d0: float, d1: float) -> str:
    return "tie" if d0 == d1 else ("right" if d1 < d0 else "left")


def write_eval_page(path: Union[str, Path], *, task: str, results: Mapping[str, Mapping], records: Sequence[Mapping],
                    groups: Mapping[str, Sequence], title: str = "", settings: Optional[Mapping[str, str]] = None,
                    attack: Optional[Mapping[str, Mapping]] = None, attack_details: Optional[Mapping] = None,
                    tau_threshold: Optional[float] = None, examples: int = EXAMPLES,
                    thumb_size: int = DEFAULT_SIZE, progress: bool = False) -> Path:
    """The page of one evaluation run.

    Args:
        path: the page file (``.html``); thumbnails go into ``PAGE_files/`` beside it.
        task: ``"2afc"``, ``"jnd"`` or ``"odd-one-out"``.
        results: ``{group: {"n", "score"}}`` (``Evaluation.results``, with NIGHTS' ``total``).
        records: ``Evaluation.records``: ``group, id, d0, d1, p`` (2AFC), ``group, id, d, same`` (JND) or
            ``group, id, d12, d13, d23, odd`` (odd-one-out).
        groups: ``{group: [Triplet, JNDPair or OddOneOut]}`` as evaluated, for the image paths.
        title: the page's heading.
        settings: ``{name: value}`` shown under the heading (model, dataset, attack...).
        attack: ``{group: summary}`` as :func:`rpmetric.attacks.cli.attack_groups` returns it.
        attack_details: ``{group: AttackResult}`` of the same run (records, kept images, tau).
        tau_threshold: the counterattack's threshold, drawn on the tau histogram.
        examples: triplets shown in each example section.

    Example:
        >>> import tempfile, pathlib
        >>> from rpmetric.datasets import Triplet
        >>> t = Triplet("0", pathlib.Path("r.png"), pathlib.Path("a.png"), pathlib.Path("b.png"), 0.8)
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "eval.html"
        >>> write_eval_page(out, task="2afc", results={"test": {"n": 1, "score": 0.2}}, groups={"test": [t]},
        ...                 records=[{"group": "test", "id": "0", "d0": 0.1, "d1": 0.3, "p": 0.8}]).name
        'eval.html'
    """
    page = Page(path, title or "Evaluation", thumb_size)
    if settings:
        page.add_html('<dl class="settings">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>"
                                                       for k, v in settings.items()) + "</dl>")
    defended = bool(attack) and any("counterattack" in (s or {}) for s in attack.values())
    page.add_html(_score_table(task, results, attack, defended))
    page.add_html(_score_chart(task, results, attack, defended))
    by_id = {g: {str(r.id): r for r in items} for g, items in groups.items()}
    if task == "2afc":
        _disagreements(page, records, by_id, examples, progress)
    elif task == "odd-one-out":
        _odd_disagreements(page, records, by_id, examples, progress)
    else:
        page.add_html(_pr_curves(records, results))
    if attack_details:
        _attacked(page, attack_details, by_id, examples)
        taus = _tau_section(attack_details, tau_threshold)
        if taus:
            page.add_html(taus)
    elif tau_threshold is not None:  # a counterattack on clean images only: no attacked references to compare
        page.add_html("<h2>Counterattack: tau</h2><p class=\"note\">The tau histogram compares clean and attacked "
                      "references: run with --attack as well.</p>")
    return page.write()


# -- the scores ---------------------------------------------------------------------------------
def _score_table(task: str, results, attack, defended: bool) -> str:
    from ..attacks.cli import attack_columns, attack_headers

    headers = ["group", "n", _SCORE_HEADERS.get(task, "2AFC (%)")]
    options = _radii_options(attack)
    if attack:
        headers += attack_headers(defended, options)
    rows = []
    for group, r in results.items():
        cells = [group, r["n"], f"{100 * r['score']:.2f}"]
        if attack:
            cells += attack_columns(attack.get(group), defended, options)
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return ('<h2>Scores</h2><table class="scores"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in headers)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _radii_options(attack) -> Optional[dict]:
    """With several radii (summaries with ``per_eps``), the table's per-radius column options."""
    for summary in (attack or {}).values():
        if summary and summary.get("per_eps"):
            return {"norm": summary["attack"]["norm"], "eps": [point["eps"] for point in summary["per_eps"]]}
    return None


def _at_largest(summary: dict) -> dict:
    """A summary's figures at its largest radius, in a one-radius summary's layout: the bars show them."""
    points = summary.get("per_eps")
    if not points:
        return summary
    last = points[-1]
    counterattack = dict(summary.get("counterattack") or {}, **(last.get("counterattack") or {}))
    return dict(summary, robust_accuracy=last["robust_accuracy"], counterattack=counterattack or None)


def _last(value):
    """A per-triplet field at the largest radius (a list over the radii with several, else the value)."""
    return value[-1] if isinstance(value, list) else value


def _score_chart(task: str, results, attack, defended: bool) -> str:
    categories = list(results)
    series = [(_SCORE_SERIES.get(task, "2AFC score"), [results[g]["score"] for g in categories])]
    if attack:
        def column(get):
            return [get(_at_largest(attack[g])) if g in attack else None for g in categories]

        options = _radii_options(attack)
        robust = "robust accuracy" + (f" (at the largest radius, {max(options['eps']):.4g})" if options else "")
        series += [("clean accuracy", column(lambda s: s["clean_accuracy"])),
                   (robust, column(lambda s: s["robust_accuracy"]))]
        if defended:
            for key, name in (("clean_accuracy", "defended clean"), ("nonadaptive_accuracy", "non-adaptive"),
                              ("adaptive_accuracy", "adaptive")):
                series.append((name, column(lambda s, key=key: (s.get("counterattack") or {}).get(key))))
    return "<h2>Per group</h2>" + bar_chart(categories, series, title="scores per group (%)")


# -- 2AFC: where the metric disagrees with people -----------------------------------------------
def _disagreements(page: Page, records, by_id, examples: int, progress: bool) -> None:
    rows = [r for r in records if str(r["id"]) in by_id.get(r["group"], {})]
    if not rows:
        return
    agree = twoafc_scores([r["d0"] for r in rows], [r["d1"] for r in rows], [r["p"] for r in rows])
    margin = np.abs(np.array([r["d0"] - r["d1"] for r in rows]))
    # The least agreement first; among equals, the most confident decision (the largest margin).
    order = np.lexsort((-margin, agree))[:max(0, examples)]
    chosen = [(rows[i], float(agree[i])) for i in order]
    triplets = [by_id[r["group"]][str(r["id"])] for r, _ in chosen]
    page.thumbs.of_files((p for t in triplets for p in (t.ref, t.left, t.right)), progress=progress)
    out = []
    for (r, a), t in zip(chosen, triplets):
        d0, d1, p = float(r["d0"]), float(r["d1"]), float(r["p"])
        people = f"{100 * p:.0f}% of people chose right"
        title = (f"{r['group']}/{r['id']} \u00b7 {people} \u00b7 the metric chose {_choice(d0, d1)} \u00b7 "
                 f"agreement {a:.2f}")
        out.append({"title": title, "n": 3, "tone": "bad" if a < 0.5 else None, "cells": [
            cell(page.thumbs.of_file(t.ref), str(t.ref), f"{t.ref}, the reference", ["reference"]),
            cell(page.thumbs.of_file(t.left), str(t.left), f"{t.left}, left, distance d0 {d0:.6g}",
                 [f"left: d0 = {d0:.6g}", f"{100 * (1 - p):.0f}% of votes"]),
            cell(page.thumbs.of_file(t.right), str(t.right), f"{t.right}, right, distance d1 {d1:.6g}",
                 [f"right: d1 = {d1:.6g}", f"{100 * p:.0f}% of votes"])]})
    page.add_gallery(f"The {len(out)} triplets where the metric disagrees most with people", out,
                     note="Agreement is the triplet's 2AFC score: the share of people who chose what the metric "
                          "chose (0.5 for a tie). The least agreement first; among equals, the largest |d0 - d1|.")


# -- JND: the precision-recall curve -------------------------------------------------------------
def _pr_curves(records, results) -> str:
    curves = []
    for group in results:
        rows = [r for r in records if r["group"] == group]
        if not rows:
            continue  # e.g. a total, which has no records of its own
        try:
            recall, _, envelope = jnd_precision_recall([r["d"] for r in rows], [r["same"] for r in rows])
        except ValueError:  # no pair judged the same: no curve
            continue
        curves.append((f"{group} (mAP {100 * results[group]['score']:.2f}%)", recall.tolist(), envelope.tolist()))
    return ("<section id=\"precision-recall\"><h2>Precision-recall</h2><p class=\"note\">Pairs sorted by ascending "
            "distance; the curve is the precision envelope whose area is the mAP.</p>"
            + line_chart(curves, title="JND precision-recall", xlabel="recall", ylabel="precision") + "</section>")


# -- --attack: clean and attacked references -------------------------------------------------------
def _perturbation(clean: np.ndarray, attacked: np.ndarray):
    """The perturbation scaled so its largest component spans half the grey range: ``(image, factor)``."""
    delta = attacked - clean
    peak = float(np.abs(delta).max())
    factor = 0.5 / peak if peak > 0 else 1.0
    return np.clip(0.5 + delta * factor, 0, 1), factor


def _to_uint8(x) -> np.ndarray:
    """``[3, S, S]`` in [0, 1] as ``S x S x 3`` uint8."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint(x.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)


def _amplified(record, factor: float) -> str:
    if record["linf"] == 0:  # APGD leaves a triplet the metric already gets wrong alone
        return "no perturbation (not attacked)"
    return f"perturbation amplified x{factor:.0f}"


def _attacked(page: Page, details, by_id, examples: int) -> None:
    out: List[dict] = []
    for group, result in details.items():
        records = {r["key"]: {k: _last(v) for k, v in r.items()} for r in result.records}
        for key, images in list(result.images.items())[:max(0, examples)]:
            r = records.get(key)
            if r is None:
                continue
            clean = images["clean"].numpy() if hasattr(images["clean"], "numpy") else images["clean"]
            attacked = images["attacked"].numpy() if hasattr(images["attacked"], "numpy") else images["attacked"]
            shown, factor = _perturbation(clean, attacked)
            before, after = _choice(r["clean_d0"], r["clean_d1"]), _choice(r["adv_d0"], r["adv_d1"])
            people = "right" if r["label"] == 1 else "left"
            ok = r["robust_correct"] >= 1
            outcome = ("still right" if ok else "fooled" if r["clean_correct"] >= 1
                       else "a tie already" if r["clean_correct"] > 0 else "wrong already")
            title = f"{group}/{key} \u00b7 people: {people} \u00b7 clean: {before} \u2192 attacked: {after} ({outcome})"
            triplet = by_id.get(group, {}).get(key)
            name = str(triplet.ref) if triplet is not None else key
            out.append({"title": title, "n": 3, "tone": "good" if ok else "bad", "cells": [
                cell(page.thumbs.of_pixels(_to_uint8(clean)), name, f"{name}, clean reference",
                     ["clean reference", f"d0 {r['clean_d0']:.6g}, d1 {r['clean_d1']:.6g}", f"chooses {before}"]),
                cell(page.thumbs.of_pixels(_to_uint8(attacked)), name, f"{name}, attacked reference",
                     ["attacked reference", f"d0 {r['adv_d0']:.6g}, d1 {r['adv_d1']:.6g}", f"chooses {after}"],
                     tone="good" if ok else "bad"),
                cell(page.thumbs.of_pixels(_to_uint8(shown)), name, f"{name}, {_amplified(r, factor)}",
                     [_amplified(r, factor), f"L-inf {255 * r['linf']:.2f}/255, L2 {r['l2']:.3g}"])]})
    if out:
        note = ("The reference at the model's input size, before and after the attack, and the perturbation "
                "amplified so that its largest component spans half the grey range (grey is 0).")
    else:
        note = "No attacked images were kept: their batches were resumed from the run log."
    page.add_gallery("Attacked references", out, note=note, empty="None kept.")


def _tau_section(details, threshold: Optional[float]) -> str:
    records = [r for result in details.values() for r in result.records]
    if not records or "defended_clean_correct" not in records[0]:
        return ""
    if not any("tau_clean" in r for r in records):
        return ("<h2>Counterattack: tau</h2><p class=\"note\">No tau was recorded (a defence other than "
                "rpmetric.Counterattack, or a run resumed from an older log).</p>")
    names = (("tau_clean", "clean references"), ("tau_attacked", "attacked references"),
             ("tau_adaptive", "adaptively attacked"))
    series = [(label, [r.get(key) for r in records if r.get(key) is not None]) for key, label in names]
    lines = []
    if threshold is not None:
        for label, values in series:
            flagged = sum(v < threshold for v in values)
            lines.append(f"<li>{escape(label)}: {flagged} of {len(values)} flagged (tau &lt; {threshold:.4g}) and "
                         "counterattacked</li>")
    return ("<h2>Counterattack: tau</h2><p class=\"note\">tau is the relative shift of a reference's embedding "
            "under the counterattack's random start; images below the threshold are \u201cfalsely stable\u201d "
            "and are counterattacked.</p><ul>" + "".join(lines) + "</ul>"
            + histogram(series, title="tau of clean and attacked references", threshold=threshold, label="tau"))


# -- odd-one-out: where the metric sets apart another image than people -------------------------------
_SCORE_HEADERS = {"jnd": "mAP (%)", "2afc": "2AFC (%)", "odd-one-out": "accuracy (%)"}
_SCORE_SERIES = {"jnd": "mAP", "2afc": "2AFC score", "odd-one-out": "odd-one-out accuracy"}


def _odd_disagreements(page: Page, records, by_id, examples: int, progress: bool) -> None:
    rows = [r for r in records if str(r["id"]) in by_id.get(r["group"], {})]
    if not rows:
        return
    d = np.array([[r["d12"], r["d13"], r["d23"]] for r in rows], dtype=np.float64)
    odd = [r["odd"] for r in rows]
    credit = odd_one_out_credits(d[:, 0], d[:, 1], d[:, 2], odd)
    chosen_odd = odd_one_out_choices(d[:, 0], d[:, 1], d[:, 2])
    ordered = np.sort(d, axis=1)
    margin = ordered[:, 1] - ordered[:, 0]  # how far the closest pair is ahead of the next
    # The least credit first; among equals, the most confident decision (the largest margin).
    order = np.lexsort((-margin, credit))[:max(0, examples)]
    picked = [(rows[i], float(credit[i]), chosen_odd[i]) for i in order]
    triplets = [by_id[r["group"]][str(r["id"])] for r, _, _ in picked]
    page.thumbs.of_files((p for t in triplets for p in (t.im1, t.im2, t.im3)), progress=progress)
    out = []
    for (r, c, mine), t in zip(picked, triplets):
        people = int(r["odd"])
        metric = [k + 1 for k in range(3) if mine[k]]
        title = (f"{r['group']}/{r['id']} \u00b7 people: image {people} is odd \u00b7 the metric: "
                 f"{' or '.join(f'image {k}' for k in metric)} \u00b7 credit {c:.2f}")
        distances = {1: f"d23 = {r['d23']:.6g}", 2: f"d13 = {r['d13']:.6g}", 3: f"d12 = {r['d12']:.6g}"}
        cells = []
        for k, image in ((1, t.im1), (2, t.im2), (3, t.im3)):
            notes = [f"image {k}", f"others: {distances[k]}"]
            notes += ["people's odd one out"] if k == people else []
            notes += ["the metric's odd one out"] if k in metric else []
            cells.append(cell(page.thumbs.of_file(image), str(image), f"{image}, image {k}", notes))
        out.append({"title": title, "n": 3, "tone": "bad" if c < 0.5 else None, "cells": cells})
    page.add_gallery(f"The {len(out)} triplets where the metric disagrees most with people", out,
                     note="Each image with the distance between the other two: the metric's odd one out is the image "
                          "outside the closest pair. Credit is 1 when it is people's odd one out, 1/k when k images "
                          "tie for it, 0 otherwise. The least credit first; among equals, the largest lead of the "
                          "closest pair.")
