"""The training loop: every method end to end, metrics, checkpoints, resume, divergence."""

from __future__ import annotations

import json

import pytest
import torch

from extune.train import TrainingDiverged, fit
from extune.train.checkpoint import load_checkpoint
from extune.train.config import Config


@pytest.mark.parametrize("method", ["ce", "supcon", "excon", "edda", "random_occlusion"])
def test_every_method_trains_and_reports(tiny_config, tmp_path, method):
    cfg = tiny_config.with_overrides({"method": method, "excon.warmup_fraction": 0.5,
                                      "edda.warmup_fraction": 0.5})
    reports = []
    result = fit(cfg, out_dir=tmp_path / "run", report=lambda m, d: reports.append((m, d)))
    assert [m["epoch"] for m, _ in reports] == [1.0, 2.0]
    last = result.metrics
    for key in ("train/loss", "train/images_per_s", "val/accuracy", "val/top5", "val/ece",
                "val/alignment", "val/avg_drop", "val/deletion_auc", "shift/ece",
                "adv/fgsm_accuracy", "val/pointing_game"):
        assert key in last, key
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values() if isinstance(v, float))
    if method == "excon":
        assert 0.0 <= last["train/mask_keep_rate"] <= 1.0
        assert "train/mask_keep_rate" not in reports[0][0]  # warm-up epoch is plain SupCon
    if method in ("excon", "edda", "random_occlusion"):  # half the run (1 of 2 epochs) warms up
        assert reports[0][0]["train/driven_share"] == 0.0
        driven = reports[1][0]["train/driven_share"]
        if method == "excon":  # the share of masked views kept as view 0
            assert driven == pytest.approx(reports[1][0]["train/mask_keep_rate"])
        else:  # the occluded share of each batch
            assert driven == pytest.approx(round(0.5 * cfg.optim.batch_size)
                                           / cfg.optim.batch_size)
    out = tmp_path / "run"
    assert (out / "checkpoint.pt").is_file() and (out / "saliency_grid.png").is_file()
    assert Config.load(out / "config.yaml") == cfg
    saved = json.loads((out / "metrics.json").read_text())
    assert len(saved["history"]) == 2 and saved["final"]["val/accuracy"] == last["val/accuracy"]
    assert reports[-1][1] == out


def test_excon_negative_pairs_report_background_samples(tiny_config, tmp_path):
    cfg = tiny_config.with_overrides({"method": "excon", "excon.warmup_fraction": 0.0,
                                      "excon.negative_pair": True,
                                      "excon.background_anchor": True, "optim.epochs": 1})
    m = fit(cfg, out_dir=tmp_path).metrics
    # every rejected masked view is a background sample: per batch, (1 - keep) * batch size
    expected = (1 - m["train/mask_keep_rate"]) * cfg.optim.batch_size
    assert m["train/background_samples"] == pytest.approx(expected, abs=1e-4)


