"""Study settings, claims with verdicts, the evaluation protocol and the report on hand-made
runs (no Ray, no MLflow)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from extune.errors import ConfigError
from extune.study.claims import BUILTIN_CLAIMS, claim_rows
from extune.study.plan import build_plan
from extune.study.report import build_results, present_metrics, report_markdown, summarise
from extune.study.settings import StudySettings
from extune.train.config import Config
from extune.train.methods import evaluation_explainer, evaluation_protocol


def _run(method: str, index: int, history: list | None = None, **metrics: float) -> dict:
    return {"method": method, "seed": index + 1, "seed_index": index, "search_index": 0,
            "label": f"{method}-seed{index + 1}", "state": "complete",
            "metrics": {"epoch": 2.0, **metrics}, "error": None, "epochs": 2,
            "seconds": 10.0, "checkpoint": f"/ckpt/{method}/{index}",
            "history": history or [{"epoch": 1.0, "val/accuracy": 0.5,
                                     "train/driven_share": 0.0},
                                    {"epoch": 2.0, "val/accuracy": 0.6,
                                     "train/driven_share": 0.8}]}


EXCON = [0.80, 0.82, 0.81, 0.80, 0.83]
SUPCON = [0.70, 0.71, 0.69, 0.72, 0.70]


def _runs() -> list[dict]:
    """Five seeds each: excon clearly beats supcon on accuracy, is equivalent on alignment
    (within ±0.02), loses on ECE under shift, and is unclear on deletion AUC."""
    runs = []
    for i in range(5):
        runs.append(_run("excon", i, **{
            "test/accuracy": EXCON[i], "test/alignment": 0.300 + (i % 2) / 1000,
            "test/shift/ece": 0.20 + i / 1000, "test/deletion_auc": 0.2 + (-1) ** i * 0.1}))
        runs.append(_run("supcon", i, **{
            "test/accuracy": SUPCON[i], "test/alignment": 0.301 - (i % 2) / 1000,
            "test/shift/ece": 0.10 + i / 1000, "test/deletion_auc": 0.21 + (-1) ** i * 0.09}))
    return runs


def _values(runs):
    def values(method, metric):
        return {r["seed_index"]: r["metrics"][metric.key] for r in runs
                if r["method"] == method and metric.key in r["metrics"]}
    return values


def _rows(runs, untested=None, correction="holm", weak=None):
    present = [m.name for m in present_metrics(runs)]
    settings = StudySettings(methods=["excon", "supcon"])
    return {r["metric"]: r for r in claim_rows(
        _values(runs), BUILTIN_CLAIMS, ["excon", "supcon"], present,
        untested=untested or {}, margins=settings.margin, test="welch",
        correction=correction, confidence=0.95, weak=weak)}


def test_claims_get_each_verdict_within_their_family():
    rows = _rows(_runs())
    assert set(rows) == {"accuracy", "alignment", "shift_ece", "deletion_auc"}
    assert {m: r["family"] for m, r in rows.items()} == {
        "accuracy": "primary", "shift_ece": "primary",  # the ExCon paper's measures
        "alignment": "secondary", "deletion_auc": "secondary"}  # extune's
    assert "reference code" in BUILTIN_CLAIMS[0].metrics[0].source  # avg_drop: eval.py
    assert rows["accuracy"]["verdict"] == "holds"
    assert rows["accuracy"]["difference"]["estimate"] == pytest.approx(0.108)
    assert rows["alignment"]["verdict"] == "equivalent"
    assert rows["shift_ece"]["verdict"] == "reversed"  # higher ECE is worse
    assert rows["deletion_auc"]["verdict"] == "not shown"
    assert rows["deletion_auc"]["mdd"] > 0.1  # the seeds could not see a small difference
    for row in rows.values():  # Holm within a family of 2: adjusted >= raw, at most 2x raw
        assert row["family_size"] == 2
        assert row["p"] <= row["p_adjusted"] <= min(1.0, 2 * row["p"]) + 1e-12
        assert row["n_a"] == row["n_b"] == 5
        low, high = row["interval"]  # at its adjusted level: excludes 0 iff shown
        assert (low > 0 or high < 0) == (row["verdict"] in ("holds", "reversed"))
        assert row["interval_simultaneous"][0] <= low and high <= row["interval_simultaneous"][1]


def test_holm_can_withdraw_a_verdict_that_raw_p_would_give():
    runs = _runs()
    for r in runs:  # a modest accuracy gain: p ~ 0.03 raw, above 0.05 after Holm over 2
        if r["method"] == "excon":
            r["metrics"]["test/accuracy"] = SUPCON[r["seed_index"]] + [0.03, 0.0, 0.02, 0.01,
                                                                        0.025][r["seed_index"]]
        r["metrics"]["test/shift/ece"] = 0.1 + r["seed_index"] / 100  # shows nothing
    raw = _rows(runs, correction="none")["accuracy"]
    holm = _rows(runs)["accuracy"]
    assert raw["p"] < 0.05 and raw["verdict"] == "holds"
    assert holm["p_adjusted"] > 0.05 and holm["verdict"] != "holds"
    assert holm["interval"][0] < 0 < holm["interval"][1]  # its interval says the same


def test_a_weakly_tested_method_keeps_its_verdicts_with_the_reason_beside_them():
    from extune.study.report import weakly_tested

    runs = _runs()
    for r in runs:
        if r["method"] == "excon":  # 5% of its images masked in each epoch
            r["history"] = [{"epoch": 1.0, "train/driven_share": 0.05},
                            {"epoch": 2.0, "train/driven_share": 0.05}]
    weak = weakly_tested(runs, ["excon"], 0.2)
    assert "5.0% of its training images" in weak["excon"]
    assert weakly_tested(runs, ["excon"], 0.04) == {}
    rows = _rows(runs, weak=weak)
    assert rows["accuracy"]["verdict"] == "holds" and rows["accuracy"]["weak"] == weak["excon"]


def test_a_method_that_never_ran_or_sits_at_chance_is_not_tested():
    rows = _rows(_runs(), untested={"excon": "never switched on"})
    assert {r["verdict"] for r in rows.values()} == {"not tested"}
    assert all(r["p_adjusted"] is None for r in rows.values())  # out of the family


def test_failed_runs_do_not_count():
    runs = _runs()
    runs[0]["state"] = "failed"  # excon seed 1
    assert summarise(runs, ["excon", "supcon"])["excon"]["accuracy"]["n"] == 4


def test_every_method_is_scored_by_the_same_explainer_and_layer():
    """A study's final configs carry one evaluation protocol: a method that trained with
    Grad-CAM at layer3 (or another explainer) is scored like the others, at the last stage."""
    settings = StudySettings(methods=["ce", "excon", "edda"])
    base = settings.base_config()
    trained = {
        "ce": base.with_overrides({"method": "ce"}),
        "excon": base.with_overrides({"method": "excon", "explain.explainer": "gradcam",
                                      "explain.layer": "layer2"}),
        "edda": base.with_overrides({"method": "edda",
                                     "explain.explainer": "integrated_gradients",
                                     "explain.steps": 4}),
    }
    protocols = set()
    for chosen in trained.values():
        final = settings.final_config(chosen, seed=1)
        explainer = evaluation_explainer(final)
        protocols.add((explainer.name, explainer.layer, evaluation_protocol(final)["layer"]))
    assert protocols == {("gradcam", None, None)}  # one protocol; None: the last stage


def test_eval_layer_is_used_and_checked():
    cfg = Config().with_overrides({"model.backbone": "tiny_cnn", "explain.layer": "layer2",
                                   "eval.explainer": "gradcam", "eval.layer": "layer1"})
    assert evaluation_explainer(cfg).layer == "layer1"
    assert evaluation_explainer(cfg.with_overrides({"eval.explainer": None})).layer == "layer2"
    from extune.train.methods import check_explain_layer

    with pytest.raises(ConfigError, match="eval.layer: unknown layer 'layer9'"):
        check_explain_layer(cfg.with_overrides({"eval.layer": "layer9"}))


def _sdir(settings: StudySettings) -> SimpleNamespace:
    plan = build_plan(settings)
    return SimpleNamespace(settings=settings, name="s", study_id="id", plan=lambda: plan, meta={
        "versions": {"extune": "0.1.0", "torch": "2.14.1"}, "stage_seconds": {"final": 60.0},
        "plan_hash": "ab" * 32, "plan_current_hash": "ab" * 32, "plan_written": "today",
        "deviations": [{"setting": "final_epochs", "from": 2, "to": 4, "when": "today",
                        "status_before": "finished"}]})


def _sensitivity(runs) -> dict:
    main = {"text": "gradcam", "explainer": "gradcam", "layer": "layer3", "steps": None,
            "description": "gradcam at layer3 (the last stage)"}
    other = {"text": "integrated_gradients", "explainer": "integrated_gradients",
             "layer": None, "steps": 16, "description": "integrated_gradients (16 steps)"}
    scores = {"gradcam": {r["label"]: {k: v for k, v in r["metrics"].items()
                                       if k in ("test/alignment", "test/deletion_auc")}
                          for r in runs},
              # under IG, excon's alignment is clearly lower: the verdict changes
              "integrated_gradients": {r["label"]: {
                  "test/alignment": 0.1 + r["seed_index"] / 1000 if r["method"] == "excon"
                  else 0.3 + r["seed_index"] / 1000, "test/deletion_auc": 0.2}
                  for r in runs}}
    return {"main": main, "protocols": [main, other], "scores": scores, "num_classes": 10,
            "test_images": 1000, "explain_samples": 500}


def test_report_from_results_alone():
    runs = _runs()
    settings = StudySettings(methods=["excon", "supcon"], controls=False)
    chosen = {m: [{"trial": "trial-001", "value": 0.5, "counts": {"complete": 2, "pruned": 3},
                   "params": {"optim.lr": 0.1}, "trial_epochs": 11, "trial_seconds": 95.0,
                   "seconds": 120.0, "name": m, "seed": 0, "startup": True, "startup_trials": 4,
                   "scheduler": "ASHA on val/accuracy (grace 1 epoch, reduction 3)"}]
              for m in ("excon", "supcon")}
    results = build_results(_sdir(settings), runs, chosen, _sensitivity(runs))
    assert results["protocol"]["description"].startswith("gradcam at layer3")
    assert results["startup_trials"] == 4 and results["versions"]["torch"] == "2.14.1"
    sens = results["sensitivity"]
    assert sens["verdicts"]["excon vs supcon: alignment"] == {
        "gradcam": "equivalent", "integrated_gradients": "reversed"}
    assert not sens["same_under_all"]["excon vs supcon: alignment"]
    assert results["methods"]["excon"]["diagnostics"]["train/driven_share"] == \
        pytest.approx(0.4)
    text = report_markdown(results)
    for part in ("gradcam at layer3 (the last stage), on 500 test images",
                 "Welch's unpaired t test", "Holm's correction within each family",
                 "| excon | excon (seed 0) | 2 / 3 / 0 | 11 | 95 | 2.0 min | trial-001 | "
                 "yes (random)", "### Primary: measured as the papers",
                 "### Secondary: measures extune adds",
                 "| excon | 5/5 | 0.812 ± ", "**holds**", "**equivalent**", "**reversed**",
                 "| excon vs supcon: alignment | **equivalent** (-0.000) | **reversed** (-0.200)"
                 " | **no** |", "| excon | 1 | 1 | complete | 2 | 0.800 |",
                 "ExCon's reference code (github DarrenZhang01/ExCon",
                 "## Compute", "torch 2.14.1", "`final_epochs` 2 -> 4",
                 "**Plan** fixed before the first trial: sha256 `abababab",
                 "## What this does not show", "training seeds; not the search's own variance "
                 "(one search per method) nor test-set sampling"):
        assert part in text, part
    assert "Smoke test" not in text


def test_quick_reports_say_they_are_smoke_tests():
    runs = _runs()
    settings = StudySettings.preset(True, methods=["excon", "supcon"])
    results = build_results(_sdir(settings), runs, {"excon": [], "supcon": []},
                            _sensitivity(runs))
    assert "**Smoke test**" in report_markdown(results)


def test_plots_are_drawn_from_the_results(tmp_path):
    from extune.study.plots import write_plots

    runs = _runs()
    settings = StudySettings(methods=["excon", "supcon"])
    results = build_results(_sdir(settings), runs, {"excon": [], "supcon": []},
                            _sensitivity(runs))
    files = write_plots(results, tmp_path)
    for name in ("accuracy.png", "overview.png", "curves.png", "curve_val_accuracy.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert set(files) >= {"plot_accuracy", "plot_overview", "plot_curves"}


def test_settings_are_checked_up_front():
    with pytest.raises(ConfigError, match="unknown method"):
        StudySettings(methods="ce,excn")
    with pytest.raises(ConfigError, match="--seeds"):
        StudySettings(seeds=0)
    with pytest.raises(ConfigError, match="one objective"):
        StudySettings(objective="accuracy,alignment")
    with pytest.raises(ConfigError, match="unknown sampler"):
        StudySettings(sampler="grid-ish")
    with pytest.raises(ConfigError, match="--fix names unknown"):
        StudySettings(fixed={"explain.explainr": "gradcam"})
    with pytest.raises(ConfigError, match="unknown --correction"):
        StudySettings(correction="sidak")
    with pytest.raises(ConfigError, match="--margin accuracy"):
        StudySettings(margins={"accuracy": -1})
    with pytest.raises(ConfigError, match="protocol 'gradcm'"):
        StudySettings(protocols="gradcm")
    with pytest.raises(ConfigError, match="explains no layer"):
        StudySettings(protocols="integrated_gradients:layer2")


def test_quick_preset_and_final_config():
    s = StudySettings.preset(True, methods=["ce", "excon"])
    assert (s.trials, s.seeds, s.final_epochs) == (2, 2, 2)
    assert s.base_config().model.backbone == "tiny_cnn"
    assert s.final_seeds() == [1, 2]  # the searches use seed 0
    final = s.final_config(s.base_config().with_overrides({"method": "excon"}), seed=2)
    assert final.optim.epochs == 2 and final.runtime.seed == 2
    assert final.eval.test and final.eval.explainer == "gradcam" and final.eval.layer is None
    assert final.eval.explain_samples == 500  # at least 500 test images
    search = s.search_settings("excon", 1, out="x", parent_run="abc", study_id="id")
    assert search.space == "excon" and search.trials == 2 and search.seed == 1
    assert search.name == "excon-search2"
    assert search.run_tags["mlflow.parentRunId"] == "abc"
    assert search.run_tags["extune.stage"] == "search"
    assert math.isclose(s.margin("accuracy"), 0.02)


def _audit(runs, similarity: dict[str, dict[str, float]]) -> dict:
    """The audit stage's result for hand-made runs: ``similarity`` is protocol -> arm -> each
    checkpoint's mean randomisation similarity; the main protocol measures every audit metric
    (sparseness here: excon's maps clearly sparser)."""
    scores = {}
    for protocol, by_arm in similarity.items():
        scores[protocol] = {}
        for r in runs:
            value = by_arm[r["method"]] + r["seed_index"] / 1000
            found = {"test/randomisation_similarity": value,
                     "test/randomisation_pass": float(value < 0.5 ** 0.5)}
            if protocol == "gradcam":
                found["test/sparseness"] = (0.6 if r["method"] == "excon" else 0.4) \
                    + r["seed_index"] / 1000
            scores[protocol][r["label"]] = found
    return {"threshold": 0.5 ** 0.5, "protocols": list(similarity), "scores": scores,
            "per_image": {p: {r["label"]: None for r in runs} for p in similarity}}


def _audited_results(runs, similarity):
    settings = StudySettings(methods=["excon", "supcon"], controls=False)
    return build_results(_sdir(settings), runs, {"excon": [], "supcon": []}, _sensitivity(runs),
                         _audit(runs, similarity))


def test_a_protocol_whose_explainer_fails_randomisation_tests_no_explanation_row():
    """Integrated gradients keep excon's maps once the model is destroyed (0.83 >= 0.707):
    under that protocol every explanation row is "not tested", with the reason; Grad-CAM
    passes, and its rows keep their verdicts."""
    runs = _runs()
    results = _audited_results(runs, {"gradcam": {"excon": 0.10, "supcon": 0.20},
                                      "integrated_gradients": {"excon": 0.83, "supcon": 0.40}})
    sens = results["sensitivity"]["verdicts"]
    assert sens["excon vs supcon: alignment"] == {"gradcam": "equivalent",
                                                   "integrated_gradients": "not tested"}
    assert sens["excon vs supcon: randomisation_similarity"]["integrated_gradients"] == \
        "not tested"
    assert "excon vs supcon: sparseness" in sens  # measured under the main protocol only
    assert set(sens["excon vs supcon: sparseness"]) == {"gradcam"}
    ig = results["audit"]["protocols"][1]
    assert ig["why"] == ("integrated_gradients (16 steps) fails the randomisation test on this "
                         "study's models: mean similarity 0.83 >= 0.707 (final runs of "
                         "excon 0.83)")
    assert ig["passed"] == {"excon": [0, 5], "supcon": [5, 5]}
    assert results["audit"]["protocols"][0]["why"] is None
    rows = {c["metric"]: c for c in results["comparisons"]}  # the main protocol passes
    assert rows["accuracy"]["verdict"] == "holds" and rows["alignment"]["verdict"] == \
        "equivalent"
    assert rows["sparseness"]["family"] == "secondary" and rows["sparseness"]["verdict"] == \
        "holds"
    text = report_markdown(results)
    for part in ("## Explanation audit: do the explanations depend on the models?",
                 "| integrated_gradients (16 steps) | 0.832 (0/5 pass) | 0.402 (5/5 pass) | "
                 "not tested: fails |", "| gradcam at layer3 (the last stage) | 0.102 (5/5 "
                 "pass) | 0.202 (5/5 pass) | tested |",
                 "| excon vs supcon: alignment | **equivalent** (-0.000) | not tested"):
        assert part in text, part


def test_when_the_main_explainer_fails_only_explanation_rows_lose_their_verdicts():
    runs = _runs()
    passing = _audited_results(runs, {"gradcam": {"excon": 0.10, "supcon": 0.20}})
    failing = _audited_results(runs, {"gradcam": {"excon": 0.30, "supcon": 0.90}})
    before = {c["metric"]: c for c in passing["comparisons"]}
    after = {c["metric"]: c for c in failing["comparisons"]}
    assert set(before) == set(after) == {"accuracy", "shift_ece", "alignment", "deletion_auc",
                                         "randomisation_similarity", "sparseness"}
    for metric in ("accuracy", "shift_ece"):  # not explanation metrics: as they were
        assert after[metric]["verdict"] == before[metric]["verdict"] != "not tested"
        assert after[metric]["p_adjusted"] == before[metric]["p_adjusted"]
    why = ("gradcam at layer3 (the last stage) fails the randomisation test on this study's "
           "models: mean similarity 0.90 >= 0.707 (final runs of supcon 0.90)")
    for metric in ("alignment", "deletion_auc", "randomisation_similarity", "sparseness"):
        assert before[metric]["verdict"] != "not tested"
        assert after[metric]["verdict"] == "not tested" and after[metric]["why"] == why
        assert after[metric]["p_adjusted"] is None  # out of its family
    assert f"- not tested: **every explanation row**: {why}" in report_markdown(failing)
    without = build_results(_sdir(StudySettings(methods=["excon", "supcon"], controls=False)),
                            runs, {"excon": [], "supcon": []}, _sensitivity(runs))
    assert without["audit"] is None  # no audit: no rule
    assert {c["metric"]: c["verdict"] for c in without["comparisons"]}["alignment"] == \
        "equivalent"
