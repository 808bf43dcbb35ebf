import numpy as np
import pytest
import torch
from PIL import Image

import rpmetric


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_any_mode_becomes_rgb_in_unit_range(tmp_path, mode):
    arr = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2
    path = tmp_path / f"img_{mode}.png"
    Image.fromarray(arr).convert(mode).save(path)
    x = rpmetric.load_image(path)
    assert x.shape == (1, 3, 4, 6) and x.dtype == torch.float32 and x.is_contiguous()
    assert 0 <= x.min() and x.max() <= 1
    if mode == "RGB":
        torch.testing.assert_close(x[0], torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    if mode == "L":
        assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])


def test_resize_shorter_side(tmp_path):
    Image.new("RGB", (80, 40)).save(tmp_path / "a.png")
    assert rpmetric.load_image(tmp_path / "a.png", size=20).shape == (1, 3, 20, 40)
    Image.new("RGB", (30, 80)).save(tmp_path / "b.png")  # portrait; the long side is truncated: 20 * 80 / 30
    assert rpmetric.load_image(tmp_path / "b.png", size=20).shape == (1, 3, 53, 20)


@pytest.mark.parametrize("size, error, message", [
    (0, ValueError, r"Argument `size` must be at least 1, but got 0\."),
    (2.5, TypeError, r"Argument `size` must be an integer, but got 2.5\."),
])
def test_resize_size_errors(tmp_path, size, error, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(error, match=message):
        rpmetric.load_image(tmp_path / "a.png", size=size)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Image file not found: .*nope.png"):
        rpmetric.load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"bad.png cannot be read as an image"):
        rpmetric.load_image(bad)


def test_read_pixels_is_the_exact_8_bit_file_and_unit_float_scales_it(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    from rpmetric.images import read_pixels, unit_float

    x = read_pixels(tmp_path / "a.png")
    assert x.dtype == torch.uint8 and x.shape == (3, 5, 7)
    assert torch.equal(x, torch.from_numpy(arr).permute(2, 0, 1))
    assert torch.equal(unit_float(x)[None], rpmetric.load_image(tmp_path / "a.png"))
    assert unit_float(torch.tensor([0, 51, 255], dtype=torch.uint8)).tolist() == pytest.approx([0.0, 0.2, 1.0])
    floats = torch.rand(2, 3)
    assert unit_float(floats) is floats  # float32 passes through untouched (no second scaling)
    assert unit_float(floats.double()).dtype == torch.float32
    assert [t.dtype for t in unit_float([x, floats])] == [torch.float32, torch.float32]
    x[0, 0, 0] = 255 - x[0, 0, 0]  # writable without a warning: its own copy of the pixels
    assert read_pixels(tmp_path / "a.png")[0, 0, 0] == arr[0, 0, 0]


@pytest.mark.parametrize("orientation, turn", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    # EXIF 6 means "rotate 90 degrees clockwise to display", 8 anticlockwise, 3 a half turn.
    arr = np.random.default_rng(2).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "r.png", exif=exif)
    from rpmetric.images import read_rgb

    np.testing.assert_array_equal(read_rgb(tmp_path / "r.png"), np.rot90(arr, k=turn))


def test_decompression_bombs_are_unreadable_images_not_crashes(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64*64 > 2 * 100: Pillow refuses it as a bomb
    with pytest.raises(ValueError, match=r"big.png cannot be read as an image"):
        rpmetric.load_image(tmp_path / "big.png")


# -- every pixel mode against an independent 8-bit conversion ---------------------------------
def write_png16(path, arr, color_type):
    """A 16-bit PNG written byte by byte (independent of Pillow's writer): ``arr`` is H x W (grey,
    color type 0) or H x W x C uint16 (2: RGB, 4: grey + alpha, 6: RGBA)."""
    import struct
    import zlib

    arr = np.asarray(arr, dtype=">u2")
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[r].tobytes() for r in range(h))  # filter type 0 on every row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


_RNG = np.random.default_rng(11)
GREY = _RNG.integers(0, 256, (6, 7), dtype=np.uint8)
GREY[0, :2] = 0, 255  # both ends of the range
COLOUR = _RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)
ALPHA = _RNG.integers(0, 256, (6, 7), dtype=np.uint8)
WIDE = _RNG.integers(0, 65536, (6, 7)).astype(np.uint16)
WIDE[0, :4] = 0, 65535, 128, 129  # 128/257 rounds down to 0, 129/257 up to 1
PALETTE = _RNG.integers(0, 256, (16, 3), dtype=np.uint8)
INDICES = _RNG.integers(0, 16, (6, 7), dtype=np.uint8)


