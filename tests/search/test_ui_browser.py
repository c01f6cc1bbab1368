"""The MLflow UI as a user sees it, in headless Chromium: a small search, ``extune ui``, then the
runs table (trials with their states and objective), a trial's metric charts and saliency
grid, and the parent's importance plot. Screenshots go to ``$EXTUNE_SCREENSHOTS`` (default: the
test's temporary folder, printed).

Needs Debian's ``chromium`` (``.ci/run`` installs it) and Playwright from PyPI; skips with the
reason where either is missing.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import free_port, port_closes, wait_for_port

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("EXTUNE_CHROMIUM") or shutil.which("chromium") or shutil.which(
    "chromium-browser")
SPACE = """
method: excon
optim.lr: {type: float, low: 0.02, high: 0.3, log: true}
excon.mask_threshold: {type: float, low: 0.2, high: 0.8}
"""
TINY = ["data.image_size=16", "data.train_size=240", "data.num_classes=4", "optim.epochs=3",
        "model.backbone=tiny_cnn", "eval.explain_samples=16", "eval.grid_images=4",
        "eval.corruptions=[contrast]", "optim.batch_size=32"]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium); set EXTUNE_CHROMIUM to "
                    "another Chromium binary")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except Exception as e:  # a broken browser install: say so, do not fail the suite
            pytest.skip(f"cannot start {CHROMIUM}: {' '.join(str(e).split())[:200]}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A finished search (6 ExCon trials, ASHA) in a fresh folder with its own MLflow store."""
    work = tmp_path_factory.mktemp("ui")
    (work / "space.yaml").write_text(SPACE)
    sets = [arg for kv in TINY for arg in ("--set", kv)]
    done = subprocess.run(
        [sys.executable, "-m", "extune.cli", "search", "--space", "space.yaml", "--trials", "6",
         "--objective", "alignment", "--sampler", "random", "--name", "demo", "--no-live",
         "--set", f"data.cache_dir={work / 'cache'}", *sets],
        cwd=work, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return work


@pytest.fixture(scope="module")
def ui(searched):
    """``extune ui`` on the search's store; yields (process, port, printed lines)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "extune.cli", "ui", "--port", str(port)], cwd=searched,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, process, timeout=120)
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def _shot(page, folder: Path, name: str) -> Path:
    close = page.locator("button[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count() and close.first.is_visible():  # MLflow's chat panel hides the page
        close.first.click()
        page.wait_for_timeout(500)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def _image_rendered(page, timeout_s: float = 60.0) -> bool:
    """Whether the artifact viewer shows a decoded image (the PNG arrived and decoded)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        widths = page.eval_on_selector_all(
            "img[src^='blob:']", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
        if any(w > 100 for w in widths):
            return True
        page.wait_for_timeout(500)
    return False


def test_mlflow_ui_shows_trials_states_charts_grid_and_plots(browser, searched, ui, tmp_path):
    from extune.search.tracking.client import mlflow_client

    process, port = ui
    address = f"http://127.0.0.1:{port}"
    store = f"sqlite:///{searched / 'mlflow.db'}"
    client = mlflow_client(store)
    experiment = client.get_experiment_by_name("extune")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("extune.role") == "search")
    trials = [r for r in runs if r.data.tags.get("extune.role") == "trial"]
    states = {row["trial"]: row["state"] for row in
              csv.DictReader((searched / "runs" / "demo" / "summary.csv").open())}
    assert len(trials) == 6 and "complete" in states.values()

    folder = Path(os.environ.get("EXTUNE_SCREENSHOTS") or tmp_path / "screenshots")
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    shots = []

    # 1. the link the search's parent run carries (extune ui prints it): the runs table
    page.goto(f"{address}/{parent.data.tags['extune.mlflow_view']}")
    page.get_by_text(re.compile(r"trial-00\d")).first.wait_for(timeout=90_000)
    page.wait_for_timeout(1500)
    body = page.inner_text("body")
    assert "Model training" in body and "Traces / Token usage" not in body
    assert "objective/alignment" in body and "extune.state" in body
    for trial, state in states.items():
        assert re.search(rf"{trial} · {'complete' if state == 'complete' else state}", body), (
            trial, state)
    shots.append(_shot(page, folder, "1-runs-table"))

    # 2. a complete trial: its metric charts, then its saliency grid
    best = next(r for r in trials if r.data.tags["extune.state"] == "complete")
    run_page = f"{address}/#/experiments/{experiment.experiment_id}/runs/{best.info.run_id}"
    page.goto(f"{run_page}/model-metrics?workflowType=machine_learning")
    page.get_by_text("Step").first.wait_for(timeout=60_000)
    assert page.locator("svg.main-svg").count() > 0  # plotly charts drew
    assert "accuracy" in page.inner_text("body")
    shots.append(_shot(page, folder, "2-trial-charts"))
    page.goto(f"{run_page}/artifacts/saliency_grid.png?workflowType=machine_learning")
    assert _image_rendered(page), "the trial's saliency grid did not render"
    assert "config.yaml" in page.inner_text("body")
    shots.append(_shot(page, folder, "3-trial-grid"))

    # 3. the parent's parameter-importance plot
    parent_page = (f"{address}/#/experiments/{experiment.experiment_id}/runs/"
                   f"{parent.info.run_id}")
    page.goto(f"{parent_page}/artifacts/plots/param_importances.png"
              "?workflowType=machine_learning")
    assert _image_rendered(page), "the parent's importance plot did not render"
    body = page.inner_text("body")
    assert "parallel_coordinate.png" in body and "plots.html" in body
    shots.append(_shot(page, folder, "4-parent-importances"))
    context.close()
    print("screenshots:", *shots, sep="\n  ")

    # 4. SIGTERM stops extune ui and the MLflow server it started
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) is not None
    assert port_closes(port, timeout=20), "MLflow's server outlived extune ui"
    printed = process.stdout.read()
    assert f"search demo: {address}/#/experiments/" in printed, printed
