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
