"""What a search optimises: an :class:`Objective` is a reported metric and its direction.

``--objective accuracy`` names a validation metric; ``val/top5:max`` any reported metric with a
direction. The direction of a named objective is the metric's own
(:func:`extune.evaluate.metric_info.metric_info`). Light: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from extune.errors import ConfigError
from extune.evaluate.metric_info import metric_info

__all__ = ["Objective", "OBJECTIVES", "parse_objectives"]

_OBJECTIVE_METRICS = {
    "accuracy": "val/accuracy", "top5": "val/top5", "loss": "val/loss", "ece": "val/ece",
    "alignment": "val/alignment", "avg_drop": "val/avg_drop",
    "increase_confidence": "val/increase_confidence", "deletion_auc": "val/deletion_auc",
    "insertion_auc": "val/insertion_auc", "pointing_game": "val/pointing_game",
    "saliency_in_mask": "val/saliency_in_mask", "fgsm_accuracy": "adv/fgsm_accuracy",
    "shift_accuracy": "shift/accuracy", "shift_ece": "shift/ece"}
OBJECTIVES: dict[str, tuple[str, str]] = {
    name: (metric, metric_info(metric).mode) for name, metric in _OBJECTIVE_METRICS.items()}
"""Objective names for ``--objective`` -> (reported metric, direction); the direction is the
metric's own (:func:`extune.evaluate.metric_info.metric_info`)."""


@dataclass(frozen=True)
class Objective:
    """One optimisation target: a reported metric and its direction."""

    name: str
    metric: str
    mode: str  # "max" | "min"


def parse_objectives(names: str | list[str] | tuple[str, ...]) -> list[Objective]:
    """``"accuracy,alignment"`` -> objectives; also accepts ``val/metric:max`` forms.

    Raises:
        ConfigError: an unknown name, a bad direction, or a repeated objective.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    items = [n.strip() for n in names if n.strip()]
    if not items:
        raise ConfigError("--objective needs at least one name, e.g. accuracy or "
                          "accuracy,alignment")
    out: list[Objective] = []
    for item in items:
        metric, _, mode = item.partition(":")
        if metric in OBJECTIVES and not mode:
            out.append(Objective(metric, *OBJECTIVES[metric]))
        elif "/" in metric and mode in ("max", "min"):
            out.append(Objective(metric, metric, mode))
        else:
            raise ConfigError(f"unknown objective '{item}'; use one of "
                              f"{', '.join(OBJECTIVES)} or METRIC:max|min (e.g. val/top5:max)")
    if len({o.metric for o in out}) != len(out):
        raise ConfigError(f"--objective names a metric twice: {','.join(items)}")
    return out


