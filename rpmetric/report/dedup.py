"""Review pages of ``rpmetric dedup``: near-duplicate groups, or images too close to another store.

The pages take the rows the command writes to its CSV, so a page can also be made later from the
CSV itself (``csv.DictReader`` rows)::

    rows = list(csv.DictReader(open("dups.csv")))
    write_dedup_page("dups.html", rows)

A dataset store's rows (WebDataset, Parquet) name samples by key and carry a ``url`` column: they
have no image file, so they get a placeholder that shows the key and links the URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Union

from .page import Page, cell
from .thumbnails import DATASET_SAMPLE, DEFAULT_SIZE, Thumb

__all__ = ["write_dedup_page", "write_near_page", "MAX_MEMBERS"]

MAX_MEMBERS = 100  # thumbnails per group; a larger group lists its size, the CSV has every member

def _thumb(page: Page, row: Mapping) -> Thumb:
    """A dedup row's thumbnail: a dataset store's rows (with a ``url`` column) name no file."""
    return DATASET_SAMPLE if "url" in row else page.thumbs.of_file(row["path"])


def _distance(value) -> str:
    return f"{float(value):.6g}"


def write_dedup_page(path: Union[str, Path], rows: Iterable[Mapping], *, threshold: Optional[float] = None,
                     source: str = "", max_members: int = MAX_MEMBERS, thumb_size: int = DEFAULT_SIZE,
                     progress: bool = False) -> Path:
    """A page with one row per near-duplicate group, largest first.

    Args:
        path: the page file (``.html``); thumbnails go into ``PAGE_files/`` beside it.
        rows: one per image, as ``rpmetric dedup`` writes its CSV: ``group``, ``keep`` (1 for the
            member to keep), ``path``, ``distance_to_first``, and for a dataset store ``url`` (and
            ``caption``).
        threshold: the distance threshold, for the page's heading.
        source: the store, for the heading.
        max_members: thumbnails shown per group (the group's size is always shown).
        thumb_size: the thumbnails' longest side, in pixels.
        progress: show a progress bar while thumbnails are made.

    Returns:
        The page's path.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "dups.html"
        >>> rows = [{"group": 1, "keep": 1, "path": "a.png", "distance_to_first": 0},
        ...         {"group": 1, "keep": 0, "path": "b.png", "distance_to_first": 0.01}]
        >>> write_dedup_page(out, rows).name  # a.png and b.png do not exist: placeholders
        'dups.html'
    """
    groups: dict = {}
    for row in rows:
        groups.setdefault(str(row["group"]), []).append(row)
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))  # stable: ties keep the CSV's order
    page = Page(path, "Near-duplicate groups" + (f" of {source}" if source else ""), thumb_size)
    page.thumbs.of_files((r["path"] for _, members in ordered for r in members[:max_members] if "url" not in r),
                         progress=progress)
    out: List[dict] = []
    for group, members in ordered:
        cells = []
        for row in members[:max_members]:
            d = _distance(row["distance_to_first"])
            keep = str(row["keep"]) == "1"
            lines = [f"distance to first {d}"] + ([row["caption"]] if row.get("caption") else [])
            cells.append(cell(_thumb(page, row), row["path"], f"{row['path']}, distance to first {d}", lines,
                              badge="keep" if keep else None, url=row.get("url")))
        more = f", {len(members) - max_members} more in the CSV" if len(members) > max_members else ""
        out.append({"title": f"group {group} \u00b7 {len(members)} images{more}", "n": len(members),
                    "cells": cells})
    covered = sum(len(m) for _, m in ordered)
    limit = "" if threshold is None else f" within distance {threshold:g} of each other (connected)"
    page.add_html(f"<p>{len(ordered):,} groups covering {covered:,} images{limit}. Each row is a group, largest "
                  "first; <b>keep</b> marks the member to keep, and the distance is to that first member.</p>")
    page.add_gallery("Groups", out, size_filter=True, empty="No near-duplicates.")
    return page.write()


def write_near_page(path: Union[str, Path], rows: Iterable[Mapping], *, threshold: Optional[float] = None,
                    source: str = "", other: str = "", is_dataset: bool = False, other_is_dataset: bool = False,
                    thumb_size: int = DEFAULT_SIZE, progress: bool = False) -> Path:
    """A page with each image flagged by ``rpmetric dedup --against`` beside its match.

    Args:
        path: the page file (``.html``).
        rows: as the command's CSV: ``path`` (of STORE), ``match`` (of OTHER_STORE), ``distance``;
            a dataset store's row has a ``url`` column.
        threshold, source, other: for the heading.
        is_dataset, other_is_dataset: STORE's, OTHER_STORE's rows are dataset samples (keys, not files).

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "near.html"
        >>> write_near_page(out, [{"path": "a.png", "match": "t.png", "distance": 0.02}]).name
        'near.html'
    """
    rows = list(rows)
    page = Page(path, "Images close to another store", thumb_size)
    files = ([] if is_dataset else [r["path"] for r in rows]) + ([] if other_is_dataset else [r["match"] for r in rows])
    page.thumbs.of_files(files, progress=progress)
    out = []
    for i, row in enumerate(rows, start=1):
        d = _distance(row["distance"])
        match = DATASET_SAMPLE if other_is_dataset else page.thumbs.of_file(row["match"])
        out.append({"title": f"{i}. distance {d}", "n": 2, "cells": [
            cell(DATASET_SAMPLE if is_dataset else page.thumbs.of_file(row["path"]), row["path"], f"{row['path']}, distance {d} to its match", ["flagged image"],
                 url=row.get("url")),
            cell(match, row["match"], f"{row['match']}, distance {d} to the flagged image", ["its match"])]})
    within = "" if threshold is None else f" within distance {threshold:g}"
    page.add_html(f"<p>{len(rows):,} images of {_name(source)} lie{within} of an image of {_name(other)}; each "
                  "is shown beside its nearest such image.</p>")
    page.add_gallery("Flagged images", out, empty="No image is that close.")
    return page.write()


def _name(store: str) -> str:
    from .page import escape

    return f"<code>{escape(store)}</code>" if store else "the store"
