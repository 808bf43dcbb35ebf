"""Review pages in a real headless Chromium (Debian's ``chromium``, driven by Playwright through
``executable_path``; Playwright's own browser downloads are never used).

Each page kind must load from ``file://`` with no request elsewhere, no console error, no broken
image (``naturalWidth > 0`` once every lazy image is loaded) and a screenshot that is not blank.
A 10,000-group dedup page must come up within a generous bound: a functional check that paging
draws one page of rows, not a benchmark.
"""

from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from rpmetric.attacks.evaluate import AttackResult
from rpmetric.datasets import JNDPair, Triplet
from rpmetric.report import write_dedup_page, write_eval_page, write_near_page, write_search_page

LOAD_BOUND_S = 15  # generous: the page draws 50 rows of 10,000; seconds would mean it drew them all


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _skip(reason: str):
    """Skip, except where CI promises a browser (.ci/run sets RPMETRIC_REQUIRE_BROWSER=1): there, fail."""
    if os.environ.get("RPMETRIC_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, but RPMETRIC_REQUIRE_BROWSER=1 requires the browser tests to run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    if exe is None:
        _skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    try:
        from playwright import sync_api
    except ImportError:
        _skip("Playwright is not installed (pip install 'rpmetric[test]')")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


class Loaded:
    """A page opened in the browser, with what it asked for and what it complained about."""

    def __init__(self, browser, path):
        self.context = browser.new_context(viewport={"width": 1100, "height": 900})
        self.page = self.context.new_page()
        self.errors, self.remote = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else self.remote.append(r.url))
        start = time.monotonic()
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector("html[data-ready]", timeout=LOAD_BOUND_S * 1000)
        self.seconds = time.monotonic() - start

    def images(self):
        """``[src, naturalWidth, alt]`` of every image, once each lazy one has been loaded."""
        return self.page.evaluate("""async () => {
            const imgs = Array.from(document.images);
            imgs.forEach(i => { i.loading = "eager"; });
            await Promise.all(imgs.map(i => i.decode().catch(() => null)));
            return imgs.map(i => [i.getAttribute("src"), i.naturalWidth, i.alt]);
        }""")

    def screenshot_is_not_blank(self) -> bool:
        shot = np.asarray(Image.open(io.BytesIO(self.page.screenshot(full_page=False))).convert("RGB"))
        packed = shot.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], np.int32)
        colours = len(np.unique(packed))
        return float(shot.std()) > 10 and colours > 50

    def close(self):
        self.context.close()


