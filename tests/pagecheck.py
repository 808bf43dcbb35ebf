"""Reading a review page back with html.parser (no browser): its galleries' rows, its static
markup's attributes, and every resource it would load."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: List[tuple] = []  # (tag, attrs dict)
        self.islands: Dict[str, str] = {}
        self._island = None
        self.text: List[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "script" and attrs.get("type") == "application/json":
            self._island = attrs["id"]
            self.islands[self._island] = ""

    def handle_endtag(self, tag):
        if tag == "script":
            self._island = None

    def handle_data(self, data):
        if self._island is not None:
            self.islands[self._island] += data
        else:
            self.text.append(data)


class ParsedPage:
    """A page as html.parser reads it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        parser = _Collector()
        parser.feed(self.path.read_text(encoding="utf-8"))
        parser.close()
        self.tags = parser.tags
        self.text = " ".join(parser.text)
        # Each gallery section names its island; rows in the page's order.
        self.galleries: Dict[str, List[dict]] = {}
        for tag, attrs in self.tags:
            if tag == "section" and "data-gallery" in attrs:
                self.galleries[attrs["data-gallery"]] = json.loads(parser.islands[attrs["data-gallery"]])

    @property
    def rows(self) -> List[dict]:
        return [row for rows in self.galleries.values() for row in rows]

    @property
    def cells(self) -> List[dict]:
        return [c for row in self.rows for c in row["cells"]]

    def external_references(self) -> List[str]:
        """Every resource the static markup would load from elsewhere (none allowed)."""
        bad = []
        for tag, attrs in self.tags:
            if tag in ("script", "img", "iframe", "link", "source", "video", "audio", "embed", "object"):
                for key in ("src", "href", "data"):
                    if attrs.get(key):
                        bad.append(f"<{tag} {key}={attrs[key]}>")
        return bad

    def missing_thumbnails(self) -> List[str]:
        """Thumbnail links of the galleries that lead to no file beside the page."""
        return [c["s"] for c in self.cells if "s" in c and not (self.path.parent / c["s"]).is_file()]

    def thumbnails_outside_files_folder(self) -> List[str]:
        folder = self.path.stem + "_files/"
        return [c["s"] for c in self.cells if "s" in c and not c["s"].startswith(folder)]
