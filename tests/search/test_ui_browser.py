"""The MLflow UI as a user sees it, in headless Chromium: a store with two searches and a study,
``extune ui``, then each printed link (exactly its own runs, counted), a trial opened by a
click (the model-training view, its description with the objective first), its metric charts
and saliency grid, and the parent's importance plot. Screenshots go to ``$EXTUNE_SCREENSHOTS``
(default: the test's temporary folder, printed).

Needs Debian's ``chromium`` (``.ci/run`` installs it) and Playwright from PyPI; skips with the
reason where either is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import free_port, port_answers, port_closes, read_until

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


def _extune(args: list[str], cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "extune.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One MLflow store with a finished search ``demo`` (6 ExCon trials, ASHA), the final run
    of its best config (its model registered as ``demo-model``), a second search ``other`` (3 CE
    trials) and a quick study ``duel`` (CE and SupCon, 2 trials and 2 seeds each), in a fresh
    folder."""
    work = tmp_path_factory.mktemp("ui")
    (work / "space.yaml").write_text(SPACE)
    sets = [arg for kv in [*TINY, f"data.cache_dir={work / 'cache'}"] for arg in ("--set", kv)]
    printed = _extune(["search", "--space", "space.yaml", "--trials", "6", "--objective",
                       "alignment", "--sampler", "random", "--name", "demo", "--no-live", *sets],
                      work)
    left_out = next(line for line in printed.splitlines() if line.startswith("plots left out"))
    assert "param_importances" in left_out  # said, not silent
    _extune(["export", "runs/demo", "-o", "best.yaml"], work)  # the final run, registered
    _extune(["train", "--config", "best.yaml", "--set", "optim.epochs=1", "--register",
             "demo-model", "--out", "final"], work)
    _extune(["search", "--space", "ce", "--trials", "3", "--sampler", "random", "--name",
             "other", "--no-live", *sets], work)
    _extune(["study", "--quick", "--methods", "ce,supcon", "--name", "duel", "--protocols", "",
             "--out", "studies", "--no-live", "--set", f"data.cache_dir={work / 'cache'}"], work)
    return work


@pytest.fixture(scope="module")
def ui(store):
    """``extune ui`` on the store; yields (process, port, the lines it printed once the server
    answered)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "extune.cli", "ui", "--port", str(port)], cwd=store,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = read_until(process, "MLflow UI on", timeout=180)  # once the server answers
        assert port_answers(port), "the links were printed before the server answered"
        lines += read_until(process, "search demo", timeout=30)  # the oldest search, last
        lines += read_until(process, "  train", timeout=30)  # its final run, under it
        yield process, port, lines
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


def _links(lines: list[str]) -> dict[str, str]:
    """``{"search demo": url, "search demo/train final": url, "study duel": url,
    "study duel/search ce": url, ...}`` from what ``extune ui`` printed."""
    links, parent = {}, None
    for line in lines:
        found = re.match(r"(\s*)(search|study|train) (\S+) \(.*\): (http\S+)", line)
        if not found:
            continue
        indent, kind, name, url = found.groups()
        if not indent:
            parent = f"{kind} {name}"
        links[f"{parent}/{kind} {name}" if indent else parent] = url
    return links


def _counted(page) -> int:
    """The runs table's own count ("12 matching runs")."""
    page.get_by_text(re.compile(r"\d+ matching runs?")).first.wait_for(timeout=90_000)
    page.wait_for_timeout(1000)
    return int(re.search(r"(\d+) matching runs?", page.inner_text("body")).group(1))


def _runs(client, **tags) -> list:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=query, max_results=1000)


