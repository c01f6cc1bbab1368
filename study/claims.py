"""Claims, where each of their metrics comes from, and a verdict for each claim and control.

A claim "A beats B on m" names, per metric, its **family**: ``primary`` when the method's paper
or its reference code measures it that way, ``secondary`` when extune adds it. The built-in
claims (:data:`BUILTIN_CLAIMS`) come from the papers; a study's plan file declares others
(:mod:`extune.study.plan`). Every explanation-driven method of a claim also gets its
**controls** (:class:`~extune.train.methods.Control`): ``A - A_off`` on the same metrics, the
part of a difference its explanation-driven part causes.

A row gets one of five verdicts (docs/study.md, "Verdicts"):

- **holds** / **reversed**: the difference is shown (its p-value, adjusted within its family, is
  below ``1 - confidence``) in the metric's good / bad direction;
- **equivalent**: two one-sided tests, adjusted the same way, show the difference lies within
  the metric's margin;
- **not shown**: neither (the row gives the smallest difference the seeds could detect at the
  corrected level);
- **not tested**: an arm never switched on, or its models are no better than chance, or (an
  explanation metric's row) the explainer of its protocol fails the randomisation test on the
  study's models (:func:`claim_rows`' ``explanations_untested``); such a row is left out of its
  family.

Holm (or the chosen correction) runs within each family of each kind: the claims' primary
metrics, their secondary metrics, the controls' primary and secondary metrics; differences and
equivalences are adjusted apart. Each row's interval is at the level its adjusted test used
(:func:`~extune.study.stats.adjusted_alpha`: it excludes 0 exactly when the verdict is holds or
reversed); the simultaneous (Bonferroni) interval of its family and the detectable difference
at the family's corrected level are given beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extune.evaluate.metric_info import MetricInfo, metric_info
from extune.study import stats

__all__ = ["StudyMetric", "ClaimMetric", "Claim", "STUDY_METRICS", "BUILTIN_CLAIMS",
           "EXPLANATION_METRIC_NAMES", "AUDIT_METRIC_NAMES", "FAMILIES", "PRIMARY", "SECONDARY",
           "HOLDS", "REVERSED", "EQUIVALENT", "NOT_SHOWN", "NOT_TESTED", "VERDICTS",
           "metric_by_name", "claim_rows", "claims_to_plan", "claims_from_plan"]

HOLDS, REVERSED, EQUIVALENT = "holds", "reversed", "equivalent"
NOT_SHOWN, NOT_TESTED = "not shown", "not tested"
VERDICTS = (HOLDS, REVERSED, EQUIVALENT, NOT_SHOWN, NOT_TESTED)
PRIMARY, SECONDARY = "primary", "secondary"
FAMILIES = (PRIMARY, SECONDARY)
"""``primary``: measured as the paper or its reference code measures it; ``secondary``: a
measure extune adds."""


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
    StudyMetric("randomisation_similarity", "test/randomisation_similarity"),
    StudyMetric("random_logit_similarity", "test/random_logit_similarity"),
    StudyMetric("max_sensitivity", "test/max_sensitivity"),
    StudyMetric("avg_sensitivity", "test/avg_sensitivity"),
    StudyMetric("sparseness", "test/sparseness"),
    StudyMetric("effective_complexity", "test/effective_complexity"),
    StudyMetric("faithfulness_correlation", "test/faithfulness_correlation"),
)
"""The metrics a study reports (docs/metrics.md); the mask metrics only where the data set has
ground-truth masks (the synthetic set); the explanation audit's per-image metrics (its
``randomisation_pass`` is a verdict per checkpoint, not a measure to compare: the report uses
it to decide whether a protocol's explanation rows are tested at all)."""

AUDIT_METRIC_NAMES = ("randomisation_similarity", "random_logit_similarity", "max_sensitivity",
                      "avg_sensitivity", "sparseness", "effective_complexity",
                      "faithfulness_correlation")
