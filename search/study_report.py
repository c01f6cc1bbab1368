"""A study's report: per-method intervals, the papers' claims with verdicts, plots.

Writes ``results.json`` (every number), ``report.md`` (the tables) and ``plots/<metric>.png``
(bars of the method means with their intervals and one point per seed) plus
``plots/overview.png`` (all metrics at once).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extune.search.stats import mean_interval, paired_difference, verdict

__all__ = ["StudyMetric", "Claim", "STUDY_METRICS", "CLAIMS", "summarise", "compare",
           "report_markdown", "plot_metric", "write_report"]


@dataclass(frozen=True)
class StudyMetric:
    """A test-split metric of the report: its name, the reported key, its good direction."""

    name: str
    key: str
    higher_is_better: bool

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


STUDY_METRICS: tuple[StudyMetric, ...] = (
    StudyMetric("accuracy", "test/accuracy", True),
    StudyMetric("ece", "test/ece", False),
    StudyMetric("shift_accuracy", "test/shift/accuracy", True),
    StudyMetric("shift_ece", "test/shift/ece", False),
    StudyMetric("fgsm_accuracy", "test/adv/fgsm_accuracy", True),
    StudyMetric("alignment", "test/alignment", True),
    StudyMetric("avg_drop", "test/avg_drop", False),
    StudyMetric("increase_confidence", "test/increase_confidence", True),
    StudyMetric("deletion_auc", "test/deletion_auc", False),
    StudyMetric("insertion_auc", "test/insertion_auc", True),
    StudyMetric("pointing_game", "test/pointing_game", True),
    StudyMetric("saliency_in_mask", "test/saliency_in_mask", True),
)
"""The metrics a study reports (docs/metrics.md); the mask metrics only where the data set has
ground-truth masks (the synthetic set)."""

_BY_NAME = {m.name: m for m in STUDY_METRICS}

DIAGNOSTICS: tuple[tuple[str, str], ...] = (
    ("train/accuracy", "training accuracy of the classifier (online probe for SupCon/ExCon)"),
    ("val/accuracy", "validation accuracy after the last epoch"),
    ("train/mask_keep_rate", "ExCon: share of masked images the classifier still gets right "
                             "(they become view 0)"),
    ("train/salient_confidence", "EDDA: confidence in the label after the salient occlusion"),
)
"""What the final runs report about their own training, shown per method to help explain a
verdict (last epoch, mean over seeds)."""


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


# --------------------------------------------------------------------------- numbers
def _complete(runs: Sequence[dict], method: str) -> list[dict]:
    return [r for r in runs if r["method"] == method and r["state"] == "complete"]


def _by_seed(runs: Sequence[dict], method: str, key: str) -> dict[int, float]:
    """Seed index -> value of ``key`` for the complete runs of ``method``."""
    return {int(r["seed_index"]): float(r["metrics"][key]) for r in _complete(runs, method)
            if key in r["metrics"] and math.isfinite(r["metrics"][key])}


def present_metrics(runs: Sequence[dict]) -> list[StudyMetric]:
    """The report's metrics that the runs report (mask metrics need a masked data set)."""
    keys = {k for r in runs for k in r["metrics"]}
    return [m for m in STUDY_METRICS if m.key in keys]


