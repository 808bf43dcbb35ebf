"""Review pages of ``rpmetric search`` and ``rpmetric classify``: each query, then its neighbours.

The pages take the results the commands print as JSON (``--json``): per query its name and its
neighbours with ``path`` and ``distance`` (and ``rank``, or ``label`` for classify); a dataset
store's neighbours carry ``url`` (and ``caption``) and get a placeholder with the key and the link.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Union

from .page import Page, cell, escape
from .thumbnails import DATASET_SAMPLE, DEFAULT_SIZE

__all__ = ["write_search_page"]


def write_search_page(path: Union[str, Path], results: Sequence[Mapping], *, store: str = "",
                      query_files: bool = True, classify: bool = False, thumb_size: int = DEFAULT_SIZE,
                      progress: bool = False) -> Path:
    """A page with one row per query: the query, then its neighbours nearest first.

    Args:
        path: the page file (``.html``); thumbnails go into ``PAGE_files/`` beside it.
        results: as ``rpmetric search --json`` (or ``classify --json``) prints them under ``results``:
            ``{"query": name, "neighbours": [{"path", "distance", ...}]}``; for classify also the
            query's ``label`` and ``score`` (the vote share) and each neighbour's ``label``.
        store: the store searched, for the heading.
        query_files: the query names are image files (False: keys of a dataset store).
        classify: the results are kNN votes (show labels and vote shares).

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "search.html"
        >>> results = [{"query": "q.png", "neighbours": [{"rank": 1, "path": "a.png", "distance": 0.1}]}]
        >>> write_search_page(out, results).name
        'search.html'
    """
    page = Page(path, ("kNN classification" if classify else "Nearest neighbours") + (f" in {store}" if store else ""),
                thumb_size)
    files = [r["query"] for r in results] if query_files else []
    files += [n["path"] for r in results for n in r["neighbours"] if "url" not in n]
    page.thumbs.of_files(files, progress=progress)
    rows = []
    for r in results:
        query = str(r["query"])
        thumb = page.thumbs.of_file(query) if query_files else DATASET_SAMPLE
        cells = [cell(thumb, query, f"{query}, the query", ["query"], badge="query")]
        for rank, n in enumerate(r["neighbours"], start=1):
            d = f"{float(n['distance']):.6g}"
            lines = [f"#{n.get('rank', rank)} distance {d}"]
            if classify:
                lines.append(f"label {n['label']}")
                tone = "good" if n["label"] == r["label"] else "bad"
            else:
                tone = None
            if n.get("caption"):
                lines.append(str(n["caption"]))
            neighbour = DATASET_SAMPLE if "url" in n else page.thumbs.of_file(n["path"])
            cells.append(cell(neighbour, n["path"], f"{n['path']}, distance {d}", lines, url=n.get("url"), tone=tone))
        title = query
        if classify:
            title += f" \u2192 label {r['label']} (vote share {float(r['score']):.3f})"
        rows.append({"title": title, "n": len(r["neighbours"]), "cells": cells})
    k = max((len(r["neighbours"]) for r in results), default=0)
    what = "its label by a vote of" if classify else "then"
    page.add_html(f"<p>{len(results):,} queries{' against ' + escape(store) if store else ''}: each row shows the "
                  f"query, {what} its {k} nearest stored images by cosine distance (1 &minus; cos).</p>")
    page.add_gallery("Queries", rows, empty="No queries.")
    return page.write()