def grey3(a):
    return np.repeat(np.asarray(a, np.uint8)[..., None], 3, axis=2)


def rounded16(v):
    """16-bit values to 8 bits, rounded to nearest: computed in float64, apart from the code's integers."""
    return np.rint(np.asarray(v, np.float64) * 255 / 65535).astype(np.uint8)


def palette_image(mode="P", transparency=None):
    img = Image.fromarray(INDICES, "P")
    img.putpalette(PALETTE.tobytes())
    if transparency is not None:
        img.info["transparency"] = transparency
    if mode == "PA":
        img = img.convert("PA")
        img.putalpha(Image.fromarray(ALPHA))
    return img


def cmyk_image(black):
    return Image.fromarray(np.dstack([255 - COLOUR, black]).astype(np.uint8), "CMYK")


BLACK = _RNG.integers(0, 256, (6, 7), dtype=np.uint8)
# Within 0.4 of a level of GREY, in [0, 1]: rounding must land on GREY.
FLOATS = (np.clip(GREY + _RNG.uniform(-0.4, 0.4, GREY.shape), 0, 255) / 255).astype(np.float32)
# (id, file name, write(path), expected H x W x 3 uint8, tolerance in levels). Alpha is dropped,
# as Pillow's convert("RGB") does for 8-bit modes.
MODE_CASES = [
    ("1", "bw.png", lambda p: Image.fromarray(GREY > 127).save(p), grey3(np.where(GREY > 127, 255, 0)), 0),
    ("L", "l.png", lambda p: Image.fromarray(GREY).save(p), grey3(GREY), 0),
    ("LA", "la.png", lambda p: Image.fromarray(np.dstack([GREY, ALPHA]), "LA").save(p), grey3(GREY), 0),
    ("RGB", "rgb.png", lambda p: Image.fromarray(COLOUR).save(p), COLOUR, 0),
    ("RGBA", "rgba.png", lambda p: Image.fromarray(np.dstack([COLOUR, ALPHA]), "RGBA").save(p), COLOUR, 0),
    ("P", "p.png", lambda p: palette_image().save(p), PALETTE[INDICES], 0),
    ("P-transparency", "pt.png", lambda p: palette_image(transparency=3).save(p), PALETTE[INDICES], 0),
    ("PA", "pa.tif", lambda p: palette_image("PA").save(p), PALETTE[INDICES], 0),
    ("CMYK", "cmyk.tif", lambda p: cmyk_image(np.zeros_like(GREY)).save(p), COLOUR, 0),
    ("CMYK-black", "cmykk.tif", lambda p: cmyk_image(BLACK).save(p),
     np.rint(COLOUR * (255.0 - BLACK[..., None]) / 255).astype(np.uint8), 1),
    ("I;16", "i16.png", lambda p: Image.fromarray(WIDE).save(p), grey3(rounded16(WIDE)), 0),
    ("I;16-8bit-picture", "i16g.png", lambda p: Image.fromarray(GREY.astype(np.uint16) * 257).save(p),
     grey3(GREY), 0),
    ("I;16-tiff", "i16.tif", lambda p: Image.fromarray(WIDE).save(p), grey3(rounded16(WIDE)), 0),
    ("I;16B-tiff", "i16b.tif", lambda p: Image.frombytes("I;16B", (7, 6), WIDE.astype(">u2").tobytes()).save(p),
     grey3(rounded16(WIDE)), 0),
    ("I;16-own-writer", "g16.png", lambda p: write_png16(p, WIDE, 0), grey3(rounded16(WIDE)), 0),
    ("I", "i32.tif", lambda p: Image.fromarray(WIDE.astype(np.int32)).save(p), grey3(rounded16(WIDE)), 0),
    # F is read as [0, 1].
    ("F", "f.tif", lambda p: Image.fromarray(FLOATS).save(p), grey3(GREY), 0),
    # Pillow decodes 16-bit colour PNGs to 8 bits itself, keeping the high byte: exact for a
    # 16-bit copy of an 8-bit picture, within a level of rounding otherwise.
    ("RGB-16", "rgb16.png", lambda p: write_png16(p, COLOUR.astype(np.uint16) * 257, 2), COLOUR, 0),
    ("RGB-16-random", "rgb16r.png", lambda p: write_png16(p, np.dstack([WIDE] * 3), 2), grey3(rounded16(WIDE)), 1),
    ("LA-16", "la16.png", lambda p: write_png16(p, np.dstack([GREY.astype(np.uint16) * 257, WIDE]), 4),
     grey3(GREY), 0),
    ("RGBA-16", "rgba16.png", lambda p: write_png16(p, np.dstack([COLOUR.astype(np.uint16) * 257, WIDE]), 6),
     COLOUR, 0),
]


