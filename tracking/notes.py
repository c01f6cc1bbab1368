"""A run's description (a trial's, or the final run's of ``extune train``): what MLflow shows
first on the run page, in markdown.

MLflow's run page lists metrics in alphabetical order with every digit (``0.44833332...``), and
it cannot be told an order or a rounding. The description (tag ``mlflow.note.content``) is the
one place that reads at a glance, so a trial's end writes there: the objectives first, then the
evaluation suite's metrics in the order of :data:`extune.evaluate.metric_info.METRIC_INFO`
(classification, calibration, robustness, explanations), rounded, "not measured" where a
pruned or failed trial never measured one, and the searched settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from extune.evaluate.objectives import Objective

__all__ = ["trial_note", "final_note", "setting_value", "model_sentence", "headline_metrics",
           "source_sentence", "finite", "rounded",
           "NOTE_TAG", "NOT_MEASURED"]

NOTE_TAG = "mlflow.note.content"
NOT_MEASURED = "not measured"


def trial_note(*, name: str, search: str, state: str, epoch: int, planned: int,
               metrics: dict[str, Any], objectives: Sequence[Objective],
               params: dict[str, Any]) -> str:
    """The markdown description of a finished trial.

    Args:
        name: the run's name without its state (``excon · trial-003``).
        search: the search's (or study's) name.
        state: ``complete``, ``pruned`` or ``failed``.
        epoch, planned: epochs trained and planned.
        metrics: the trial's last reported metrics (``val/accuracy``, ...).
        objectives: the search's objectives, shown first.
        params: the trial's searched settings.
    """
    from extune.evaluate.metric_info import METRIC_INFO

    lines = [f"**{name}** (`{search}`): **{state}** after {epoch} of {planned} "
             f"epoch{'s' if planned != 1 else ''}. " + _headline(metrics, objectives)]
    if objectives:
        lines += ["", "| objective | value |", "|---|---|"]
        lines += [f"| {o.name} ({o.metric}, {o.mode}) | {_value(metrics.get(o.metric))} |"
                  for o in objectives]
    shown = {o.metric for o in objectives}
    rows = [(key, m) for m in METRIC_INFO.values() if (key := _split_key(m.name)) not in shown]
    if state == "complete":  # what its config did not ask for is not a row
        rows = [(key, m) for key, m in rows if finite(metrics.get(key))]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {key} {info.arrow} | {_value(metrics.get(key))} |" for key, info in rows]
    if any(not finite(metrics.get(key)) for key, _ in rows):
        lines += ["", f"{NOT_MEASURED}: the full evaluation suite (as the config asks for it) "
                      "runs after a trial's last epoch (and at milestones with `--full-eval "
                      f"milestones`); this {state} trial has only what its epochs measured."]
    if params:
        lines += ["", "Searched settings: " + ", ".join(
            f"`{k}` = {setting_value(v)}" for k, v in sorted(params.items()))]
    return "\n".join(lines)


def setting_value(value: Any) -> str:
    """A config value in words: a number as :func:`_value` rounds it, ``None`` as ``default``
    (Config's ``None`` is "the component's default": ``explain.layer`` the backbone's last
    stage), anything else as text."""
    return "default" if value is None else _value(value)


def final_note(*, name: str, state: str, what: str, metrics: dict[str, Any],
               source: str | None, model: str | None, out: str) -> str:
    """The markdown description of a run of ``extune train``.

    Args:
        name: the run's name.
        state: ``running``, ``complete``, ``failed`` or ``interrupted``.
        what: the method, data set and epochs in words (``excon on synthetic, 200 epochs``).
        metrics: the final metrics (``test/...``, ``val/...``); empty while it runs.
        source: where its config came from, with links (``None``: not an export).
        model: the logged model and its registered version, in words
            (:func:`model_sentence`, which the model's logging links later).
        out: the output folder.
    """
    from extune.evaluate.metric_info import METRIC_INFO

    split = "test" if any(k.startswith("test/") for k in metrics) else "val"
    headline = " · ".join(f"{key} {_value(metrics.get(key))}" for key in
                          (_split_key(m, split) for m in ("accuracy", "ece", "alignment")))
    lines = [f"**{name}** (`extune train`): {what}: **{state}**."
             + (f" {headline}" if metrics else "")]
    if source or model:  # what it came from and what it made: both seen before "Show more"
        lines += ["", " ".join(p for p in (source, model) if p)]
    rows = [(key, m) for m in METRIC_INFO.values()
            if finite(metrics.get(key := _split_key(m.name, split)))]
    if rows:
        lines += ["", f"| {split} metric | value |", "|---|---|"]
        lines += [f"| {key} {info.arrow} | {_value(metrics[key])} |" for key, info in rows]
    lines += ["", f"Output folder: `{out}` (`config.yaml`, `checkpoint.pt`, `metrics.json`)."]
    return "\n".join(lines)


def model_sentence(name: str, page: str | None = None, register: str | None = None,
                   register_page: str | None = None, version: str | None = None) -> str:
    """``Model: [model](page) (pytorch and python_function flavours), registered as
    [demo version 1](page).``: a final run's model, with links once they exist (the model is
    logged after the run's description is written)."""
    model = f"[{name}]({page})" if page else f"`{name}`"
    text = f"Model: {model} (pytorch and python_function flavours)"
    if register:
        text += (f", registered as [{register} version {version}]({register_page})"
                 if register_page and version else f", registered as `{register}`")
    return text + "."


def source_sentence(note: str) -> str | None:
    """The ``Trained from ...`` sentence of a final run's description (:func:`final_note`),
    without the model's sentence that follows it; ``None`` when it has none."""
    found = re.search(r"^Trained from .*?(?= Model: |$)", note, flags=re.MULTILINE)
    return found.group(0) if found else None


def headline_metrics(metrics: dict[str, Any]) -> str:
    """``test/accuracy 0.3980 · test/ece 0.1211 · test/alignment 0.0067`` (the validation
    split's without a test split; ``""`` with neither)."""
    split = "test" if any(k.startswith("test/") for k in metrics) else "val"
    keys = [f"{split}/{m}" for m in ("accuracy", "ece", "alignment")]
    return " · ".join(f"{k} {_value(metrics[k])}" for k in keys if finite(metrics.get(k)))


HEADLINE = ("val/accuracy", "val/ece", "val/alignment")
"""Metrics the description's first line gives after the objectives (what the collapsed
description shows)."""


def _headline(metrics: dict[str, Any], objectives: Sequence[Objective]) -> str:
    """``alignment **0.1678** (objective) · val/accuracy 0.5833 · ...``"""
    parts = [f"{o.name} **{_value(metrics.get(o.metric))}** (objective)" for o in objectives]
    shown = {o.metric for o in objectives}
    parts += [f"{k} {_value(metrics.get(k))}" for k in HEADLINE if k not in shown]
    return " · ".join(parts)


def _split_key(name: str, split: str = "val") -> str:
    """The key a run reports a suite metric under (``val/accuracy``; ``shift/ece`` and
    ``adv/fgsm_accuracy`` keep their group on the validation split, ``test/shift/ece``:
    :func:`extune.evaluate.suite.group_prefix`)."""
    from extune.evaluate.suite import group_prefix

    group, _, rest = name.partition("/")
    return f"{group_prefix(split, group)}/{rest}" if rest else f"{split}/{name}"


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _value(value: Any) -> str:
    """A number to 4 decimals (4 significant digits when smaller), else the value as text;
    ``not measured`` for a missing or non-finite number."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NOT_MEASURED
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return rounded(value)


def rounded(value: float) -> str:
    """A finite number to 4 decimals, 4 significant digits when smaller than 0.001."""
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.4g}"
