"""Rows of ``run.py`` for the explanation audit: extune's batched torch against Quantus 0.6,
metric by metric, in seconds per 500 images (``docs/metrics.md``, "Explanation audit").

Both sides get the same model (eval mode), images, explainer, maps and settings: the audit's
defaults (cascade over every layer, 10 noise samples of radius 0.2, 64 subsets of 10% of the
pixels), batches of 64. The MPRT rows include the original maps (each side computes them);
the other rows start from the same precomputed maps, as the audit shares them between metrics.
Quantus is optional (the ``dev`` extra): without it the rows say so and are skipped.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable

import numpy as np
import torch
from timing import Row, interleaved, skipped

from extune.augment.explainers import create_explainer
from extune.augment.views import normalize, to_unit
from extune.evaluate.audit import (
    AuditSettings,
    audit_scores,
    effective_complexity,
    faithfulness_correlation,
    random_logit_similarity,
    random_other_class,
    random_pixel_subsets,
    randomisation_cascade,
    sensitivity_scores,
    sparseness,
)
from extune.evaluate.explanations import compute_saliency
from extune.models import create_model

__all__ = ["audit_rows"]

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
PER = 500  # figures are seconds per this many images
NAMES = ("randomisation (MPRT cascade)", "random logit", "max-sensitivity", "avg-sensitivity",
         "sparseness + effective complexity", "faithfulness correlation")


def _quantus_explain(explainer: Callable) -> Callable:
    def explain(model, inputs, targets, **_):
        return explainer(model, torch.as_tensor(inputs), torch.as_tensor(targets).long()).numpy()

    return explain


def audit_rows(quick: bool, device: torch.device) -> list[Row]:
    """One row per metric family: Quantus / extune seconds per 500 images, and the whole
    :func:`audit_scores` in seconds per 500 images; one CPU thread (on a busy 2-core machine
    two threads run these small batches 5-20x slower). Quantus runs on the CPU only here."""
    try:
        import quantus
    except ImportError:
        return [skipped(f"audit: {n}: quantus / extune", "quantus is not installed (pip "
                        "install -e '.[dev]')") for n in NAMES]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _rows(quantus, quick, device)
    finally:
        torch.set_num_threads(threads)


def _rows(quantus, quick: bool, device: torch.device) -> list[Row]:
    n, size, backbone = (16, 16, "tiny_cnn") if quick else (PER, 32, "resnet_mini")
    torch.manual_seed(0)
    model = create_model(backbone=backbone, num_classes=10).to(device).eval()
    explainer = create_explainer("gradcam")
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    cfg = AuditSettings()
    saliency, target = compute_saliency(model, explainer, images, mean=MEAN, std=STD)
    x = normalize(to_unit(images), MEAN, STD)
    ours, theirs = _extune_calls(model, explainer, images, x, saliency, target, cfg), {}
    if device.type == "cpu":
        theirs = _quantus_calls(quantus, model, explainer, x, saliency, target, cfg)
    reps = {"reps": 1, "warmup": 1 if quick else 0}  # a full row takes seconds
    rows = []
    for name in NAMES:
        if name not in theirs:
            rows.append(skipped(f"audit: {name}: quantus / extune", "Quantus timed on the CPU "
                                "only (--device cpu)"))
            continue
        t = interleaved({"extune": ours[name], "quantus": theirs[name]}, device=device, **reps)
        scale = PER / n
        rows.append(Row(f"audit: {name}: quantus / extune", t["quantus"] / t["extune"],
                        detail=f"{t['extune'] * scale:.1f} vs {t['quantus'] * scale:.1f} s per "
                        f"{PER} images ({backbone}, {size} px, gradcam, {device.type}, 1 thread)"))
    t = interleaved({"all": lambda: audit_scores(model, explainer, images, mean=MEAN, std=STD,
                                                 settings=cfg)}, device=device, **reps)
    rows.append(Row(f"audit: audit_scores, s per {PER} images", t["all"] * PER / n, unit="s",
                    detail=f"every metric, cascade over every layer ({backbone}, {size} px, "
                    f"gradcam, {device.type}, 1 thread)"))
    return rows


def _extune_calls(model, explainer, images, x, saliency, target, cfg) -> dict[str, Callable]:
    """Zero-argument calls of extune's metrics, batched like :func:`audit_scores`."""
    p = x.shape[-2] * x.shape[-1]
    k = round(cfg.faithfulness_fraction * p)

    def per_batch(fn: Callable) -> Callable:
        def run() -> None:
            for start in range(0, len(x), 64):
                sl = slice(start, start + 64)
                fn(x[sl], saliency[sl], target[sl])

        return run

    def sensitivity(xb, sb, tb):
        return sensitivity_scores(model, explainer, xb, sb, tb, radius=cfg.sensitivity_radius,
                                  samples=cfg.sensitivity_samples)

    def mprt() -> None:
        maps, t = compute_saliency(model, explainer, images, mean=MEAN, std=STD)
        randomisation_cascade(model, explainer, images, maps, t, mean=MEAN, std=STD)

    return {
        NAMES[0]: mprt,
        NAMES[1]: per_batch(lambda xb, sb, tb: random_logit_similarity(
            model, explainer, xb, sb, random_other_class(tb, 10))),
        NAMES[2]: per_batch(sensitivity),
        NAMES[3]: per_batch(sensitivity),  # one call gives both
        NAMES[4]: per_batch(lambda xb, sb, tb: (sparseness(sb), effective_complexity(sb))),
        NAMES[5]: per_batch(lambda xb, sb, tb: faithfulness_correlation(
            model, xb, sb, tb, random_pixel_subsets(len(xb), p, cfg.faithfulness_runs, k,
                                                    device=xb.device))),
    }


