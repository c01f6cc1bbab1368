"""A study's results and report: every number in ``results.json``, the tables in ``report.md``.

:func:`build_results` gathers everything a reader needs to judge the study, from the study
folder only: the plan (its hash and deviations), the settings that change a number (budget,
scheduler, start-up trials, evaluation protocol, statistics), software versions, per-arm
intervals, claims and controls with raw and adjusted p-values, adjusted and simultaneous
intervals, equivalence tests and detectable differences, the sensitivity of each verdict to the
protocol, per-seed values with each run's protocol, learning curves, diagnostics and compute.
:func:`report_markdown` reads nothing but that dict, never today's defaults.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from extune.files import atomic_write_text
from extune.study import stats
from extune.study.claims import (
    FAMILIES,
    NOT_TESTED,
    STUDY_METRICS,
    StudyMetric,
    claim_rows,
    claims_from_plan,
    metric_by_name,
)

__all__ = ["build_results", "report_markdown", "write_report", "present_metrics", "summarise",
           "method_status", "weakly_tested", "randomisation_failure", "DRIVEN_METHODS"]

DRIVEN_METHODS = ("excon", "edda", "random_occlusion")
"""Methods with a part of their own that a warm-up or a setting can leave switched off."""

DIAGNOSTICS: tuple[tuple[str, str], ...] = (
    ("val/accuracy", "validation accuracy after the last epoch"),
    ("train/accuracy", "training accuracy of the classifier (online probe for SupCon/ExCon)"),
    ("train/driven_share", "share of the training images the method drove through its own "
                           "view (masked or occluded), averaged over all epochs, warm-up "
                           "included (0: the method never switched on)"),
    ("train/mask_keep_rate", "ExCon, last epoch: share of masked images the classifier still "
                             "gets right (they become view 0)"),
    ("train/salient_confidence", "EDDA, last epoch: confidence in the label after the "
                                 "salient occlusion"),
)


# --------------------------------------------------------------------------- numbers
def _complete(runs: Sequence[dict], arm: str) -> list[dict]:
    return [r for r in runs if r["method"] == arm and r["state"] == "complete"]


def _values(runs: Sequence[dict], arm: str, key: str,
            scores: dict[str, dict[str, float]] | None = None) -> dict[int, float]:
    """Seed index -> value of ``key`` for the complete runs of ``arm`` (from ``scores`` by
    label when given: a re-scored protocol)."""
    out = {}
    for r in _complete(runs, arm):
        source = r["metrics"] if scores is None else scores.get(r["label"], {})
        value = source.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[int(r["seed_index"])] = float(value)
    return out


def _clusters(runs: Sequence[dict]) -> dict[int, int]:
    """Seed index -> search index (final run ``i`` trains the config of search ``i mod S``)."""
    return {int(r["seed_index"]): int(r.get("search_index", 0)) for r in runs}


def present_metrics(runs: Sequence[dict]) -> list[StudyMetric]:
    """The report's metrics that the runs report (mask metrics need a masked data set)."""
    keys = {k for r in runs for k in r["metrics"]}
    return [m for m in STUDY_METRICS if m.key in keys]


