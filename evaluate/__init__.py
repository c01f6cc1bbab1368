"""extune.evaluate: accuracy, calibration, robustness and explanation quality.

The training loop calls :func:`evaluate_split`; the other functions are its building
blocks, usable on their own. Metric names, formulas, ranges and directions are listed in
``docs/metrics.md``. This package imports neither Ray, Optuna nor MLflow.
"""

from __future__ import annotations

from extune.evaluate._util import eval_mode
from extune.evaluate.classification import (
    ECE_BINS,
    classification_metrics,
    expected_calibration_error,
    predict_logits,
)
from extune.evaluate.corruptions import (
    CORRUPTION_SEVERITIES,
    corrupt,
    list_corruptions,
    make_corruption,
)
from extune.evaluate.explanations import (
    EXPLANATION_METRICS,
    LOCALISATION_METRICS,
    compute_saliency,
    explanation_scores,
    explanation_subset,
    localisation_scores,
    saliency_ranks,
)
from extune.evaluate.robustness import PixelSpaceModel, fgsm_accuracy, fgsm_attack
from extune.evaluate.suite import (
    CLASSIFICATION_METRICS,
    EvalSettings,
    evaluate_split,
    metric_names,
)
from extune.evaluate.visualize import saliency_grid

__all__ = [
    "evaluate_split",
    "EvalSettings",
    "metric_names",
    "CLASSIFICATION_METRICS",
    "EXPLANATION_METRICS",
    "LOCALISATION_METRICS",
    "ECE_BINS",
    "predict_logits",
    "classification_metrics",
    "expected_calibration_error",
    "CORRUPTION_SEVERITIES",
    "list_corruptions",
    "corrupt",
    "make_corruption",
    "PixelSpaceModel",
    "fgsm_attack",
    "fgsm_accuracy",
    "explanation_subset",
    "compute_saliency",
    "saliency_ranks",
    "explanation_scores",
    "localisation_scores",
    "saliency_grid",
    "eval_mode",
]
