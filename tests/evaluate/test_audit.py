"""The explanation audit: known answers, conventions, the model left as found, and the
randomisation test failing where it should.

The pass/fail tests train a tiny CNN for 500 SGD steps on 16 px synthetic images (a few seconds
on one thread): Grad-CAM and integrated gradients must pass the randomisation test, and two
model-independent explainers (the image's Sobel edges, the image itself) must fail it.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from eval_helpers import MEAN, STD, QuadrantModel, TinyNet, noise_images, quadrant_mask
from torch import Tensor, nn

from extune.augment.explainers import create_explainer, minmax_normalize
from extune.evaluate import AUDIT_METRICS, AUDIT_SUMMARY, RANDOMISATION_THRESHOLD
from extune.evaluate.audit import (
    AuditSettings,
    audit_scores,
    effective_complexity,
    faithfulness_correlation,
    pearson,
    random_other_class,
    random_pixel_subsets,
    randomisation_cascade,
    randomised_layers,
    rank_correlation,
    sensitivity_scores,
    sparseness,
)
from extune.evaluate.explanations import compute_saliency
from extune.models import create_model
from extune.train.datasets.synthetic import render_synthetic

CLASSES, SIZE, TRAIN, HELD_OUT = 4, 16, 512, 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny batches: one is fastest


# ----------------------------------------------------------------- model-independent controls
def sobel_edges(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """The image's edges: Sobel gradient magnitude of the channel mean (ignores the model)."""
    from kornia.filters import sobel

    return minmax_normalize(sobel(x.mean(dim=1, keepdim=True)))