def summarise(runs: Sequence[dict], methods: Sequence[str], confidence: float = 0.95
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """Method -> metric name -> interval (as a dict) over the seeds."""
    metrics = present_metrics(runs)
    return {method: {m.name: mean_interval(list(_by_seed(runs, method, m.key).values()),
                                           confidence).to_dict() for m in metrics}
            for method in methods}


def compare(runs: Sequence[dict], methods: Sequence[str], confidence: float = 0.95
            ) -> list[dict[str, Any]]:
    """Every claim whose two methods are in the study, on every metric the runs report."""
    present = {m.name for m in present_metrics(runs)}
    rows = []
    for claim in CLAIMS:
        if claim.a not in methods or claim.b not in methods:
            continue
        for name in claim.metrics:
            if name not in present:
                continue
            metric = _BY_NAME[name]
            diff = paired_difference(_by_seed(runs, claim.a, metric.key),
                                     _by_seed(runs, claim.b, metric.key), confidence)
            rows.append({"a": claim.a, "b": claim.b, "source": claim.source, "metric": name,
                         "key": metric.key, "higher_is_better": metric.higher_is_better,
                         "difference": diff.to_dict(), "n": diff.n,
                         "verdict": verdict(diff, metric.higher_is_better)})
    return rows


# --------------------------------------------------------------------------- markdown
def _cell(interval: dict[str, Any]) -> str:
    """``0.436 ± 0.023``: a method's mean and the half-width of its interval."""
    return _interval_text(interval, "{mean:.3f} ± {half:.3f}", "{mean:.3f} (n={n})")


def _diff_cell(interval: dict[str, Any]) -> str:
    """``+0.007 [-0.031, +0.044]``: a paired difference and its interval."""
    return _interval_text(interval, "{mean:+.3f} [{low:+.3f}, {high:+.3f}]",
                          "{mean:+.3f} (no interval, n={n})")


def _interval_text(interval: dict[str, Any], with_interval: str, without: str) -> str:
    mean, low, high = interval.get("mean"), interval.get("low"), interval.get("high")
    if mean is None:
        return "-"
    if low is None or high is None:
        return without.format(mean=mean, n=interval.get("n", 0))
    return with_interval.format(mean=mean, low=low, high=high, half=(high - low) / 2)


def report_markdown(results: dict[str, Any]) -> str:
    """``report.md``: budget, chosen configs, the table of intervals, the claims."""
    s = results["settings"]
    conf = int(round(100 * s["confidence"]))
    budget = (
        f"Data set **{results['data']}**; methods {', '.join(s['methods'])}. Each method: a "
        f"search of its built-in space, {s['trials']} trials of {results['search_epochs']} "
        f"epochs (sampler {s['sampler']} seed {s['seed']}, "
        f"{results.get('scheduler', s['scheduler'])}), selected on validation {s['objective']}; "
        f"then the chosen config retrained with {s['seeds']} seeds ({results['final_seeds']}) "
        f"for {results['final_epochs']} epochs and evaluated on the test split. Explanation "
        f"metrics use **{results['eval_explainer']}** for every method.")
    if results["fixed"]:
        budget += f" Held fixed in every search: {results['fixed']}."
    lines = [f"# Study {results['study']}", "", budget, "",
             f"Wall time: {_minutes(results['wall_s'])}.", ""]
    lines += _chosen_table(results)
    metrics = [_BY_NAME[n] for n in results["metrics"]]
    lines += ["", f"## Test metrics: mean ± {conf}% CI half-width (Student t over seeds)", "",
              "| method | runs | " + " | ".join(f"{m.name} {m.arrow}" for m in metrics) + " |",
              "|---|---|" + "---|" * len(metrics)]
    for method, summary in results["methods"].items():
        ok = sum(r["state"] == "complete" for r in summary["runs"])
        cells = [_cell(summary["final"].get(m.name, {})) for m in metrics]
        lines.append(f"| {method} | {ok}/{len(summary['runs'])} | " + " | ".join(cells) + " |")
    lines += _claims_table(results, conf)
    lines += _diagnostics_table(results)
    lines += ["", "## Plots", "", "![overview](plots/overview.png)", ""]
    return "\n".join(lines) + "\n"


def _chosen_table(results: dict[str, Any]) -> list[str]:
    lines = ["## Chosen configs (validation split only)", "",
             "| method | trials complete / pruned / failed | chosen | validation objective | "
             "searched settings |", "|---|---|---|---|---|"]
    for method, summary in results["methods"].items():
        chosen = summary["search"]
        c = chosen.get("counts", {})
        params = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in
                           sorted(chosen.get("params", {}).items()) if k != "method")
        value = chosen.get("value")
        lines.append(f"| {method} | {c.get('complete', 0)} / {c.get('pruned', 0)} / "
                     f"{c.get('failed', 0)} | {chosen.get('trial', 'none')} | "
                     f"{'-' if value is None else f'{value:.3f}'} | {params or '-'} |")
    return lines


def _claims_table(results: dict[str, Any], conf: int) -> list[str]:
    lines = ["", f"## Claims: paired difference A − B over seeds, {conf}% CI", "",
             "Verdict: **holds** when the interval lies on the metric's good side of 0, "
             "**reversed** when on the bad side, **not shown** when it covers 0 (with few seeds "
             "the intervals are wide: not shown is not evidence of no effect).", "",
             "| claim | metric | A − B [CI] | seeds | verdict |", "|---|---|---|---|---|"]
    for c in results["comparisons"]:
        arrow = "↑" if c["higher_is_better"] else "↓"
        mark = {"holds": "**holds**", "reversed": "**reversed**"}.get(c["verdict"], c["verdict"])
        lines.append(f"| {c['a']} vs {c['b']} | {c['metric']} {arrow} | "
                     f"{_diff_cell(c['difference'])} | {c['n']} | {mark} |")
    if not results["comparisons"]:
        lines.append("| (no claim has both of its methods in this study) | | | | |")
    return lines


def _diagnostics_table(results: dict[str, Any]) -> list[str]:
    rows = []
    for key, meaning in DIAGNOSTICS:
        cells = []
        for summary in results["methods"].values():
            values = [r["metrics"][key] for r in summary["runs"]
                      if r["state"] == "complete" and key in r["metrics"]]
            cells.append(f"{sum(values) / len(values):.3f}" if values else "-")
        if any(c != "-" for c in cells):
            rows.append(f"| {key} | " + " | ".join(cells) + f" | {meaning} |")
    if not rows:
        return []
    methods = list(results["methods"])
    return ["", "## Diagnostics of the final runs (last epoch, mean over seeds)", "",
            "| metric | " + " | ".join(methods) + " | meaning |",
            "|---|" + "---|" * len(methods) + "---|", *rows]


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _minutes(seconds: dict[str, float]) -> str:
    total = sum(seconds.values())
    parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())
    return f"{total / 60:.1f} min in all ({parts})"


