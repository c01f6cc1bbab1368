"""Every audit metric agrees with Quantus 0.6 on the same model, images, maps and random draws.

Where Quantus draws random numbers the comparison is made exact, not statistical:

- MPRT: both re-initialise each layer by ``reset_parameters()`` after seeding the global
  generator (extune with ``seed``, Quantus with ``seed + 1``, so Quantus gets ``seed - 1``);
- RandomLogit: Quantus's other classes are drawn again here from ``np.random.seed(seed)`` as its
  ``evaluate_batch`` draws them, and given to extune;
- Max-/AvgSensitivity: Quantus's ``perturb_func`` replays the noise extune draws
  (:func:`uniform_noise` from a generator seeded the same);
- FaithfulnessCorrelation: Quantus's subsets are drawn again here from ``np.random.seed`` as its
  ``evaluate_batch`` draws them (``np.random.choice`` per run, per image). Quantus perturbs the
  input it is given; it is given a presence mask ``z`` (ones ``[B, 1, H, W]``) and a model that
  computes ``f(x * z)``, so that its "features" are extune's pixels (all channels) and a
  perturbation fills them with 0, the mean colour.

Tolerances: 1e-5 absolute on correlations (float32 maps, float64 correlations on both sides),
1e-5 relative on sensitivities, 1e-6 on the Gini index, exact counts for effective complexity.
Quantus returns NaN where a map is constant; extune's convention (0 when one map is constant) is
checked where that happens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_helpers import MEAN, STD, noise_images
from torch import Tensor, nn

from extune.augment.explainers import create_explainer
from extune.augment.views import normalize, to_unit
from extune.evaluate.audit import (
    effective_complexity,
    faithfulness_correlation,
    random_logit_similarity,
    randomisation_cascade,
    sensitivity_scores,
    sparseness,
    uniform_noise,
)
from extune.evaluate.explanations import compute_saliency
from extune.models import create_model

quantus = pytest.importorskip("quantus")

B, SIZE, C, SEED = 6, 16, 4, 3
CORRELATION_ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny batches: one is fastest


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_model(backbone="tiny_cnn", num_classes=C).eval()


def _setup(explainer_name: str = "gradcam") -> tuple[nn.Module, object, Tensor, Tensor, Tensor,
                                                    Tensor]:
    model, explainer = _model(), create_explainer(explainer_name)
    images = noise_images(B, SIZE, seed=1)
    saliency, target = compute_saliency(model, explainer, images, mean=MEAN, std=STD)
    x = normalize(to_unit(images), MEAN, STD)
    return model, explainer, images, x, saliency, target


def _quantus_explain(explainer):
    """Quantus's ``explain_func`` contract (numpy in, numpy out) around an extune explainer."""

    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object
                ) -> np.ndarray:
        return explainer(model, torch.as_tensor(inputs), torch.as_tensor(targets).long()).numpy()

    return explain


def _close(ours: Tensor, theirs: object, atol: float) -> None:
    theirs = torch.as_tensor(np.asarray(theirs, dtype=np.float64))
    assert ours.shape == theirs.shape
    assert torch.allclose(ours.double(), theirs, atol=atol, rtol=0), (ours, theirs)


def _common(model: nn.Module, x: Tensor, target: Tensor, saliency: Tensor) -> dict:
    return {"model": model, "x_batch": x.numpy(), "y_batch": target.numpy(),
            "a_batch": saliency.numpy(), "channel_first": True}


def test_mprt_cascade_agrees_with_quantus() -> None:
    model, explainer, images, x, saliency, target = _setup()
    layers, ours = randomisation_cascade(model, explainer, images, saliency, target, mean=MEAN,
                                         std=STD, seed=SEED)
    metric = quantus.MPRT(layer_order="top_down", seed=SEED - 1, abs=False, normalise=False,
                          disable_warnings=True)
    theirs = metric(**_common(model, x, target, saliency),
                    explain_func=_quantus_explain(explainer))
    # Quantus also re-initialises the projection head, which the logits do not use: the rows of
    # the layers extune keeps are the same, in the same top-down order
    assert [name for name in theirs if name in layers] == list(layers)
    assert layers[0] == "classifier" and any(name.startswith("head.") for name in theirs)
    for row, name in zip(ours, layers, strict=True):
        theirs_row = torch.tensor(theirs[name], dtype=torch.float64)
        defined = theirs_row.isfinite()
        _close(row[defined], theirs_row[defined], CORRELATION_ATOL)
        assert torch.all((row[~defined] == 0) | row[~defined].isnan())
    assert torch.isfinite(ours[-1]).all()


