from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from extune.augment import SupConViews, denormalize, normalize, standard_view, to_unit

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _images(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_unit_and_normalisation_round_trip() -> None:
    images = _images()
    x = to_unit(images)
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x * 255, images.float())
    assert torch.allclose(denormalize(normalize(x, MEAN, STD), MEAN, STD), x, atol=1e-6)
    mean_colour = torch.tensor(MEAN).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(normalize(mean_colour, MEAN, STD), torch.zeros(1, 3, 2, 2))
    with pytest.raises(TypeError, match="uint8"):
        to_unit(x)


def test_standard_view_is_exact() -> None:
    images = _images()
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD).view(1, 3, 1, 1)
    assert torch.allclose(standard_view(images, MEAN, STD), expected, atol=1e-6, rtol=0)
    assert torch.equal(standard_view(images, MEAN, STD, image_size=16),
                       standard_view(images, MEAN, STD))  # same size: no resize
    resized = standard_view(images, MEAN, STD, image_size=8)
    reference = normalize(F.interpolate(images.float() / 255, size=(8, 8), mode="bilinear",
                                        align_corners=False, antialias=True), MEAN, STD)
    assert resized.shape == (6, 3, 8, 8) and torch.allclose(resized, reference, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_size", [16, 12])
def test_supcon_views_shape_dtype_device(device: str, out_size: int) -> None:
    views = SupConViews(out_size, MEAN, STD)
    out = views(_images().to(device))
    assert out.shape == (6, 3, out_size, out_size)
    assert out.dtype == torch.float32 and out.device.type == device
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    per_channel = out.transpose(0, 1).reshape(3, -1).cpu()
    assert torch.all(per_channel.min(1).values >= lo - 1e-5)
    assert torch.all(per_channel.max(1).values <= hi + 1e-5)


def test_supcon_views_are_random_per_sample_and_seeded() -> None:
    images = _images()
    images[1] = images[0]
    views = SupConViews(16, MEAN, STD)
    torch.manual_seed(0)
    first = views(images)
    torch.manual_seed(0)
    again = views(images)
    assert torch.equal(first, again)
    assert not torch.allclose(first[0], first[1])  # same image in, different views out
    assert not torch.allclose(views(images), first)


def test_supcon_views_without_randomness_equal_the_standard_view() -> None:
    images = _images()
    off = dict(scale=(1.0, 1.0), jitter_p=0.0, gray_p=0.0)
    plain = SupConViews(16, MEAN, STD, flip_p=0.0, **off)(images)
    flipped = SupConViews(16, MEAN, STD, flip_p=1.0, **off)(images)
    standard = standard_view(images, MEAN, STD)
    assert torch.allclose(plain, standard, atol=1e-4)
    assert torch.allclose(flipped, standard.flip(-1), atol=1e-4)
    gray = SupConViews(16, MEAN, STD, flip_p=0.0, scale=(1.0, 1.0), jitter_p=0.0, gray_p=1.0)
    unit = denormalize(gray(images), MEAN, STD)
    assert torch.allclose(unit[:, 0], unit[:, 1], atol=1e-5)
    assert torch.allclose(unit[:, 1], unit[:, 2], atol=1e-5)


def test_supcon_views_under_autocast() -> None:
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = SupConViews(16, MEAN, STD)(_images())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_shift_hue_matches_kornia() -> None:
    import math

    import kornia

    from extune.augment import shift_hue

    x = _images(8).float() / 255
    x[0] = 0.5  # grey: no hue
    x[1, 0] = x[1, 1]  # red and green tie for the largest
    x[2, :, :, :4] = 1.0  # saturated white
    turns = torch.tensor([0.1, -0.1, 0.05, -0.5, 0.5, 0.25, 1.7, -2.2])
    expected = kornia.enhance.adjust_hue(x, 2 * math.pi * turns)
    assert torch.allclose(shift_hue(x, turns), expected, atol=1e-5, rtol=0)
    assert torch.allclose(shift_hue(x, torch.zeros(8)), x, atol=1e-5, rtol=0)


def test_supcon_views_colour_jitter_matches_kornia() -> None:
    """SupConViews' jitter (with the fast hue step) draws and applies what kornia's does."""
    import kornia.augmentation as K

    from extune.augment.views import _ColorJitter

    x = _images(16).float() / 255
    torch.manual_seed(3)
    expected = K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)(x)
    torch.manual_seed(3)
    assert torch.allclose(_ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)(x), expected, atol=1e-5)
