"""A disk that fills during a search and during a training (a size-limited tmpfs made for the
test, filled by a file while the command runs): one clear line, nothing RUNNING, nothing lost.

Mounting needs root (CI runs as root); elsewhere the test skips and says why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import start, stop, wait_for
from stores import sqlite_store

pytestmark = pytest.mark.slow

SIZE_MB = 80  # above the 64 MiB a search or training wants free when it starts
TINY = ["data.image_size=16", "data.train_size=1200", "data.num_classes=4", "data.test_size=40",
        "model.backbone=tiny_cnn", "optim.batch_size=32", "eval.explain_samples=8",
        "eval.corruptions=[contrast]", "eval.grid_images=2", "runtime.progress=false"]


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of :data:`SIZE_MB` MiB, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; returns it (delete it to free the disk)."""
    filler = disk / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass
    return filler


def sets(*pairs: str) -> list[str]:
    return [a for kv in pairs for a in ("--set", kv)]


def test_a_search_on_a_disk_that_fills_stops_in_one_line_and_resumes(small_disk, tmp_path):
    from extune.tracking.client import mlflow_client

    uri = sqlite_store(tmp_path / "mlflow.db")
    args = [sys.executable, "-m", "extune.cli", "search", "--space", "ce", "--trials", "4",
            "--max-concurrent", "1", "--sampler", "random", "--no-live", "--name", "s",
            "--out", str(small_disk), "--tracking-uri", uri,
            *sets(*TINY, "optim.epochs=4", f"data.cache_dir={tmp_path / 'cache'}")]
    search = start(args, tmp_path / "search.log", cwd=tmp_path)
    folder = small_disk / "s"
    try:
        wait_for(lambda: any(p.stat().st_size > 0 for p in folder.glob("trials/*/result.json")),
                 "a trial reporting", timeout=300)
        filler = fill(small_disk)
        code = search.wait(timeout=300)
    finally:
        stop(search)
    log = (tmp_path / "search.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert code == 2, log[-3000:]
    assert "Traceback" not in log and len(errors) == 1, log[-3000:]
    assert "is full" in errors[0] and f"extune search --resume {folder}" in errors[0]
    client = mlflow_client(uri)
    runs = client.search_runs([client.get_experiment_by_name("extune").experiment_id])
    assert runs and all(r.info.status != "RUNNING" for r in runs), [
        (r.info.run_name, r.info.status) for r in runs]

    filler.unlink()  # space is back: the search finishes every trial
    resumed = subprocess.run([*args[:4], "--resume", str(folder)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert json.loads((folder / "search.json").read_text())["status"] == "finished"
    runs = client.search_runs([client.get_experiment_by_name("extune").experiment_id])
    trials = [r for r in runs if r.data.tags.get("extune.role") == "trial"]
    # a trial that started after Ray's last saved state (the disk was full) is lost: --resume
    # sampled another, and the lost one's run ends FAILED and says so
    lost = [r for r in trials if r.data.tags.get("extune.error", "").startswith("lost: ")]
    trials = [r for r in trials if r not in lost]
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in runs if r not in lost), [
        (r.info.run_name, r.data.tags.get("extune.trial_id"), r.info.status) for r in runs]
    assert all(r.info.status == "FAILED" for r in lost)
    assert {r.data.tags["extune.state"] for r in trials} <= {"complete", "pruned"}


def test_a_training_that_cannot_save_its_checkpoint_keeps_it_and_says_where(small_disk,
                                                                             tmp_path):
    out = small_disk / "run"
    args = [sys.executable, "-m", "extune.cli", "train", "--out", str(out), "--no-track",
            *sets(*TINY, "optim.epochs=6", "method=ce", f"data.cache_dir={tmp_path / 'cache'}")]
    train = start(args, tmp_path / "train.log", cwd=tmp_path)
    try:
        wait_for(lambda: (out / "checkpoint.pt").is_file(), "the first checkpoint", timeout=300)
        filler = fill(small_disk)
        code = train.wait(timeout=300)
    finally:
        stop(train)
    log = (tmp_path / "train.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in log and len(errors) == 1, log[-3000:]
    assert "could not be written to" in errors[0] and "saved to" in errors[0]
    rescue = Path(errors[0].split("saved to ")[1].split(" instead")[0])
    assert (rescue / "checkpoint.pt").is_file() and (rescue / "config.yaml").is_file()

    filler.unlink()  # space is back: the rescued checkpoint continues the run in --out
    started = time.time()
    resumed = subprocess.run([*args[:4], "--config", str(rescue / "config.yaml"), "--resume",
                              str(rescue), "--out", str(out)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 6 and time.time() - started < 600