def _images(folder, n, size=(96, 72)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
        path = folder / f"img{i:03d}.png"
        small.resize(size, Image.BICUBIC).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """One page of each kind, from synthetic results (no model: the commands' pages are checked by
    html.parser in test_report.py; here the browser checks what they become)."""
    root = tmp_path_factory.mktemp("pages")
    imgs = _images(root / "imgs", 12)
    (root / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    made = {}
    dedup = [{"group": 1, "keep": 1, "path": str(imgs[0]), "distance_to_first": 0},
             {"group": 1, "keep": 0, "path": str(imgs[1]), "distance_to_first": 0.01},
             {"group": 1, "keep": 0, "path": str(root / "imgs" / "broken.png"), "distance_to_first": 0.02},
             {"group": 2, "keep": 1, "path": str(imgs[2]), "distance_to_first": 0},
             {"group": 2, "keep": 0, "path": str(imgs[3]), "distance_to_first": 0.03}]
    made["dedup"] = (write_dedup_page(root / "dedup.html", dedup), 1)  # one placeholder: broken.png
    near = [{"path": str(imgs[4]), "match": str(imgs[5]), "distance": 0.02}]
    made["near"] = (write_near_page(root / "near.html", near), 0)
    results = [{"query": str(imgs[i]), "label": "a", "score": 2 / 3,
                "neighbours": [{"rank": r + 1, "path": str(imgs[(i + r) % 12]), "distance": r / 10,
                                "label": "ab"[r % 2]} for r in range(3)]} for i in range(4)]
    made["search"] = (write_search_page(root / "search.html", results), 0)
    made["classify"] = (write_search_page(root / "classify.html", results, classify=True), 0)
    triplets = [Triplet(str(i), imgs[i], imgs[i + 1], imgs[i + 2], p) for i, p in enumerate([0.9, 0.1, 0.6])]
    records = [{"group": "test", "id": t.id, "d0": 0.1 * (i + 1), "d1": 0.2, "p": t.p} for i, t in enumerate(triplets)]
    clean = torch.rand(3, 32, 32)
    attacked = (clean + 4 / 255 * torch.sign(torch.randn(3, 32, 32))).clamp(0, 1)
    attack_records = [{"key": t.id, "p": t.p, "label": int(t.p > 0.5), "clean_d0": 0.1, "clean_d1": 0.2,
                       "adv_d0": 0.3, "adv_d1": 0.2, "clean_correct": 1.0, "robust_correct": 0.0,
                       "linf": 4 / 255, "l2": 0.5, "defended_clean_correct": 1.0, "nonadaptive_correct": 1.0,
                       "adaptive_correct": 0.0, "tau_clean": 0.3 + 0.01 * i, "tau_attacked": 0.05 + 0.01 * i,
                       "tau_adaptive": 0.1} for i, t in enumerate(triplets)]
    details = {"test": AttackResult(n=3, clean_accuracy=1.0, robust_accuracy=0.0, records=attack_records,
                                    images={"0": {"clean": clean, "attacked": attacked}})}
    summary = {"test": {"n": 3, "clean_accuracy": 1.0, "robust_accuracy": 0.0, "attack": {"norm": "linf"},
                        "counterattack": {"clean_accuracy": 1.0, "nonadaptive_accuracy": 1.0,
                                          "adaptive_accuracy": 0.0}}}
    made["eval"] = (write_eval_page(root / "eval.html", task="2afc", results={"test": {"n": 3, "score": 0.6}},
                                    records=records, groups={"test": triplets}, attack=summary,
                                    attack_details=details, tau_threshold=0.2), 0)
    pairs = [JNDPair(str(i), imgs[i], imgs[i + 1], float(i % 2)) for i in range(6)]
    made["jnd"] = (write_eval_page(root / "jnd.html", task="jnd", results={"cnn": {"n": 6, "score": 0.7}},
                                   records=[{"group": "cnn", "id": p.id, "d": i / 10, "same": p.same}
                                            for i, p in enumerate(pairs)], groups={"cnn": pairs}), 0)
    return made


@pytest.mark.parametrize("kind", ["dedup", "near", "search", "classify", "eval", "jnd"])
def test_each_page_kind_loads_offline_with_no_broken_image_and_no_error(browser, pages, kind):
    path, placeholders = pages[kind]
    loaded = Loaded(browser, path)
    try:
        images = loaded.images()
        assert images or kind == "jnd"
        assert [src for src, width, _ in images if width <= 0] == []  # none broken
        assert all(alt.strip() for _, _, alt in images)
        assert loaded.page.locator("figure .ph").count() == placeholders
        assert loaded.errors == [] and loaded.remote == []
        assert loaded.screenshot_is_not_blank()
    finally:
        loaded.close()


def test_a_10000_group_dedup_page_pages_and_filters(browser, tmp_path):
    imgs = _images(tmp_path / "imgs", 40, size=(48, 40))
    rng = np.random.default_rng(1)
    sizes = rng.integers(2, 6, 10_000)
    rows = [{"group": g + 1, "keep": int(m == 0), "path": str(imgs[(g + m) % 40]), "distance_to_first": m / 100}
            for g, size in enumerate(sizes) for m in range(size)]
    loaded = Loaded(browser, write_dedup_page(tmp_path / "big.html", rows))
    try:
        assert loaded.seconds < LOAD_BOUND_S
        rows_drawn = loaded.page.locator("ol.rows > li")
        assert rows_drawn.count() == 50
        info = loaded.page.locator(".controls span").first
        assert info.text_content() == "rows 1\u201350 of 10000 (page 1 of 200)"
        # Largest first (stable): the first row is the first group of the largest size.
        first = int(np.flatnonzero(sizes == sizes.max())[0]) + 1
        assert rows_drawn.first.locator(".rowtitle").text_content().startswith(f"group {first} ")
        loaded.page.locator(".controls button", has_text="next").first.click()
        assert info.text_content() == "rows 51\u2013100 of 10000 (page 2 of 200)"
        loaded.page.fill("input[aria-label='smallest group size']", "5")
        assert info.text_content().endswith(f"of {int((sizes >= 5).sum())} (page 1 of "
                                            f"{-(-int((sizes >= 5).sum()) // 50)})")
        assert all(t.startswith("group ") and " 5 images" in t
                   for t in loaded.page.locator(".rowtitle").all_text_contents())
        assert [w for _, w, _ in loaded.images() if w <= 0] == []
        assert loaded.errors == [] and loaded.remote == []
    finally:
        loaded.close()


def test_only_web_urls_become_links(browser, tmp_path):
    rows = [{"group": 1, "keep": 1, "path": "k/1", "distance_to_first": 0, "url": "https://example.org/1.jpg"},
            {"group": 1, "keep": 0, "path": "k/2", "distance_to_first": 0.1, "url": "javascript:alert(1)"}]
    loaded = Loaded(browser, write_dedup_page(tmp_path / "links.html", rows))
    try:
        hrefs = loaded.page.eval_on_selector_all("figure a", "links => links.map(a => a.getAttribute('href'))")
        assert hrefs == ["https://example.org/1.jpg"]
        assert loaded.page.locator("figure .ph").count() == 2 and loaded.errors == []
    finally:
        loaded.close()