def summarise(runs: Sequence[dict], arms: Sequence[str], confidence: float = 0.95,
              bootstrap: Any = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Arm -> metric name -> interval (as a dict): over searches when there are several,
    with the test-set term when ``bootstrap`` (:class:`~extune.study.resample.TestSetBootstrap`)
    has the arm's per-image outputs."""
    metrics = present_metrics(runs)
    clusters = _clusters(runs)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for arm in arms:
        out[arm] = {}
        for m in metrics:
            variance = bootstrap.variance(arm, None, m.name) if bootstrap is not None else None
            out[arm][m.name] = stats.mean_interval(
                _values(runs, arm, m.key), confidence, clusters=clusters,
                test_variance=variance or 0.0).to_dict()
    return out


def _driven_share(run: dict) -> float | None:
    """Mean of ``train/driven_share`` over a run's epochs (``None`` when not recorded)."""
    shares = [h["train/driven_share"] for h in run.get("history", [])
              if "train/driven_share" in h]
    return sum(shares) / len(shares) if shares else None


def method_status(runs: Sequence[dict], arm: str, num_classes: int | None) -> str | None:
    """Why ``arm``'s rows get no verdict (``None``: they do): it never switched on (its
    ``train/driven_share`` was 0 in every epoch of every run), or its models are no better
    than chance (test accuracy, one-sided t test at 5%)."""
    complete = _complete(runs, arm)
    if not complete:
        return "no final run finished"
    shares = [s for s in map(_driven_share, complete) if s is not None]
    trains = complete[0].get("trains", arm)
    if trains in DRIVEN_METHODS and shares and max(shares) == 0:
        return "never switched on: train/driven_share was 0 in every epoch of every run"
    if num_classes:
        accuracy = list(_values(runs, arm, "test/accuracy").values())
        if not stats.above_chance(accuracy, 1 / num_classes):
            mean = sum(accuracy) / len(accuracy) if accuracy else math.nan
            return (f"no better than chance: mean test accuracy {mean:.3f} against "
                    f"1/{num_classes} = {1 / num_classes:.3f}")
    return None


def weakly_tested(runs: Sequence[dict], methods: Sequence[str], min_share: float
                  ) -> dict[str, str]:
    """Method -> why its explanation-driven part was weakly tested: it drove fewer than
    ``min_share`` of its training images (``train/driven_share``, averaged over its runs'
    epochs, warm-up included), so most of its training was its baseline's."""
    weak = {}
    for method in methods:
        shares = [s for s in map(_driven_share, _complete(runs, method)) if s is not None]
        if shares and (mean := sum(shares) / len(shares)) < min_share:
            weak[method] = (f"{method} drove {mean:.1%} of its training images through its "
                            f"own view (< {min_share:.0%}): most of its training was its "
                            "baseline's")
    return weak


def _diagnostics(runs: Sequence[dict], arm: str) -> dict[str, float]:
    complete = _complete(runs, arm)
    out: dict[str, float] = {}
    for key, _ in DIAGNOSTICS:
        if key == "train/driven_share":
            values = [s for s in map(_driven_share, complete) if s is not None]
        else:
            values = [r["metrics"][key] for r in complete if key in r["metrics"]]
        if values:
            out[key] = sum(values) / len(values)
    return out


def _compute(sdir: Any, arm: str, searches: list[dict], runs: Sequence[dict]
             ) -> dict[str, Any]:
    """Trial-epochs, trial-seconds (compute) and wall time of an arm's searches; epochs, wall
    time and core/GPU-seconds of its final runs."""
    s = sdir.settings
    search_s = sum(c.get("seconds") or 0.0 for c in searches)
    final_s = sum(r.get("seconds") or 0.0 for r in runs if r["method"] == arm)
    gpus = s.gpus_per_trial or 0.0
    return {"search_s": search_s, "final_s": final_s,
            "search_trial_epochs": sum(c.get("trial_epochs", 0) for c in searches),
            "search_trial_s": sum(c.get("trial_seconds") or 0.0 for c in searches),
            "final_epochs": sum(r.get("epochs", 0) for r in runs
                                if r["method"] == arm and r["state"] == "complete"),
            "final_core_s": final_s * s.cpus_per_trial, "final_gpu_s": final_s * gpus}


def _bootstrap(runs: Sequence[dict], per_image: Mapping[str, Any] | None = None,
               seed: int = 0) -> Any:
    """The test-set bootstrap of these runs' per-image outputs, or ``None`` when none kept
    them: each run's own file and its re-scored audit's (``audit_per_image``), or
    ``per_image``'s (label -> a file or a list of files: a re-scored protocol's)."""
    from extune.study.resample import TestSetBootstrap

    outputs: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        if run["state"] != "complete":
            continue
        files = per_image.get(run["label"]) if per_image is not None else \
            [run.get("per_image"), run.get("audit_per_image")]
        data = _outputs([files] if isinstance(files, str) or files is None else files)
        if data is not None:
            outputs.setdefault(run["method"], {})[int(run["seed_index"])] = data
    return TestSetBootstrap(outputs, _clusters(runs), seed=seed) if outputs else None


def _outputs(files: Sequence[str | None]) -> dict[str, Any] | None:
    """The per-image outputs of the first file, with the keys the others add (``None`` when
    the first is missing)."""
    from extune.study.resample import load_outputs

    found = load_outputs(files[0]) if files and files[0] else None
    for extra in files[1:] if found is not None else ():
        more = load_outputs(extra) if extra else None
        found = {**(more or {}), **found}
    return found


def _with_audit(runs: Sequence[dict], audit: Mapping[str, Any], main: str) -> list[dict]:
    """The runs with the main protocol's audit (:func:`~extune.study.sensitivity.audit_stage`)
    among their metrics where their own test evaluation did not measure it, and the file of its
    per-image scores (``audit_per_image``)."""
    scores = audit.get("scores", {}).get(main, {})
    files = audit.get("per_image", {}).get(main, {})
    return [{**r, "metrics": {**scores.get(r["label"], {}), **r["metrics"]},
             "audit_per_image": files.get(r["label"])} if r["label"] in scores else r
            for r in runs]


def _merge_audit(sensitivity: dict[str, Any], audit: Mapping[str, Any]) -> dict[str, Any]:
    """Every protocol's scores and per-image files with its audit's (``audit`` empty: as
    they are); per-image entries become lists of files (the first: the protocol's own)."""
    scores, per_image = {}, {}
    for text, by_label in sensitivity["scores"].items():
        found = audit.get("scores", {}).get(text, {})
        scores[text] = {label: {**found.get(label, {}), **values}
                        for label, values in by_label.items()}
        files = sensitivity.get("per_image", {}).get(text, {})
        extra = audit.get("per_image", {}).get(text, {})
        per_image[text] = {label: [files.get(label), extra.get(label)]
                           for label in {*files, *extra}}
    return {**sensitivity, "scores": scores, "per_image": per_image}


def randomisation_failure(runs: Sequence[dict], scores: Mapping[str, Mapping[str, float]],
                          arms: Sequence[str], threshold: float, description: str
                          ) -> tuple[str | None, dict[str, float]]:
    """Whether a protocol's explainer fails the randomisation test on the study's models, and
    why (docs/study.md, "The explanation audit").

    An arm's similarity is the mean over its complete final runs of each checkpoint's mean
    ``randomisation_similarity`` (over the explanation images); the explainer fails when that
    of any arm (methods and controls alike) is at or above ``threshold``: its maps of those
    models keep most of their ranking when every layer is re-initialised, so they do not show
    what those models learned, and no comparison of explanations that involves them says
    anything about training.

    Args:
        runs: the final runs; scores: label -> the protocol's ``test/...`` scores; arms: the
            study's arms; threshold: the test's threshold; description: the protocol in words.

    Returns:
        ``(the reason, or None when it passes or was not audited; arm -> similarity)``.
    """
    means = {}
    for arm in arms:
        values = list(_values(runs, arm, "test/randomisation_similarity", scores).values())
        if values:
            means[arm] = sum(values) / len(values)
    failing = {a: m for a, m in means.items() if m >= threshold}
    if not failing:
        return None, means
    worst = max(failing.values())
    listed = ", ".join(f"{a} {m:.2f}" for a, m in failing.items())
    return (f"{description} fails the randomisation test on this study's models: mean "
            f"similarity {worst:.2f} >= {threshold:.3f} (final runs of {listed})"), means


def _sensitivity(runs: Sequence[dict], sensitivity: dict[str, Any], rows: Any,
                 untested: Mapping[str, str | None]) -> dict[str, Any]:
    """The verdict of each explanation row (claims and controls) under every protocol, its
    explanation rows "not tested" where ``untested`` (protocol text -> reason) says why; a
    protocol's families hold the explanation metrics measured under it."""
    verdicts: dict[str, dict[str, str]] = {}
    values: dict[str, dict[str, Any]] = {}
    everywhere = present_metrics(runs)
    for protocol in sensitivity["protocols"]:
        scores = sensitivity["scores"][protocol["text"]]
        per_image = sensitivity.get("per_image", {}).get(protocol["text"])
        measured = {k for found in scores.values() for k in found}
        present = [m.name for m in everywhere if not m.explanation or m.key in measured
                   or protocol["text"] == sensitivity["main"]["text"]]  # the runs' own

        def by_protocol(arm: str, metric: StudyMetric, scores: Any = scores) -> dict:
            return _values(runs, arm, metric.key, scores if metric.explanation else None)

        for row in rows(by_protocol, _bootstrap(runs, per_image), present,
                        untested.get(protocol["text"])):
            if metric_by_name(row["metric"]).explanation:
                key = f"{row['a']} vs {row['b']}: {row['metric']}"
                verdicts.setdefault(key, {})[protocol["text"]] = row["verdict"]
                values.setdefault(key, {})[protocol["text"]] = {
                    **row["difference"], "interval": row["interval"]}
    same = {k: len(set(v.values())) == 1 for k, v in verdicts.items()}
    return {"protocols": sensitivity["protocols"], "verdicts": verdicts,
            "differences": values, "same_under_all": same}


def _covers(s: Any, bootstrap: Any, test_images: int | None) -> str:
    """What the intervals include, in words."""
    from extune.study.resample import RESAMPLES

    parts = ["training seeds"]
    if s.search_seeds > 1:
        parts.append(f"search seeds ({s.search_seeds} searches per method, each a cluster of "
                     "its runs: the tests compare the searches' means)")
    if bootstrap is not None:
        images = f"{test_images:,} " if test_images else ""
        parts.append(f"test-set sampling (a bootstrap of the {images}test images, "
                     f"{RESAMPLES} resamples, the same images for every run)")
    text = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    missing = []
    if s.search_seeds == 1:
        missing.append("the search's own variance (one search per method)")
    if bootstrap is None:
        missing.append("test-set sampling (the runs kept no per-image outputs)")
    return text + ("; not " + " nor ".join(missing) if missing else "")


def build_results(sdir: Any, runs: Sequence[dict], chosen: dict[str, list[dict[str, Any]]],
                  sensitivity: dict[str, Any], audit: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Everything the report shows, as plain data (``results.json``).

    Args:
        sdir: the study folder.
        runs: the final runs and controls (:func:`~extune.study.retrain.run_final_stage`).
        chosen: method -> what each of its searches chose and spent
            (:func:`~extune.search.chosen_trial`).
        sensitivity: :func:`~extune.study.sensitivity.rescore_stage`.
        audit: :func:`~extune.study.sensitivity.audit_stage` (``None``: no audit; every
            explanation row keeps its verdict).
    """
    s = sdir.settings
    plan = sdir.plan()
    base = s.base_config()
    num_classes = sensitivity.get("num_classes")
    runs = _with_audit(runs, audit or {}, sensitivity["main"]["text"])
    sensitivity = _merge_audit(sensitivity, audit or {})
    present = [m.name for m in present_metrics(runs)]
    controls = {m: [a["arm"] for a in arms] for m, arms in plan["controls"].items()}
    arms = [a for m in s.methods for a in (m, *controls.get(m, ()))]
    audited = _audit_results(runs, sensitivity, arms, audit)
    failing = {p["text"]: p["why"] for p in audited["protocols"]} if audited else {}
    untested = {a: why for a in arms if (why := method_status(runs, a, num_classes))}
    weak = weakly_tested(runs, list(controls), plan["min_driven_share"])
    claims = claims_from_plan(plan["claims"])
    margins = plan["margins"]
    clusters = _clusters(runs)
    bootstrap = _bootstrap(runs)

    def rows(values: Any, boot: Any, measured: Sequence[str] = present,
             explanations: str | None = None) -> list[dict[str, Any]]:
        return claim_rows(values, claims, arms, measured, untested=untested,
                          margins=lambda m: margins.get(m, s.margin(m)), test=s.test,
                          correction=s.correction, confidence=s.confidence,
                          controls=controls, clusters=clusters,
                          test_variance=boot.variance if boot is not None else None,
                          weak=weak, explanations_untested=explanations)

    summary = summarise(runs, arms, s.confidence, bootstrap)
    first = next((c[0] for c in chosen.values() if c), {})
    arm_of = {a["arm"]: (m, a) for m, listed in plan["controls"].items() for a in listed}
    methods = {}
    for arm in arms:
        method, control = arm_of.get(arm, (arm, None))
        searches = chosen.get(method, []) if control is None else []
        methods[arm] = {"searches": searches, "final": summary[arm],
                        "runs": [r for r in runs if r["method"] == arm],
                        "control_of": method if control else None,
                        "trains": control["trains"] if control else arm,
                        "what": control["what"] if control else None,
                        "status": untested.get(arm), "weak": weak.get(arm),
                        "diagnostics": _diagnostics(runs, arm),
                        "compute": _compute(sdir, arm, searches, runs)}
    test_images = sensitivity.get("test_images")
    return {
        "study": sdir.name, "study_id": sdir.study_id, "data": base.data.name,
        "backbone": base.model.backbone, "image_size": base.data.image_size,
        "num_classes": num_classes, "test_images": test_images,
        "quick": s.quick, "settings": s.to_dict(), "search_epochs": base.optim.epochs,
        "final_epochs": s.resolved_final_epochs(), "final_seeds": s.final_seeds(),
        "scheduler": first.get("scheduler"), "scheduler_settings":
        first.get("scheduler_settings"), "startup_trials": first.get("startup_trials"),
        "plan": {"hash": sdir.meta.get("plan_hash"),
                 "current_hash": sdir.meta.get("plan_current_hash"),
                 "written": sdir.meta.get("plan_written"), "claims": plan["claims"],
                 "controls": plan["controls"], "held": plan["held"],
                 "min_driven_share": plan["min_driven_share"]},
        "protocol": {**sensitivity["main"], "explain_samples": sensitivity["explain_samples"]},
        "statistics": {"test": s.test, "correction": s.correction, "confidence": s.confidence,
                       "alpha": round(1 - s.confidence, 10), "power": 0.8,
                       "families": list(FAMILIES),
                       "margins": {m: margins.get(m, s.margin(m)) for m in present},
                       "test_set": bootstrap is not None,
                       "search_clusters": s.search_seeds > 1},
        "intervals_cover": _covers(s, bootstrap, test_images),
        "versions": sdir.meta.get("versions", {}), "cluster": sdir.meta.get("cluster", {}),
        "deviations": sdir.meta.get("deviations", []),
        "wall_s": dict(sdir.meta.get("stage_seconds", {})),
        "metrics": present, "methods": methods,
        "comparisons": rows(lambda arm, metric: _values(runs, arm, metric.key), bootstrap,
                            present, failing.get(sensitivity["main"]["text"])),
        "sensitivity": _sensitivity(runs, sensitivity, rows, failing),
        "audit": audited}


def _audit_results(runs: Sequence[dict], sensitivity: dict[str, Any], arms: Sequence[str],
                   audit: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per protocol: each arm's mean randomisation similarity, how many of its checkpoints
    pass, and why its explanation rows are not tested (:func:`randomisation_failure`)."""
    if not audit:
        return None
    threshold = audit["threshold"]
    found = []
    for protocol in sensitivity["protocols"]:
        if protocol["text"] not in audit["scores"]:
            continue
        scores = sensitivity["scores"][protocol["text"]]
        why, means = randomisation_failure(runs, scores, arms, threshold,
                                           protocol["description"])
        passed = {a: list(_values(runs, a, "test/randomisation_pass", scores).values())
                  for a in means}
        found.append({"text": protocol["text"], "description": protocol["description"],
                      "similarity": means, "passed": {a: [int(sum(v)), len(v)]
                                                      for a, v in passed.items()},
                      "why": why,
                      "metrics": sorted({k.removeprefix("test/") for v in
                                         audit["scores"][protocol["text"]].values()
                                         for k in v})})
    return {"threshold": threshold, "protocols": found}


def write_report(sdir: Any, runs: Sequence[dict], chosen: dict[str, list[dict[str, Any]]],
                 sensitivity: dict[str, Any], audit: dict[str, Any] | None = None
                 ) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write ``results.json``, ``report.md`` and the plots into the study folder."""
    from extune.study.plots import write_plots

    results = build_results(sdir, runs, chosen, sensitivity, audit)
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


def _diff_cell(d: dict[str, Any], interval: Sequence[Any] | None = None) -> str:
    """``+0.007 [-0.031, +0.044]``: a difference and its interval (``interval``: another level
    than the difference's own)."""
    if d.get("estimate") is None:
        return "-"
    low, high = interval if interval is not None else (d.get("low"), d.get("high"))
    if low is None or high is None:
        return f"{d['estimate']:+.3f} (no interval)"
    return f"{d['estimate']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _interval_cell(interval: Sequence[Any]) -> str:
    low, high = interval
    return "-" if low is None or high is None else f"[{low:+.3f}, {high:+.3f}]"


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
    sections = (_setup, _budget_table, _metrics_table, _audit_table, _claims_tables,
                _controls_table, _sources, _sensitivity_table, _per_seed_table,
                _diagnostics_table, _compute_table, _limits, _reproducibility)
    for section in sections:
        part = section(results)
        if part:
            lines += part + [""]
    lines += ["## Plots", "", "![test metrics](plots/overview.png)", "",
              "![learning curves](plots/curves.png)", ""]
    return "\n".join(lines)


def _setup(results: dict[str, Any]) -> list[str]:
    s, st, p = results["settings"], results["statistics"], results["protocol"]
    budget = (f"{s['budget_epochs']} trial-epochs (at most {s['trials']} trials)"
              if s.get("budget_epochs") else f"{s['trials']} trials")
    if s.get("budget_seconds"):
        budget += f", at most {s['budget_seconds']:g} trial-seconds"
    startup = (f", {results['startup_trials']} random start-up trials"
               if results.get("startup_trials") else "")
    searches = (f"{s['search_seeds']} searches (sampler seeds {s['seed']}.."
                f"{s['seed'] + s['search_seeds'] - 1})" if s.get("search_seeds", 1) > 1
                else f"a search (sampler seed {s['seed']})")
    classes = f", {results['num_classes']} classes" if results.get("num_classes") else ""
    images = f", {results['test_images']} test images" if results.get("test_images") else ""
    plan = results.get("plan") or {}
    held = plan.get("held") or {}
    held_text = ("; held for every method because some methods search it and every method "
                 "reads it: " + ", ".join(f"`{k}={v['value']}` (searched by "
                                          f"{', '.join(v['searched_by']) or 'none'})"
                                          for k, v in held.items())) if held else ""
    controls = [f"{a['arm']} ({a['what']})" for arms in (plan.get("controls") or {}).values()
                for a in arms]
    lines = [
        "## Setup", "",
        f"Data set **{results['data']}**{classes}{images}; backbone {results['backbone']} at "
        f"{results['image_size']} px; methods {', '.join(s['methods'])}.", "",
        f"Each method: {searches} of its built-in space, {budget} of "
        f"{results['search_epochs']} epochs ({s['sampler']}{startup}; "
        f"{results.get('scheduler') or s['scheduler']}), selected on validation "
        f"{s['objective']}{held_text}; then the chosen config retrained with "
        f"{len(results['final_seeds'])} seeds ({', '.join(map(str, results['final_seeds']))})"
        f" for {results['final_epochs']} epochs and evaluated on the test split.", ""]
    if controls:
        lines += [f"**Controls**, trained with the same configs and seeds: "
                  f"{'; '.join(controls)}. A method minus its control is the part of a "
                  "difference its explanation-driven part causes.", ""]
    lines += [
        f"**Evaluation protocol**, the same for every run whatever it trained with: "
        f"{p['description']}, on {p['explain_samples']} test images (the same images for "
        "every run; each run's protocol is in results.json).", "",
        f"**Statistics**: {_test_words(st['test'])}; {_correction_words(st['correction'])} "
        f"within each family at a family-wise level of {st['alpha']:g} (claims' primary "
        "metrics, claims' secondary metrics and each for the controls, apart); intervals at "
        "the level of their adjusted test; equivalence by two one-sided tests within each "
        f"metric's margin ({_margins(st['margins'])}); detectable differences at "
        f"{st['power']:.0%} power at the family's corrected level. The intervals cover "
        f"{results['intervals_cover']}."]
    if plan.get("hash"):
        lines += ["", f"**Plan** fixed before the first trial: sha256 `{plan['hash'][:16]}` "
                      f"(plan.json, {plan.get('written', '?')})"
                  + (f"; in effect after deviations: `{plan['current_hash'][:16]}`"
                     if plan.get("current_hash") not in (None, plan["hash"]) else "")
                  + "."]
    return lines


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
             "| method | search | trials complete / pruned / failed | trial-epochs | "
             "trial-seconds | search time | chosen | from start-up? | validation objective "
             "| chosen settings |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method, summary in results["methods"].items():
        for chosen in summary["searches"]:
            c = chosen.get("counts", {})
            params = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in
                               sorted(chosen.get("params", {}).items()) if k != "method")
            startup = {True: "yes (random)", False: "no"}.get(chosen.get("startup"), "-")
            lines.append(
                f"| {method} | {chosen.get('name', method)} (seed {chosen.get('seed', '-')}) | "
                f"{c.get('complete', 0)} / {c.get('pruned', 0)} / {c.get('failed', 0)} | "
                f"{chosen.get('trial_epochs', '-')} | {_num(chosen.get('trial_seconds'), '.0f')}"
                f" | {_minutes(chosen.get('seconds'))} | {chosen.get('trial', 'none')} | "
                f"{startup} | {_num(chosen.get('value'))} | {params or '-'} |")
    return lines


def _metrics_table(results: dict[str, Any]) -> list[str]:
    conf = int(round(100 * results["statistics"]["confidence"]))
    metrics = [metric_by_name(n) for n in results["metrics"]]
    lines = [f"## Test metrics: mean ± {conf}% CI half-width", "",
             f"Intervals cover {results['intervals_cover']}.", "",
             "| arm | runs | " + " | ".join(f"{m.name} {m.arrow}" for m in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for arm, summary in results["methods"].items():
        ok = sum(r["state"] == "complete" for r in summary["runs"])
        cells = [_cell(summary["final"].get(m.name, {})) for m in metrics]
        lines.append(f"| {arm} | {ok}/{len(summary['runs'])} | " + " | ".join(cells) + " |")
    return lines


_ROW_HEADER = ("| {what} | metric | A − B [CI at its adjusted level] | simultaneous CI | "
               "n | p | p adj. | margin | p equiv. adj. | MDD | verdict |")


def _row_lines(rows: Sequence[dict[str, Any]], what: str) -> list[str]:
    lines = [_ROW_HEADER.format(what=what), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        arrow = "↑" if c["higher_is_better"] else "↓"
        n = f"{c['n_a']}+{c['n_b']}" + (" searches" if c["difference"].get("level") ==
                                        "searches" else "")
        weak = " (weakly tested)" if c.get("weak") and c["verdict"] != NOT_TESTED else ""
        lines.append(
            f"| {c['a']} vs {c['b']} | {c['metric']} {arrow} | "
            f"{_diff_cell(c['difference'], c.get('interval'))} | "
            f"{_interval_cell(c.get('interval_simultaneous') or [None, None])} | {n} | "
            f"{_p(c['p'])} | {_p(c['p_adjusted'])} | ±{c['margin']:g} | "
            f"{_p(c['p_equivalence_adjusted'])} | {_num(c['mdd'])} | "
            f"{_mark(c['verdict'])}{weak} |")
    return lines


def _claims_tables(results: dict[str, Any]) -> list[str]:
    st = results["statistics"]
    conf = int(round(100 * st["confidence"]))
    adj = {"holm": "Holm", "bh": "BH", "none": "unadjusted"}[st["correction"]]
    lines = [f"## Claims: A − B, {adj}-adjusted within each family", "",
             f"**holds** / **reversed**: the adjusted p-value is below {st['alpha']:g}, in the "
             "metric's good / bad direction; **equivalent**: the adjusted equivalence p-value "
             "is below it (the difference lies within the margin); **not shown**: neither, "
             "which is not evidence of no difference (MDD: the smallest true difference "
             "detected with 80% power at the family's corrected level); **not tested**: an arm "
             "never switched on or is no better than chance, or (an explanation row) the "
             "explainer fails the randomisation test on the study's models. The interval "
             "beside a verdict is at the level its adjusted test used, so it excludes 0 "
             "exactly when the verdict "
             f"is holds or reversed; the simultaneous interval covers every difference of the "
             f"family at once with {conf}% confidence (Bonferroni).", ""]
    claims = [c for c in results["comparisons"] if c.get("kind", "claim") == "claim"]
    if not claims:
        return lines + ["(no claim has both of its methods in this study)"]
    for family, title in (("primary", "Primary: measured as the papers or their reference "
                                      "code measure them"),
                          ("secondary", "Secondary: measures extune adds")):
        rows = [c for c in claims if c.get("family", "primary") == family]
        if rows:
            lines += [f"### {title}", "", *_row_lines(rows, "claim"), ""]
    lines += _untested_and_weak(results)
    return lines


def _untested_and_weak(results: dict[str, Any]) -> list[str]:
    lines = []
    main = results["protocol"].get("text")
    for protocol in (results.get("audit") or {}).get("protocols", []):
        if protocol["why"] and protocol["text"] == main:
            lines.append(f"- {NOT_TESTED}: **every explanation row**: {protocol['why']} (see "
                         "the explanation audit)")
    for arm, v in results["methods"].items():
        if v.get("status"):
            lines.append(f"- {NOT_TESTED}: **{arm}**: {v['status']}")
        if v.get("weak"):
            lines.append(f"- weakly tested: **{arm}**: {v['weak']}; its verdicts stand, "
                         "but credit its explanation-driven part only through its controls")
    return lines


def _controls_table(results: dict[str, Any]) -> list[str]:
    rows = [c for c in results["comparisons"] if c.get("kind") == "control"]
    if not rows:
        return []
    lines = ["## Controls: what the explanation-driven part causes (A − A switched off)", "",
             "Each control trains the method's chosen config and seeds with its "
             "explanation-driven part switched off; a verdict here credits that part alone.",
             ""]
    for family in FAMILIES:
        chosen = [c for c in rows if c.get("family") == family]
        if chosen:
            lines += [f"### {family.capitalize()} metrics", "", *_row_lines(chosen, "control"),
                      ""]
    return lines


def _sources(results: dict[str, Any]) -> list[str]:
    claims = (results.get("plan") or {}).get("claims") or []
    if not claims:
        return []
    lines = ["## Where each claim's measures come from", ""]
    for claim in claims:
        by_source: dict[str, list[str]] = {}
        for m in claim["metrics"]:
            by_source.setdefault(f"{m['family']}: {m['source']}", []).append(m["metric"])
        lines.append(f"- **{claim['a']} vs {claim['b']}** ({claim['source']}): " + "; ".join(
            f"{', '.join(names)} ({where})" for where, names in by_source.items()) + ".")
    return lines


def _audit_table(results: dict[str, Any]) -> list[str]:
    audit = results.get("audit")
    if not audit or not audit["protocols"]:
        return []
    arms = list(results["methods"])
    threshold = audit["threshold"]
    lines = ["## Explanation audit: do the explanations depend on the models?", "",
             "The randomisation test (Adebayo et al. 2018) re-initialises every layer of each "
             "final checkpoint and explains the same test images again: an explainer whose "
             f"maps keep a mean rank correlation of {threshold:.3f} (√½) or more with the "
             "trained model's shows little of what the model learned. A cell is the mean over "
             "an arm's final runs of each checkpoint's mean similarity, and how many "
             "checkpoints pass. A protocol whose explainer fails on any arm's models gets no "
             "verdict on any explanation row (**not tested**); the other rows keep theirs. "
             "Every audit metric is measured under the main protocol, the randomisation test "
             "under every protocol.", "",
             "| protocol | " + " | ".join(arms) + " | explanation rows |",
             "|---|" + "---|" * (len(arms) + 1)]
    for p in audit["protocols"]:
        cells = [f"{p['similarity'][a]:.3f} ({p['passed'][a][0]}/{p['passed'][a][1]} pass)"
                 if a in p["similarity"] else "-" for a in arms]
        verdict = f"{NOT_TESTED}: fails" if p["why"] else "tested"
        lines.append(f"| {p['description']} | " + " | ".join(cells) + f" | {verdict} |")
    lines += ["", *(f"- {p['why']}." for p in audit["protocols"] if p["why"])]
    return lines


def _sensitivity_table(results: dict[str, Any]) -> list[str]:
    sens = results["sensitivity"]
    protocols = sens["protocols"]
    lines = ["## Sensitivity: the explanation verdicts under other protocols", "",
             "Every final checkpoint re-scored (no retraining) on the same test images under "
             "each protocol; statistics as above, each protocol its own families.", "",
             "| row: metric | " + " | ".join(p["description"] for p in protocols)
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
             "| arm | seed | search | state | epochs | " +
             " | ".join(m.name for m in metrics) + " |",
             "|---|---|---|---|---|" + "---|" * len(metrics)]
    for arm, summary in results["methods"].items():
        for r in summary["runs"]:
            cells = [_num(r["metrics"].get(m.key)) for m in metrics]
            lines.append(f"| {arm} | {r['seed']} | {r.get('search_index', 0) + 1} | "
                         f"{r['state']} | {r.get('epochs', '-')} | " + " | ".join(cells) + " |")
    return lines


def _diagnostics_table(results: dict[str, Any]) -> list[str]:
    arms = list(results["methods"])
    rows = []
    for key, meaning in DIAGNOSTICS:
        cells = [_num(results["methods"][a]["diagnostics"].get(key)) for a in arms]
        if any(c != "-" for c in cells):
            rows.append(f"| {key} | " + " | ".join(cells) + f" | {meaning} |")
    if not rows:
        return []
    share = (results.get("plan") or {}).get("min_driven_share")
    note = ([f"A method whose train/driven_share is below {share:.0%} is weakly tested."]
            if share is not None else [])
    return ["## Diagnostics of the final runs (mean over seeds)", "",
            "| metric | " + " | ".join(arms) + " | meaning |",
            "|---|" + "---|" * len(arms) + "---|", *rows, "", *note]


def _compute_table(results: dict[str, Any]) -> list[str]:
    lines = ["## Compute", "",
             "Trial-epochs are the budget; trial-seconds are what they cost (training and "
             "validation of every trial, whatever ran at once).", "",
             "| arm | search trial-epochs | search trial-seconds | search wall time | final "
             "epochs | final wall time (sum of runs) | final core-seconds | final GPU-seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, summary in results["methods"].items():
        c = summary["compute"]
        lines.append(f"| {arm} | {c['search_trial_epochs']} | "
                     f"{c.get('search_trial_s', 0):.0f} | {_minutes(c['search_s'])} | "
                     f"{c['final_epochs']} | {_minutes(c['final_s'])} | "
                     f"{c['final_core_s']:.0f} | {c['final_gpu_s']:.0f} |")
    lines += ["", f"Study wall time: {_stage_minutes(results['wall_s'])}."]
    return lines


def _limits(results: dict[str, Any]) -> list[str]:
    mdds = [c["mdd"] for c in results["comparisons"] if c["metric"] == "accuracy"
            and c.get("kind", "claim") == "claim" and c.get("mdd") is not None]
    lines = ["## What this does not show", "",
             f"- The intervals cover {results['intervals_cover']}; the data split and the "
             "explanation images are fixed."]
    if mdds:
        lines.append(f"- With these seeds the smallest accuracy difference detectable at 80% "
                     f"power at the corrected level is {min(mdds):.3f}-{max(mdds):.3f}: a "
                     "smaller one may exist and go unseen (\"not shown\").")
    lines.append("- Short training on a small model: the papers train ResNet-50 for hundreds of "
                 "epochs; a verdict here is about this budget.")
    return lines


def _reproducibility(results: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items())
    lines = ["## Reproducibility", "", f"- Versions: {versions or 'not recorded'}."]
    plan = results.get("plan") or {}
    if plan.get("hash"):
        lines.append(f"- Plan: sha256 {plan['hash']} (plan.json, written {plan.get('written')} "
                     "before the first trial).")
    if results.get("cluster"):
        lines.append(f"- Cluster: {json.dumps(results['cluster'])}.")
    if results.get("scheduler_settings"):
        lines.append(f"- Scheduler: {json.dumps(results['scheduler_settings'])}.")
    deviations = results.get("deviations") or []
    if deviations:
        lines.append("- **Deviations** (changes after the study started):")
        for d in deviations:
            if d["setting"] == "plan":
                lines.append(f"  - {d['when']}: the plan changed ({', '.join(d['changed'])}): "
                             f"{d['from'][:12]} -> {d['to'][:12]} (study was "
                             f"{d.get('status_before', '?')})")
            else:
                lines.append(f"  - {d['when']}: `{d['setting']}` {d['from']} -> {d['to']} "
                             f"(study was {d.get('status_before', '?')})")
    else:
        lines.append("- Deviations: none (the study ran with the plan it started with).")
    return lines


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _minutes(seconds: Any) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _stage_minutes(seconds: dict[str, float]) -> str:
    total = sum(seconds.values())
    parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())
    return f"{total / 60:.1f} min in all ({parts})"
