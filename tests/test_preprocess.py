import pytest
import torch
from torchvision.transforms import v2 as T

from rpmetric.preprocess import resize_and_crop, target_size
from rpmetric.spec import Preprocessing


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
