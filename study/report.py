"""A study's results and report: every number in ``results.json``, the tables in ``report.md``.

:func:`build_results` gathers everything a reader needs to judge the study, from the study
folder only: the settings that change a number (budget, scheduler, start-up trials, evaluation
protocol, statistics), software versions, deviations, per-method intervals, claims with raw and
adjusted p-values, equivalence tests and detectable differences, the sensitivity of each
verdict to the protocol, per-seed values, learning curves, diagnostics and compute.
:func:`report_markdown` reads nothing but that dict, never today's defaults.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extune.files import atomic_write_text
from extune.study import stats
from extune.study.claims import (
    NOT_TESTED,
    STUDY_METRICS,
    StudyMetric,
    claim_rows,
    metric_by_name,
)

__all__ = ["build_results", "report_markdown", "write_report", "present_metrics", "summarise",
           "method_status", "DRIVEN_METHODS"]

DRIVEN_METHODS = ("excon", "edda", "random_occlusion")
"""Methods with a part of their own that a warm-up or a setting can leave switched off."""

DIAGNOSTICS: tuple[tuple[str, str], ...] = (
    ("val/accuracy", "validation accuracy after the last epoch"),
    ("train/accuracy", "training accuracy of the classifier (online probe for SupCon/ExCon)"),
    ("train/driven_share", "share of the training batches trained on the method's own view, "
                           "over all epochs (0: the method never switched on)"),
    ("train/mask_keep_rate", "ExCon, last epoch: share of masked images the classifier still "
                             "gets right (they become view 0)"),
    ("train/salient_confidence", "EDDA, last epoch: confidence in the label after the "
                                 "salient occlusion"),
)


# --------------------------------------------------------------------------- numbers
def _complete(runs: Sequence[dict], method: str) -> list[dict]:
    return [r for r in runs if r["method"] == method and r["state"] == "complete"]


def _values(runs: Sequence[dict], method: str, key: str,
            scores: dict[str, dict[str, float]] | None = None) -> dict[int, float]:
    """Seed index -> value of ``key`` for the complete runs of ``method`` (from ``scores`` by
    label when given: a re-scored protocol)."""
    out = {}
    for r in _complete(runs, method):
        source = r["metrics"] if scores is None else scores.get(r["label"], {})
        value = source.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[int(r["seed_index"])] = float(value)
    return out


def present_metrics(runs: Sequence[dict]) -> list[StudyMetric]:
    """The report's metrics that the runs report (mask metrics need a masked data set)."""
    keys = {k for r in runs for k in r["metrics"]}
    return [m for m in STUDY_METRICS if m.key in keys]