def the_image(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """The image itself (channel mean), as a map (ignores the model)."""
    return minmax_normalize(x.mean(dim=1, keepdim=True))


# ----------------------------------------------------------------------------- trained model
class Trained:
    """A tiny CNN trained on synthetic shapes, its mean/std and held-out uint8 images."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        labels = torch.arange(TRAIN + HELD_OUT) % CLASSES
        images, _ = render_synthetic(labels, CLASSES, SIZE, 1, torch.Generator().manual_seed(0))
        unit = images[:TRAIN].float() / 255
        self.mean = unit.mean(dim=(0, 2, 3)).tolist()
        self.std = unit.std(dim=(0, 2, 3)).tolist()
        x = (unit - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(
            1, 3, 1, 1)
        self.model = create_model(backbone="tiny_cnn", num_classes=CLASSES)
        opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(500):
            idx = torch.randint(0, TRAIN, (32,))
            loss = F.cross_entropy(self.model(x[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.model.eval()
        for p in self.model.parameters():
            p.grad = None
        self.images = images[TRAIN:]
        with torch.no_grad():
            held_out = (self.images.float() / 255 - torch.tensor(self.mean).view(1, 3, 1, 1)
                        ) / torch.tensor(self.std).view(1, 3, 1, 1)
            self.accuracy = float((self.model(held_out).argmax(1) == labels[TRAIN:]).float()
                                  .mean())


@pytest.fixture(scope="module")
def trained(one_torch_thread: None) -> Trained:
    return Trained()


def _final_similarity(t: Trained, explainer) -> float:
    saliency, target = compute_saliency(t.model, explainer, t.images, mean=t.mean, std=t.std)
    layers, similarity = randomisation_cascade(t.model, explainer, t.images, saliency, target,
                                               mean=t.mean, std=t.std, cascade=False)
    assert similarity.shape == (1, HELD_OUT)
    return float(similarity[-1].nanmean())


# ------------------------------------------------------------------- randomisation pass/fail
@pytest.mark.parametrize("name", ["gradcam", "integrated_gradients"])
def test_trained_model_passes_randomisation(trained: Trained, name: str) -> None:
    assert trained.accuracy > 0.7  # the model learned something (chance: 0.25)
    similarity = _final_similarity(trained, create_explainer(name))
    assert similarity < RANDOMISATION_THRESHOLD, similarity  # measured: gradcam -0.07, IG 0.62


@pytest.mark.parametrize("explainer", [sobel_edges, the_image])
def test_model_independent_explainers_fail_randomisation(trained: Trained, explainer) -> None:
    assert _final_similarity(trained, explainer) == pytest.approx(1.0, abs=1e-6)


def test_audit_scores_pass_fail_and_leave_the_model_as_found(trained: Trained) -> None:
    model = trained.model.train()  # a training flag to restore
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    settings = AuditSettings(sensitivity_samples=2, faithfulness_runs=8)
    audit = audit_scores(model, create_explainer("gradcam"), trained.images, mean=trained.mean,
                         std=trained.std, settings=settings, batch_size=20)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(rng, torch.get_rng_state())  # the re-initialisation forked the RNG
    model.eval()

    assert set(audit.scores) == set(AUDIT_METRICS)
    assert all(v.shape == (HELD_OUT,) for v in audit.scores.values())
    assert audit.layers[0] == "classifier" and not any(n.startswith("head") for n in audit.layers)
    assert audit.cascade.shape == (len(audit.layers), HELD_OUT)
    assert torch.equal(audit.cascade[-1], audit.scores["randomisation_similarity"])
    summary = audit.summary()
    assert list(summary) == list(AUDIT_SUMMARY) and summary["randomisation_pass"] == 1.0
    assert audit.passed and audit.threshold == RANDOMISATION_THRESHOLD
    edges = audit_scores(model, sobel_edges, trained.images, mean=trained.mean, std=trained.std,
                         settings=AuditSettings(cascade=False, sensitivity_samples=1,
                                                faithfulness_runs=2))
    assert not edges.passed and edges.summary()["randomisation_pass"] == 0.0
    assert edges.scores["random_logit_similarity"].eq(1.0).all()  # ignores the class
    assert len(edges.layers) == 1 and edges.layers[0] == audit.layers[-1]
    # cascade=False gives the cascade's last row
    assert torch.allclose(edges.cascade[0], edges.scores["randomisation_similarity"])


def test_audit_is_seeded_and_checks_settings(trained: Trained) -> None:
    settings = AuditSettings(cascade=False, sensitivity_samples=2, faithfulness_runs=4, seed=5)
    images = trained.images[:8]
    a, b = (audit_scores(trained.model, create_explainer("saliency"), images, mean=trained.mean,
                         std=trained.std, settings=settings) for _ in range(2))
    for k in AUDIT_METRICS:
        assert torch.equal(a.scores[k].nan_to_num(-9), b.scores[k].nan_to_num(-9)), k
    for bad in ({"threshold": 1.5}, {"sensitivity_samples": 0}, {"faithfulness_runs": 1},
                {"faithfulness_fraction": 1.0}, {"complexity_eps": -1.0}):
        with pytest.raises(ValueError):
            AuditSettings(**bad)
    with pytest.raises(ValueError, match="at least one image"):
        audit_scores(trained.model, create_explainer("saliency"), images[:0], mean=MEAN, std=STD)


def test_cascade_maps_are_the_cascades_models_and_draw_a_verdict(trained: Trained,
                                                                 tmp_path) -> None:
    """``cascade_maps`` explains with the very copies ``randomisation_cascade`` scores; the
    figure has a column per layer and says the verdict in green (passed) or red (failed)."""
    from PIL import Image

    from extune.evaluate.audit import cascade_maps
    from extune.evaluate.visualize import cascade_figure

    images, explainer = trained.images[:3], create_explainer("gradcam")
    saliency, target = compute_saliency(trained.model, explainer, images, mean=trained.mean,
                                        std=trained.std)
    layers, similarity = randomisation_cascade(trained.model, explainer, images, saliency,
                                               target, mean=trained.mean, std=trained.std)
    named, maps = cascade_maps(trained.model, explainer, images, target, mean=trained.mean,
                               std=trained.std)
    assert named == layers and maps.shape == (len(layers), 3, 1, SIZE, SIZE)
    for row, found in zip(similarity, maps, strict=True):
        assert torch.allclose(rank_correlation(saliency, found), row, equal_nan=True)
    means = [float(r.nanmean()) for r in similarity]
    colours = {}
    for passed in (True, False):
        out = cascade_figure(images, saliency, maps, layers, means, tmp_path / f"{passed}.png",
                             threshold=RANDOMISATION_THRESHOLD, passed=passed,
                             row_labels=["a", "b", "a"], heading="tiny_cnn · gradcam")
        with Image.open(out) as im:
            assert im.size[0] > 100 * (2 + len(layers))  # a column per layer, readable tiles
            rgb = torch.as_tensor(np.array(im.convert("RGB"))[:40], dtype=torch.int32)
        r, g, b = rgb.unbind(-1)  # the title's colour: the verdict
        colours[passed] = (bool(((g > 90) & (r < 60) & (b < 60)).any()),
                           bool(((r > 200) & (g < 60) & (b < 60)).any()))
    assert colours == {True: (True, False), False: (False, True)}
    with pytest.raises(ValueError, match="maps"):
        cascade_figure(images, saliency, maps[:, :2], layers, means, tmp_path / "x.png",
                       threshold=0.7, passed=True)


# ------------------------------------------------------------------------------ correlations
def test_rank_correlation_matches_scipy_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (6, 40), generator=g).float()  # many ties
    b = torch.rand(6, 40, generator=g).round(decimals=1) + 0.3 * a
    expected = [scipy.stats.spearmanr(x, y)[0] for x, y in zip(a.numpy(), b.numpy(),
                                                              strict=True)]
    assert torch.allclose(rank_correlation(a, b).double(), torch.tensor(expected,
                                                                        dtype=torch.float64),
                          atol=1e-6)
    expected = [np.corrcoef(x, y)[0, 1] for x, y in zip(a.numpy(), b.numpy(), strict=True)]
    assert torch.allclose(pearson(a, b).double(), torch.tensor(expected, dtype=torch.float64),
                          atol=1e-6)
    assert torch.allclose(rank_correlation(a, -a), -torch.ones(6))


def test_constant_maps_give_zero_or_nan() -> None:
    varying, const = torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert torch.equal(rank_correlation(varying, const), torch.zeros(2))
    assert torch.equal(rank_correlation(const, varying), torch.zeros(2))
    assert rank_correlation(const, const + 0.5).isnan().all()


# -------------------------------------------------------------------------------- complexity
def test_sparseness_and_effective_complexity_known_answers() -> None:
    p = 16
    one_pixel = torch.zeros(1, 1, 4, 4)
    one_pixel[0, 0, 1, 2] = 1.0
    uniform = torch.full((1, 1, 4, 4), 0.5)
    assert float(sparseness(one_pixel)) == pytest.approx((p - 1) / p, abs=1e-5)
    assert float(sparseness(uniform)) == pytest.approx(0.0, abs=1e-6)
    assert float(sparseness(torch.zeros(1, 1, 4, 4))) == pytest.approx(0.0, abs=1e-6)
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2, :] = 1.0  # Gini of p/2 ones and p/2 zeros is 1/2
    assert float(sparseness(half)) == pytest.approx(0.5, abs=1e-5)
    assert effective_complexity(half).tolist() == [8.0]
    assert effective_complexity(half * 1e-6).tolist() == [0.0]
    assert effective_complexity(uniform, eps=0.6).tolist() == [0.0]


# ------------------------------------------------------------------------------ faithfulness
def test_faithfulness_correlation_ranks_right_and_inverted_maps() -> None:
    model = QuadrantModel()  # class-0 evidence: texture energy of the top-left quadrant
    x = (noise_images(4, 16).float() / 255 - 0.5) / 0.25
    target = torch.zeros(4, dtype=torch.long)
    right = quadrant_mask(4, 16).float()
    subsets = random_pixel_subsets(4, 256, 48, 40, generator=torch.Generator().manual_seed(0))
    assert subsets.shape == (48, 4, 40)
    assert all(len(set(s.tolist())) == 40 for s in subsets.flatten(0, 1))  # distinct pixels
    good = faithfulness_correlation(model, x, right, target, subsets)
    bad = faithfulness_correlation(model, x, 1 - right, target, subsets)
    assert (good > 0.6).all() and torch.allclose(bad, -good), (good, bad)  # mass(1-S) = k - mass(S)
    # a constant map ranks nothing: 0
    assert torch.equal(faithfulness_correlation(model, x, right * 0, target, subsets),
                       torch.zeros(4))


# ------------------------------------------------------------------------------- sensitivity
def test_sensitivity_is_zero_for_a_fixed_map_and_nan_for_an_empty_one() -> None:
    net = TinyNet().eval()
    x, target = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    fixed = torch.rand(3, 1, 8, 8)

    def constant(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        return fixed

    s = sensitivity_scores(net, constant, x, fixed, target, samples=3)
    assert torch.equal(s["max_sensitivity"], torch.zeros(3))
    s = sensitivity_scores(net, the_image, x, the_image(net, x, target), target, samples=4,
                           generator=torch.Generator().manual_seed(0))
    assert (s["max_sensitivity"] >= s["avg_sensitivity"]).all() and (s["avg_sensitivity"] > 0
                                                                     ).all()
    s = sensitivity_scores(net, constant, x, torch.zeros(3, 1, 8, 8), target, samples=2)
    assert s["avg_sensitivity"].isnan().all()


# --------------------------------------------------------------------- layers, random logit
def test_randomised_layers_top_down_and_used_only() -> None:
    torch.manual_seed(0)
    model = create_model(backbone="tiny_cnn", num_classes=3)
    layers = randomised_layers(model, torch.randn(1, 3, 8, 8))
    assert layers == ["classifier", "encoder.layer3.1", "encoder.layer3.0", "encoder.layer2.1",
                      "encoder.layer2.0", "encoder.layer1.1", "encoder.layer1.0"]
    assert all(not m._forward_hooks for m in model.modules())
    assert randomised_layers(QuadrantModel(), torch.randn(1, 3, 8, 8)) == []


def test_random_other_class_is_uniform_over_the_others() -> None:
    target = torch.tensor([0, 1, 2, 3] * 2000)
    other = random_other_class(target, 4, generator=torch.Generator().manual_seed(0))
    assert (other != target).all()
    counts = torch.bincount(other[target == 2], minlength=4).float() / 2000
    assert counts[2] == 0 and torch.allclose(counts[[0, 1, 3]], torch.full((3,), 1 / 3),
                                             atol=0.04)
    with pytest.raises(ValueError, match="2 or more classes"):
        random_other_class(target, 1)


def test_no_randomisable_layer_gives_nan_and_fails() -> None:
    images = noise_images(2, 16)
    audit = audit_scores(QuadrantModel(), the_image, images, mean=MEAN, std=STD,
                         settings=AuditSettings(sensitivity_samples=1, faithfulness_runs=2))
    assert audit.layers == () and audit.cascade.shape == (0, 2)
    assert audit.scores["randomisation_similarity"].isnan().all() and not audit.passed
    assert math.isnan(audit.summary()["randomisation_similarity"])
