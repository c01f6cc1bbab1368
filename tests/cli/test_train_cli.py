"""The command line: training end to end, and one-line errors (no tracebacks) for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from extune.cli import main


def test_train_writes_outputs_and_summary(tiny_args, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *tiny_args, "--set", "method=ce", "--out", str(out), "--no-track"])
    assert code == 0
    printed = capsys.readouterr().out
    _assert_summary_order(printed)
    for name in ("config.yaml", "metrics.json", "checkpoint.pt", "saliency_grid.png"):
        assert (out / name).is_file(), name
    assert "test/accuracy" in json.loads((out / "metrics.json").read_text())["final"]

    code = main(["evaluate", "--checkpoint", str(out), "--split", "test",
                 "--set", "eval.explain_samples=8"])
    assert code == 0
    metrics = json.loads((out / "evaluation-test.json").read_text())
    assert "test/accuracy" in metrics and "test/adv/fgsm_accuracy" in metrics
    assert "test/randomisation_pass" in metrics  # extune evaluate measures the audit
    _explain_the_checkpoint(out, tmp_path)
    _audit_the_checkpoint(out, tmp_path, capsys)


def _assert_summary_order(printed: str) -> None:
    """The final table: test accuracy first, the metrics by kind, no bookkeeping values."""
    header = next(line for line in printed.splitlines() if "metric" in line)
    assert header.index("test") < header.index("val")  # the test split is the result
    rows = [line.split("│")[1].strip() for line in printed.splitlines() if line.count("│") > 2]
    assert rows[:2] == ["classification", "accuracy ↑"]
    order = ["classification", "accuracy ↑", "ece ↓", "robustness", "shift/accuracy ↑",
             "adv/fgsm_accuracy ↑", "explanations", "alignment ↑", "explanation audit",
             "randomisation_similarity ↓", "faithfulness_correlation ↑",
             "corruptions: accuracy / ECE", "contrast"]
    assert [rows.index(r) for r in order] == sorted(rows.index(r) for r in order)
    assert not any(r.startswith(("epoch", "lr", "images_per_s", "train/")) for r in rows)
    assert "training, last epoch: loss" in printed and "lr " not in printed


def _explain_the_checkpoint(run, tmp_path):
    """``extune explain``: validation images, a folder by class, a flat folder, bad input."""
    from PIL import Image

    from extune.train.checkpoint import load_checkpoint

    classes = load_checkpoint(run)["classes"]
    by_class, flat = tmp_path / "by_class", tmp_path / "flat"
    for i, name in enumerate(classes[:2] * 2):
        for folder in (by_class / name, flat):
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (24, 24), (60 * i, 100, 30)).save(folder / f"{i}.png")
    sizes = {}
    for label, extra in [("val", []), ("by_class", ["--images", str(by_class)]),
                         ("flat", ["--images", str(flat), "--explainer", "saliency"])]:
        png = tmp_path / f"{label}.png"
        assert main(["explain", "--checkpoint", str(run), "--count", "3", "-o", str(png),
                     *extra]) == 0
        with Image.open(png) as im:
            sizes[label] = im.size
    assert sizes["val"][1] == sizes["by_class"][1]  # image and saliency rows (CE), 2-line captions
    assert sizes["flat"][1] < sizes["val"][1]  # unknown classes: 1-line captions (prediction)
    (by_class / "no_such_class").mkdir()
    assert main(["explain", "--checkpoint", str(run), "--images", str(by_class)]) == 2
    assert main(["explain", "--checkpoint", str(run), "--explainer", "gradcm"]) == 2


def _audit_the_checkpoint(run, tmp_path, capsys):
    """``extune explain --audit``: the audit's table, the cascade's figure; bad input."""
    from PIL import Image

    capsys.readouterr()
    png = tmp_path / "audit.png"
    assert main(["explain", "--checkpoint", str(run), "--audit", "--count", "3", "-o",
                 str(png), "--set", "eval.explain_samples=8"]) == 0
    printed = capsys.readouterr().out
    for part in ("explanation audit of", "gradcam at layer3, 8 validation images",
                 "randomisation_similarity ↓", "faithfulness_correlation ↑",
                 "randomisation cascade", "classifier", "randomisation test ",
                 f"wrote {png}"):
        assert part in printed, part
    with Image.open(png) as im:  # 3 rows; image, map and 7 randomised layers of tiny_cnn
        assert im.size[0] > 1000 and im.size[1] > 300
    assert png.stat().st_size > 20_000
    assert main(["explain", "--checkpoint", str(tmp_path / "no_such_run"), "--audit"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "no_such_run" in error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error


@pytest.mark.parametrize("args, message", [
    (["train", "--set", "optim.lrr=0.1"], "unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
    (["train", "--set", "optim.lr=-1"], "optim.lr: -1.0 is out of range"),
    (["train", "--set", "method=magic"], "method: unknown method 'magic'; registered: ce, "),
    (["train", "--set", "data.name=imagenet22k"], "unknown data set 'imagenet22k'"),
    (["train", "--set", "model.backbone=vit_huge"], "unknown backbone 'vit_huge'"),
    (["train", "--set", "explain.explainer=lime"], "unknown explainer 'lime'"),
    (["train", "--set", "eval.explainer=gradcm"], "eval.explainer: unknown explainer 'gradcm'; "
                                                  "did you mean 'gradcam'?"),
    (["config", "--set", "model.backbone=resnet5"], "did you mean 'resnet50'?"),
    (["train", "--set", "data.name=cifar10", "--set", "data.root=/nonexistent"], "cifar-10"),
    (["train", "--config", "/nonexistent/config.yaml"], "cannot read config file"),
    (["evaluate", "--checkpoint", "/nonexistent"], "checkpoint not found"),
])
def test_bad_input_is_one_line_error(args, message, tiny_args, capsys):
    untracked = ["--no-track"] if args[0] == "train" else []  # no MLflow store in the repo
    assert main(args[:1] + tiny_args + untracked + args[1:]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split())
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_console_script_entry_point(tmp_path):
    """The installed `extune` command runs and reports errors with exit status 2."""
    code = ("import sys; from extune.cli import main; "
            "sys.exit(main(['train', '--set', 'optim.epochs=0']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "optim.epochs: 0 is out of range" in proc.stderr and "Traceback" not in proc.stderr


def test_an_exported_config_trains_with_progress(tiny_config, tmp_path, monkeypatch, capsys):
    """A search's trials train without a progress bar; the config it exports shows one (the
    user's runtime.progress), and a sign while each evaluation runs (one line in a log)."""
    from handmade_search import handmade_search

    monkeypatch.chdir(tmp_path)
    given = {k: v for k, v in tiny_config.flatten().items()
             if k.startswith(("data.", "model.", "optim.", "eval."))}
    given.update({"optim.epochs": 1, "data.cache_dir": "cache", "eval.corruptions": ["contrast"]})
    sdir = handmade_search("runs", [({"method": "excon", "optim.lr": 0.05}, 0.5)],
                           overrides=given)
    assert main(["export", str(sdir.path), "-o", "best.yaml"]) == 0
    assert main(["train", "--config", "best.yaml", "--out", "run", "--no-track"]) == 0
    err = capsys.readouterr().err
    assert err.count("epoch 1/1: validating…") == 1 and "epoch 1/1  train/loss" in err
    assert err.count("evaluating on the test split…") == 1
    assert (tmp_path / "cache").is_dir()  # the relative cache folder, from where it started

    assert main(["train", "--config", "best.yaml", "--set", "runtime.progress=false",
                 "--out", "quiet"]) == 0
    assert capsys.readouterr().err == ""  # as a search trial: nothing on the console (MLflow
    # tracking included: this run is recorded in ./mlflow.db)

    assert main(["evaluate", "--checkpoint", "run", "--split", "test"]) == 0
    assert capsys.readouterr().err.count("evaluating on the test split…") == 1  # not silent


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "--set", "method=edda"]) == 0
    assert "method: edda" in capsys.readouterr().out


def test_a_ray_job_is_warned_about_relative_output_paths(monkeypatch, capsys):
    from extune.cli._common import RAY_JOB_ENV, warn_job_paths

    warn_job_paths("runs/x", None)
    assert capsys.readouterr().out == ""  # not a job: nothing to say
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    warn_job_paths("runs/x", None)
    out = " ".join(capsys.readouterr().out.split())
    assert "--out runs/x and --tracking-uri sqlite:///mlflow.db would be lost" in out
    warn_job_paths("/shared/runs", "http://mlflow:5000")
    warn_job_paths("/shared/runs", None, tracked=False)
    assert capsys.readouterr().out == ""
