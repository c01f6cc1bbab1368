"""``extune train`` keeps no work from the user and says only commands that work: a run resumed
after its end into a new ``--out`` gets its checkpoint there; Ctrl-C before the first checkpoint
leaves nothing behind and says how to start again, after it how to continue; the commands it
prints run as printed. Also :data:`extune.files.OWN_NAMES` against the names the code writes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from stores import sqlite_store

from extune.cli import main

FAST = ["--set", "method=ce", "--set", "optim.epochs=1", "--set", "eval.corruptions=contrast",
        "--set", "eval.explain_samples=4", "--set", "eval.grid_images=0", "--no-test"]


def _printed_command(err: str) -> list[str]:
    """The arguments of the ``extune train ...`` command at the end of the message."""
    command = re.search(r"(extune train .*)$", " ".join(err.split())).group(1)
    return shlex.split(command)[1:]


def _interrupt_at_save(monkeypatch, save_first: bool) -> None:
    """Ctrl-C as the first epoch's checkpoint is saved: before it, or just after it."""
    from extune.train import loop

    save = loop._save_or_rescue

    def interrupted(state, epoch):
        if save_first:
            save(state, epoch)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_or_rescue", interrupted)


def test_a_finished_run_resumed_into_a_new_out_writes_its_checkpoint_there(tiny_args,
                                                                           tmp_path, capsys):
    train = ["train", *tiny_args, *FAST, "--no-track"]
    assert main([*train, "--out", str(tmp_path / "done")]) == 0
    assert main([*train, "--resume", str(tmp_path / "done"), "--out",
                 str(tmp_path / "again")]) == 0
    assert f"wrote {tmp_path / 'again'}/config.yaml, metrics.json, checkpoint.pt" in \
        capsys.readouterr().out
    for name in ("config.yaml", "metrics.json", "checkpoint.pt"):
        assert (tmp_path / "again" / name).is_file(), name


def test_ctrl_c_before_the_first_checkpoint_leaves_nothing_and_says_how_to_start_again(
        tiny_args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = sqlite_store(tmp_path / "mlflow.db")
    train = ["train", *tiny_args, *FAST, "--tracking-uri", uri]
    _interrupt_at_save(monkeypatch, save_first=False)
    assert main([*train, "--out", "runs/a"]) == 130
    err = capsys.readouterr().err
    assert "interrupted before the first checkpoint, so there is nothing to continue; start " \
        "it again with: extune train" in " ".join(err.split())
    assert not (tmp_path / "runs").exists()  # the folders it made, gone
    again = _printed_command(err)
    assert again[again.index("--out") + 1] == "runs/a"

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(again) == 0
    assert (tmp_path / "runs" / "a" / "checkpoint.pt").is_file()
    from extune.tracking.client import mlflow_client

    client = mlflow_client(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]


def test_ctrl_c_after_a_checkpoint_says_the_command_that_continues_it(tiny_args, tmp_path,
                                                                      monkeypatch, capsys):
    out = tmp_path / "run"
    train = ["train", *tiny_args, *FAST, "--set", "optim.epochs=2", "--no-track"]
    _interrupt_at_save(monkeypatch, save_first=True)
    assert main([*train, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted; continue with: extune train" in err
    again = _printed_command(err)
    assert again[again.index("--resume") + 1] == str(out) == again[again.index("--out") + 1]

    monkeypatch.undo()
    assert main(train + ["--out", str(out)]) == 2  # the folder holds the run: continue it
    refused = " ".join(capsys.readouterr().err.split())
    assert f"continue it with: extune train --config {out}/config.yaml --resume {out} --out " \
        f"{out} --no-track" in refused
    assert main(again) == 0
    assert (out / "metrics.json").is_file()


def test_the_names_each_folder_keeps_are_the_names_the_code_writes():
    from extune.files import OWN_NAMES
    from extune.locks import LOCK_NAME
    from extune.search.folder import CLAIM_NAME, META_NAME
    from extune.search.reporting.plots import PLOTS_DIR
    from extune.study.folder import STUDY_META
    from extune.study.plan import CURRENT_PLAN_FILE, PLAN_FILE
    from extune.tracking.journal import TRACKING_DIR
    from extune.tracking.training_run import RUN_FILE, SUMMARY_NAME
    from extune.train.checkpoint import CHECKPOINT_NAME
    from extune.train.grid import GRID_NAME
    from extune.train.loop import PER_IMAGE_NAME

    search, study, run = (set(OWN_NAMES[k][1]) for k in
                          ("search folder", "study folder", "training run"))
    assert {META_NAME, CLAIM_NAME, LOCK_NAME, TRACKING_DIR, PLOTS_DIR} <= search
    assert {STUDY_META, PLAN_FILE, CURRENT_PLAN_FILE, LOCK_NAME, PLOTS_DIR} <= study
    assert {CHECKPOINT_NAME, GRID_NAME, PER_IMAGE_NAME, SUMMARY_NAME, TRACKING_DIR,
            LOCK_NAME} <= run
    assert f"{TRACKING_DIR}/{RUN_FILE}" in OWN_NAMES["training run"][0]


@pytest.mark.parametrize("folder_files, out, refused", [
    ({"search.json"}, "optuna.db-journal", "search folder"),
    ({"study.json"}, "searches/ce/x.yaml", "study folder"),
    ({"checkpoint.pt"}, "evaluation-val.json", None),  # beside a checkpoint: evaluate's own
    ({"checkpoint.pt"}, "grids/x.png", "training run"),
    ({"tuner.pkl"}, "t/checkpoint_000001/x.yaml", "Ray Tune experiment"),
])
def test_an_output_inside_a_folder_of_a_kind(tmp_path, folder_files, out, refused):
    from extune.errors import ConfigError
    from extune.files import check_output_file

    for name in folder_files:
        (tmp_path / name).write_text("")
    target = tmp_path / out
    if refused is None:
        check_output_file(target, "-o", "x.yaml")
        return
    with pytest.raises(ConfigError, match=f"is part of the {refused} {re.escape(str(tmp_path))}"):
        check_output_file(target, "-o", "x.yaml")


def test_a_checkpoint_folder_inside_a_search_takes_its_evaluation(tmp_path):
    """The innermost folder of a kind decides: a trial's checkpoint folder in a search."""
    from extune.files import check_output_file

    (tmp_path / "search.json").write_text("")
    inner = tmp_path / "trials" / "t" / "checkpoint_000001"
    inner.mkdir(parents=True)
    (inner / "checkpoint.pt").write_text("")
    check_output_file(inner / "evaluation-val.json", "--out", "evaluation.json")
    assert Path(inner).is_dir()
