"""SupConLoss against a naive per-anchor reference and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from extune.models import SupConLoss

T, BASE_T = 0.1, 0.07


def reference_supcon(features, labels=None, mask=None, valid=None, anchor=None,
                     temperature=T, base_temperature=BASE_T) -> float:
    """Khosla et al. (contrast_mode='all'), one anchor view at a time, in float64."""
    f = features.double()
    batch, views, _ = f.shape
    if labels is not None:
        positive = labels[:, None] == labels[None, :]
    elif mask is not None:
        positive = mask.bool()
    else:
        positive = torch.eye(batch, dtype=torch.bool)
    valid = [True] * batch if valid is None else valid.tolist()
    anchor = [True] * batch if anchor is None else anchor.tolist()
    all_views = [(b, v) for v in range(views) for b in range(batch)]
    losses = []
    for i, vi in all_views:
        if not (valid[i] and anchor[i]):
            continue
        others = [(j, vj) for j, vj in all_views if (j, vj) != (i, vi) and valid[j]]
        positives = [(j, vj) for j, vj in others if anchor[j] and positive[i, j]]
        if not positives:
            continue
        sim = {(j, vj): float(f[i, vi] @ f[j, vj]) / temperature for j, vj in others}
        log_denom = math.log(sum(math.exp(s) for s in sim.values()))
        mean_log_prob = sum(sim[p] - log_denom for p in positives) / len(positives)
        losses.append(-(temperature / base_temperature) * mean_log_prob)
    return sum(losses) / len(losses) if losses else 0.0


def _features(batch: int, views: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, views, dim, generator=g), dim=-1)


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("positives", ["labels", "mask", "simclr"])
@pytest.mark.parametrize("use_valid", [False, True])
@pytest.mark.parametrize("use_anchor", [False, True])
def test_matches_reference(views, positives, use_valid, use_anchor):
    g = torch.Generator().manual_seed(1)
    batch = 8
    features = _features(batch, views)
    kwargs = {}
    if positives == "labels":
        kwargs["labels"] = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])
    elif positives == "mask":
        mask = torch.rand(batch, batch, generator=g) < 0.3  # asymmetric
        kwargs["mask"] = mask | torch.eye(batch, dtype=torch.bool)
    if use_valid:
        kwargs["valid"] = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    if use_anchor:
        kwargs["anchor"] = torch.tensor([1, 0, 1, 1, 1, 0, 1, 1], dtype=torch.bool)
    loss = SupConLoss(T, BASE_T)(features, **kwargs)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_supcon(features, **kwargs), rel=1e-5, abs=1e-6)


def test_other_temperatures_match_reference():
    features = _features(6, 2, seed=3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = SupConLoss(temperature=0.5, base_temperature=0.5)(features, labels)
    assert loss.item() == pytest.approx(
        reference_supcon(features, labels, temperature=0.5, base_temperature=0.5), rel=1e-5)


def test_labels_equal_mask_and_distinct_labels_equal_simclr():
    features = _features(6, 2, seed=4)
    labels = torch.tensor([0, 1, 0, 2, 2, 1])
    loss = SupConLoss()
    by_mask = loss(features, mask=(labels[:, None] == labels[None, :]).float())
    assert torch.allclose(loss(features, labels), by_mask)
    assert torch.allclose(loss(features, torch.arange(6)), loss(features))


def test_invalid_samples_are_as_if_removed():
    features = _features(8, 2, seed=5)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])
    valid = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    loss = SupConLoss()
    expected = loss(features[valid], labels[valid])
    assert torch.allclose(loss(features, labels, valid=valid), expected, atol=1e-6)
    # Placeholders may hold anything, even NaN: they reach neither the loss nor the gradients.
    raw = features.clone()
    raw[1] = float("nan")
    raw[4] = float("inf")
    raw.requires_grad_(True)
    got = loss(raw, labels, valid=valid)
    assert torch.allclose(got, expected, atol=1e-6)
    got.backward()
    assert torch.isfinite(raw.grad).all() and (raw.grad[[1, 4]] == 0).all()


def test_float64_features_stay_float64():
    features = _features(4, 2, seed=6).double()
    labels = torch.tensor([0, 1, 0, 1])
    loss = SupConLoss()(features, labels)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(reference_supcon(features, labels), rel=1e-12)


# ---------------------------------------------------------------- closed form (2 samples, 2 views)
E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
TC = 0.5  # closed-form values of order 1 (at T = 0.1 they are ~1e-4, below float32's resolution)
SCALE = TC / BASE_T
ORTHOGONAL = torch.stack([torch.stack([E1, E1]), torch.stack([E2, E2])])


def test_identical_features():
    # Each anchor: one positive (the other view) and three contrasts, all at similarity 1:
    # log_prob = 1/T - log(3 exp(1/T)) = -log 3.
    features = torch.stack([torch.stack([E1, E1]), torch.stack([E1, E1])])
    loss = SupConLoss(TC, BASE_T)(features)
    assert loss.item() == pytest.approx(SCALE * math.log(3), rel=1e-5)


def test_orthogonal_samples_simclr():
    # Anchor e1: positive e1 (1/T); contrasts e1, e2, e2 -> log(exp(1/T) + 2).
    expected = SCALE * math.log(1 + 2 * math.exp(-1 / TC))
    assert SupConLoss(TC, BASE_T)(ORTHOGONAL).item() == pytest.approx(expected, rel=1e-5)


def test_orthogonal_samples_same_label():
    # Three positives at similarities 1/T, 0, 0 over the same denominator.
    expected = -SCALE * ((1 / TC) / 3 - math.log(math.exp(1 / TC) + 2))
    loss = SupConLoss(TC, BASE_T)(ORTHOGONAL, torch.tensor([5, 5]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_negative_only_sample_stays_in_denominator():
    # Sample 1 is not an anchor and not a positive, but its views are contrasts: as simclr.
    expected = SCALE * math.log(1 + 2 * math.exp(-1 / TC))
    loss = SupConLoss(TC, BASE_T)(ORTHOGONAL, torch.tensor([5, 5]),
                                  anchor=torch.tensor([True, False]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_invalid_sample_leaves_a_single_contrast():
    # Sample 1 removed: the only contrast is the positive itself, log_prob = 0.
    features = torch.stack([torch.stack([E1, E2]), torch.stack([E2, E2])])
    loss = SupConLoss(TC, BASE_T)(features, valid=torch.tensor([True, False]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_default_temperature_orthogonal():
    # At T = 0.1 the value is tiny: float32 resolves it to ~1e-6 absolute.
    expected = (0.1 / BASE_T) * math.log(1 + 2 * math.exp(-10))
    assert SupConLoss()(ORTHOGONAL).item() == pytest.approx(expected, abs=2e-6)


# ---------------------------------------------------------------- degenerate cases, gradients
def _leaf_features(batch: int, views: int, seed: int = 0):
    raw = torch.randn(batch, views, 8, generator=torch.Generator().manual_seed(seed))
    raw.requires_grad_(True)
    return raw, F.normalize(raw, dim=-1)


@pytest.mark.parametrize("case", ["no_positive_at_all", "all_invalid", "one_valid_single_view",
                                  "no_anchor"])
def test_no_positive_gives_zero_attached_to_graph(case):
    views = 1 if case in ("no_positive_at_all", "one_valid_single_view") else 2
    raw, features = _leaf_features(4, views)
    kwargs = {"labels": torch.arange(4)}
    if case == "all_invalid":
        kwargs["valid"] = torch.zeros(4, dtype=torch.bool)
    elif case == "one_valid_single_view":
        kwargs["valid"] = torch.tensor([True, False, False, False])
    elif case == "no_anchor":
        kwargs["anchor"] = torch.zeros(4, dtype=torch.bool)
    loss = SupConLoss()(features, **kwargs)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(raw.grad, torch.zeros_like(raw))


def test_anchors_without_positives_are_excluded_not_nan():
    # Single view: samples 2 and 3 have no positive (SupContrast's reference gives NaN here).
    raw, features = _leaf_features(4, 1)
    labels = torch.tensor([0, 0, 1, 2])
    loss = SupConLoss()(features, labels)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference_supcon(features.detach(), labels), rel=1e-5)
    loss.backward()
    assert torch.isfinite(raw.grad).all()


def test_gradient_flows_and_skips_invalid_samples():
    raw, features = _leaf_features(6, 2, seed=7)
    valid = torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool)
    anchor = torch.tensor([1, 1, 1, 1, 1, 0], dtype=torch.bool)
    loss = SupConLoss()(features, torch.tensor([0, 1, 0, 1, 2, 2]), valid=valid, anchor=anchor)
    loss.backward()
    assert torch.isfinite(raw.grad).all()
    norms = raw.grad.flatten(1).norm(dim=1)
    assert norms[4] == 0  # invalid: removed entirely
    assert (norms[[0, 1, 2, 3, 5]] > 0).all()  # the negative-only sample is a contrast


def test_extreme_similarities_are_stable():
    # Low temperature: logits of +-100 must not overflow.
    features = torch.stack([torch.stack([E1, E1]), torch.stack([-E1, -E1])])
    loss = SupConLoss(temperature=0.01, base_temperature=0.07)(features)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_runs_in_float32_under_autocast():
    features = _features(6, 2, seed=8)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    expected = SupConLoss()(features, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = SupConLoss()(features.bfloat16(), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=2e-2)


def test_no_data_dependent_ops():
    # Meta tensors have no values: any .item(), nonzero() or boolean indexing would raise.
    features = torch.empty(4, 2, 8, device="meta")
    flag = torch.empty(4, dtype=torch.bool, device="meta")
    loss = SupConLoss()(features, torch.empty(4, dtype=torch.long, device="meta"),
                        valid=flag, anchor=flag)
    assert loss.device.type == "meta" and loss.shape == ()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_without_host_sync():
    features = _features(8, 2).cuda()
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2], device="cuda")
    valid = torch.ones(8, dtype=torch.bool, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = SupConLoss()(features, labels, valid=valid, anchor=valid)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.device.type == "cuda"
    assert loss.item() == pytest.approx(reference_supcon(features.cpu(), labels.cpu()), rel=1e-4)


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    ((torch.zeros(4, 8),), {}, r"\[B, V, D\]"),
    ((torch.zeros(4, 2, 3, 3),), {}, r"\[B, V, D\]"),
    ((torch.zeros(0, 2, 8),), {}, "empty"),
    ((torch.zeros(4, 2, 8, dtype=torch.long),), {}, "floating"),
    ((torch.zeros(4, 2, 8), torch.zeros(3, dtype=torch.long)), {}, "labels"),
    ((torch.zeros(4, 2, 8), torch.zeros(4, 1, dtype=torch.long)), {}, "labels"),
    ((torch.zeros(4, 2, 8), torch.zeros(4, dtype=torch.long)), {"mask": torch.eye(4)}, "not both"),
    ((torch.zeros(4, 2, 8),), {"mask": torch.eye(3)}, "mask"),
    ((torch.zeros(4, 2, 8),), {"valid": torch.ones(3, dtype=torch.bool)}, "valid"),
    ((torch.zeros(4, 2, 8),), {"valid": torch.ones(4)}, "valid"),
    ((torch.zeros(4, 2, 8),), {"anchor": torch.ones(4, 1, dtype=torch.bool)}, "anchor"),
])
def test_bad_inputs_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SupConLoss()(*args, **kwargs)


@pytest.mark.parametrize(("temperature", "base_temperature"), [(0.0, 0.07), (0.1, -1.0)])
def test_bad_temperatures_raise(temperature, base_temperature):
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature, base_temperature)
