"""Does a dedup review page stay responsive at 10,000 groups? Paging draws 50 rows however many
the page holds, so opening a 10,000-group page should cost little more than a 50-group one.

Both pages are written by ``rpmetric.report.write_dedup_page`` from the same 40 small images
(groups of 2 to 5 members, sizes drawn at random), then opened in headless Chromium (Debian's
``chromium``, driven by Playwright) in interleaved rounds; the time is from navigation until the
page's script has drawn its first page of rows (``html[data-ready]``). The report is the median
ratio big / small and both medians.

    python evals/bench_pages.py [--groups 10000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from rpmetric.report import write_dedup_page


def _rows(images, groups: int, seed: int = 1):
    sizes = np.random.default_rng(seed).integers(2, 6, groups)
    return [{"group": g + 1, "keep": int(m == 0), "path": str(images[(g + m) % len(images)]),
             "distance_to_first": m / 100} for g, size in enumerate(sizes) for m in range(size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    images = []
    for i in range(40):
        path = work / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((96, 72), Image.BICUBIC).save(path)
        images.append(path)
    pages = {"small": write_dedup_page(work / "small.html", _rows(images, 50)),
             "big": write_dedup_page(work / "big.html", _rows(images, args.groups))}
    seconds = {name: [] for name in pages}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        for _ in range(args.rounds):
            for name, page in pages.items():  # interleaved, so machine load hits both alike
                context = browser.new_context()
                tab = context.new_page()
                start = time.perf_counter()
                tab.goto(page.as_uri())
                tab.wait_for_selector("html[data-ready]")
                seconds[name].append(time.perf_counter() - start)
                assert tab.locator("ol.rows > li").count() == 50
                context.close()
        browser.close()
    ratios = [b / s for b, s in zip(seconds["big"], seconds["small"])]
    print(json.dumps({"groups": args.groups, "rounds": args.rounds,
                      "page_bytes": {n: p.stat().st_size for n, p in pages.items()},
                      "median_s": {n: round(statistics.median(v), 3) for n, v in seconds.items()},
                      "median_ratio_big_over_small": round(statistics.median(ratios), 2)}, indent=1))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
