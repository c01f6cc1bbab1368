"""A study's plan: claims and families from a plan file, the plan and its hash written before
the first trial, a deviation when it changes, controls that train the same config with the
explanation-driven part off, and settings held for every method (no Ray, no training)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from extune.errors import ConfigError
from extune.study.claims import claims_from_plan
from extune.study.folder import StudyDir
from extune.study.plan import build_plan, load_plan_file, parse_plan, plan_hash
from extune.study.settings import StudySettings
from extune.train.config import Config

PLAN = """
claims:
  - a: excon
    b: ce
    source: our lab's hypothesis
    primary: [avg_drop, accuracy]
    secondary: alignment
    sources: {avg_drop: ExCon's eval.py}
margins: {accuracy: 0.01}
min_driven_share: 0.3
"""


def test_claims_and_families_come_from_a_plan_file(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    plan = load_plan_file(path)
    (claim,) = claims_from_plan(plan["claims"])
    assert (claim.a, claim.b, claim.source) == ("excon", "ce", "our lab's hypothesis")
    assert [(m.metric, m.family, m.source) for m in claim.metrics] == [
        ("avg_drop", "primary", "ExCon's eval.py"),
        ("accuracy", "primary", "the plan's author"),
        ("alignment", "secondary", "extune (a measure the paper does not use)")]
    settings = StudySettings(plan=plan)
    assert settings.methods == ["ce", "excon"]  # the plan's methods, in registration order
    assert settings.margin("accuracy") == 0.01 and settings.margin("alignment") == 0.02
    assert settings.resolved_min_driven_share() == 0.3
    assert StudySettings(plan=plan, min_driven_share=0.1).resolved_min_driven_share() == 0.1
    built = build_plan(settings)
    assert built["claims"] == plan["claims"] and built["margins"]["accuracy"] == 0.01
    assert built["controls"] == {"excon": [{"arm": "excon-off", "trains": "supcon",
                                            "what": built["controls"]["excon"][0]["what"]}]}


def test_a_plan_file_may_name_the_audit_metrics(tmp_path):
    """Plan files keep working: the audit's metrics join a claim only where a file names them."""
    path = tmp_path / "plan.yaml"
    path.write_text("claims:\n  - {a: edda, b: ce, primary: [alignment],\n"
                    "     secondary: [faithfulness_correlation, randomisation_similarity]}\n"
                    "margins: {sparseness: 0.05, effective_complexity: 8}\n")
    plan = load_plan_file(path)
    (claim,) = claims_from_plan(plan["claims"])
    assert [(m.metric, m.family) for m in claim.metrics] == [
        ("alignment", "primary"), ("faithfulness_correlation", "secondary"),
        ("randomisation_similarity", "secondary")]
    assert plan["margins"] == {"sparseness": 0.05, "effective_complexity": 8.0}
    (old,) = claims_from_plan(parse_plan({"claims": [{"a": "excon", "b": "ce",
                                                       "primary": ["accuracy"]}]})["claims"])
    assert [m.metric for m in old.metrics] == ["accuracy"]  # nothing added to a file's claims


@pytest.mark.parametrize("text, message", [
    ("claims: []", "'claims' must be a list"),
    ("claims: [{a: excon, b: supcon}]\nextra: 1", "unknown key 'extra'"),
    ("claims: [{a: excon, b: supcn, primary: [accuracy]}]", "b='supcn' is not a registered"),
    ("claims: [{a: excon, b: excon, primary: [accuracy]}]", "a and b are both excon"),
    ("claims: [{a: excon, b: ce, primary: [acuracy]}]", "unknown metric 'acuracy'"),
    ("claims: [{a: excon, b: ce, primary: [accuracy], secondary: [accuracy]}]",
     "accuracy is listed twice"),
    ("claims: [{a: excon, b: ce}]", "name its metrics under primary"),
    ("claims: [{a: excon, b: ce, primary: [accuracy], sources: {ece: x}}]",
     "sources names ece"),
    ("claims: [{a: excon, b: ce, primary: [accuracy]}]\nmargins: {accuracy: -1}",
     "margin accuracy=-1"),
    ("claims: [{a: excon, b: ce, primary: [accuracy]}]\nmin_driven_share: 2",
     "min_driven_share must be a number in [0, 1]"),
    ("claims: [{a: excon, b: ce, primary: [accuracy]}]\ncontrols: maybe",
     "controls must be true or false"),
    ("claims: [{a: excon, b: ce, primary: [accuracy]}]\nclaims: []", "plan file"),
])
def test_a_bad_plan_file_is_one_line_naming_the_entry(tmp_path, text, message):
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        load_plan_file(path)
    assert "\n" not in str(e.value)


def test_a_plan_claim_outside_the_studys_methods_is_refused():
    plan = parse_plan({"claims": [{"a": "excon", "b": "ce", "primary": ["accuracy"]}]})
    with pytest.raises(ConfigError, match="names a method not in --methods"):
        StudySettings(methods=["ce", "edda"], plan=plan)


def test_the_built_in_plan_takes_the_papers_measures_as_primary_and_holds_shared_settings():
    settings = StudySettings(methods=["ce", "supcon", "excon", "edda"])
    plan = build_plan(settings)
    families = {(c["a"], c["b"]): {m["metric"]: m["family"] for m in c["metrics"]}
                for c in plan["claims"]}
    excon = families[("excon", "supcon")]
    assert [m for m, f in excon.items() if f == "primary"] == [
        "avg_drop", "increase_confidence", "accuracy", "fgsm_accuracy", "shift_ece"]
    audit = {"randomisation_similarity", "random_logit_similarity", "max_sensitivity",
             "avg_sensitivity", "sparseness", "effective_complexity", "faithfulness_correlation"}
    assert {m for m, f in excon.items() if f == "secondary"} == {
        "alignment", "deletion_auc", "insertion_auc", "pointing_game", "saliency_in_mask",
        *audit}  # the explanation audit joins every explanation claim's secondary family
    assert [m for m, f in families[("edda", "ce")].items() if f == "primary"] == [
        "alignment", "accuracy"]
    assert audit <= {m for m, f in families[("edda", "ce")].items() if f == "secondary"}
    assert plan["margins"]["effective_complexity"] == 20.0  # pixels
    assert plan["protocol"]["audit"]["threshold"] == pytest.approx(0.5 ** 0.5)
    assert ("edda", "random_occlusion") not in families  # not in this study
    # label smoothing: CE's space searches it, every method's loss reads it -> held for all
    assert plan["held"] == {"optim.label_smoothing": {
        "value": 0.0, "searched_by": ["ce"],
        "read_by": ["ce", "supcon", "excon", "edda"]}}
    assert set(plan["controls"]) == {"excon", "edda"}
    # EDDA's controls: no occlusions, and random occlusions of its chosen sizes (whether or
    # not the study compares with the random_occlusion method's own search)
    assert [(a["arm"], a["trains"]) for a in plan["controls"]["edda"]] == [
        ("edda-off", "ce"), ("edda-random", "random_occlusion")]
    assert "optim.lr" in plan["spaces"]["excon"]["searched"]
    assert plan["spaces"]["excon"]["constant"] == {"method": "excon"}
    assert plan["protocol"]["explain_samples"] == 500 and plan["seeds"]["final"] == [1, 2, 3,
                                                                                   4, 5]
    assert plan_hash(plan) == plan_hash(build_plan(settings))  # same settings, same plan
    assert plan_hash(build_plan(StudySettings(methods=["ce", "supcon", "excon", "edda"],
                                              seeds=6))) != plan_hash(plan)
    search = settings.search_settings("ce", 0, out=".", parent_run=None, study_id="",
                                      held={"optim.label_smoothing": 0.0})
    assert search.fixed == {"optim.label_smoothing": 0.0}


def test_the_plan_is_written_with_its_hash_and_a_change_is_a_deviation(tmp_path):
    settings = StudySettings.preset(True, methods=["ce", "excon"], out=str(tmp_path),
                                    name="s")
    sdir = StudyDir.create(settings)
    digest = sdir.write_plan(build_plan(settings))
    assert json.loads((sdir.path / "study.json").read_text())["plan_hash"] == digest
    assert plan_hash(json.loads((sdir.path / "plan.json").read_text())) == digest
    assert StudyDir.load(sdir.path).check_plan() == []  # unchanged: nothing recorded

    sdir = StudyDir.load(sdir.path)  # --resume --plan with other claims
    sdir.change_settings(plan=parse_plan({"claims": [
        {"a": "excon", "b": "ce", "primary": ["accuracy"]}]}))
    (deviation,) = sdir.check_plan()
    assert deviation["setting"] == "plan" and deviation["from"] == digest
    assert "claims" in deviation["changed"] and "margins" in deviation["changed"]
    assert StudyDir.load(sdir.path).plan()["claims"][0]["b"] == "ce"  # plan-current.json
    assert plan_hash(json.loads((sdir.path / "plan.json").read_text())) == digest  # kept

    plan = json.loads((sdir.path / "plan.json").read_text())
    plan["margins"]["accuracy"] = 0.5  # edited by hand after the start
    (sdir.path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ConfigError, match="was changed after the study started"):
        StudyDir.load(sdir.path).check_plan()


def test_a_control_arm_trains_the_methods_config_and_seeds_with_its_part_off(tmp_path):
    from extune.study.retrain import final_points
    from extune.tracking.trials import ARM

    settings = StudySettings.preset(True, methods=["supcon", "excon"], seeds=4, search_seeds=2)
    base = settings.base_config()
    base.save(tmp_path / "base.yaml")
    chosen = {}
    for method, lrs in (("excon", (0.2, 0.3)), ("supcon", (0.1, 0.4))):
        files = []
        for i, lr in enumerate(lrs):
            path = tmp_path / f"{method}-{i}.yaml"
            base.with_overrides({"method": method, "optim.lr": lr,
                                 "excon.mask_threshold": 0.7}).save(path)
            files.append({"config": str(path)})
        chosen[method] = files
    sdir = SimpleNamespace(settings=settings, base_file=tmp_path / "base.yaml",
                           final_dir=tmp_path / "final")
    controls = build_plan(settings)["controls"]
    _, points = final_points(sdir, chosen, controls)
    arms = {}
    for p in points:
        arms.setdefault(p.get(ARM, p["method"]), []).append(p)
    assert set(arms) == {"excon", "excon-off", "supcon"}
    for on, off in zip(arms["excon"], arms["excon-off"], strict=True):
        assert off["method"] == "supcon" and on["method"] == "excon"
        assert off["runtime.seed"] == on["runtime.seed"]
        assert off["_search_index"] == on["_search_index"]  # the same search's config
        same = {k for k in on if not k.startswith("_") and k != "method"}
        assert {k: off[k] for k in same} == {k: on[k] for k in same}
        assert off["_label"] == f"excon-off-seed{on['runtime.seed']}"
    assert [p["optim.lr"] for p in arms["excon-off"]] == [0.2, 0.3, 0.2, 0.3]
    saved = Config.load(tmp_path / "final" / "configs" / "excon-off.yaml")
    assert saved.method == "supcon" and saved.optim.lr == 0.2
    assert saved.eval.per_image and saved.eval.test  # keeps its per-image test outputs
    no_controls = StudySettings.preset(True, methods=["supcon", "excon"], controls=False)
    assert build_plan(no_controls)["controls"] == {}


def test_a_setting_added_to_extune_after_the_start_is_no_deviation(tmp_path, monkeypatch):
    import extune.study.plan as plan_module

    settings = StudySettings.preset(True, methods=["ce"], out=str(tmp_path), name="s")
    sdir = StudyDir.create(settings)
    sdir.write_plan(build_plan(settings))
    real = plan_module.build_plan

    def with_a_new_setting(s):  # a later extune knows one more config key
        plan = real(s)
        plan["base_config"]["eval.new_setting"] = True
        return plan

    monkeypatch.setattr(plan_module, "build_plan", with_a_new_setting)
    assert StudyDir.load(sdir.path).check_plan() == []