def _quantus_calls(quantus, model, explainer, x, saliency, target, cfg) -> dict[str, Callable]:
    """The same metrics through Quantus's classes (numpy in and out, its own batching)."""
    explain = _quantus_explain(explainer)
    data = {"model": model, "x_batch": x.numpy(), "y_batch": target.numpy(),
            "channel_first": True, "batch_size": 64}
    maps = {**data, "a_batch": saliency.numpy()}
    quiet = {"disable_warnings": True}
    k = round(cfg.faithfulness_fraction * x.shape[-2] * x.shape[-1])
    sens = {"nr_samples": cfg.sensitivity_samples, "lower_bound": cfg.sensitivity_radius,
            "abs": False, "normalise": False, **quiet}
    metrics = {
        NAMES[0]: (quantus.MPRT(layer_order="top_down", **quiet), data),
        NAMES[1]: (quantus.RandomLogit(num_classes=10, abs=False, normalise=False,
                                       similarity_func=quantus.similarity_func
                                       .correlation_spearman, **quiet), maps),
        NAMES[2]: (quantus.MaxSensitivity(**sens), maps),
        NAMES[3]: (quantus.AvgSensitivity(**sens), maps),
        NAMES[5]: (quantus.FaithfulnessCorrelation(nr_runs=cfg.faithfulness_runs,
                                                   subset_size=k, abs=False, normalise=False,
                                                   return_aggregate=False, **quiet), maps),
    }

    def call(metric, kwargs) -> Callable:
        def run() -> None:
            with _silenced():
                metric(**kwargs, explain_func=explain)

        return run

    calls = {name: call(m, kw) for name, (m, kw) in metrics.items()}
    sparse, complexity = quantus.Sparseness(**quiet), quantus.EffectiveComplexity(**quiet)

    def both() -> None:
        with _silenced():
            sparse(**maps)
            complexity(**maps)

    calls[NAMES[4]] = both
    np.random.seed(0)
    return calls


@contextlib.contextmanager
def _silenced():
    """Quantus prints its notes, and scipy warns on every constant map (an untrained model's
    Grad-CAM is often all zeros): neither belongs in the table."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