"""The explanation audit's metrics in a study (:data:`extune.evaluate.audit.AUDIT_METRICS`)."""

EXPLANATION_METRIC_NAMES = ("alignment", "avg_drop", "increase_confidence", "deletion_auc",
                            "insertion_auc", "pointing_game", "saliency_in_mask",
                            *AUDIT_METRIC_NAMES)
"""The metrics an evaluation protocol (explainer, layer) changes, measured on the explanation
images."""

_BY_NAME = {m.name: m for m in STUDY_METRICS}


def metric_by_name(name: str) -> StudyMetric:
    return _BY_NAME[name]


@dataclass(frozen=True)
class ClaimMetric:
    """One metric of a claim: its family (:data:`FAMILIES`) and where that measure comes from."""

    metric: str
    family: str
    source: str


@dataclass(frozen=True)
class Claim:
    """Method ``a`` is better than ``b`` on each of ``metrics``; ``source``: whose claim."""

    a: str
    b: str
    metrics: tuple[ClaimMetric, ...]
    source: str


_EXCON = "ExCon (arXiv 2111.14271)"
_EXCON_CODE = ("ExCon's reference code (github DarrenZhang01/ExCon, eval.py: "
               "eval_drop_increase, top 15% of the saliency kept)")
_EXCON_PAPER = "ExCon's paper: accuracy, adversarial robustness, calibration under shift"
_EXCON_FGSM = "ExCon's reference code and paper (eval.py --fgsm, eps 4/255)"
_EDDA = "EDDA (arXiv 2105.14162)"
_EDDA_PAPER = ("EDDA's paper: occluding salient regions lowers confidence, occluding "
               "non-salient ones keeps it (extune's alignment scores both at once)")
_EDDA_ACCURACY = "EDDA's paper: accuracy kept"
_EXTUNE = "extune (a measure the paper does not use)"
_AUDIT = ("extune's explanation audit (a measure the paper does not use; each checked against "
          "Quantus 0.6, docs/metrics.md)")
_SECONDARY_EXPLANATIONS = ("deletion_auc", "insertion_auc", "pointing_game", "saliency_in_mask")


def _audited() -> tuple[ClaimMetric, ...]:
    """The explanation audit's metrics, in the secondary family of every built-in claim."""
    return tuple(ClaimMetric(m, SECONDARY, _AUDIT) for m in AUDIT_METRIC_NAMES)


def _edda(b: str) -> Claim:
    return Claim("edda", b, (
        ClaimMetric("alignment", PRIMARY, _EDDA_PAPER),
        ClaimMetric("accuracy", PRIMARY, _EDDA_ACCURACY),
        ClaimMetric("avg_drop", SECONDARY, _EXTUNE),
        ClaimMetric("increase_confidence", SECONDARY, _EXTUNE),
        *(ClaimMetric(m, SECONDARY, _EXTUNE) for m in _SECONDARY_EXPLANATIONS),
        *_audited()), _EDDA)


BUILTIN_CLAIMS: tuple[Claim, ...] = (
    Claim("excon", "supcon", (
        ClaimMetric("avg_drop", PRIMARY, _EXCON_CODE),
        ClaimMetric("increase_confidence", PRIMARY, _EXCON_CODE),
        ClaimMetric("accuracy", PRIMARY, _EXCON_PAPER),
        ClaimMetric("fgsm_accuracy", PRIMARY, _EXCON_FGSM),
        ClaimMetric("shift_ece", PRIMARY, _EXCON_PAPER),
        ClaimMetric("alignment", SECONDARY, _EXTUNE),
        *(ClaimMetric(m, SECONDARY, _EXTUNE) for m in _SECONDARY_EXPLANATIONS),
        *_audited()), _EXCON),
    _edda("ce"),
    _edda("random_occlusion"),
)
"""The papers' claims, each metric with its family and source (docs/study.md, "Claims")."""


