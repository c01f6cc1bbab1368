"""Each metric's direction and range, stated once beside the metrics (docs/metrics.md's table).

Search objectives, a study's claims and every report read :func:`metric_info` instead of
writing "higher is better" again (torchmetrics states ``higher_is_better`` beside a metric's
formula the same way).

A key is looked up without its split: ``val/accuracy``, ``test/accuracy`` and ``accuracy``
are the same metric; ``shift/...`` and ``adv/...`` keep their group (``test/shift/ece`` is
``shift/ece``); ``shift/<corruption>/accuracy`` is an accuracy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MetricInfo", "METRIC_INFO", "metric_info", "KINDS", "BOOKKEEPING", "split_key",
           "SummaryRow", "summary_rows", "metrics_json"]

KINDS = ("classification", "calibration", "robustness", "explanations", "audit")
"""The kinds of evaluation metrics, in the order a summary shows them (``audit``: the
explanation audit of :mod:`extune.evaluate.audit`, sanity checks of the explainer)."""


@dataclass(frozen=True)
class MetricInfo:
    """What a metric means for a comparison.

    Attributes:
        name: the key without its split (``accuracy``, ``shift/ece``, ``adv/fgsm_accuracy``).
        higher_is_better: the metric's good direction.
        low, high: its range (``math.inf`` for an unbounded end).
        label: a few words for tables and plots.
        kind: one of :data:`KINDS`.
    """

    name: str
    higher_is_better: bool
    low: float
    high: float
    label: str
    kind: str = "classification"

    @property
    def mode(self) -> str:
        """``max`` or ``min``, as optimisers say it."""
        return "max" if self.higher_is_better else "min"

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


def _info(name: str, higher: bool, label: str, kind: str, low: float = 0.0, high: float = 1.0
          ) -> MetricInfo:
    return MetricInfo(name, higher, low, high, label, kind)


METRIC_INFO: dict[str, MetricInfo] = {m.name: m for m in (
    _info("accuracy", True, "top-1 accuracy", "classification"),
    _info("top5", True, "top-k accuracy", "classification"),
    _info("loss", False, "cross-entropy", "classification", high=math.inf),
    _info("ece", False, "expected calibration error", "calibration"),
    _info("shift/accuracy", True, "accuracy under corruptions", "robustness"),
    _info("shift/ece", False, "ECE under corruptions", "robustness"),
    _info("adv/fgsm_accuracy", True, "accuracy under FGSM", "robustness"),
    _info("avg_drop", False, "Average Drop", "explanations"),
    _info("increase_confidence", True, "Increase in Confidence", "explanations"),
    _info("alignment", True, "salient minus non-salient occlusion drop", "explanations",
          low=-1.0),
    _info("deletion_auc", False, "deletion AUC", "explanations"),
    _info("insertion_auc", True, "insertion AUC", "explanations"),
    _info("pointing_game", True, "saliency maximum inside the mask", "explanations"),
    _info("saliency_in_mask", True, "saliency mass inside the mask", "explanations"),
    # the explanation audit (extune.evaluate.audit; docs/metrics.md, "Explanation audit")
    _info("randomisation_similarity", False, "rank correlation after randomising the model",
          "audit", low=-1.0),
    _info("randomisation_pass", True, "randomisation test passed (1) or failed (0)",
          "audit"),
    _info("random_logit_similarity", False, "rank correlation with another class's map",
          "audit", low=-1.0),
    _info("max_sensitivity", False, "max-sensitivity", "audit", high=math.inf),
    _info("avg_sensitivity", False, "avg-sensitivity", "audit", high=math.inf),
    _info("sparseness", True, "Gini index of the map", "audit"),
    _info("effective_complexity", False, "pixels above eps", "audit", high=math.inf),
    _info("faithfulness_correlation", True, "faithfulness correlation", "audit",
          low=-1.0),
)}
"""Every metric of :func:`extune.evaluate.evaluate_split` (per-corruption keys aside: they
take the direction of their last part)."""


def metric_info(key: str) -> MetricInfo:
    """The :class:`MetricInfo` of a reported key (``val/alignment``, ``test/shift/ece``,
    ``shift/gaussian_blur/accuracy``).

    Raises:
        KeyError: not a metric of the evaluation suite (``train/...``, ``epoch``).
    """
    split, name = split_key(key)
    if split == "train":
        raise KeyError(f"'{key}' is a training statistic, not an evaluation metric")
    if name in METRIC_INFO:
        return METRIC_INFO[name]
    corruption = _corruption_metric(name)
    if corruption is not None:
        return METRIC_INFO[f"shift/{corruption[1]}"]
    raise KeyError(f"'{key}' is not a metric of the evaluation suite (docs/metrics.md)")


def split_key(key: str) -> tuple[str | None, str]:
    """A reported key as ``(split, name)``.

    >>> split_key("test/shift/ece"), split_key("shift/ece"), split_key("epoch")
    (('test', 'shift/ece'), ('val', 'shift/ece'), (None, 'epoch'))

    The validation split's ``shift`` and ``adv`` groups are top-level keys
    (:func:`extune.evaluate.suite.group_prefix`); ``train/...`` keys are split ``train``.
    """
    first, _, rest = key.partition("/")
    if first in ("val", "test", "train") and rest:
        return first, rest
    if first in ("shift", "adv") and rest:
        return "val", key
    return None, key


def _corruption_metric(name: str) -> tuple[str, str] | None:
    """``shift/contrast/ece`` -> ``("contrast", "ece")``; ``None`` for any other name."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "shift" and parts[2] in ("accuracy", "ece"):
        return parts[1], parts[2]
    return None


