"""Corruptions: range [0, 1], monotone in severity, seeded, documented names."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import noise_images

from extune.evaluate import CORRUPTION_SEVERITIES, corrupt, list_corruptions, make_corruption


def test_names_match_the_config() -> None:
    from extune.train.config import Config

    assert Config().eval.corruptions == list_corruptions()  # the default: every one, in order
    assert all(len(v) == 5 for v in CORRUPTION_SEVERITIES.values())


@pytest.mark.parametrize("name", list_corruptions())
def test_range_and_monotone_severity(name: str) -> None:
    x = noise_images(4, 32).float() / 255
    x = 0.2 + 0.6 * x  # room on both sides so that clipping does not hide a change
    dist = []
    for severity in range(1, 6):
        g = torch.Generator().manual_seed(0)
        y = corrupt(x, name, severity, generator=g)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        dist.append(float((y - x).abs().mean()))
    assert dist[0] > 1e-3
    assert all(b > a for a, b in zip(dist[:-1], dist[1:], strict=True)), dist


@pytest.mark.parametrize("name", list_corruptions())
def test_keeps_range_on_extreme_images(name: str) -> None:
    x = torch.cat([torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)])
    y = corrupt(x, name, 5, generator=torch.Generator().manual_seed(1))
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_seeded_noise_is_reproducible() -> None:
    x = noise_images(2, 16).float() / 255
    a = make_corruption("gaussian_noise", 3, seed=5)(x)
    b = make_corruption("gaussian_noise", 3, seed=5)(x)
    c = make_corruption("gaussian_noise", 3, seed=6)(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_contrast_known_value() -> None:
    x = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    y = corrupt(x, "contrast", 2)  # c = 0.5 around the mean 0.4
    assert torch.allclose(y[0, 0, 0], torch.tensor([0.3, 0.5]))


def test_bad_name_and_severity() -> None:
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="gaussian_noise"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "contrast", 6)


def test_brightness_is_an_hsv_value_shift() -> None:
    from kornia.color import hsv_to_rgb, rgb_to_hsv

    x = torch.cat([noise_images(3, 16).float() / 255, torch.zeros(1, 3, 16, 16)])
    for severity, b in enumerate(CORRUPTION_SEVERITIES["brightness"], start=1):
        hsv = rgb_to_hsv(x)
        ref = hsv_to_rgb(torch.cat([hsv[:, :2], (hsv[:, 2:] + b).clamp(0, 1)], 1))
        assert torch.allclose(corrupt(x, "brightness", severity), ref.clamp(0, 1), atol=1e-5)
