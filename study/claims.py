"""The papers' claims, the metrics a study reports, and a verdict for each claim.

A claim "A beats B on m" gets one of five verdicts (docs/study.md, "Verdicts"):

- **holds** / **reversed**: the difference is shown (its p-value, adjusted across the study's
  claims, is below ``1 - confidence``) in the metric's good / bad direction;
- **equivalent**: two one-sided tests, adjusted the same way, show the difference lies within
  the metric's margin;
- **not shown**: neither (the report gives the smallest difference the seeds could detect);
- **not tested**: a method of the claim never switched on, or its models are no better than
  chance; such a claim is left out of the correction's family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extune.evaluate.metric_info import MetricInfo, metric_info
from extune.study import stats

__all__ = ["StudyMetric", "Claim", "STUDY_METRICS", "CLAIMS", "EXPLANATION_METRIC_NAMES",
           "HOLDS", "REVERSED", "EQUIVALENT", "NOT_SHOWN", "NOT_TESTED", "VERDICTS",
           "metric_by_name", "claim_rows"]

HOLDS, REVERSED, EQUIVALENT = "holds", "reversed", "equivalent"
NOT_SHOWN, NOT_TESTED = "not shown", "not tested"
VERDICTS = (HOLDS, REVERSED, EQUIVALENT, NOT_SHOWN, NOT_TESTED)


@dataclass(frozen=True)
class StudyMetric:
    """A test-split metric of the report: its short name and the reported key; direction and
    range are the metric's own (:func:`~extune.evaluate.metric_info.metric_info`)."""

    name: str
    key: str

    @property
    def info(self) -> MetricInfo:
        return metric_info(self.key)

    @property
    def higher_is_better(self) -> bool:
        return self.info.higher_is_better

    @property
    def arrow(self) -> str:
        return self.info.arrow

    @property
    def explanation(self) -> bool:
        """Whether the evaluation protocol (explainer, layer) changes it."""
        return self.name in EXPLANATION_METRIC_NAMES


STUDY_METRICS: tuple[StudyMetric, ...] = (
    StudyMetric("accuracy", "test/accuracy"),
    StudyMetric("ece", "test/ece"),
    StudyMetric("shift_accuracy", "test/shift/accuracy"),
    StudyMetric("shift_ece", "test/shift/ece"),
    StudyMetric("fgsm_accuracy", "test/adv/fgsm_accuracy"),
    StudyMetric("alignment", "test/alignment"),
    StudyMetric("avg_drop", "test/avg_drop"),
    StudyMetric("increase_confidence", "test/increase_confidence"),
    StudyMetric("deletion_auc", "test/deletion_auc"),
    StudyMetric("insertion_auc", "test/insertion_auc"),
    StudyMetric("pointing_game", "test/pointing_game"),
    StudyMetric("saliency_in_mask", "test/saliency_in_mask"),
)
"""The metrics a study reports (docs/metrics.md); the mask metrics only where the data set has
ground-truth masks (the synthetic set)."""

EXPLANATION_METRIC_NAMES = ("alignment", "avg_drop", "increase_confidence", "deletion_auc",
                            "insertion_auc", "pointing_game", "saliency_in_mask")

_BY_NAME = {m.name: m for m in STUDY_METRICS}


def metric_by_name(name: str) -> StudyMetric:
    return _BY_NAME[name]


@dataclass(frozen=True)
class Claim:
    """A paper's claim: method ``a`` is better than ``b`` on each of ``metrics``."""

    a: str
    b: str
    metrics: tuple[str, ...]
    source: str


CLAIMS: tuple[Claim, ...] = (
    Claim("excon", "supcon", ("accuracy", "alignment", "deletion_auc", "insertion_auc",
                              "pointing_game", "saliency_in_mask", "fgsm_accuracy", "shift_ece"),
          "ExCon (arXiv 2111.14271)"),
    Claim("edda", "ce", ("alignment", "avg_drop", "increase_confidence", "accuracy"),
          "EDDA (arXiv 2105.14162)"),
    Claim("edda", "random_occlusion", ("alignment", "avg_drop", "increase_confidence",
                                       "accuracy"), "EDDA (arXiv 2105.14162)"),
)

Values = Callable[[str, StudyMetric], Mapping[int, float]]
"""``values(method, metric) -> {seed index: value}`` over a method's complete final runs."""


