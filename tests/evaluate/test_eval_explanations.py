"""Explanation metrics rank a right, a random and an inverted saliency map correctly.

The model's class-0 evidence is the texture energy of the top-left quadrant
(``eval_helpers.QuadrantModel``), so the right map marks that quadrant.
"""

from __future__ import annotations

import math

import pytest
import torch
from eval_helpers import MEAN, STD, QuadrantModel, TinyNet, noise_images, quadrant_mask

from extune.evaluate import (
    EXPLANATION_METRICS,
    compute_saliency,
    explanation_scores,
    explanation_subset,
    localisation_scores,
    saliency_ranks,
)

N, SIZE = 8, 32


def _inputs() -> torch.Tensor:
    return (noise_images(N, SIZE).float() / 255 - 0.5) / 0.25


def _maps() -> dict[str, torch.Tensor]:
    right = quadrant_mask(N, SIZE).float()
    rand = torch.rand(N, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    return {"right": right, "random": rand, "inverted": 1 - right}


def _mean_scores(**kw: object) -> dict[str, dict[str, float]]:
    model, x = QuadrantModel(), _inputs()
    target = torch.zeros(N, dtype=torch.long)
    out = {}
    for name, sal in _maps().items():
        scores = explanation_scores(model, x, sal, target,
                                    generator=torch.Generator().manual_seed(0), **kw)
        assert set(scores) == set(EXPLANATION_METRICS)
        assert all(v.shape == (N,) for v in scores.values())
        out[name] = {k: float(v.mean()) for k, v in scores.items()}
    return out


def test_scores_rank_right_random_inverted() -> None:
    s = _mean_scores(top_fraction=0.15, steps=16)
    r, q, i = s["right"], s["random"], s["inverted"]
    assert r["avg_drop"] < q["avg_drop"] < i["avg_drop"]
    assert r["alignment"] > q["alignment"] > i["alignment"]
    assert r["alignment"] > 0.3 and i["alignment"] < -0.3 and abs(q["alignment"]) < 0.1
    assert r["deletion_auc"] < q["deletion_auc"] < i["deletion_auc"]
    assert r["insertion_auc"] > q["insertion_auc"] > i["insertion_auc"]
    for scores in s.values():
        for key in ("avg_drop", "increase_confidence", "deletion_auc", "insertion_auc"):
            assert 0.0 <= scores[key] <= 1.0


def test_closed_form_values_for_the_right_map() -> None:
    model, x = QuadrantModel(), _inputs()
    target = torch.zeros(N, dtype=torch.long)
    p0 = model(x).softmax(1)[:, 0]
    floor = 1 / (1 + math.exp(4.0))  # quadrant filled with 0: logit0 = -4
    right = _maps()["right"]
    s = explanation_scores(model, x, right, target, top_fraction=0.25, steps=4,
                           insertion_baseline="mean")
    # keeping exactly the quadrant changes nothing
    assert torch.allclose(s["avg_drop"], torch.zeros(N), atol=1e-6)
    assert torch.equal(s["increase_confidence"], torch.zeros(N))
    # occluding the quadrant drops to `floor`; occluding as many other pixels changes nothing
    assert torch.allclose(s["alignment"], p0 - floor, atol=1e-5)
    # curves over fractions 0, .25, .5, .75, 1
    deletion = 0.25 * ((p0 + floor) / 2 + 3 * floor)
    insertion = 0.25 * ((floor + p0) / 2 + 3 * p0)
    assert torch.allclose(s["deletion_auc"], deletion, atol=1e-5)
    assert torch.allclose(s["insertion_auc"], insertion, atol=1e-5)


def test_increase_in_confidence_counts_gains() -> None:
    model = QuadrantModel(a=-8.0, b=-4.0)  # class 0 likes an *empty* quadrant
    x, target = _inputs(), torch.zeros(N, dtype=torch.long)
    inverted = _maps()["inverted"]  # keeps pixels outside the quadrant: quadrant filled
    s = explanation_scores(model, x, inverted, target, top_fraction=0.5)
    assert torch.equal(s["increase_confidence"], torch.ones(N))
    assert torch.equal(s["avg_drop"], torch.zeros(N))


def test_explanation_scores_restore_mode_and_check_shapes() -> None:
    net = TinyNet().train()
    x = torch.randn(2, 3, 16, 16)
    explanation_scores(net, x, torch.rand(2, 1, 16, 16), torch.tensor([0, 1]), steps=2)
    assert net.training
    with pytest.raises(ValueError, match="saliency"):
        explanation_scores(net, x, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))


def test_localisation_ranks_and_known_answers() -> None:
    masks = quadrant_mask(N, SIZE)
    maps = _maps()
    got = {k: {m: float(v.nanmean()) for m, v in localisation_scores(s, masks).items()}
           for k, s in maps.items()}
    assert got["right"] == {"pointing_game": 1.0, "saliency_in_mask": 1.0}
    assert got["inverted"] == {"pointing_game": 0.0, "saliency_in_mask": 0.0}
    assert 0.0 < got["random"]["saliency_in_mask"] < 1.0
    assert got["random"]["saliency_in_mask"] == pytest.approx(0.25, abs=0.03)
    # ties: a constant (or all-zero) map scores the mask's area fraction on both metrics
    for const in (torch.zeros(N, 1, SIZE, SIZE), torch.full((N, 1, SIZE, SIZE), 0.5)):
        scores = localisation_scores(const, masks)
        for v in scores.values():
            assert torch.allclose(v, torch.full((N,), 0.25))
    # an empty mask gives NaN (left out of the mean)
    empty = masks.clone()
    empty[0] = False
    scores = localisation_scores(maps["right"], empty)
    assert math.isnan(float(scores["pointing_game"][0]))
    assert float(scores["pointing_game"].nanmean()) == 1.0


def test_saliency_ranks_is_a_permutation_with_random_ties() -> None:
    sal = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ranks = saliency_ranks(sal)
    assert ranks.shape == sal.shape
    assert torch.equal(ranks.flatten(1).sort(1).values, torch.arange(64).expand(3, 64))
    order = sal.flatten(1).argsort(1, descending=True)
    assert torch.equal(ranks.flatten(1).gather(1, order), torch.arange(64).expand(3, 64))
    flat = saliency_ranks(torch.zeros(1, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(flat.flatten(), torch.arange(64))  # not raster order


def test_explanation_subset_is_fixed_sorted_unique() -> None:
    a = explanation_subset(1000, 256)
    assert torch.equal(a, explanation_subset(1000, 256))
    assert a.shape == (256,) and torch.equal(a, a.sort().values) and a.unique().numel() == 256
    assert 0 <= int(a.min()) and int(a.max()) < 1000 and int(a.max()) > 256  # not the first
    assert explanation_subset(10, 256).tolist() == list(range(10))
    assert explanation_subset(10, 0).numel() == 0


def test_compute_saliency_predicted_class_eval_mode() -> None:
    net = TinyNet().train()
    images = noise_images(5, 16)
    seen = {}

    def explainer(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen["training"] = model.training
        seen.setdefault("targets", []).append(target)
        return x.abs().mean(1, keepdim=True) / x.abs().amax()

    sal, target = compute_saliency(net, explainer, images, mean=MEAN, std=STD, batch_size=2)
    assert sal.shape == (5, 1, 16, 16) and seen["training"] is False and net.training
    x = (images.float() / 255 - 0.5) / 0.25
    assert torch.equal(target, net.eval()(x).argmax(1))

    def bad(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 1, 4, 4)

    with pytest.raises(ValueError, match="explainer returned"):
        compute_saliency(net, bad, images, mean=MEAN, std=STD)