BOOKKEEPING = ("epoch", "train/lr", "train/images_per_s", "train/seconds")
"""Reported keys that say how a run went, not how good its model is: left out of summaries."""

SPLITS = ("test", "val")
"""The splits of a summary, in the order it shows them (the test split is the result)."""


@dataclass(frozen=True)
class SummaryRow:
    """One row of a run's summary (:func:`summary_rows`).

    Attributes:
        section: a :data:`KINDS` entry, ``per corruption``, ``training`` or ``other``.
        name: the metric without its split (``accuracy``, ``shift/ece``), a corruption
            (``contrast``: its accuracy and ECE), a training statistic (``loss``) or, in
            ``other``, the whole key.
        cells: column (``test``, ``val``, ``train`` or ``value``) -> the keys shown in it
            (two for a corruption: accuracy, ECE).
        info: the metric's :class:`MetricInfo` (``None`` outside :data:`KINDS`).
    """

    section: str
    name: str
    cells: dict[str, tuple[str, ...]] = field(default_factory=dict)
    info: MetricInfo | None = None


def summary_rows(keys: Iterable[str]) -> list[SummaryRow]:
    """The keys of a run's metrics as a reader takes them in: the evaluation metrics by kind
    (:data:`KINDS`, in :data:`METRIC_INFO`'s order; the test split before validation), then
    each corruption, then the training statistics; :data:`BOOKKEEPING` left out.

    >>> rows = summary_rows(["epoch", "val/ece", "test/accuracy", "val/accuracy"])
    >>> [(r.section, r.name) for r in rows]
    [('classification', 'accuracy'), ('calibration', 'ece')]
    >>> rows[0].cells
    {'test': ('test/accuracy',), 'val': ('val/accuracy',)}
    """
    keys = [k for k in keys if k not in BOOKKEEPING]
    split = {k: split_key(k) for k in keys}
    rows = []
    for info in sorted(METRIC_INFO.values(), key=lambda m: KINDS.index(m.kind)):
        cells = {s: (k,) for s in SPLITS for k in keys if split[k] == (s, info.name)}
        if cells:
            rows.append(SummaryRow(info.kind, info.name, cells, info))
    rows += _corruption_rows(keys, split)
    rows += [SummaryRow("training", name, {"train": (k,)})
             for k, (s, name) in split.items() if s == "train"]
    shown = {k for r in rows for cell in r.cells.values() for k in cell}
    return rows + [SummaryRow("other", k, {"value": (k,)}) for k in keys if k not in shown]


def _corruption_rows(keys: list[str], split: dict[str, tuple[str | None, str]]
                     ) -> list[SummaryRow]:
    """One row per corruption, in the order the keys name them; a cell holds its accuracy and
    ECE keys."""
    found: dict[str, dict[tuple[str, str], str]] = {}
    for k in keys:
        s, name = split[k]
        corruption = _corruption_metric(name)
        if s in SPLITS and corruption is not None:
            found.setdefault(corruption[0], {})[s, corruption[1]] = k
    rows = []
    for corruption, by in found.items():
        cells = {s: tuple(by[s, m] for m in ("accuracy", "ece") if (s, m) in by)
                 for s in SPLITS if any((s, m) in by for m in ("accuracy", "ece"))}
        rows.append(SummaryRow("per corruption", corruption, cells))
    return rows


def metrics_json(metrics: object) -> str:
    """Metrics (a mapping, lists of mappings) as JSON text, a value that is not a finite number
    (NaN: a metric without a sample to measure; infinity) written as ``null``: JSON has no NaN,
    and strict readers (``jq``, JavaScript, Go) refuse Python's bare ``NaN`` token."""

    def finite(value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(metrics), indent=2, allow_nan=False)
