"""extune.evaluate: accuracy, calibration, robustness, explanation quality and audit.

The training loop calls :func:`evaluate_split`; the other functions are its building
blocks, usable on their own. Metric names, formulas, ranges and directions are listed in
``docs/metrics.md``; each metric's direction and range, for code, in
:mod:`extune.evaluate.metric_info`. This package imports neither Ray, Optuna nor MLflow.

Names are imported on first use, so that ``extune.evaluate.metric_info`` (read by search
objectives, without torch) keeps a light import.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "AUDIT_METRICS",
    "AUDIT_SUMMARY",
    "RANDOMISATION_THRESHOLD",
    "AuditSettings",
    "Audit",
    "audit_scores",
    "MetricInfo",
    "metric_info",
]

_WHERE = {
    "evaluate_split": "suite", "EvalSettings": "suite", "metric_names": "suite",
    "CLASSIFICATION_METRICS": "suite",
    "EXPLANATION_METRICS": "explanations", "LOCALISATION_METRICS": "explanations",
    "explanation_subset": "explanations", "compute_saliency": "explanations",
    "saliency_ranks": "explanations", "explanation_scores": "explanations",
    "localisation_scores": "explanations",
    "ECE_BINS": "classification", "predict_logits": "classification",
    "classification_metrics": "classification",
    "expected_calibration_error": "classification",
    "CORRUPTION_SEVERITIES": "corruptions", "list_corruptions": "corruptions",
    "corrupt": "corruptions", "make_corruption": "corruptions",
    "PixelSpaceModel": "robustness", "fgsm_attack": "robustness", "fgsm_accuracy": "robustness",
    "saliency_grid": "visualize",
    "AUDIT_METRICS": "audit", "AUDIT_SUMMARY": "audit", "RANDOMISATION_THRESHOLD": "audit",
    "AuditSettings": "audit", "Audit": "audit", "audit_scores": "audit",

    "MetricInfo": "metric_info", "metric_info": "metric_info",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"extune.evaluate.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'extune.evaluate' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
