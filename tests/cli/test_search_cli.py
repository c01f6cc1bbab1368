"""``extune search`` / ``export`` / ``ui``: bad input fails in one line before Ray starts."""

from __future__ import annotations

import pytest

from extune.cli import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["search", "--space", "excn"], "unknown space 'excn'; did you mean 'excon'?"),
    (["search", "--space", "missing.yaml"], "cannot read space file missing.yaml"),
    (["search", "--sampler", "grid"], "unknown sampler 'grid'"),
    (["search", "--objective", "speed"], "unknown objective 'speed'"),
    (["search", "--trials", "0"], "--trials must be >= 1"),
    (["search", "--set", "optim.lrr=1"], "unknown config key 'optim.lrr'; did you mean"),
    (["search", "--config", "nope.yaml"], "cannot read config file nope.yaml"),
    (["search", "--address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
    (["search", "--address", "ray://:x"], "--address 'ray://:x'"),
    (["search", "--tracking-uri", "http://127.0.0.1:1"],
     "cannot reach the MLflow tracking server at http://127.0.0.1:1"),
    (["search", "--resume", ".", "--trials", "3"], "drop --trials"),
    (["search", "--resume", "."], "is not a search folder"),
    (["export"], "give either a SEARCH_DIR or --run RUN_ID"),
    (["export", "--run", "abc"], "no MLflow store at mlflow.db"),
    (["ui"], "no MLflow store at mlflow.db"),
    (["search", "--fix", "explain.explainr=gradcam"], "--fix names unknown config key"),
    (["search", "--fix", "explain.explainer=gradcm"],
     "explain.explainer: unknown explainer 'gradcm'; did you mean 'gradcam'?"),
    (["search", "--set", "model.backbone=tiny_cn"],
     "model.backbone: unknown backbone 'tiny_cn'; did you mean 'tiny_cnn'?"),
    (["study", "--eval-explainer", "gradcm"],
     "eval.explainer: unknown explainer 'gradcm'; did you mean 'gradcam'?"),
    (["study", "--set", "data.name=cifar"], "unknown data set 'cifar'; did you mean 'cifar10'?"),
    (["study", "--methods", "ce,excn"], "unknown method(s) excn in --methods"),
    (["study", "--seeds", "0"], "--seeds must be >= 1"),
    (["study", "--objective", "accuracy,alignment"], "selects each method's config on one"),
    (["study", "--resume", "."], "is not a study folder"),
    (["study", "--resume", ".", "--trials", "2"], "drop --trials"),
    (["study", "--tracking-uri", "http://127.0.0.1:1"],
     "cannot reach the MLflow tracking server at http://127.0.0.1:1"),
])
def test_user_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()), err
    assert "Traceback" not in err


def test_bad_space_file_is_rejected_before_anything_runs(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("optim.lr: {type: float, low: 1.0, high: 0.1}\n")
    assert main(["search", "--space", "bad.yaml"]) == 2
    assert "low (1) is greater than high (0.1)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_unknown_explainer_in_a_space_file_fails_fast_in_one_line(tmp_path, capsys):
    """A typo in a space's choice of explainers fails before anything starts, naming the closest
    registered explainer (the acceptance check of the registries)."""
    import time

    (tmp_path / "bad.yaml").write_text("explain.explainer: {type: choice, values: [gradcm]}\n")
    start = time.perf_counter()
    assert main(["search", "--space", "bad.yaml"]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "space file bad.yaml: explain.explainer: unknown explainer 'gradcm'; did you mean " \
           "'gradcam'?" in " ".join(err.split())
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_first_line_states_the_gpu_rule_and_early_stopping(capsys, monkeypatch):
    assert main(["search", "--address", "127.0.0.1:1"]) == 2
    first = " ".join(capsys.readouterr().out.split())
    assert "each 1 CPU + 1 GPU if the cluster has GPUs" in first
    assert "ASHA on val/accuracy" in first
    from extune.cli import search

    for gpus, words in ((False, "each 1 CPU and no GPU (this machine has none)"),
                        (True, "each 1 CPU + 1 GPU)")):  # this machine: its devices say
        monkeypatch.setattr(search, "_local_gpus", lambda gpus=gpus: gpus)
        assert main(["search", "--tracking-uri", "http://127.0.0.1:1"]) == 2
        assert words in " ".join(capsys.readouterr().out.split())
    assert main(["search", "--objective", "accuracy,alignment", "--gpus-per-trial", "0",
                 "--address", "127.0.0.1:1"]) == 2
    first = " ".join(capsys.readouterr().out.split())
    assert "no GPU" in first and "no early stopping" in first


def test_study_first_line_states_the_budget(capsys):
    assert main(["study", "--quick", "--tracking-uri", "http://127.0.0.1:1"]) == 2
    first = " ".join(capsys.readouterr().out.split())
    assert "per method a search of 2 trials x 1 epochs" in first
    assert "explanations scored by gradcam (last stage)" in first
    assert "--quick is a smoke test" in first
    assert "then 2 seeds x 2 epochs evaluated on the test split" in first
    assert "{" not in first
