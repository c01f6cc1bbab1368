from __future__ import annotations

import kornia.filters
import pytest
import torch
import torch.nn.functional as F

from extune.augment import (
    fill,
    fraction_count,
    nonsalient_occlusion,
    random_fraction_mask,
    random_nonsalient_occlusion,
    random_salient_occlusion,
    salient_occlusion,
    soft_targets,
    top_fraction_mask,
)

H = W = 16
N = H * W


def _ramps() -> torch.Tensor:
    """Image 0: saliency rises with the flat index; image 1: it falls."""
    ramp = torch.arange(N, dtype=torch.float32).view(1, 1, H, W) / N
    return torch.cat([ramp, ramp.flip(-1).flip(-2)])


def _x(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, H, W, generator=g) + 0.5  # nowhere 0


def test_fraction_count_rounds_half_up() -> None:
    assert [fraction_count(f, 10) for f in (0.0, 0.04, 0.05, 0.25, 0.3, 1.0)] == [0, 0, 1, 3, 3,
                                                                                   10]
    assert fraction_count(0.3, N) == 77 and fraction_count(0.15, 1024) == 154
    with pytest.raises(ValueError, match="fraction"):
        fraction_count(1.5, 10)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_top_fraction_mask_takes_the_top_pixels_of_a_ramp(fraction: float) -> None:
    mask = top_fraction_mask(_ramps(), fraction)
    k = fraction_count(fraction, N)
    assert mask.dtype == torch.bool and mask.shape == (2, 1, H, W)
    assert mask.sum(dim=(1, 2, 3)).tolist() == [k, k]
    expected0 = torch.arange(N) >= N - k  # rising ramp: the last k flat indices
    assert torch.equal(mask[0].flatten(), expected0)
    assert torch.equal(mask[1].flatten(), expected0.flip(0))  # falling ramp: the first k


def test_top_fraction_mask_breaks_ties_by_lower_index() -> None:
    flat = torch.zeros(1, 1, 4, 4)
    flat[0, 0, 3, 3] = 1.0  # one clear winner, then 15 tied pixels
    mask = top_fraction_mask(flat, 0.25)
    assert torch.equal(mask.flatten().nonzero().flatten(), torch.tensor([0, 1, 2, 15]))
    assert torch.equal(top_fraction_mask(flat, 0.25), mask)


def test_random_fraction_mask_same_area_different_places() -> None:
    g = torch.Generator().manual_seed(0)
    mask = random_fraction_mask((4, 1, H, W), 0.3, generator=g)
    assert mask.dtype == torch.bool and mask.shape == (4, 1, H, W)
    assert mask.sum(dim=(1, 2, 3)).tolist() == [77] * 4
    assert not torch.equal(mask[0], mask[1])
    assert not torch.equal(mask[:2], top_fraction_mask(_ramps(), 0.3))
    again = random_fraction_mask((4, 1, H, W), 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def test_fill_modes() -> None:
    x = _x()
    mask = top_fraction_mask(_ramps(), 0.5)
    outside = ~mask.expand_as(x)

    mean = fill(x, mask, "mean")
    assert torch.equal(mean, torch.where(mask, torch.zeros(()), x))

    blur = fill(x, mask, "blur")
    blurred = kornia.filters.gaussian_blur2d(x, (5, 5), (2.0, 2.0), border_type="reflect")
    assert torch.allclose(blur[~outside], blurred[~outside], atol=1e-6)
    assert torch.equal(blur[outside], x[outside])

    noise = fill(x, mask, "noise", generator=torch.Generator().manual_seed(0))
    again = fill(x, mask, "noise", generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise, again) and torch.equal(noise[outside], x[outside])
    filled = noise[~outside]
    assert abs(filled.mean().item()) < 0.15 and abs(filled.std().item() - 1) < 0.15

    with pytest.raises(ValueError, match="mean, blur, noise"):
        fill(x, mask, "zero")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["mean", "blur", "noise"])
def test_salient_and_nonsalient_occlusion_areas_and_places(mode: str) -> None:
    x, saliency = _x(), _ramps()
    g = torch.Generator().manual_seed(0)
    ns = nonsalient_occlusion(x, saliency, 0.3, mode, generator=g)
    s = salient_occlusion(x, saliency, 0.3, mode, generator=g)
    unchanged_ns = (ns == x).all(dim=1, keepdim=True)
    unchanged_s = (s == x).all(dim=1, keepdim=True)
    assert torch.equal(unchanged_ns, top_fraction_mask(saliency, 0.3))  # kept: the top 30%
    assert torch.equal(~unchanged_s, top_fraction_mask(saliency, 0.3))  # filled: the top 30%


@pytest.mark.parametrize("mode", ["mean", "noise"])
def test_random_occlusions_have_the_same_areas(mode: str) -> None:
    x = _x()
    g = torch.Generator().manual_seed(0)
    ns = random_nonsalient_occlusion(x, 0.3, mode, generator=g)
    s = random_salient_occlusion(x, 0.3, mode, generator=g)
    kept = (ns == x).all(dim=1, keepdim=True)
    filled = ~(s == x).all(dim=1, keepdim=True)
    assert kept.sum(dim=(1, 2, 3)).tolist() == [77, 77]
    assert filled.sum(dim=(1, 2, 3)).tolist() == [77, 77]
    assert not torch.equal(filled, top_fraction_mask(_ramps(), 0.3))


def test_soft_targets() -> None:
    labels = torch.tensor([0, 2, 1])
    uniform = soft_targets(labels, 4, "uniform")
    assert torch.equal(uniform, torch.full((3, 4), 0.25))
    smooth = soft_targets(labels, 4, "smooth", smoothing=0.2)
    assert torch.allclose(smooth.sum(1), torch.ones(3))
    assert torch.allclose(smooth[1], torch.tensor([0.05, 0.05, 0.85, 0.05]))
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(F.cross_entropy(logits, smooth),
                          F.cross_entropy(logits, labels, label_smoothing=0.2))
    with pytest.raises(ValueError, match="uniform, smooth"):
        soft_targets(labels, 4, "hard")  # type: ignore[arg-type]
