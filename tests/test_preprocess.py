import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from rpmetric.models.preprocess import resize_and_crop, target_size
from rpmetric.models.spec import Preprocessing


@pytest.mark.parametrize("shape", [(300, 400), (400, 300), (256, 256), (225, 1000), (100, 150)])
def test_matches_torchvision_resize_then_centre_crop(shape):
    pp = Preprocessing(image_size=224, resize_size=256)
    x = torch.rand(2, 3, *shape)
    expected = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                          T.CenterCrop(224)])(x).clamp(0, 1)
    torch.testing.assert_close(resize_and_crop(x, pp), expected, atol=1e-5, rtol=0)


def test_model_size_input_is_untouched():
    x = torch.rand(1, 3, 224, 224)
    assert resize_and_crop(x, Preprocessing(image_size=224, resize_size=256)) is x


def test_squash_ignores_aspect_ratio():
    pp = Preprocessing(image_size=32, resize_size=32, resize_mode="squash")
    assert target_size(64, 128, pp) == (32, 32)
    assert resize_and_crop(torch.rand(1, 3, 64, 128), pp).shape == (1, 3, 32, 32)


def test_resize_is_differentiable():
    x = torch.rand(1, 3, 50, 70, requires_grad=True)
    resize_and_crop(x, Preprocessing(image_size=32, resize_size=36)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(40, 56), (56, 40), (20, 30), (64, 64)])
@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_uint8_images_are_resized_in_8_bits_like_pil(shape, mode):
    # PIL's resize + crop on the same pixels is the independent reference (torchvision's transforms on
    # PIL images, as in the published protocols); the two round their fixed-point sums differently.
    pp = Preprocessing(image_size=32, resize_size=32, interpolation=mode)
    arr = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    out = resize_and_crop(x, pp)
    h, w = target_size(*shape, pp)
    top, left = round((h - 32) / 2), round((w - 32) / 2)
    filt = Image.BICUBIC if mode == "bicubic" else Image.BILINEAR
    pil = Image.fromarray(arr).resize((w, h), filt).crop((left, top, left + 32, top + 32))
    expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None]
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 32, 32)
    assert (out.int() - expected.int()).abs().max() <= 2
    # On a smooth image (no overshoot for the 8-bit intermediate to clip), within rounding of the
    # differentiable float path.
    smooth = np.array(Image.fromarray(arr[:4, :4]).resize(shape[::-1], Image.BICUBIC))
    x = torch.from_numpy(smooth).permute(2, 0, 1)[None].contiguous()
    float_path = resize_and_crop(x.float() / 255, pp)
    assert (resize_and_crop(x, pp).float() / 255 - float_path).abs().max() <= 1.5 / 255


# -- published conventions (rpmetric eval --preprocess), against the peers' own PIL transforms --------
from torchvision import transforms as PT  # noqa: E402  (v1 on PIL images, as fra31's and DreamSim's code)

from rpmetric.models.spec import PREPROCESS_CONVENTIONS, with_convention  # noqa: E402

BICUBIC = PT.InterpolationMode.BICUBIC
PEER_TRANSFORMS = {
    "paper": lambda size: PT.Resize(size),  # fra31's BAPPSTwoAFCDataset (torchvision's default: bilinear)
    "dreamsim": lambda size: PT.Resize((size, size), interpolation=BICUBIC),  # DreamSim's dataset
    # open_clip's own: Resize(256, bicubic) + CenterCrop(224), as fra31 uses for ConvNeXt on NIGHTS
    "model": lambda size: PT.Compose([PT.Resize(256, interpolation=BICUBIC), PT.CenterCrop(size)]),
}


def _pil_transform(img: np.ndarray, transform) -> torch.Tensor:
    return torch.tensor(np.array(transform(Image.fromarray(img)))).permute(2, 0, 1).int()


@pytest.mark.parametrize("shape", [(64, 64), (256, 256), (224, 224), (200, 300)])  # BAPPS, NIGHTS, other
@pytest.mark.parametrize("name", list(PREPROCESS_CONVENTIONS))
def test_convention_matches_the_peers_transform_on_8_bit_images(name, shape):
    # Noise, so that bilinear and bicubic, or a crop, differ by many levels: the check tells them apart.
    img = np.random.default_rng(0).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    peer = PEER_TRANSFORMS[name](224)
    if name == "paper" and shape == (200, 300):
        # Documented difference: fra31's Resize(224) keeps a non-square image non-square; the model
        # needs a square, so rpmetric centre-crops after the same resize.
        peer = PT.Compose([peer, PT.CenterCrop(224)])
    if name == "model" and shape == (224, 224):
        # Documented difference: an image at the model's input size passes untouched (open_clip's
        # transform would upsample it to 256 and crop).
        peer = PT.Compose([])
    expected = _pil_transform(img, peer)
    base = Preprocessing(image_size=224, resize_size=256)  # the zoo's ConvNeXt preprocessing
    got = resize_and_crop(torch.tensor(img).permute(2, 0, 1)[None].contiguous(), with_convention(base, name))[0].int()
    assert got.shape == expected.shape
    # The data loaders' 8-bit path: within 2 levels of PIL, and nearly everywhere exact.
    assert (got - expected).abs().max() <= 2 and (got - expected).abs().float().mean() < 0.1
    for other in set(PREPROCESS_CONVENTIONS) - {name}:
        if shape == (224, 224):
            continue  # paper and dreamsim both leave a 224 image as it is
        got_other = resize_and_crop(torch.tensor(img).permute(2, 0, 1)[None].contiguous(),
                                    with_convention(base, other))[0].int()
        assert (got_other - expected).abs().float().mean() > 5


def test_convention_keeps_the_model_s_normalisation_and_input_size():
    base = Preprocessing(image_size=32, resize_size=40, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    paper = with_convention(base, "paper")
    assert (paper.image_size, paper.resize_size, paper.interpolation, paper.resize_mode) == (32, 32, "bilinear",
                                                                                            "shortest")
    assert (paper.mean, paper.std) == (base.mean, base.std)
    assert with_convention(base, "model") is base
    with pytest.raises(ValueError, match=r"`preprocess` must be one of \('model', 'paper', 'dreamsim'\), but got 'x'"):
        with_convention(base, "x")