def assert_pixels(got, expected, tolerance):
    diff = np.abs(np.asarray(got, np.int32) - expected.astype(np.int32))
    assert got.shape == expected.shape and diff.max() <= tolerance, diff.max()


@pytest.mark.parametrize("case, name, write, expected, tolerance", MODE_CASES, ids=[c[0] for c in MODE_CASES])
def test_every_mode_loads_as_its_8_bit_rgb_picture(tmp_path, case, name, write, expected, tolerance):
    from rpmetric.images import read_rgb

    path = tmp_path / name
    write(path)
    assert_pixels(read_rgb(path), expected, tolerance)
    x = rpmetric.load_image(path)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 6, 7)
    assert_pixels(np.rint(x[0].permute(1, 2, 0).numpy() * 255), expected, tolerance)


def test_every_mode_decodes_alike_in_data_loader_workers(tmp_path, tiny_metric):
    """The store's DataLoader path (a worker process) embeds each file as its 8-bit RGB picture."""
    from rpmetric.stores.store import embed_images

    files, references = [], []
    for case, name, write, expected, tolerance in MODE_CASES:
        if tolerance:
            continue
        write(tmp_path / name)
        Image.fromarray(expected).save(tmp_path / f"{name}.ref.png")
        files.append(tmp_path / name)
        references.append(tmp_path / f"{name}.ref.png")
    emb, names, skipped = embed_images(tiny_metric, files + references, num_workers=1)
    assert not skipped and len(names) == 2 * len(files)
    torch.testing.assert_close(emb[:len(files)], emb[len(files):], atol=0, rtol=0)


@pytest.mark.parametrize("write, message", [
    (lambda p: Image.fromarray(np.full((4, 4), 1.5, np.float32)).save(p),
     r"f.tif holds 32-bit float pixels in \[1.5, 1.5\]; float \(mode F\) images are read as \[0, 1\]"),
    (lambda p: Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(p), r"f.tif holds NaN or infinite pixels"),
    (lambda p: Image.fromarray(np.array([[0, 70000]], np.int32)).save(p),
     r"f.tif holds 32-bit integer pixels in \[0, 70000\]; integer \(mode I\) images are read as 16-bit values"),
], ids=["float-above-1", "float-nan", "int-above-16-bit"])
def test_wide_pixels_outside_their_range_are_refused_naming_the_file(tmp_path, write, message):
    write(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=message):
        rpmetric.load_image(tmp_path / "f.tif")
