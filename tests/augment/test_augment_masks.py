from __future__ import annotations

import pytest
import torch
from torch import nn

from extune.augment import keep_mask, mask_salient


def _saliency() -> torch.Tensor:
    """Two hand-made maps on 4x4: a left-to-right ramp and a bright top-left corner."""
    ramp = torch.tensor([0.0, 0.25, 0.5, 1.0]).expand(4, 4)
    corner = torch.zeros(4, 4)
    corner[:2, :2] = 0.9
    return torch.stack([ramp, corner])[:, None]


def test_mask_salient_keeps_pixels_above_threshold_only() -> None:
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = mask_salient(x, _saliency(), 0.5)
    # saliency == threshold is masked (<=), above is kept
    kept = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    kept[0, :, :, 3] = True
    kept[1, :, :2, :2] = True
    assert torch.equal(out, torch.where(kept, x, torch.zeros(())))
    assert out.dtype == x.dtype and out.shape == x.shape


def test_mask_salient_per_sample_threshold_and_shape_check() -> None:
    x = torch.ones(2, 3, 4, 4)
    out = mask_salient(x, _saliency(), torch.tensor([0.2, 0.95]).view(2, 1, 1, 1))
    assert out[0, 0].sum() == 12 and out[1].sum() == 0
    with pytest.raises(ValueError, match="saliency"):
        mask_salient(x, torch.zeros(2, 3, 4, 4), 0.5)


def test_keep_mask_with_a_stub_classifier() -> None:
    """Stub: class 0 if the left half is brighter than the right half, else class 1."""

    class Stub(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            left, right = x[..., :2].mean(dim=(1, 2, 3)), x[..., 2:].mean(dim=(1, 2, 3))
            return torch.stack([left - right, right - left], dim=1)

    x = torch.full((2, 3, 4, 4), 0.5)
    x[0, :, :, :2] = 1.0  # class 0 image: brighter left half
    x[1, :, :, 2:] = 1.0  # class 1 image: brighter right half
    labels = torch.tensor([0, 1])
    stub = Stub()
    assert torch.equal(keep_mask(stub(x), labels), torch.tensor([True, True]))
    # the ramp keeps only the right column: image 0 loses its evidence, image 1 keeps it
    masked = mask_salient(x, _saliency()[:1].expand(2, 1, 4, 4), 0.5)
    keep = keep_mask(stub(masked), labels)
    assert keep.dtype == torch.bool and torch.equal(keep, torch.tensor([False, True]))
    with pytest.raises(ValueError, match="labels"):
        keep_mask(torch.zeros(2, 3), torch.zeros(3, dtype=torch.int64))
