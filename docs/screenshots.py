"""Make the README's screenshots of the review pages (docs/page-*.png), from synthetic images and
the test suite's tiny random model, through the real commands (`rpmetric embed`, `dedup`,
`search`, `classify`, `eval ... --html`), shown in Debian's headless chromium.

    PYTHONPATH=.:tests python docs/screenshots.py [--keep WORK_DIR]

The pictures show the pages, not a model: the tiny model is random, so its groups, neighbours
and scores mean nothing.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

HERE = Path(__file__).resolve().parent
MAX_BYTES = 200_000


def scene(seed: int, size=(256, 192)) -> Image.Image:
    """A colourful synthetic picture: a gradient sky, a ground and a few shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    top, bottom = rng.integers(40, 255, 3), rng.integers(0, 200, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    sky = (top * (1 - t) + bottom * t).astype(np.uint8).repeat(w, axis=1)
    img = Image.fromarray(sky)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, int(h * rng.uniform(0.6, 0.8)), w, h], fill=tuple(int(v) for v in rng.integers(0, 160, 3)))
    for _ in range(rng.integers(2, 5)):
        x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(12, 50)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x - r, y - r, x + r, y + r], fill=colour)
    return img


def make_images(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(24):
        img = scene(i)
        img.save(folder / f"photo{i:02d}.png")
        if i % 4 == 0:  # near-duplicates: a recompressed copy, a brighter one, a slight crop
            img.save(folder / f"photo{i:02d}_copy.jpg", quality=70)
            ImageEnhance.Brightness(img).enhance(1.08).save(folder / f"photo{i:02d}_bright.png")
        if i % 8 == 0:
            img.crop((4, 3, 252, 189)).resize((256, 192)).save(folder / f"photo{i:02d}_crop.png")


def run(*argv) -> None:
    from rpmetric.cli import main

    code = main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"rpmetric {' '.join(map(str, argv))} exited {code}")


def shoot(browser, page: Path, out: Path, scroll_to: str = "", height: int = 760) -> None:
    context = browser.new_context(viewport={"width": 1000, "height": height}, device_scale_factor=1)
    tab = context.new_page()
    tab.goto(page.resolve().as_uri())
    tab.wait_for_selector("html[data-ready]")
    tab.evaluate("""async () => { const imgs = Array.from(document.images);
        imgs.forEach(i => { i.loading = "eager"; }); await Promise.all(imgs.map(i => i.decode().catch(() => 0))); }""")
    if scroll_to:
        tab.evaluate(f"document.querySelector({scroll_to!r}).scrollIntoView()")
    png = tab.screenshot()
    context.close()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    for colours in (256, 128, 64):  # a palette PNG: screenshots of pages compress well
        buf = io.BytesIO()
        image.quantize(colours, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
        if buf.tell() <= MAX_BYTES:
            break
    if buf.tell() > MAX_BYTES:
        raise SystemExit(f"{out} would be {buf.tell():,} bytes, over {MAX_BYTES:,}")
    out.write_bytes(buf.getvalue())
    print(f"{out}: {buf.tell():,} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep the pages (default: a temp dir)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp())
    import datagen
    import tinymodels
    from playwright.sync_api import sync_playwright

    model = tinymodels.save_open_clip(work / "tiny-vit", tinymodels.TINY_VIT224_CFG)
    images = work / "photos"
    make_images(images)
    common = ["--model", model, "--device", "cpu"]
    run("embed", images, "--out", work / "store", *common, "--dtype", "float32", "--quiet", "--workers", "0")
    run("dedup", work / "store", "--threshold", "0.002", "--out", work / "dups.csv", "--html", work / "dedup.html")
    queries = [images / "photo01.png", images / "photo04_copy.jpg", images / "photo13.png"]
    run("search", work / "store", *queries, "--k", "5", "--html", work / "search.html", "--device", "cpu")
    labels = work / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{p},{'even' if int(p.name[5:7]) % 2 == 0 else 'odd'}\n"
                                               for p in sorted(images.iterdir())))
    run("classify", work / "store", *queries, "--labels", labels, "--k", "5", "--html", work / "classify.html",
        "--device", "cpu")
    nights = work / "nights"
    datagen.nights_known(nights, size=(128, 128))
    run("eval", "nights", nights, *common, "--workers", "0", "--attack", "linf", "--steps", "5", "--counterattack",
        "--html", work / "eval.html")
    datagen.write_bapps_jnd(work / "bapps", "cnn", [(a, s) for a, s in zip(np.linspace(0, 0.25, 40),
                                                                           np.random.default_rng(0).random(40))])
    datagen.write_bapps_jnd(work / "bapps", "traditional", [(a, float(a < 0.1)) for a in np.linspace(0, 0.25, 40)])
    run("eval", "jnd", work / "bapps", "--model", "l2", "--workers", "0", "--html", work / "jnd.html")

    chromium = shutil.which("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        shoot(browser, work / "dedup.html", HERE / "page-dedup.png")
        shoot(browser, work / "search.html", HERE / "page-search.png")
        shoot(browser, work / "classify.html", HERE / "page-classify.png", height=560)
        shoot(browser, work / "eval.html", HERE / "page-eval.png", height=900)
        shoot(browser, work / "eval.html", HERE / "page-eval-attack.png", scroll_to="section.gallery + section.gallery",
              height=900)
        shoot(browser, work / "jnd.html", HERE / "page-jnd.png", scroll_to="#precision-recall", height=420)
        browser.close()
    print(f"pages in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