def claim_rows(values: Values, methods: Sequence[str], present: Sequence[str], *,
               untested: Mapping[str, str], margins: Callable[[str], float], test: str,
               correction: str, confidence: float) -> list[dict[str, Any]]:
    """Every claim whose two methods are in the study, on every present metric, with its
    verdict (module docstring).

    Args:
        values: the runs' values (:data:`Values`).
        methods: the study's methods; present: the metric names the runs report.
        untested: method -> why its claims get no verdict (never switched on, chance level).
        margins: metric name -> equivalence margin.
        test, correction, confidence: :func:`extune.study.stats.compare`,
            :func:`extune.study.stats.adjust`, the level (``alpha = 1 - confidence``).

    Returns:
        One dict per (claim, metric): ``a``, ``b``, ``source``, ``metric``, ``key``,
        ``higher_is_better``, ``difference`` (:class:`~extune.study.stats.Difference` as a
        dict), ``n_a``, ``n_b``, ``p``, ``p_adjusted``, ``margin``, ``p_equivalence``,
        ``p_equivalence_adjusted``, ``mdd`` (80% power), ``seeds_for_margin``, ``verdict``,
        ``why`` (for ``not tested``).
    """
    alpha = 1 - confidence
    rows = []
    for claim in CLAIMS:
        if claim.a not in methods or claim.b not in methods:
            continue
        for name in claim.metrics:
            if name not in present:
                continue
            metric = _BY_NAME[name]
            diff = stats.compare(values(claim.a, metric), values(claim.b, metric), test,
                                 confidence)
            margin = margins(name)
            why = untested.get(claim.a) or untested.get(claim.b)
            rows.append({
                "a": claim.a, "b": claim.b, "source": claim.source, "metric": name,
                "key": metric.key, "higher_is_better": metric.higher_is_better,
                "difference": diff.to_dict(), "n_a": diff.n_a, "n_b": diff.n_b,
                "p": diff.p, "margin": margin, "p_equivalence": stats.equivalence(diff, margin),
                "mdd": stats.min_detectable_difference(diff.sd_a, diff.sd_b, diff.n_a,
                                                       diff.n_b, alpha) if test != "paired"
                else _paired_mdd(diff, alpha),
                "seeds_for_margin": stats.seeds_needed(diff.sd_a, diff.sd_b, margin, alpha)
                if test != "paired" else None,
                "why": why})
    _adjust_and_decide(rows, correction, alpha)
    return rows


def _paired_mdd(diff: stats.Difference, alpha: float) -> float:
    """The paired test's detectable difference: the differences' sd over ``sqrt(n)``."""
    if diff.n_a < 2 or not math.isfinite(diff.sd_a):
        return math.nan
    return stats.detectable(diff.sd_a / math.sqrt(diff.n_a), diff.n_a - 1, alpha)


def _adjust_and_decide(rows: list[dict[str, Any]], correction: str, alpha: float) -> None:
    """Adjust the p-values of the tested rows (two families: differences, equivalences) and
    give every row its verdict."""
    tested = [r for r in rows if not r["why"]]
    for key in ("p", "p_equivalence"):
        adjusted = stats.adjust([r[key] for r in tested], correction)
        for row, value in zip(tested, adjusted, strict=True):
            row[f"{key}_adjusted"] = value
    for row in rows:
        row.setdefault("p_adjusted", math.nan)
        row.setdefault("p_equivalence_adjusted", math.nan)
        row["verdict"] = _verdict(row, alpha)
        for key in ("p", "p_adjusted", "p_equivalence", "p_equivalence_adjusted", "mdd"):
            if isinstance(row[key], float) and not math.isfinite(row[key]):
                row[key] = None


def _verdict(row: dict[str, Any], alpha: float) -> str:
    if row["why"]:
        return NOT_TESTED
    p, p_eq = row["p_adjusted"], row["p_equivalence_adjusted"]
    estimate = row["difference"].get("estimate")
    if math.isfinite(p) and p < alpha and estimate is not None:
        good = estimate > 0 if row["higher_is_better"] else estimate < 0
        return HOLDS if good else REVERSED
    if math.isfinite(p_eq) and p_eq < alpha:
        return EQUIVALENT
    return NOT_SHOWN