# --------------------------------------------------------------------------- plots
def plot_metric(ax: Any, metric: StudyMetric, methods: Sequence[str],
                summary: dict[str, dict[str, dict[str, Any]]], runs: Sequence[dict]) -> None:
    """Bars of the method means with their interval and one dot per seed on ``ax``."""
    import numpy as np

    xs = np.arange(len(methods))
    means = [summary[m].get(metric.name, {}).get("mean") for m in methods]
    heights = [v if v is not None else 0.0 for v in means]
    lows = [summary[m].get(metric.name, {}).get("low") for m in methods]
    highs = [summary[m].get(metric.name, {}).get("high") for m in methods]
    err = np.array([[h - lo if lo is not None else 0.0 for h, lo in zip(heights, lows,
                                                                          strict=True)],
                    [hi - h if hi is not None else 0.0 for h, hi in zip(heights, highs,
                                                                          strict=True)]])
    ax.bar(xs, heights, color="#9ecae1", edgecolor="#3182bd", yerr=err, capsize=4)
    rng = np.random.default_rng(0)
    for x, method in zip(xs, methods, strict=True):
        values = list(_by_seed(runs, method, metric.key).values())
        ax.scatter(x + rng.uniform(-0.15, 0.15, len(values)), values, s=14, color="black",
                   zorder=3)
    ax.set_xticks(xs, methods, rotation=20, fontsize=8)
    ax.set_title(f"{metric.name} ({'higher' if metric.higher_is_better else 'lower'} is better)",
                 fontsize=9)


def _plot_files(folder: Path, methods: Sequence[str], summary: dict, runs: Sequence[dict],
                metrics: Sequence[StudyMetric], title: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        plot_metric(ax, metric, methods, summary, runs)
        fig.tight_layout()
        files[f"plot_{metric.name}"] = folder / f"{metric.name}.png"
        fig.savefig(files[f"plot_{metric.name}"], dpi=110)
        plt.close(fig)
    cols = 4
    rows = max(1, math.ceil(len(metrics) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        plot_metric(ax, metric, methods, summary, runs)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"{title}: test metrics, mean and 95% CI over seeds (dots: seeds)")
    fig.tight_layout()
    files["plot_overview"] = folder / "overview.png"
    fig.savefig(files["plot_overview"], dpi=100)
    plt.close(fig)
    return files


# --------------------------------------------------------------------------- all of it
def build_results(sdir: Any, runs: Sequence[dict], chosen: dict[str, dict[str, Any]]
                  ) -> dict[str, Any]:
    """Everything the report shows, as plain data (``results.json``).

    Args:
        sdir: the study folder.
        runs: the final runs (:func:`~extune.search.study_final.run_final_stage`).
        chosen: method -> what its search chose (:func:`~extune.search.store.chosen_trial`).
    """
    s = sdir.settings
    base = s.base_config()
    summary = summarise(runs, s.methods, s.confidence)
    methods = {method: {"search": chosen.get(method, {}), "final": summary[method],
                        "runs": [r for r in runs if r["method"] == method]}
               for method in s.methods}
    return {"study": sdir.name, "study_id": sdir.study_id, "data": base.data.name,
            "settings": s.to_dict(), "search_epochs": base.optim.epochs,
            "final_epochs": s.final_epochs or base.optim.epochs,
            "final_seeds": ", ".join(map(str, s.final_seeds())),
            "eval_explainer": s.eval_explainer or base.explain.explainer,
            "scheduler": s.search_settings(s.methods[0], out=".", parent_run=None,
                                           study_id="").scheduler_text(),
            "fixed": ", ".join(f"{k}={v}" for k, v in s.fixed.items()),
            "wall_s": dict(sdir.meta.get("stage_seconds", {})),
            "metrics": [m.name for m in present_metrics(runs)],
            "methods": methods, "comparisons": compare(runs, s.methods, s.confidence)}


def write_report(sdir: Any, runs: Sequence[dict], chosen: dict[str, dict[str, Any]]
                 ) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write ``results.json``, ``report.md`` and the plots into the study folder."""
    results = build_results(sdir, runs, chosen)
    files = {"results": sdir.path / "results.json", "report": sdir.path / "report.md"}
    files["results"].write_text(json.dumps(results, indent=2, default=str))
    files["report"].write_text(report_markdown(results))
    metrics = [_BY_NAME[n] for n in results["metrics"]]
    files.update(_plot_files(sdir.path / "plots", sdir.settings.methods,
                             {m: v["final"] for m, v in results["methods"].items()}, runs,
                             metrics, sdir.name))
    return results, files