def test_random_logit_agrees_with_quantus() -> None:
    model, explainer, _, x, saliency, target = _setup("saliency")
    # the other classes as Quantus's RandomLogit.evaluate_batch draws them
    np.random.seed(SEED)
    offsets = np.random.randint(0, C - 1, B)
    others = [[c for c in range(C) if c != t][o] for t, o in zip(target.tolist(), offsets,
                                                                  strict=True)]
    ours = random_logit_similarity(model, explainer, x, saliency, torch.tensor(others))
    metric = quantus.RandomLogit(num_classes=C, seed=SEED, abs=False, normalise=False,
                                 similarity_func=quantus.similarity_func.correlation_spearman,
                                 disable_warnings=True)
    theirs = metric(**_common(model, x, target, saliency),
                    explain_func=_quantus_explain(explainer))
    _close(ours, theirs, CORRELATION_ATOL)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_sensitivity_agrees_with_quantus(kind: str) -> None:
    model, explainer, _, x, saliency, target = _setup("saliency")
    radius, samples = 0.2, 5
    ours = sensitivity_scores(model, explainer, x, saliency, target, radius=radius,
                              samples=samples, generator=torch.Generator().manual_seed(SEED))
    replay = torch.Generator().manual_seed(SEED)
    noise = [uniform_noise(x, radius, generator=replay).flatten(1).numpy()
             for _ in range(samples)]

    def perturb(arr: np.ndarray, indices: np.ndarray, **_: object) -> np.ndarray:
        return arr + noise.pop(0)  # Quantus calls it once per sample, in order

    cls = quantus.MaxSensitivity if kind == "max" else quantus.AvgSensitivity
    metric = cls(nr_samples=samples, perturb_func=perturb, abs=False, normalise=False,
                 disable_warnings=True)
    theirs = metric(**_common(model, x, target, saliency),
                    explain_func=_quantus_explain(explainer))
    assert not noise
    expected = torch.as_tensor(np.asarray(theirs, dtype=np.float64))
    assert torch.allclose(ours[f"{kind}_sensitivity"].double(), expected, rtol=1e-5, atol=0)


def test_complexity_agrees_with_quantus() -> None:
    model, _, _, x, saliency, target = _setup()
    saliency[0] = 0.0  # an all-zero map: uniform for the Gini index, nothing above eps
    theirs = quantus.Sparseness(disable_warnings=True)(**_common(model, x, target, saliency))
    _close(sparseness(saliency), theirs, 1e-6)
    assert float(sparseness(saliency)[0]) == pytest.approx(0.0, abs=1e-6)
    for eps in (1e-5, 0.3):
        theirs = quantus.EffectiveComplexity(eps=eps, disable_warnings=True)(
            **_common(model, x, target, saliency))
        assert effective_complexity(saliency, eps=eps).tolist() == [float(v) for v in theirs]


class _Presence(nn.Module):
    """``z [B, 1, H, W] -> model(x * z)``: Quantus perturbs ``z``, i.e. whole pixels."""

    def __init__(self, model: nn.Module, x: Tensor) -> None:
        super().__init__()
        self.model, self.x = model, x

    def forward(self, z: Tensor) -> Tensor:
        return self.model(self.x * z)


def _fill_zero(arr: np.ndarray, indices: np.ndarray, **_: object) -> np.ndarray:
    out = arr.copy()
    out[np.arange(len(arr))[:, None], indices] = 0.0
    return out


def test_faithfulness_correlation_agrees_with_quantus() -> None:
    model, _, _, x, saliency, target = _setup("saliency")
    runs, size, pixels = 20, 26, SIZE * SIZE
    np.random.seed(SEED)  # the subsets as Quantus's evaluate_batch draws them
    subsets = np.stack([np.stack([np.random.choice(pixels, size, replace=False)
                                  for _ in range(B)]) for _ in range(runs)])
    ours = faithfulness_correlation(model, x, saliency, target, torch.as_tensor(subsets))
    metric = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size,
                                             perturb_func=_fill_zero, abs=False, normalise=False,
                                             return_aggregate=False, disable_warnings=True)
    np.random.seed(SEED)
    theirs = metric(model=_Presence(model, x).eval(), x_batch=np.ones((B, 1, SIZE, SIZE),
                                                                      np.float32),
                    y_batch=target.numpy(), a_batch=saliency.numpy(), channel_first=True)
    _close(ours, theirs, CORRELATION_ATOL)