def summarise(runs: Sequence[dict], methods: Sequence[str], confidence: float = 0.95
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """Method -> metric name -> interval (as a dict) over the seeds."""
    metrics = present_metrics(runs)
    return {method: {m.name: stats.mean_interval(list(_values(runs, method, m.key).values()),
                                                 confidence).to_dict() for m in metrics}
            for method in methods}


def _driven_share(run: dict) -> float | None:
    """Mean of ``train/driven_share`` over a run's epochs (``None`` when not recorded)."""
    shares = [h["train/driven_share"] for h in run.get("history", [])
              if "train/driven_share" in h]
    return sum(shares) / len(shares) if shares else None


def method_status(runs: Sequence[dict], method: str, num_classes: int | None) -> str | None:
    """Why ``method``'s claims get no verdict (``None``: they do): it never switched on (its
    ``train/driven_share`` was 0 in every epoch of every run), or its models are no better
    than chance (test accuracy, one-sided t test at 5%)."""
    complete = _complete(runs, method)
    if not complete:
        return "no final run finished"
    shares = [s for s in map(_driven_share, complete) if s is not None]
    if method in DRIVEN_METHODS and shares and max(shares) == 0:
        return "never switched on: train/driven_share was 0 in every epoch of every run"
    if num_classes:
        accuracy = list(_values(runs, method, "test/accuracy").values())
        if not stats.above_chance(accuracy, 1 / num_classes):
            mean = sum(accuracy) / len(accuracy) if accuracy else math.nan
            return (f"no better than chance: mean test accuracy {mean:.3f} against "
                    f"1/{num_classes} = {1 / num_classes:.3f}")
    return None


def _diagnostics(runs: Sequence[dict], method: str) -> dict[str, float]:
    complete = _complete(runs, method)
    out: dict[str, float] = {}
    for key, _ in DIAGNOSTICS:
        if key == "train/driven_share":
            values = [s for s in map(_driven_share, complete) if s is not None]
        else:
            values = [r["metrics"][key] for r in complete if key in r["metrics"]]
        if values:
            out[key] = sum(values) / len(values)
    return out


def _compute(sdir: Any, method: str, searches: list[dict], runs: Sequence[dict]
             ) -> dict[str, Any]:
    """Wall time and core/GPU-seconds of a method's searches and final runs."""
    s = sdir.settings
    search_s = sum(c.get("seconds") or 0.0 for c in searches)
    final_s = sum(r.get("seconds") or 0.0 for r in runs if r["method"] == method)
    gpus = s.gpus_per_trial or 0.0
    return {"search_s": search_s, "final_s": final_s,
            "search_trial_epochs": sum(c.get("trial_epochs", 0) for c in searches),
            "final_epochs": sum(r.get("epochs", 0) for r in runs
                                if r["method"] == method and r["state"] == "complete"),
            "final_core_s": final_s * s.cpus_per_trial, "final_gpu_s": final_s * gpus}


def _sensitivity(runs: Sequence[dict], sensitivity: dict[str, Any], claims: Any
                 ) -> dict[str, Any]:
    """The verdict of each explanation claim under every protocol."""
    rows: dict[str, dict[str, str]] = {}
    values: dict[str, dict[str, Any]] = {}
    for protocol in sensitivity["protocols"]:
        scores = sensitivity["scores"][protocol["text"]]

        def by_protocol(method: str, metric: StudyMetric, scores: Any = scores) -> dict:
            return _values(runs, method, metric.key, scores if metric.explanation else None)

        for row in claims(by_protocol):
            if metric_by_name(row["metric"]).explanation:
                key = f"{row['a']} vs {row['b']}: {row['metric']}"
                rows.setdefault(key, {})[protocol["text"]] = row["verdict"]
                values.setdefault(key, {})[protocol["text"]] = row["difference"]
    same = {k: len(set(v.values())) == 1 for k, v in rows.items()}
    return {"protocols": sensitivity["protocols"], "verdicts": rows, "differences": values,
            "same_under_all": same}


def build_results(sdir: Any, runs: Sequence[dict], chosen: dict[str, list[dict[str, Any]]],
                  sensitivity: dict[str, Any]) -> dict[str, Any]:
    """Everything the report shows, as plain data (``results.json``).

    Args:
        sdir: the study folder.
        runs: the final runs (:func:`~extune.study.final.run_final_stage`).
        chosen: method -> what each of its searches chose and spent
            (:func:`~extune.search.folder.chosen_trial`).
        sensitivity: :func:`~extune.study.sensitivity.rescore_stage`.
    """
    s = sdir.settings
    base = s.base_config()
    num_classes = sensitivity.get("num_classes")
    present = [m.name for m in present_metrics(runs)]
    untested = {m: why for m in s.methods if (why := method_status(runs, m, num_classes))}

    def claims(values: Any) -> list[dict[str, Any]]:
        return claim_rows(values, s.methods, present, untested=untested, margins=s.margin,
                          test=s.test, correction=s.correction, confidence=s.confidence)

    summary = summarise(runs, s.methods, s.confidence)
    first = next((c[0] for c in chosen.values() if c), {})
    methods = {method: {"searches": chosen.get(method, []), "final": summary[method],
                        "runs": [r for r in runs if r["method"] == method],
                        "status": untested.get(method),
                        "diagnostics": _diagnostics(runs, method),
                        "compute": _compute(sdir, method, chosen.get(method, []), runs)}
               for method in s.methods}
    return {
        "study": sdir.name, "study_id": sdir.study_id, "data": base.data.name,
        "backbone": base.model.backbone, "image_size": base.data.image_size,
        "num_classes": num_classes, "test_images": sensitivity.get("test_images"),
        "quick": s.quick, "settings": s.to_dict(), "search_epochs": base.optim.epochs,
        "final_epochs": s.resolved_final_epochs(), "final_seeds": s.final_seeds(),
        "scheduler": first.get("scheduler"), "scheduler_settings":
        first.get("scheduler_settings"), "startup_trials": first.get("startup_trials"),
        "protocol": {**sensitivity["main"], "explain_samples": sensitivity["explain_samples"]},
        "statistics": {"test": s.test, "correction": s.correction, "confidence": s.confidence,
                       "alpha": round(1 - s.confidence, 10), "power": 0.8,
                       "margins": {m: s.margin(m) for m in present}},
        "intervals_cover": "training seeds and search seeds" if s.search_seeds > 1 else
        "training seeds only (one search per method: the search's own variance is not in them)",
        "versions": sdir.meta.get("versions", {}), "cluster": sdir.meta.get("cluster", {}),
        "deviations": sdir.meta.get("deviations", []),
        "wall_s": dict(sdir.meta.get("stage_seconds", {})),
        "metrics": present, "methods": methods,
        "comparisons": claims(lambda method, metric: _values(runs, method, metric.key)),
        "sensitivity": _sensitivity(runs, sensitivity, claims)}


def write_report(sdir: Any, runs: Sequence[dict], chosen: dict[str, list[dict[str, Any]]],
                 sensitivity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write ``results.json``, ``report.md`` and the plots into the study folder."""
    from extune.study.plots import write_plots

    results = build_results(sdir, runs, chosen, sensitivity)
    files = {"results": sdir.path / "results.json", "report": sdir.path / "report.md"}
    atomic_write_text(files["results"], json.dumps(results, indent=2, default=str))
    atomic_write_text(files["report"], report_markdown(results))
    files.update(write_plots(results, sdir.path / "plots"))
    return results, files


# --------------------------------------------------------------------------- markdown
def _num(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) \
        else format(value, spec)


def _p(value: Any) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _cell(interval: dict[str, Any]) -> str:
    """``0.436 ± 0.023``: a method's mean and the half-width of its interval."""
    mean, low, high = interval.get("mean"), interval.get("low"), interval.get("high")
    if mean is None:
        return "-"
    if low is None or high is None:
        return f"{mean:.3f} (n={interval.get('n', 0)})"
    return f"{mean:.3f} ± {(high - low) / 2:.3f}"


def _diff_cell(d: dict[str, Any]) -> str:
    """``+0.007 [-0.031, +0.044]``: a difference and its interval."""
    if d.get("estimate") is None:
        return "-"
    if d.get("low") is None or d.get("high") is None:
        return f"{d['estimate']:+.3f} (no interval)"
    return f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _mark(verdict: str) -> str:
    return {"holds": "**holds**", "reversed": "**reversed**",
            "equivalent": "**equivalent**"}.get(verdict, verdict)


def report_markdown(results: dict[str, Any]) -> str:
    """``report.md``, from ``results.json``'s dict alone."""
    lines = [f"# Study {results['study']}", ""]
    if results.get("quick"):
        lines += ["> **Smoke test** (`extune study --quick`): tiny data, two trials and two "
                  "seeds per method. It shows that every stage works; its numbers say nothing "
                  "about the methods.", ""]
    sections = (_setup, _budget_table, _metrics_table, _claims_table, _sensitivity_table,
                _per_seed_table, _diagnostics_table, _compute_table, _limits, _reproducibility)
    for section in sections:
        lines += section(results) + [""]
    lines += ["## Plots", "", "![test metrics](plots/overview.png)", "",
              "![learning curves](plots/curves.png)", ""]
    return "\n".join(lines)


def _setup(results: dict[str, Any]) -> list[str]:
    s, st, p = results["settings"], results["statistics"], results["protocol"]
    budget = (f"{s['budget_epochs']} trial-epochs (at most {s['trials']} trials)"
              if s.get("budget_epochs") else f"{s['trials']} trials")
    startup = (f", {results['startup_trials']} random start-up trials"
               if results.get("startup_trials") else "")
    searches = (f"{s['search_seeds']} searches (sampler seeds {s['seed']}.."
                f"{s['seed'] + s['search_seeds'] - 1})" if s.get("search_seeds", 1) > 1
                else f"a search (sampler seed {s['seed']})")
    classes = f", {results['num_classes']} classes" if results.get("num_classes") else ""
    images = f", {results['test_images']} test images" if results.get("test_images") else ""
    return [
        "## Setup", "",
        f"Data set **{results['data']}**{classes}{images}; backbone {results['backbone']} at "
        f"{results['image_size']} px; methods {', '.join(s['methods'])}.", "",
        f"Each method: {searches} of its built-in space, {budget} of "
        f"{results['search_epochs']} epochs ({s['sampler']}{startup}; "
        f"{results.get('scheduler') or s['scheduler']}), selected on validation "
        f"{s['objective']}; then the chosen config retrained with {len(results['final_seeds'])} "
        f"seeds ({', '.join(map(str, results['final_seeds']))}) for "
        f"{results['final_epochs']} epochs and evaluated on the test split.", "",
        f"**Evaluation protocol**, the same for every method whatever it trained with: "
        f"{p['description']}, on {p['explain_samples']} test images (the same images for "
        "every run).", "",
        f"**Statistics**: {_test_words(st['test'])}; {_correction_words(st['correction'])} "
        f"across the claims at a family-wise level of {st['alpha']:g}; equivalence by two "
        f"one-sided tests within each metric's margin ({_margins(st['margins'])}); "
        f"detectable differences at {st['power']:.0%} power. The intervals cover "
        f"{results['intervals_cover']}."]


def _test_words(test: str) -> str:
    return {"welch": "Welch's unpaired t test (methods' runs are not pairs)",
            "permutation": "an exact permutation test of the difference of means (unpaired), "
                           "with Welch's interval",
            "paired": "a paired t test by seed index (asked for with --test paired)"}[test]


def _correction_words(correction: str) -> str:
    return {"holm": "Holm's correction", "bh": "the Benjamini-Hochberg correction (false "
            "discovery rate, not family-wise)", "none": "no correction"}[correction]


def _margins(margins: dict[str, float]) -> str:
    by_value: dict[float, list[str]] = {}
    for name, value in margins.items():
        by_value.setdefault(value, []).append(name)
    return "; ".join(f"±{v:g} for {', '.join(n)}" for v, n in by_value.items())


def _budget_table(results: dict[str, Any]) -> list[str]:
    lines = ["## Budget consumed and chosen configs (validation split only)", "",
             "| method | search | trials complete / pruned / failed | trial-epochs | search "
             "time | chosen | from start-up? | validation objective | chosen settings |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, summary in results["methods"].items():
        for chosen in summary["searches"]:
            c = chosen.get("counts", {})
            params = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in
                               sorted(chosen.get("params", {}).items()) if k != "method")
            startup = {True: "yes (random)", False: "no"}.get(chosen.get("startup"), "-")
            lines.append(
                f"| {method} | {chosen.get('name', method)} (seed {chosen.get('seed', '-')}) | "
                f"{c.get('complete', 0)} / {c.get('pruned', 0)} / {c.get('failed', 0)} | "
                f"{chosen.get('trial_epochs', '-')} | {_minutes(chosen.get('seconds'))} | "
                f"{chosen.get('trial', 'none')} | {startup} | {_num(chosen.get('value'))} | "
                f"{params or '-'} |")
    return lines


def _metrics_table(results: dict[str, Any]) -> list[str]:
    conf = int(round(100 * results["statistics"]["confidence"]))
    metrics = [metric_by_name(n) for n in results["metrics"]]
    lines = [f"## Test metrics: mean ± {conf}% CI half-width (Student t over seeds)", "",
             "| method | runs | " + " | ".join(f"{m.name} {m.arrow}" for m in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for method, summary in results["methods"].items():
        ok = sum(r["state"] == "complete" for r in summary["runs"])
        cells = [_cell(summary["final"].get(m.name, {})) for m in metrics]
        lines.append(f"| {method} | {ok}/{len(summary['runs'])} | " + " | ".join(cells) + " |")
    return lines


def _claims_table(results: dict[str, Any]) -> list[str]:
    st = results["statistics"]
    conf = int(round(100 * st["confidence"]))
    adj = {"holm": "Holm", "bh": "BH", "none": "unadjusted"}[st["correction"]]
    lines = [f"## Claims: A − B, {conf}% CI, raw and {adj}-adjusted p-values", "",
             f"**holds** / **reversed**: the adjusted p-value is below {st['alpha']:g}, in the "
             "metric's good / bad direction; **equivalent**: the adjusted equivalence p-value "
             "is below it (the difference lies within the margin); **not shown**: neither, "
             "which is not evidence of no difference (MDD: the smallest true difference these "
             "seeds detect with 80% power); **not tested**: a method never switched on or is "
             "no better than chance.", "",
             "| claim | metric | A − B [CI] | seeds | p | p adj. | margin | p equiv. adj. | "
             "MDD | seeds for margin | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in results["comparisons"]:
        arrow = "↑" if c["higher_is_better"] else "↓"
        lines.append(
            f"| {c['a']} vs {c['b']} | {c['metric']} {arrow} | {_diff_cell(c['difference'])} "
            f"| {c['n_a']}+{c['n_b']} | {_p(c['p'])} | {_p(c['p_adjusted'])} | ±{c['margin']:g} "
            f"| {_p(c['p_equivalence_adjusted'])} | {_num(c['mdd'])} | "
            f"{c['seeds_for_margin'] or '-'} | "
            f"{_mark(c['verdict'])} |")
    if not results["comparisons"]:
        lines.append("| (no claim has both of its methods in this study) |" + " |" * 10)
    untested = {m: v["status"] for m, v in results["methods"].items() if v.get("status")}
    if untested:
        lines += [""] + [f"- {NOT_TESTED}: **{m}**: {why}" for m, why in untested.items()]
    return lines


def _sensitivity_table(results: dict[str, Any]) -> list[str]:
    sens = results["sensitivity"]
    protocols = sens["protocols"]
    lines = ["## Sensitivity: the explanation verdicts under other protocols", "",
             "Every final checkpoint re-scored (no retraining) on the same test images under "
             "each protocol; statistics as above, each protocol its own family.", "",
             "| claim: metric | " + " | ".join(p["description"] for p in protocols)
             + " | same under all |", "|---|" + "---|" * (len(protocols) + 1)]
    for key, verdicts in sens["verdicts"].items():
        diffs = sens["differences"][key]
        cells = [f"{_mark(verdicts.get(p['text'], '-'))} "
                 f"({_num(diffs.get(p['text'], {}).get('estimate'), '+.3f')})"
                 for p in protocols]
        same = "yes" if sens["same_under_all"][key] else "**no**"
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {same} |")
    if len(protocols) < 2:
        lines.append("| (no other protocol was asked for) |" + " |" * (len(protocols) + 1))
    return lines


def _per_seed_table(results: dict[str, Any]) -> list[str]:
    metrics = [metric_by_name(n) for n in results["metrics"]]
    lines = ["## Per seed (test split)", "",
             "| method | seed | search | state | epochs | " +
             " | ".join(m.name for m in metrics) + " |",
             "|---|---|---|---|---|" + "---|" * len(metrics)]
    for method, summary in results["methods"].items():
        for r in summary["runs"]:
            cells = [_num(r["metrics"].get(m.key)) for m in metrics]
            lines.append(f"| {method} | {r['seed']} | {r.get('search_index', 0) + 1} | "
                         f"{r['state']} | {r.get('epochs', '-')} | " + " | ".join(cells) + " |")
    return lines


def _diagnostics_table(results: dict[str, Any]) -> list[str]:
    methods = list(results["methods"])
    rows = []
    for key, meaning in DIAGNOSTICS:
        cells = [_num(results["methods"][m]["diagnostics"].get(key)) for m in methods]
        if any(c != "-" for c in cells):
            rows.append(f"| {key} | " + " | ".join(cells) + f" | {meaning} |")
    if not rows:
        return []
    return ["## Diagnostics of the final runs (mean over seeds)", "",
            "| metric | " + " | ".join(methods) + " | meaning |",
            "|---|" + "---|" * len(methods) + "---|", *rows]


def _compute_table(results: dict[str, Any]) -> list[str]:
    lines = ["## Compute", "",
             "| method | search trial-epochs | search wall time | final epochs | final wall "
             "time (sum of runs) | final core-seconds | final GPU-seconds |",
             "|---|---|---|---|---|---|---|"]
    for method, summary in results["methods"].items():
        c = summary["compute"]
        lines.append(f"| {method} | {c['search_trial_epochs']} | {_minutes(c['search_s'])} | "
                     f"{c['final_epochs']} | {_minutes(c['final_s'])} | "
                     f"{c['final_core_s']:.0f} | {c['final_gpu_s']:.0f} |")
    lines += ["", f"Study wall time: {_stage_minutes(results['wall_s'])}."]
    return lines


def _limits(results: dict[str, Any]) -> list[str]:
    mdds = [c["mdd"] for c in results["comparisons"] if c["metric"] == "accuracy"
            and c.get("mdd") is not None]
    lines = ["## What this does not show", "",
             f"- The intervals cover {results['intervals_cover']}; the test images, the "
             "explanation images and the data split are fixed."]
    if mdds:
        lines.append(f"- With these seeds the smallest accuracy difference detectable at 80% "
                     f"power is {min(mdds):.3f}-{max(mdds):.3f}: a smaller one may exist and "
                     "go unseen (\"not shown\").")
    lines.append("- Short training on a small model: the papers train ResNet-50 for hundreds of "
                 "epochs; a verdict here is about this budget.")
    return lines


def _reproducibility(results: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items())
    lines = ["## Reproducibility", "", f"- Versions: {versions or 'not recorded'}."]
    if results.get("cluster"):
        lines.append(f"- Cluster: {json.dumps(results['cluster'])}.")
    if results.get("scheduler_settings"):
        lines.append(f"- Scheduler: {json.dumps(results['scheduler_settings'])}.")
    deviations = results.get("deviations") or []
    if deviations:
        lines.append("- **Deviations** (settings changed after the study started):")
        lines += [f"  - {d['when']}: `{d['setting']}` {d['from']} -> {d['to']} (study was "
                  f"{d.get('status_before', '?')})" for d in deviations]
    else:
        lines.append("- Deviations: none (the study ran with the settings it started with).")
    return lines


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _minutes(seconds: Any) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _stage_minutes(seconds: dict[str, float]) -> str:
    total = sum(seconds.values())
    parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())
    return f"{total / 60:.1f} min in all ({parts})"
