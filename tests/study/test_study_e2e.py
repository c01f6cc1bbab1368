"""``extune study --quick`` end to end (real Ray, real training, MLflow SQLite): interrupted after
the searches, resumed, then resumed again; nothing is trained twice, the report, results and
plots exist and MLflow holds one study run with the searches, final runs and ExCon's control
as children; then resumed with more seeds (the finished runs are reused) and other final
epochs, each recorded as a deviation of the settings and of the plan."""

from __future__ import annotations

import json

import pytest
from stores import sqlite_store

from extune.cli import main
from extune.tracking.client import mlflow_client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_ray():
    """One Ray for the study's nine commands (each would start and stop its own: a study
    reuses a Ray that is already up, as in a notebook); what is tested is the study's state
    across commands, not Ray's start."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _study_runs(uri: str) -> dict[str, list]:
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name("study-e2e")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_role: dict[str, list] = {}
    for run in runs:
        by_role.setdefault(run.data.tags.get("extune.role", "?"), []).append(run)
    return by_role


def test_quick_study_resumes_without_training_twice(tmp_path, monkeypatch, one_ray):
    import extune.study.retrain as final
    import extune.study.run as study_run

    uri = sqlite_store(tmp_path / "mlflow.db")
    args = ["study", "--quick", "--methods", "supcon,excon", "--name", "s", "--out",
            str(tmp_path / "runs"), "--tracking-uri", uri, "--experiment", "study-e2e",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--no-live"]
    import extune.search.engine.run as tuner

    real_stage, real_search = final.run_final_stage, tuner.run_search
    assert study_run.run_study  # the stages import run_final_stage and run_search on use

    def ctrl_c_in_search(*a, **k):  # Tune returns normally on Ctrl-C; the result says so
        result = real_search(*a, **k)
        result.interrupted = True
        return result

    monkeypatch.setattr(tuner, "run_search", ctrl_c_in_search)
    assert main(args) == 130  # the first search was interrupted: the study stops there
    folder = tmp_path / "runs" / "s"
    assert not (folder / "searches" / "excon").exists()
    plan = json.loads((folder / "plan.json").read_text())  # written before the first trial
    assert plan["controls"]["excon"][0]["arm"] == "excon-off"
    monkeypatch.setattr(tuner, "run_search", real_search)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(final, "run_final_stage", interrupted)
    assert main(["study", "--resume", str(folder)]) == 130  # interrupted after both searches
    assert json.loads((folder / "study.json").read_text())["status"] == "interrupted"
    assert (folder / "searches" / "excon" / "best_config.yaml").is_file()
    assert _study_runs(uri)["study"][0].info.status == "KILLED"

    monkeypatch.setattr(final, "run_final_stage", real_stage)
    assert main(["study", "--resume", str(folder)]) == 0
    for name in ("report.md", "results.json", "plots/overview.png", "plots/accuracy.png",
                 "final/configs/excon.yaml", "final/configs/excon-off.yaml"):
        assert (folder / name).is_file(), name
    # Ray kept two checkpoints per running final run (2 epochs); each ended run keeps its last
    final_runs = [p.parent for p in (folder / "final").rglob("result.json")]
    assert len(final_runs) == 6 and all(
        [c.name for c in run.glob("checkpoint_*")] == ["checkpoint_000001"] for run in final_runs)
    results = json.loads((folder / "results.json").read_text())
    assert set(results["methods"]) == {"supcon", "excon", "excon-off"}
    for arm in ("supcon", "excon", "excon-off"):
        runs = results["methods"][arm]["runs"]
        assert [r["state"] for r in runs] == ["complete", "complete"]
        assert all("test/accuracy" in r["metrics"] and len(r["history"]) == 2 for r in runs)
        assert all(r["protocol"]["explainer"] == "gradcam" and r["per_image"] for r in runs)
        assert results["methods"][arm]["final"]["accuracy"]["n"] == 2
    assert [r["trains"] for r in results["methods"]["excon-off"]["runs"]] == ["supcon"] * 2
    rows = {(c["kind"], c["a"], c["b"], c["metric"]): c for c in results["comparisons"]}
    assert rows[("claim", "excon", "supcon", "avg_drop")]["family"] == "primary"
    assert rows[("claim", "excon", "supcon", "alignment")]["family"] == "secondary"
    assert ("control", "excon", "excon-off", "avg_drop") in rows
    assert results["statistics"]["test_set"] and "test-set sampling" in \
        results["intervals_cover"]
    assert results["plan"]["hash"] == json.loads((folder / "study.json").read_text())[
        "plan_hash"]
    assert all(c["verdict"] in ("holds", "reversed", "equivalent", "not shown", "not tested")
               for c in results["comparisons"])
    assert results["protocol"]["explainer"] == "gradcam" and results["versions"]["ray"]
    assert [p["text"] for p in results["sensitivity"]["protocols"]] == [
        "gradcam", "gradcam:previous", "integrated_gradients"]
    _check_audit(folder, results, rows)
    report = (folder / "report.md").read_text()
    for part in ("**Smoke test**", "## Claims", "excon vs supcon", "## Controls",
                 "## Explanation audit", "## Sensitivity", "## Per seed", "## Compute", "## Reproducibility", "p adj.",
                 "**Plan** fixed before the first trial"):
        assert part in report, part

    before = _check_mlflow(uri)
    assert main(["study", "--resume", str(folder)]) == 0  # finished: nothing more is trained
    assert _check_mlflow(uri) == before

    # more seeds: the six finished runs are reused, three are trained; then other final epochs
    # (fewer: the nine runs are trained again, and one epoch each costs least)
    assert main(["study", "--resume", str(folder), "--seeds", "3"]) == 0
    results = json.loads((folder / "results.json").read_text())
    assert [r["seed"] for r in results["methods"]["supcon"]["runs"]] == [1, 2, 3]
    assert _final_runs(uri) == 9
    assert main(["study", "--resume", str(folder), "--final-epochs", "1"]) == 0
    results = json.loads((folder / "results.json").read_text())
    assert all(r["epochs"] == 1 and r["state"] == "complete"
               for m in results["methods"].values() for r in m["runs"])
    assert [(d["setting"], d.get("changed")) if d["setting"] == "plan" else
            (d["setting"], d["from"], d["to"]) for d in results["deviations"]] == [
        ("seeds", 2, 3), ("plan", ["seeds"]), ("final_epochs", 2, 1), ("plan", ["budget"])]
    report = (folder / "report.md").read_text()
    assert "`final_epochs` 2 -> 1" in report and "the plan changed (budget)" in report
    assert _final_runs(uri) == 18
    assert main(["study", "--resume", str(folder), "--trials", "4"]) == 2  # not changeable
    # other sensitivity protocols re-score the checkpoints: nothing is trained again
    assert main(["study", "--resume", str(folder), "--protocols", "gradcam:nolayer"]) == 2
    assert main(["study", "--resume", str(folder), "--protocols", "gradcam"]) == 0
    results = json.loads((folder / "results.json").read_text())
    assert [p["text"] for p in results["sensitivity"]["protocols"]] == ["gradcam"]
    assert results["deviations"][-2]["setting"] == "protocols"
    assert _final_runs(uri) == 18


def _check_audit(folder, results: dict, rows: dict) -> None:
    """The explanation audit: every final run measured it on its test split (the main
    protocol is not re-scored); the randomisation test under the other protocols, cached with
    per-image scores; its metrics in the claims' secondary family; a verdict per protocol."""
    audit = json.loads((folder / "final" / "audit.json").read_text())
    assert all(set(by) == {"gradcam:previous", "integrated_gradients"} for by in audit.values())
    assert len(audit) == 6 and len(list((folder / "final" / "audit").glob("*.npz"))) == 12
    for arm in ("supcon", "excon", "excon-off"):
        for run in results["methods"][arm]["runs"]:
            assert "test/randomisation_similarity" in run["metrics"]
            assert run["metrics"]["test/randomisation_pass"] in (0.0, 1.0)
    checked = [p["text"] for p in results["audit"]["protocols"]]
    assert checked == ["gradcam", "gradcam:previous", "integrated_gradients"]
    assert all(set(p["similarity"]) == {"supcon", "excon", "excon-off"}
               for p in results["audit"]["protocols"])
    assert rows[("claim", "excon", "supcon", "faithfulness_correlation")]["family"] == \
        "secondary"
    assert ("control", "excon", "excon-off", "randomisation_similarity") in rows
    assert results["wall_s"]["audit"] >= 0


