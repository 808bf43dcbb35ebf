"""The page every review page is: one self-contained HTML file and its ``PAGE_files/`` thumbnails.

A page opens from ``file://`` with no network: its style and its little plain JavaScript are
inline, and it links nothing but its own thumbnails (and, as plain links, the URLs of dataset
samples). Image lists are *galleries*: their rows are data (a JSON island, escaped so that no
path can close the script), drawn one page of rows at a time, so 10,000 groups load in a moment.
Every text from the data is set with ``textContent`` or ``setAttribute``, never parsed as HTML.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import List, Optional, Sequence, Union

from ..files import atomic_write, check_writable
from .thumbnails import DEFAULT_SIZE, Thumb, Thumbnails

__all__ = ["Page", "check_page_path", "files_folder", "cell", "escape"]

PER_PAGE = 50  # gallery rows drawn at once


def escape(text) -> str:
    """Text for HTML (``&``, ``<``, ``>`` and quotes escaped).

    Example:
        >>> escape('<a href="x">')
        '&lt;a href=&quot;x&quot;&gt;'
    """
    return html.escape(str(text), quote=True)


def files_folder(path: Union[str, Path]) -> Path:
    """The thumbnail folder beside a page: ``PAGE_files/`` for ``PAGE.html``.

    Example:
        >>> files_folder("out/dedup.html").as_posix()
        'out/dedup_files'
    """
    path = Path(path)
    return path.with_name(path.stem + "_files")


def check_page_path(path: Union[str, Path], option: str = "--html") -> None:
    """Refuse, before any work, a page that cannot be written: the page's name is a folder, its
    ``PAGE_files/`` is a file, or the location refuses new files (see :func:`rpmetric.files.check_writable`).

    Raises:
        ValueError: the message names the path and the fix.
    """
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"{option} {path}: a page's name must end in .html (its thumbnails go into "
                         f"{files_folder(path.with_suffix('.html')).name}/ beside it); e.g. {path.with_suffix('.html')}")
    check_writable(path, option)
    check_writable(files_folder(path), f"{option}'s thumbnail folder", folder=True)


def cell(thumb: Thumb, name: str, alt: str, lines: Sequence[str] = (), *, badge: Optional[str] = None,
         url: Optional[str] = None, tone: Optional[str] = None) -> dict:
    """One image of a gallery row, as the page's script draws it.

    Args:
        thumb: the thumbnail, or a placeholder (``thumb.reason``).
        name: the path or key, shown under the image.
        alt: the image's alt text (its path and distance).
        lines: more caption lines (distance, label, decision).
        badge: a short mark on the image (``keep``, ``query``).
        url: a link to the original (a dataset sample's URL).
        tone: ``good`` or ``bad``, to colour the caption (a right or wrong decision).
    """
    data = {"n": name, "a": alt, "l": list(lines)}
    if thumb.href is not None:
        data.update(s=thumb.href, w=thumb.width, h=thumb.height)
    else:
        data["r"] = thumb.reason
    for key, value in (("b", badge), ("u", url), ("t", tone)):
        if value:
            data[key] = value
    return data


class Page:
    """A review page under construction: sections of HTML and galleries, written at the end.

    Args:
        path: the page file (``.html``); thumbnails go into :func:`files_folder` beside it.
        title: the page's title and heading.
        thumb_size: the thumbnails' longest side, in pixels.

    Example:
        >>> import tempfile, pathlib
        >>> page = Page(pathlib.Path(tempfile.mkdtemp()) / "p.html", "Example")
        >>> page.add_html("<p>No images.</p>")
        >>> page.write().name
        'p.html'
    """

    def __init__(self, path: Union[str, Path], title: str, thumb_size: int = DEFAULT_SIZE):
        self.path = Path(path)
        self.title = title
        self.thumbs = Thumbnails(files_folder(self.path), size=thumb_size)
        self._parts: List[str] = []
        self._galleries = 0

    def add_html(self, markup: str) -> None:
        """Append trusted markup (built with :func:`escape` around every value from the data)."""
        self._parts.append(markup)

    def add_gallery(self, heading: str, rows: List[dict], *, note: str = "", size_filter: bool = False,
                    per_page: int = PER_PAGE, empty: str = "Nothing to show.") -> None:
        """A list of rows of images, drawn a page at a time.

        Args:
            heading: the section's heading.
            rows: ``{"title": str, "n": int (its size, for the filter), "cells": [cell(...)], "tone": ...}``.
            note: a line under the heading.
            size_filter: offer a filter on ``n`` (the group size).
            per_page: rows drawn at once.
            empty: what to say when there are no rows.
        """
        self._galleries += 1
        island = f"gallery-{self._galleries}"
        options = {"perPage": per_page, "filter": size_filter, "empty": empty}
        self._parts.append(
            f'<section class="gallery" data-gallery="{island}" data-options="{escape(json.dumps(options))}">'
            f"<h2>{escape(heading)}</h2>" + (f'<p class="note">{escape(note)}</p>' if note else "") +
            f'<div class="controls"></div><ol class="rows"></ol><div class="controls"></div>'
            f'<script type="application/json" id="{island}">{_json_island(rows)}</script></section>')

    def write(self) -> Path:
        """Write the page (atomically) and drop stale thumbnails of an earlier page; the page's path."""
        body = "\n".join(self._parts)
        document = _TEMPLATE.format(title=escape(self.title), style=_STYLE, body=body, script=_SCRIPT)
        atomic_write(self.path, lambda f: f.write(document.encode("utf-8")))
        self.thumbs.prune()
        return self.path


def _json_island(data) -> str:
    """JSON that cannot end its ``<script>`` early (``<`` is written as ``\\u003c``).

    Example:
        >>> _json_island(["</script><b>"])
        '["\\\\u003c/script>\\\\u003cb>"]'
    """
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="rpmetric">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
<noscript><p class="note">The image lists need JavaScript (it runs locally; the page loads nothing from the
network). The same results are in the command's CSV or JSON output.</p></noscript>
{body}
<script>{script}</script>
</body>
</html>
"""

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.5em;margin:0 0 .4em}h2{font-size:1.15em;margin:1.6em 0 .4em}
.note{color:#555;margin:.2em 0 .6em}
table.scores{border-collapse:collapse;margin:.5em 0}
table.scores th,table.scores td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
table.scores th:first-child,table.scores td:first-child{text-align:left}
table.scores thead{background:#eee}
dl.settings{display:grid;grid-template-columns:max-content 1fr;gap:.1em 1em;margin:.4em 0}
dl.settings dt{color:#555}dl.settings dd{margin:0;word-break:break-all}
.controls{display:flex;flex-wrap:wrap;gap:.6em;align-items:center;margin:.4em 0}
.controls button{padding:.2em .8em}.controls input{width:5em}
ol.rows{list-style:none;padding:0;margin:0}
ol.rows>li{background:#fff;border:1px solid #ddd;border-radius:6px;margin:.5em 0;padding:.5em}
ol.rows>li.bad{border-left:4px solid #c0392b}ol.rows>li.good{border-left:4px solid #27ae60}
.rowtitle{font-weight:600;margin-bottom:.3em;word-break:break-all}
.cells{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0;width:170px;position:relative}
figure img,figure .ph{display:block;max-width:160px;max-height:160px;border:1px solid #ccc;background:#eee}
figure .ph{width:160px;height:120px;font-size:11px;color:#7a2b2b;padding:4px;box-sizing:border-box;overflow:hidden;
word-break:break-word}
figcaption{font-size:12px;word-break:break-all;color:#333}
figcaption .good{color:#1e7e45}figcaption .bad{color:#b03020}
.badge{position:absolute;top:4px;left:4px;background:#1e7e45;color:#fff;font-size:11px;padding:0 5px;border-radius:3px}
.badge.query{background:#2c5aa0}
svg{background:#fff;border:1px solid #ddd;max-width:100%;height:auto}
svg text{font:12px system-ui,sans-serif;fill:#333}
"""

# Plain JavaScript, no library: draw each gallery's rows a page at a time from its JSON island.
_SCRIPT = r"""
(function () {
  "use strict";
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function figure(c) {
    var fig = el("figure");
    var media;
    if (c.s) {
      media = el("img");
      media.setAttribute("src", c.s);
      media.setAttribute("alt", c.a);
      media.setAttribute("title", c.a);
      media.setAttribute("width", c.w);
      media.setAttribute("height", c.h);
      media.setAttribute("loading", "lazy");
      media.setAttribute("decoding", "async");
    } else {
      media = el("div", "ph", "no thumbnail: " + (c.r || "unknown reason"));
      media.setAttribute("role", "img");
      media.setAttribute("aria-label", c.a);
      media.setAttribute("title", c.a);
    }
    if (c.u && /^(https?|ftp|s3|gs):/i.test(c.u)) {
      var link = el("a");
      link.setAttribute("href", c.u);
      link.setAttribute("rel", "noopener noreferrer");
      link.appendChild(media);
      fig.appendChild(link);
    } else {
      fig.appendChild(media);
    }
    if (c.b) fig.appendChild(el("span", "badge " + c.b, c.b));
    var cap = el("figcaption");
    cap.appendChild(el("div", null, c.n));
    (c.l || []).forEach(function (line) { cap.appendChild(el("div", c.t || null, line)); });
    fig.appendChild(cap);
    return fig;
  }
  function gallery(box) {
    var rows = JSON.parse(document.getElementById(box.getAttribute("data-gallery")).textContent);
    var opts = JSON.parse(box.getAttribute("data-options"));
    var list = box.querySelector("ol.rows");
    var bars = box.querySelectorAll(".controls");
    var state = {page: 0, min: 1, max: Infinity};
    var shown = rows;
    var ctl = [];
    for (var b = 0; b < bars.length; b++) {
      var c = {prev: el("button", null, "\u2190 previous"), next: el("button", null, "next \u2192"),
               info: el("span")};
      c.prev.type = c.next.type = "button";
      c.prev.onclick = function () { go(state.page - 1); };
      c.next.onclick = function () { go(state.page + 1); };
      bars[b].appendChild(c.prev); bars[b].appendChild(c.info); bars[b].appendChild(c.next);
      ctl.push(c);
    }
    if (opts.filter && rows.length) {
      var label = el("label", null, "group size from ");
      var lo = el("input"), hi = el("input");
      lo.type = hi.type = "number"; lo.min = hi.min = "1"; lo.placeholder = hi.placeholder = "any";
      lo.setAttribute("aria-label", "smallest group size"); hi.setAttribute("aria-label", "largest group size");
      label.appendChild(lo); label.appendChild(document.createTextNode(" to ")); label.appendChild(hi);
      function refilter() {
        state.min = parseInt(lo.value, 10) || 1;
        state.max = parseInt(hi.value, 10) || Infinity;
        shown = rows.filter(function (r) { return r.n >= state.min && r.n <= state.max; });
        go(0);
      }
      lo.oninput = hi.oninput = refilter;
      bars[0].insertBefore(label, bars[0].firstChild);
    }
    function go(page) {
      var pages = Math.max(1, Math.ceil(shown.length / opts.perPage));
      state.page = Math.min(Math.max(page, 0), pages - 1);
      var start = state.page * opts.perPage, stop = Math.min(shown.length, start + opts.perPage);
      var frag = document.createDocumentFragment();
      for (var i = start; i < stop; i++) {
        var r = shown[i], li = el("li", r.tone || null);
        li.appendChild(el("div", "rowtitle", r.title));
        var cells = el("div", "cells");
        r.cells.forEach(function (c) { cells.appendChild(figure(c)); });
        li.appendChild(cells);
        frag.appendChild(li);
      }
      list.textContent = "";
      if (!shown.length) list.appendChild(el("li", "empty", opts.empty));
      list.appendChild(frag);
      ctl.forEach(function (c) {
        c.info.textContent = shown.length ? ("rows " + (start + 1) + "\u2013" + stop + " of " + shown.length +
                                             " (page " + (state.page + 1) + " of " + pages + ")") : "";
        c.prev.disabled = state.page === 0;
        c.next.disabled = state.page >= pages - 1;
      });
    }
    go(0);
  }
  var boxes = document.querySelectorAll("section.gallery");
  for (var i = 0; i < boxes.length; i++) gallery(boxes[i]);
  document.documentElement.setAttribute("data-ready", "1");
})();
"""