def claims_to_plan(claims: Sequence[Claim]) -> list[dict[str, Any]]:
    """Claims as plain data (a study's plan)."""
    return [{"a": c.a, "b": c.b, "source": c.source,
             "metrics": [{"metric": m.metric, "family": m.family, "source": m.source}
                         for m in c.metrics]} for c in claims]


def claims_from_plan(data: Sequence[Mapping[str, Any]]) -> tuple[Claim, ...]:
    """:func:`claims_to_plan`'s data back as claims."""
    return tuple(Claim(c["a"], c["b"], tuple(ClaimMetric(m["metric"], m["family"], m["source"])
                                             for m in c["metrics"]), c["source"])
                 for c in data)


Values = Callable[[str, StudyMetric], Mapping[int, float]]
"""``values(arm, metric) -> {seed index: value}`` over an arm's complete final runs."""

TestVariance = Callable[[str, str | None, str], float | None]
"""``test_variance(a, b, metric name)``: the test-set sampling variance of ``mean(a) -
mean(b)`` (``b`` ``None``: of ``mean(a)``); ``None`` where the runs kept no per-image
outputs."""


def _rows_to_test(claims: Sequence[Claim], arms: Sequence[str], present: Sequence[str],
                  controls: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """One stub per (claim, metric) and per (control, metric) whose arms are in the study."""
    rows, controlled = [], {}
    for claim in claims:
        if claim.a not in arms or claim.b not in arms:
            continue
        for m in claim.metrics:
            if m.metric not in present:
                continue
            rows.append({"kind": "claim", "a": claim.a, "b": claim.b, "source": claim.source,
                         "metric": m.metric, "family": m.family, "metric_source": m.source})
            controlled.setdefault(claim.a, {}).setdefault(m.metric, m)
    for method, metrics in controlled.items():
        for arm in controls.get(method, ()):
            if arm not in arms:
                continue
            rows += [{"kind": "control", "a": method, "b": arm, "source": f"control of {method}",
                      "metric": name, "family": m.family, "metric_source": m.source}
                     for name, m in metrics.items()]
    return rows


def claim_rows(values: Values, claims: Sequence[Claim], arms: Sequence[str],
               present: Sequence[str], *, untested: Mapping[str, str],
               margins: Callable[[str], float], test: str, correction: str,
               confidence: float, controls: Mapping[str, Sequence[str]] | None = None,
               clusters: Mapping[int, int] | None = None,
               test_variance: TestVariance | None = None,
               weak: Mapping[str, str] | None = None,
               explanations_untested: str | None = None) -> list[dict[str, Any]]:
    """Every claim whose two arms are in the study and every control of its method, on every
    present metric, with its verdict (module docstring).

    Args:
        values: the runs' values (:data:`Values`).
        claims: the plan's claims; arms: the study's methods and control arms; present: the
            metric names the runs report.
        untested: arm -> why its rows get no verdict (never switched on, chance level).
        margins: metric name -> equivalence margin.
        test, correction, confidence: :func:`extune.study.stats.compare`,
            :func:`extune.study.stats.adjust`, the level (``alpha = 1 - confidence``).
        controls: method -> its control arms (``excon`` -> ``["excon-off"]``).
        clusters: seed index -> search index (hierarchical tests with several searches).
        test_variance: the test-set sampling variance of a difference (:data:`TestVariance`);
            ``None``: the intervals cover the runs only.
        weak: method -> why its explanation-driven part was weakly tested (said beside every
            row of that method; the verdict stands).
        explanations_untested: why no explanation metric's row gets a verdict (the protocol's
            explainer fails the randomisation test on the study's models); ``None``: they do.
            The other rows keep theirs.

    Returns:
        One dict per row: ``kind`` (``claim``/``control``), ``a``, ``b``, ``source``,
        ``metric``, ``family``, ``metric_source``, ``key``, ``higher_is_better``,
        ``difference`` (:class:`~extune.study.stats.Difference` as a dict, its interval
        unadjusted), ``n_a``, ``n_b``, ``p``, ``p_adjusted``, ``alpha_adjusted``,
        ``interval`` (at ``alpha_adjusted``), ``interval_simultaneous`` (Bonferroni within
        the family), ``family_size``, ``margin``, ``p_equivalence``,
        ``p_equivalence_adjusted``, ``mdd`` (80% power at ``alpha / family_size``),
        ``seeds_for_margin``, ``verdict``, ``why`` (``not tested``), ``weak``.
    """
    alpha = 1 - confidence
    rows = _rows_to_test(claims, arms, present, controls or {})
    for row in rows:
        metric = _BY_NAME[row["metric"]]
        variance = test_variance(row["a"], row["b"], metric.name) if test_variance else None
        diff = stats.compare(values(row["a"], metric), values(row["b"], metric), test,
                             confidence, clusters=clusters, test_variance=variance or 0.0)
        margin = margins(row["metric"])
        row.update({
            "key": metric.key, "higher_is_better": metric.higher_is_better,
            "difference": diff, "n_a": diff.n_a, "n_b": diff.n_b, "p": diff.p,
            "margin": margin, "p_equivalence": stats.equivalence(diff, margin),
            "why": untested.get(row["a"]) or untested.get(row["b"])
            or (explanations_untested if metric.explanation else None),
            "weak": (weak or {}).get(row["a"])})
    _adjust_and_decide(rows, correction, alpha, test)
    return rows


def _adjust_and_decide(rows: list[dict[str, Any]], correction: str, alpha: float,
                       test: str) -> None:
    """Adjust the tested rows' p-values within each (kind, family), differences and
    equivalences apart; give every row its adjusted and simultaneous intervals, detectable
    difference and verdict."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if not row["why"]:
            groups.setdefault((row["kind"], row["family"]), []).append(row)
    for group in groups.values():
        for key in ("p", "p_equivalence"):
            adjusted = stats.adjust([r[key] for r in group], correction)
            for row, value in zip(group, adjusted, strict=True):
                row[f"{key}_adjusted"] = value
        size = sum(math.isfinite(r["p"]) for r in group)
        for row in group:
            row["family_size"] = size
    for row in rows:
        diff: stats.Difference = row["difference"]
        row.setdefault("p_adjusted", math.nan)
        row.setdefault("p_equivalence_adjusted", math.nan)
        size = row.setdefault("family_size", 0)
        level = stats.adjusted_alpha(row["p"], row["p_adjusted"], alpha) \
            if correction != "none" else alpha
        simultaneous = alpha / size if size else alpha  # Bonferroni over the family
        corrected = alpha if correction == "none" else simultaneous
        row["alpha_adjusted"] = level
        row["interval"] = _pair(stats.adjusted_interval(diff, level))
        row["interval_simultaneous"] = _pair(stats.adjusted_interval(diff, simultaneous))
        row["mdd"] = _mdd(diff, corrected, test)
        row["seeds_for_margin"] = stats.seeds_needed(diff.sd_a, diff.sd_b, row["margin"],
                                                     corrected) \
            if test != "paired" and diff.level == "runs" else None
        row["difference"] = diff.to_dict()
        row["verdict"] = _verdict(row, alpha)
        for key in ("p", "p_adjusted", "p_equivalence", "p_equivalence_adjusted", "mdd"):
            if isinstance(row[key], float) and not math.isfinite(row[key]):
                row[key] = None


def _pair(interval: tuple[float, float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in interval]


def _mdd(diff: stats.Difference, alpha: float, test: str) -> float:
    """The smallest true difference detected with 80% power at level ``alpha``, with the
    comparison's own standard error and degrees of freedom (searches, test-set variance and
    all)."""
    if not (math.isfinite(diff.se) and math.isfinite(diff.df)) or diff.n_a < 2:
        return math.nan
    return stats.detectable(diff.se, diff.df, alpha)


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