def _final_runs(uri: str) -> int:
    return sum(r.data.tags.get("extune.stage") == "final" for r in _study_runs(uri)["final"])


def _check_mlflow(uri: str) -> tuple[int, int, int]:
    """One FINISHED study run; the two searches and six final runs (the control's too) as its
    children; every trial once; every final run's epochs logged once."""
    by_role = _study_runs(uri)
    (study,) = by_role["study"]
    assert study.info.status == "FINISHED"
    assert "supcon/test/accuracy" in study.data.metrics
    assert "excon-off/test/accuracy" in study.data.metrics
    study_id = study.info.run_id
    searches = by_role["search"]
    assert sorted(r.data.tags["extune.method"] for r in searches) == ["excon", "supcon"]
    assert all(r.data.tags["mlflow.parentRunId"] == study_id for r in searches)
    finals = by_role["final"]  # a study's final runs are never 'trial' (a trials filter)
    assert all(r.data.tags.get("extune.stage") == "final" for r in finals)
    assert sorted(r.info.run_name.split(" · ")[0] for r in finals) == [
        "excon-off-seed1", "excon-off-seed2", "excon-seed1", "excon-seed2", "supcon-seed1",
        "supcon-seed2"]
    assert all(r.data.tags["mlflow.parentRunId"] == study_id for r in finals)
    controls = [r for r in finals if r.data.tags.get("extune.arm") == "excon-off"]
    assert len(controls) == 2 and {r.data.tags["extune.method"] for r in controls} == {"supcon"}
    assert all(r.info.status == "FINISHED" and "test/accuracy" in r.data.metrics
               for r in finals)
    search_trials = by_role["trial"]
    assert len(search_trials) == 4  # 2 per search, none duplicated
    client = mlflow_client(uri)
    for run in finals:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert steps == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(study_id)}
    assert {"report.md", "results.json", "plots", "plan.json"} <= artifacts
    return len(searches), len(finals), len(search_trials)
