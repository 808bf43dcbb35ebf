"""No single file can exhaust memory or time, or end a run: elongated images, pixel bombs, decoder and
allocation failures, sources that are not folders, and workers whose parent dies (issue 12, items 1 and 10)."""

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

import datagen
from subproc import run_cli

import rpmetric
from rpmetric.models.preprocess import resize_and_crop, target_size
from rpmetric.models.spec import Preprocessing
from rpmetric.stores.store import EmbeddingStore

WIDE, TALL = (1, 20000), (20000, 1)  # (height, width): the 118-byte PNG, and the same on its side


# -- files -------------------------------------------------------------------------------------
def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` RGB pixels, with one tiny (truncated) IDAT: cheap
    to write, and only a decoder that trusts the header would try to allocate the claimed size."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def strip(path: Path, shape) -> Path:
    """A noise PNG of ``shape`` (height, width): a few kilobytes that resize to gigabytes."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
    return path


def truncated(path: Path) -> Path:
    strip(path, (64, 64))
    path.write_bytes(path.read_bytes()[:200])
    return path


# (name, writer, reason the file is skipped with, or None: it is embedded). Pillow's limit
# (PIL.Image.MAX_IMAGE_PIXELS = 89,478,485) warns above it and refuses above twice it; both are
# refused from the header here, as one error.
CASES = [
    ("wide.png", lambda p: strip(p, WIDE), None),
    ("tall.png", lambda p: strip(p, TALL), None),
    ("over-limit.png", lambda p: png_header(p, 10000, 9000), r"10000 x 9000 = 90,000,000 pixels, over the limit"),
    ("bomb.png", lambda p: png_header(p, 100000, 100000), r"more than twice the limit of 89,478,485 pixels"),
    ("truncated.png", truncated, r"image file is truncated"),
]


# -- crop before resize: the same pixels as the full resize and crop ----------------------------
ELONGATED = [(40, 400), (400, 40), (3, 300), (37, 501)]


def crop_box(shape, pp):
    """``(new_h, new_w), (top, left)``: the full resize and where the centre crop sits in it."""
    h, w = target_size(*shape, pp)
    return (h, w), (round((h - pp.image_size) / 2), round((w - pp.image_size) / 2))


def pil_resize_then_crop(arr: np.ndarray, pp) -> torch.Tensor:
    """PIL's resize of the whole image, then its crop, as ``[1, 3, S, S]`` int. The horizontal pass
    runs first, as in torch's 8-bit kernel (Pillow 13 picks the order by itself, and on noise the
    8-bit clipping between the passes then differs by up to 20 levels)."""
    (h, w), (top, left) = crop_box(arr.shape[:2], pp)
    filt = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[pp.interpolation]
    wide = Image.fromarray(arr).resize((w, arr.shape[0]), filt)
    size = pp.image_size
    return torch.from_numpy(np.array(wide.resize((w, h), filt).crop((left, top, left + size, top + size)))) \
        .permute(2, 0, 1)[None].int()


@pytest.mark.parametrize("shape", ELONGATED)
@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_elongated_uint8_images_match_pil_resize_then_crop(shape, mode):
    pp = Preprocessing(image_size=32, resize_size=36, interpolation=mode)
    x = torch.randint(0, 256, (1, 3, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = resize_and_crop(x, pp)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 32, 32)
    diff = (out.int() - pil_resize_then_crop(x[0].permute(1, 2, 0).numpy(), pp)).abs()
    assert diff.max() <= 2 and diff.float().mean() < 0.1  # as tests/test_preprocess.py holds the full resize
    # and within a level of rounding of torch's 8-bit kernel on the whole image (what ran before).
    (h, w), (top, left) = crop_box(shape, pp)
    full = torch.nn.functional.interpolate(x, size=(h, w), mode=mode, antialias=True)
    assert (out.int() - full[..., top:top + 32, left:left + 32].int()).abs().max() <= 1


@pytest.mark.parametrize("shape", ELONGATED + [(1, 2000), (2000, 1)])
@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_elongated_float_images_match_torchvision_and_stay_differentiable(shape, mode):
    pp = Preprocessing(image_size=32, resize_size=36, interpolation=mode)
    x = torch.rand(2, 3, *shape, dtype=torch.float64, requires_grad=True)
    interp = T.InterpolationMode.BICUBIC if mode == "bicubic" else T.InterpolationMode.BILINEAR
    expected = T.Compose([T.Resize(36, interpolation=interp, antialias=True), T.CenterCrop(32)])(x.detach())
    out = resize_and_crop(x, pp)
    torch.testing.assert_close(out, expected.clamp(0, 1) if mode == "bicubic" else expected, atol=1e-9, rtol=0)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # float32, as the metric's forward takes it: within float32 rounding of torchvision.
    x32 = x.detach().float()
    expected32 = T.Compose([T.Resize(36, interpolation=interp, antialias=True), T.CenterCrop(32)])(x32)
    torch.testing.assert_close(resize_and_crop(x32, pp), expected32.clamp(0, 1) if mode == "bicubic" else expected32,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", ELONGATED)
def test_elongated_nearest_picks_torch_s_pixels(shape):
    pp = Preprocessing(image_size=32, resize_size=36, interpolation="nearest")
    x = torch.randint(0, 256, (1, 3, *shape), dtype=torch.uint8)
    (h, w), (top, left) = crop_box(shape, pp)
    full = torch.nn.functional.interpolate(x, size=(h, w), mode="nearest")[..., top:top + 32, left:left + 32]
    assert torch.equal(resize_and_crop(x, pp), full)


@pytest.mark.parametrize("shape", ELONGATED)
def test_the_8_bit_and_float_paths_agree_on_elongated_images(shape):
    pp = Preprocessing(image_size=32, resize_size=36)
    smooth = np.array(Image.fromarray(np.random.default_rng(2).integers(0, 256, (4, 4, 3), dtype=np.uint8))
                        .resize(shape[::-1], Image.BICUBIC))  # no overshoot for the 8-bit passes to clip
    x = torch.from_numpy(smooth).permute(2, 0, 1)[None].contiguous()
    assert (resize_and_crop(x, pp).float() / 255 - resize_and_crop(x.float() / 255, pp)).abs().max() <= 1.5 / 255


@pytest.mark.parametrize("shape", [WIDE, TALL, (3, 2_000_000), (2_000_000, 3)])
@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_resize_costs_what_its_output_costs(shape, resize_mode):
    # The ConvNeXt preprocessing (256, crop 224) on a strip: 256 x 5,120,000 pixels if resized whole
    # (15 GB as float), and a squash resize that runs its horizontal pass first makes 2,000,000 x 224.
    pp = Preprocessing(image_size=224, resize_size=256 if resize_mode == "shortest" else 224, resize_mode=resize_mode)
    x = torch.randint(0, 256, (1, 3, *shape), dtype=torch.uint8)
    script = textwrap.dedent(f"""
        import resource, time, torch
        from rpmetric.models.preprocess import resize_and_crop
        from rpmetric.models.spec import Preprocessing
        x = torch.load({str(_save(x))!r})
        pp = Preprocessing(**{pp.__dict__!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        for y in (resize_and_crop(x, pp), resize_and_crop(x.float() / 255, pp)):
            assert y.shape == (1, 3, 224, 224), y.shape
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(round(grown), round(time.perf_counter() - start, 2))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=_limited_env())
    assert out.returncode == 0, out.stderr
    grown_mb, seconds = map(float, out.stdout.split())
    assert grown_mb < 400 and seconds < 10  # the input alone is 72 MB as float


_SAVED = {}


def _save(x: torch.Tensor) -> str:
    import tempfile

    key = tuple(x.shape)
    if key not in _SAVED:
        path = Path(tempfile.mkdtemp()) / "x.pt"
        torch.save(x, path)
        _SAVED[key] = path
    return _SAVED[key]


def _limited_env():
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


# -- the pixel limit ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, write, reason", [c for c in CASES if c[2] is not None], ids=lambda v: str(v)[:14])
def test_unreadable_and_oversized_files_are_one_error_naming_the_file(tmp_path, name, write, reason, recwarn):
    path = write(tmp_path / name)
    with pytest.raises(ValueError, match=rf"{name} cannot be read as an image: .*{reason}"):
        rpmetric.load_image(path)
    assert not [w for w in recwarn if "DecompressionBomb" in w.category.__name__]


def test_raising_pillow_s_limit_lets_a_trusted_file_through(tmp_path, monkeypatch):
    path = strip(tmp_path / "a.png", (40, 50))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1999)  # 2000 pixels: refused, named, with the fix
    with pytest.raises(ValueError, match=r"a.png cannot be read as an image: it is 50 x 40 = 2,000 pixels, over the "
                                         r"limit of 1,999 pixels \(PIL.Image.MAX_IMAGE_PIXELS"):
        rpmetric.load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert rpmetric.load_image(path).shape == (1, 3, 40, 50)


def test_load_image_size_refuses_a_resize_over_the_limit(tmp_path):
    path = strip(tmp_path / "wide.png", (1, 400_000))
    with pytest.raises(ValueError, match=r"`size` \(256\) would resize .*wide.png \(400000 x 1\) to 102400000 x 256"):
        rpmetric.load_image(path, size=256)
    assert rpmetric.load_image(path).shape == (1, 3, 1, 400_000)  # the metric itself crops before it resizes


# -- per-item failures: one file is skipped with its reason, the run goes on ---------------------
FAILURES = [
    ("allocation", RuntimeError("DefaultCPUAllocator: can't allocate memory"), r"RuntimeError \(DefaultCPUAllocator"),
    ("numpy-memory", MemoryError(), r"MemoryError \(out of memory\)"),
    ("decoder", OSError("broken data stream when reading image file"), r"OSError \(broken data stream"),
    ("syntax", SyntaxError("not a TIFF file"), r"SyntaxError \(not a TIFF file"),
]


def _fail_on(monkeypatch, name, error):
    """read_rgb raises ``error`` for files called ``name``, as a decoder or an allocation would."""
    import rpmetric.images as images

    real = images.read_rgb

    def read_rgb(path):
        if Path(path).name == name:
            raise error
        return real(path)

    monkeypatch.setattr(images, "read_rgb", read_rgb)


@pytest.mark.parametrize("case, error, reason", FAILURES, ids=[f[0] for f in FAILURES])
def test_dataset_items_carry_any_decoding_failure_naming_the_file(tmp_path, monkeypatch, case, error, reason):
    from rpmetric.datasets import PairImages, collate_images
    from rpmetric.datasets.records import JNDPair

    good = datagen.save_png(tmp_path / "good.png", datagen.pattern(0))
    bad = datagen.save_png(tmp_path / "bad.png", datagen.pattern(1))
    _fail_on(monkeypatch, "bad.png", error)
    ds = PairImages([JNDPair("0", good, good, 1.0), JNDPair("1", good, bad, 0.0)])
    batch = collate_images([ds[0], ds[1]])
    assert batch["index"] == [0] and len(batch["errors"]) == 1
    index, message = batch["errors"][0]
    assert index == 1 and message.startswith(f"{bad} cannot be decoded and resized: ")
    assert __import__("re").search(reason, message)


@pytest.mark.parametrize("case, error, reason", FAILURES, ids=[f[0] for f in FAILURES])
def test_embed_images_skips_a_file_whatever_stopped_it(tmp_path, monkeypatch, tiny_metric, case, error, reason):
    from rpmetric.stores.store import embed_images

    files = [datagen.save_png(tmp_path / f"{n}.png", datagen.pattern(k)) for k, n in enumerate(("a", "bad", "c"))]
    _fail_on(monkeypatch, "bad.png", error)
    emb, paths, skipped = embed_images(tiny_metric, files, num_workers=0)
    assert paths == [str(files[0]), str(files[2])] and emb.shape[0] == 2
    assert [s["path"] for s in skipped] == [str(files[1])]
    assert __import__("re").search(reason, skipped[0]["reason"]) and str(files[1]) in skipped[0]["reason"]


# -- the whole commands under a memory limit ----------------------------------------------------
# The limit is set after the imports (torch alone maps about 3.5 GB of address space): a worker may
# then allocate 1.5 GB more. The full resize of the 1 x 20000 strip for a 224-pixel model is
# 224 x 4,480,000 x 3 bytes = 3 GB; a crop before the resize needs a few megabytes.
LIMITED = textwrap.dedent("""
    import resource, sys
    import torch, rpmetric.cli, open_clip, timm  # noqa: F401
    vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize"))
    limit = vm * 1024 + int(1.5 * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.exit(rpmetric.cli.main(sys.argv[1:]))
""")


def run_limited(args, timeout=300):
    return subprocess.run([sys.executable, "-c", LIMITED, *map(str, args)], capture_output=True, text=True,
                          env=_limited_env(), timeout=timeout)


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "images"
    folder.mkdir()
    datagen.save_png(folder / "ok.png", datagen.pattern(3, (40, 48)))
    for name, write, _ in CASES:
        write(folder / name)
    return folder


@pytest.fixture(scope="module")
def embedded(hostile_folder, zoo_cache, tmp_path_factory):
    """``rpmetric embed`` of the hostile folder with a 224-pixel model, under the memory limit."""
    out = tmp_path_factory.mktemp("store") / "store"
    result = run_limited(["embed", hostile_folder, "--out", out, "--model", zoo_cache[1], "--workers", "2",
                          "--batch-size", "2", "--quiet"])
    return result, out


@pytest.mark.parametrize("name, write, reason", CASES, ids=[c[0] for c in CASES])
def test_embed_goes_on_past_every_hostile_file(embedded, hostile_folder, name, write, reason):
    result, out = embedded
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    if reason is None:
        assert name in EmbeddingStore(out).paths
    else:
        assert name in skipped and str(hostile_folder / name) in skipped[name]
        assert __import__("re").search(reason, skipped[name])
    assert "ok.png" in EmbeddingStore(out).paths
    assert f"{manifest['count']} images embedded" in result.stdout


@pytest.fixture(scope="module")
def evaluated(zoo_cache, tmp_path_factory):
    """``rpmetric eval nights --skip-bad`` where each validation triplet's left image is a hostile file."""
    root = tmp_path_factory.mktemp("nights") / "nights"
    datagen.nights_known(root)
    rows = (root / "data.csv").read_text().splitlines()
    header, body = rows[0].split(","), [r.split(",") for r in rows[1:]]
    split, left = header.index("split"), header.index("left_path")
    tests = [r for r in body if r[split] == "test" and int(r[header.index("votes")]) >= 6]
    # The bad files in test_imagenet (4 triplets), so that no group is left empty.
    tests.sort(key=lambda r: r[header.index("is_imagenet")] != "True")
    cases = sorted(CASES, key=lambda c: c[2] is None)
    named = {}
    for row, (name, write, reason) in zip(tests, cases):
        write(root / row[left])
        named[name] = (row[header.index("id")], root / row[left])
    out = root.parent / "result.json"
    result = run_limited(["eval", "nights", root, "--model", zoo_cache[1], "--split", "test", "--workers", "2",
                          "--batch-size", "1", "--skip-bad", "--out", out])
    return result, out, named


@pytest.mark.parametrize("name, write, reason", CASES, ids=[c[0] for c in CASES])
def test_eval_skip_bad_goes_on_past_every_hostile_file(evaluated, name, write, reason):
    result, out, named = evaluated
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "DecompressionBomb" not in result.stderr
    triplet, path = named[name]
    if reason is None:
        assert triplet not in result.stderr
    else:
        line = next(line for line in result.stderr.splitlines() if str(path) in line)
        assert __import__("re").search(reason, line)
        assert triplet in json.dumps(json.loads(out.read_text()))


# -- a SOURCE that is not a folder or a list ---------------------------------------------------
SOURCES = [
    ("dev-null", lambda tmp: Path("/dev/null"), r"Input /dev/null exists but is neither a folder nor a file "
                                                 r"\(a character device\)"),
    ("fifo", lambda tmp: (os.mkfifo(tmp / "pipe"), tmp / "pipe")[1], r"pipe exists but is neither a folder nor a file "
                                                                     r"\(a named pipe\)"),
    ("image-as-list", lambda tmp: datagen.save_png(tmp / "photo.png", datagen.pattern(0)),
     r"photo.png is not a text file listing image paths \(it is not UTF-8 text"),
    ("missing", lambda tmp: tmp / "nope", r"Input .*nope does not exist"),
]


@pytest.mark.parametrize("case, make, message", SOURCES, ids=[s[0] for s in SOURCES])
def test_embed_names_what_its_source_is(tmp_path, vit_folder, case, make, message):
    source = make(tmp_path)
    result = run_cli(["embed", source, "--out", tmp_path / "store", "--model", vit_folder, "--quiet"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert __import__("re").search(message, result.stderr), result.stderr
    assert "does not exist" not in result.stderr or case == "missing"


# -- workers die with their parent ---------------------------------------------------------------
def _children(pid: int):
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_workers_exit_quietly_when_the_main_process_dies(tmp_path, vit_folder, sig):
    folder = tmp_path / "images"
    folder.mkdir()
    for n in range(300):
        datagen.save_png(folder / f"{n:03d}.png", datagen.pattern(n, (64, 64)))
    proc = subprocess.Popen([sys.executable, "-m", "rpmetric", "embed", folder, "--out", tmp_path / "store",
                             "--model", vit_folder, "--workers", "2", "--batch-size", "2", "--shard-size", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "store").glob("shard-*.json")):
        time.sleep(0.1)  # the workers are running once the first shard is written
    workers = _children(proc.pid)
    assert len(workers) >= 2 and proc.poll() is None, "the embed finished before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    # Orphaned workers are not left to torch's watchdog, which looks for the parent every 5 s.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)], "a worker outlived the main process"
    _, err = proc.communicate(timeout=60)
    assert "ConnectionResetError" not in err and "Traceback" not in err, err[-3000:]
