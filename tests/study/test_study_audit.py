"""The study's audit stage on real (untrained, tiny) checkpoints, without Ray: what it re-scores,
what it takes from the final runs, what it caches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from extune.evaluate.audit import AUDIT_SUMMARY
from extune.study.folder import StudyDir
from extune.study.sensitivity import AUDIT_FILE, _Scorer, audit_stage
from extune.study.settings import StudySettings
from extune.train.checkpoint import save_checkpoint
from extune.train.methods import config_model

TINY_STUDY = {"data.name": "synthetic", "data.image_size": 16, "data.train_size": 40,
              "data.test_size": 16, "data.num_classes": 4, "model.backbone": "tiny_cnn",
              "eval.explain_samples": 8, "eval.batch_size": 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny batches: one is fastest


def _run(sdir, label: str, seed: int, metrics: dict) -> dict:
    """A complete final run of ``ce`` whose checkpoint is an untrained tiny CNN."""
    cfg = sdir.settings.final_config(sdir.settings.base_config(), seed)
    folder = sdir.final_dir / label
    save_checkpoint({"epoch": 0, "model": config_model(cfg, 4).state_dict(),
                     "config": cfg.to_dict()}, folder / "checkpoint.pt")
    return {"method": "ce", "label": label, "seed": seed, "seed_index": seed - 1,
            "state": "complete", "checkpoint": str(folder), "metrics": metrics}


def test_the_audit_stage_audits_what_the_runs_lack_and_caches_it(tmp_path, monkeypatch):
    settings = StudySettings(methods=["ce"], seeds=2, out=str(tmp_path), name="s",
                             protocols="gradcam,integrated_gradients",
                             overrides={**TINY_STUDY, "data.cache_dir": str(tmp_path / "c")})
    sdir = StudyDir.create(settings)
    own = {"test/randomisation_similarity": 0.1, "test/randomisation_pass": 1.0}
    runs = [_run(sdir, "ce-seed1", 1, {"test/accuracy": 0.3, **own}),  # its test split audited
            _run(sdir, "ce-seed2", 2, {"test/accuracy": 0.3})]  # an older run: not audited
    found = audit_stage(sdir, runs)
    assert found["protocols"] == ["gradcam", "integrated_gradients"]  # the main one first
    assert found["threshold"] == pytest.approx(0.5 ** 0.5)
    cache = json.loads((sdir.final_dir / AUDIT_FILE).read_text())
    assert set(cache[runs[0]["checkpoint"]]) == {"integrated_gradients"}  # the run's own kept
    assert set(cache[runs[1]["checkpoint"]]) == {"gradcam", "integrated_gradients"}
    main, ig = found["scores"]["gradcam"], found["scores"]["integrated_gradients"]
    assert main["ce-seed1"] == own and found["per_image"]["gradcam"]["ce-seed1"] is None
    assert "test/randomisation_pass" in main["ce-seed2"]  # every audit metric, re-scored
    assert set(main["ce-seed2"]) <= {f"test/{m}" for m in AUDIT_SUMMARY}
    assert len(main["ce-seed2"]) >= 6  # all but what the untrained maps leave undefined
    for label in ("ce-seed1", "ce-seed2"):  # the randomisation test under the other protocol
        assert set(ig[label]) == {"test/randomisation_similarity", "test/randomisation_pass"}
        assert ig[label]["test/randomisation_pass"] == float(
            ig[label]["test/randomisation_similarity"] < 0.5 ** 0.5)
        with np.load(found["per_image"]["integrated_gradients"][label]) as saved:
            assert saved["test/explain_index"].shape == (16,)  # every test image (< 500)
            assert saved["test/randomisation_similarity"].shape == (16,)
            assert np.nanmean(saved["test/randomisation_similarity"]) == pytest.approx(
                ig[label]["test/randomisation_similarity"], nan_ok=True)
    with np.load(found["per_image"]["gradcam"]["ce-seed2"]) as saved:
        assert saved["test/faithfulness_correlation"].shape == (16,)

    def never(*a, **k):
        raise AssertionError("scored twice")

    monkeypatch.setattr(_Scorer, "audit", never)
    assert audit_stage(StudyDir.load(sdir.path), runs) == found  # cached: nothing re-scored


@pytest.mark.slow  # starts Ray
def test_with_gpus_in_ray_checkpoints_are_scored_as_ray_tasks_with_the_same_scores(tmp_path):
    import os

    import ray
    import torch

    from extune.study.sensitivity import rescore_stage

    def stages(folder: str) -> tuple[StudyDir, dict, dict]:
        settings = StudySettings(methods=["ce"], seeds=2, out=str(tmp_path / folder), name="s",
                                 protocols="gradcam,gradcam:previous",
                                 overrides={**TINY_STUDY, "data.cache_dir": str(tmp_path / "c")})
        sdir = StudyDir.create(settings)
        torch.manual_seed(0)  # the same untrained checkpoints in both folders
        runs = [_run(sdir, f"ce-seed{seed}", seed, {"test/accuracy": 0.3}) for seed in (1, 2)]
        return sdir, rescore_stage(sdir, runs), audit_stage(sdir, runs)

    _, here_scores, here_audit = stages("here")  # no Ray: in this process
    # a declared GPU (none real: the tasks score on the CPU): where the tasks would go
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
             log_to_driver=False)
    try:
        sdir, scores, audit = stages("ray")
    finally:
        ray.shutdown()
    assert scores["scores"].keys() == here_scores["scores"].keys()
    for protocol, by_label in here_scores["scores"].items():
        for label, metrics in by_label.items():
            assert scores["scores"][protocol][label] == pytest.approx(metrics, nan_ok=True)
    for protocol, by_label in here_audit["scores"].items():
        for label, metrics in by_label.items():
            assert audit["scores"][protocol][label] == pytest.approx(metrics, nan_ok=True)
    places = StudyDir.load(sdir.path).meta["scored_on"]
    assert len(places["score"]) == 2 and len(places["audit"]) == 4  # 2 runs x protocols
    assert all(p["pid"] != os.getpid() and p["device"] == "cpu" and p["gpu_ids"] == ["0"]
               for p in places["score"] + places["audit"])