def test_each_link_shows_its_own_runs_and_a_clicked_trial_reads_at_a_glance(
        browser, store, ui, tmp_path):
    from extune.tracking.client import mlflow_client

    process, port, printed = ui
    address = f"http://127.0.0.1:{port}"
    client = mlflow_client(f"sqlite:///{store / 'mlflow.db'}")
    links = _links(printed)
    assert {"search demo", "search other", "study duel", "study duel/search ce",
            "study duel/search supcon"} <= set(links), printed
    assert list(links).index("study duel") < list(links).index("search other")  # newest first
    searches = {r.info.run_name: r for r in _runs(client, **{"extune.role": "search"})}
    study = _runs(client, **{"extune.role": "study"})[0]
    expected = {
        "search demo": _runs(client, **{"extune.search_id": searches["demo"].data.tags[
            "extune.search_id"], "extune.role": "trial"}),
        "search other": _runs(client, **{"extune.search_id": searches["other"].data.tags[
            "extune.search_id"], "extune.role": "trial"}),
        "study duel": _runs(client, **{"extune.study_id": study.data.tags["extune.study_id"],
                                       "extune.stage": "final"}),
    }
    assert [len(v) for v in expected.values()] == [6, 3, 4]
    assert len(client.search_runs([study.info.experiment_id], max_results=1000)) > 13

    folder = Path(os.environ.get("EXTUNE_SCREENSHOTS") or tmp_path / "screenshots")
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    shots = []

    # 1. every link: exactly its own runs, counted by the table itself
    for key, runs in expected.items():
        page.goto(links[key])
        assert _counted(page) == len(runs), key
        body = page.inner_text("body")
        names = {r.info.run_name for r in runs}
        assert all(name in body for name in names), (key, names)
        if key == "search demo":
            assert "Model training" in body and "Traces / Token usage" not in body
            assert "objective/alignment" in body and "extune.state" in body
            for run in runs:  # the method and the state in every name
                assert re.fullmatch(r"excon · trial-00\d · (complete|pruned at \d/3)",
                                    run.info.run_name), run.info.run_name
            shots.append(_shot(page, folder, "1-runs-table"))
        if key == "study duel":
            shots.append(_shot(page, folder, "5-study-final-runs"))

    # 2. a trial opened by a click stays in the model-training view and reads at a glance
    page.goto(links["search demo"])
    _counted(page)
    best = page.get_by_role("link", name=re.compile(r"excon · trial-00\d · complete")).first
    best.click()
    page.get_by_text("Description").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    body = page.inner_text("body")
    # MLflow's links carry no workflowType: the browser's stored choice decides, which
    # extune's server app sets to model training for a browser that never chose
    assert page.evaluate("localStorage.getItem('mlflow.workflowType_v1')") == \
        '"machine_learning"'
    assert "Judges" not in body and "Evaluation runs" not in body, body[:500]
    assert body.index("objective") < body.index("val/accuracy")  # the objective first
    assert "alignment (val/alignment, max)" in body
    assert not re.search(r"\d\.\d{6}", body.split("Metrics")[0])  # rounded in the note
    shots.append(_shot(page, folder, "2-trial-overview"))

    # 3. its metric charts, then its saliency grid
    run_page = page.url.split("?")[0].rstrip("/")
    page.goto(f"{run_page}/model-metrics?workflowType=machine_learning")
    page.get_by_text("Step").first.wait_for(timeout=60_000)
    assert page.locator("svg.main-svg").count() > 0  # plotly charts drew
    shots.append(_shot(page, folder, "3-trial-charts"))
    page.goto(f"{run_page}/artifacts/saliency_grid.png?workflowType=machine_learning")
    assert _image_rendered(page), "the trial's saliency grid did not render"
    assert "config.yaml" in page.inner_text("body")
    shots.append(_shot(page, folder, "4-trial-grid"))

    # 4. the parent's plots: what was drawn, and what was left out and why
    demo = searches["demo"]
    parent_page = (f"{address}/#/experiments/{demo.info.experiment_id}/runs/"
                   f"{demo.info.run_id}")
    page.goto("about:blank")  # a new page load: MLflow keeps the last run's artifact list
    page.goto(f"{parent_page}/artifacts/plots/parallel_coordinate.png"
              "?workflowType=machine_learning")
    assert _image_rendered(page), "the parent's parallel-coordinates plot did not render"
    body = page.inner_text("body")
    assert "intermediate_values.png" in body and "plots.html" in body
    assert "param_importances.png" not in body  # 6 trials are too few to fit one
    shots.append(_shot(page, folder, "6-parent-plots"))
    page_html = Path(client.download_artifacts(demo.info.run_id, "plots/plots.html", str(tmp_path)))
    assert "too few trials to fit" in page_html.read_text()  # and plots.html says why

    # 5. the final run: beside its search, linked to the trial that chose it and back
    final = next(r for r in _runs(client, **{"extune.role": "final"})
                 if "extune.train_id" in r.data.tags)  # extune train's, not a study's
    assert final.info.experiment_id == demo.info.experiment_id
    final_link = links[f"search demo/train {final.info.run_name}"]  # printed under its search
    assert final_link == (f"{address}/#/experiments/{final.info.experiment_id}/runs/"
                          f"{final.info.run_id}")
    page.goto("about:blank")
    page.goto(final_link)
    page.get_by_text("Trained from").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    shots.append(_shot(page, folder, "7-final-run"))
    chosen = final.data.tags["extune.lineage.trial"]

    def follow(name: str) -> None:
        """Open a description's link (MLflow opens them in a new tab) in this one."""
        href = page.get_by_role("link", name=name).first.get_attribute("href")
        page.goto("about:blank")
        page.goto(f"{address}/{href}")

    follow(chosen)
    page.get_by_text(re.compile(rf"excon · {chosen} · complete")).first.wait_for(timeout=60_000)
    follow(final.info.run_name)  # and back
    page.get_by_text("Trained from").first.wait_for(timeout=60_000)
    # 6. the model in the Model Registry
    page.goto(f"{address}/#/models/demo-model")
    page.get_by_text(re.compile(r"Version 1")).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    shots.append(_shot(page, folder, "8-model-registry"))
    context.close()
    print("screenshots:", *shots, sep="\n  ")

    # 7. SIGTERM stops extune ui and the MLflow server it started
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) is not None
    assert port_closes(port, timeout=20), "MLflow's server outlived extune ui"
    rest = process.stdout.read()
    assert "Uvicorn" not in "".join(printed) + rest  # the server's noise is in its log
    assert (store / "mlflow-ui.log").stat().st_size > 0