def test_checkpoint_loads_with_weights_only(tiny_config, tmp_path):
    fit(tiny_config.with_overrides({"method": "ce", "optim.epochs": 1}), out_dir=tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True inside
    assert ckpt["epoch"] == 0 and Config.from_dict(ckpt["config"]).method == "ce"


class _Stop(Exception):
    pass


def test_resume_continues_exactly(tiny_config, tmp_path):
    # ExCon with one warm-up epoch: epoch 1 is SupCon, the resumed epoch 2 explains and masks
    cfg = tiny_config.with_overrides({"method": "excon", "excon.warmup_fraction": 0.5})
    straight = fit(cfg, out_dir=tmp_path / "a")

    def stop_after_first(metrics, _):
        raise _Stop

    with pytest.raises(_Stop):
        fit(cfg, out_dir=tmp_path / "b", report=stop_after_first)
    resumed = fit(cfg, out_dir=tmp_path / "b", resume=tmp_path / "b")
    assert [m["epoch"] for m in resumed.history] == [1.0, 2.0]
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert resumed.metrics["val/accuracy"] == straight.metrics["val/accuracy"]


def test_an_epoch_stopped_before_its_record_is_recorded_on_resume(tiny_config, tmp_path):
    """Stopped between epoch 1's checkpoint and its record (``on_epoch``: ``extune train``'s
    MLflow writes), the resumed training hands epoch 1 to ``on_epoch`` before epoch 2: no
    epoch goes unrecorded (a SIGHUP there once lost one)."""
    cfg = tiny_config.with_overrides({"method": "ce"})

    def stopped_before_recording(metrics):
        raise _Stop

    with pytest.raises(_Stop):
        fit(cfg, out_dir=tmp_path, on_epoch=stopped_before_recording)
    recorded = []
    fit(cfg, out_dir=tmp_path, resume=tmp_path, on_epoch=recorded.append)
    assert [m["epoch"] for m in recorded] == [1.0, 2.0]


def test_non_finite_loss_raises(tiny_config, tmp_path):
    cfg = tiny_config.with_overrides({"method": "ce", "optim.lr": 1e30, "optim.epochs": 1})
    with pytest.raises(TrainingDiverged, match="non-finite"):
        fit(cfg, out_dir=tmp_path)


def test_test_split_only_when_asked(tiny_config, tmp_path):
    cfg = tiny_config.with_overrides({"method": "ce", "optim.epochs": 1})
    assert not any(k.startswith("test/") for k in fit(cfg, out_dir=tmp_path / "a").metrics)
    final = fit(cfg, out_dir=tmp_path / "b", test=True).metrics
    assert "test/accuracy" in final and "test/pointing_game" in final
    assert not (tmp_path / "b" / "test_outputs.npz").exists()  # only with eval.per_image


def test_per_image_test_outputs_travel_with_the_last_checkpoint(tiny_config, tmp_path):
    import numpy as np

    cfg = tiny_config.with_overrides({"method": "ce", "eval.test": True,
                                      "eval.per_image": True})
    seen = []
    result = fit(cfg, out_dir=tmp_path, report=lambda m, d: seen.append(
        (d / "test_outputs.npz").is_file()))
    assert seen == [False, True]  # in the folder when the last epoch is reported
    with np.load(tmp_path / "test_outputs.npz") as saved:
        assert saved["test/correct"].mean() == pytest.approx(result.metrics["test/accuracy"])
        assert np.nanmean(saved["test/alignment"]) == pytest.approx(
            result.metrics["test/alignment"])
        for m in ("randomisation_similarity", "faithfulness_correlation"):  # the audit's too
            assert saved[f"test/{m}"].shape == saved["test/explain_index"].shape
            assert np.nanmean(saved[f"test/{m}"]) == pytest.approx(result.metrics[f"test/{m}"])
    seconds = [h["train/seconds"] for h in result.history]
    assert 0 < seconds[0] < seconds[1]  # the run's time so far (compute of a study's budget)


def test_objectives_every_epoch_full_suite_where_asked(tiny_config, tmp_path):
    cfg = tiny_config.with_overrides({"method": "ce", "optim.epochs": 3})
    reports = []
    fit(cfg, out_dir=tmp_path / "a", report=lambda m, d: reports.append(m),
        objectives=("val/alignment",), full_epochs=(2,))
    first, second, last = reports
    assert "val/alignment" in first and "val/deletion_auc" in first  # the objective's group
    assert "shift/ece" not in first and "adv/fgsm_accuracy" not in first
    assert "shift/ece" in second and "adv/fgsm_accuracy" in second  # a requested milestone
    assert "shift/ece" in last and "val/pointing_game" in last  # always after the last epoch
    audit = "val/randomisation_similarity"  # the audit: the end-of-run suite only
    assert audit not in first and audit not in second and audit in last
    assert last["val/randomisation_pass"] in (0.0, 1.0) and "val/sparseness" in last


def test_the_audit_runs_at_the_end_only_and_when_asked(tiny_config, tmp_path):
    cfg = tiny_config.with_overrides({"method": "ce", "optim.epochs": 2, "eval.every": 1})
    reports = []
    fit(cfg, out_dir=tmp_path / "a", report=lambda m, d: reports.append(m))
    assert "shift/ece" in reports[0] and "val/sparseness" not in reports[0]  # full, no audit
    assert "val/sparseness" in reports[1]
    tested = fit(cfg, out_dir=tmp_path / "b", test=True).metrics  # once, on the run's result
    assert "test/sparseness" in tested and "val/sparseness" not in tested
    asked = []  # an objective among the audit's keys brings the audit every epoch
    off = fit(cfg.with_overrides({"eval.audit": False}), out_dir=tmp_path / "c", test=True,
              report=lambda m, d: asked.append(m), objectives=("val/faithfulness_correlation",))
    assert all("val/faithfulness_correlation" in m for m in asked)
    assert not any(k.startswith("test/") and k.endswith("/sparseness") for k in off.metrics)


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_shows_each_evaluation_once_in_a_log(terminal):
    """A log gets one line per phase (never one per part, never a bar); a terminal a live line
    that vanishes; ``runtime.progress=false`` nothing."""
    import io

    from rich.console import Console

    from extune.train.progress import EpochProgress

    out = io.StringIO()
    progress = EpochProgress(console=Console(file=out, force_terminal=terminal, width=100))
    assert list(progress.steps(0, 2, 3)) == [0, 1, 2]
    with progress.phase("epoch 1/2: validating") as part:
        for name in ("classification", "FGSM", "explanation metrics"):
            part(name)
    text = out.getvalue()
    if terminal:
        assert "validating: explanation metrics…" in text  # the live line names each part
    else:
        assert text == "epoch 1/2: validating…\n"
    quiet_out = io.StringIO()
    quiet = EpochProgress(enabled=False, console=Console(file=quiet_out, force_terminal=True))
    with quiet.phase("epoch 1/2: validating") as part:
        part("FGSM")
    quiet.summary(0, 2, {"val/accuracy": 0.5})
    assert list(quiet.steps(0, 2, 2)) == [0, 1] and quiet_out.getvalue() == ""
