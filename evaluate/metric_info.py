"""Each metric's direction and range, stated once beside the metrics (docs/metrics.md's table).

Search objectives, a study's claims and every report read :func:`metric_info` instead of
writing "higher is better" again (torchmetrics states ``higher_is_better`` beside a metric's
formula the same way).

A key is looked up without its split: ``val/accuracy``, ``test/accuracy`` and ``accuracy``
are the same metric; ``shift/...`` and ``adv/...`` keep their group (``test/shift/ece`` is
``shift/ece``); ``shift/<corruption>/accuracy`` is an accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MetricInfo", "METRIC_INFO", "metric_info"]


@dataclass(frozen=True)
class MetricInfo:
    """What a metric means for a comparison.

    Attributes:
        name: the key without its split (``accuracy``, ``shift/ece``, ``adv/fgsm_accuracy``).
        higher_is_better: the metric's good direction.
        low, high: its range (``math.inf`` for an unbounded end).
        label: a few words for tables and plots.
    """

    name: str
    higher_is_better: bool
    low: float
    high: float
    label: str

    @property
    def mode(self) -> str:
        """``max`` or ``min``, as optimisers say it."""
        return "max" if self.higher_is_better else "min"

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


def _info(name: str, higher: bool, label: str, low: float = 0.0, high: float = 1.0
          ) -> MetricInfo:
    return MetricInfo(name, higher, low, high, label)


METRIC_INFO: dict[str, MetricInfo] = {m.name: m for m in (
    _info("accuracy", True, "top-1 accuracy"),
    _info("top5", True, "top-k accuracy"),
    _info("loss", False, "cross-entropy", high=math.inf),
    _info("ece", False, "expected calibration error"),
    _info("shift/accuracy", True, "accuracy under corruptions"),
    _info("shift/ece", False, "ECE under corruptions"),
    _info("adv/fgsm_accuracy", True, "accuracy under FGSM"),
    _info("avg_drop", False, "Average Drop"),
    _info("increase_confidence", True, "Increase in Confidence"),
    _info("alignment", True, "salient minus non-salient occlusion drop", low=-1.0),
    _info("deletion_auc", False, "deletion AUC"),
    _info("insertion_auc", True, "insertion AUC"),
    _info("pointing_game", True, "saliency maximum inside the mask"),
    _info("saliency_in_mask", True, "saliency mass inside the mask"),
)}
"""Every metric of :func:`extune.evaluate.evaluate_split` (per-corruption keys aside: they
take the direction of their last part)."""


def metric_info(key: str) -> MetricInfo:
    """The :class:`MetricInfo` of a reported key (``val/alignment``, ``test/shift/ece``,
    ``shift/gaussian_blur/accuracy``).

    Raises:
        KeyError: not a metric of the evaluation suite (``train/...``, ``epoch``).
    """
    parts = key.split("/")
    if parts[0] in ("val", "test", "train") and len(parts) > 1:
        if parts[0] == "train":
            raise KeyError(f"'{key}' is a training statistic, not an evaluation metric")
        parts = parts[1:]
    name = "/".join(parts)
    if name in METRIC_INFO:
        return METRIC_INFO[name]
    if len(parts) == 3 and parts[0] == "shift" and parts[2] in ("accuracy", "ece"):
        return METRIC_INFO[f"shift/{parts[2]}"]
    raise KeyError(f"'{key}' is not a metric of the evaluation suite (docs/metrics.md)")
