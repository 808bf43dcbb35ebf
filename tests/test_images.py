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
    assert x.shape == (1, 3, 4, 6) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    if mode == "RGB":
        torch.testing.assert_close(x[0], torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    if mode == "L":
        assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])


def test_resize_shorter_side(tmp_path):
    Image.new("RGB", (80, 40)).save(tmp_path / "a.png")
    assert rpmetric.load_image(tmp_path / "a.png", size=20).shape == (1, 3, 20, 40)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Image file not found: .*nope.png"):
        rpmetric.load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"bad.png cannot be read as an image"):
        rpmetric.load_image(bad)
