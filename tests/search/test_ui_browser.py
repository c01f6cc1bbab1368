"""The MLflow UI as a user sees it, in headless Chromium: a store with a search, its final run
(registered) and a study, ``extune ui``, then each printed link (exactly its own runs,
counted), a trial opened by a click (the model-training view, its description with the
objective first), its metric charts and saliency grid, the parent's plots, and the chain of
pages search -> trial -> final run -> logged model -> registered version and back, each
followed by its link. Then a second search started while the UI runs: its link printed at its
start, its trials' epoch and validation metrics in its view while it runs, and the two
searches side by side (``extune ui --compare``). Screenshots go to ``$EXTUNE_SCREENSHOTS``
(default: the test's temporary folder, printed).

Needs Debian's ``chromium`` (``.ci/run`` installs it) and Playwright from PyPI; skips with the
reason where either is missing.
"""

from __future__ import annotations

import json
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
    of its best config (its model registered as ``demo-model``) and a quick study ``duel`` (CE
    and SupCon, 2 trials and 2 seeds each), in a fresh folder."""
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
    assert {"search demo", "study duel", "study duel/search ce",
            "study duel/search supcon"} <= set(links), printed
    assert list(links).index("study duel") < list(links).index("search demo")  # newest first
    searches = {r.info.run_name: r for r in _runs(client, **{"extune.role": "search"})}
    study = _runs(client, **{"extune.role": "study"})[0]
    expected = {
        "search demo": _runs(client, **{"extune.search_id": searches["demo"].data.tags[
            "extune.search_id"], "extune.role": "trial"}),
        "study duel": _runs(client, **{"extune.study_id": study.data.tags["extune.study_id"],
                                       "extune.stage": "final"}),
    }
    assert [len(v) for v in expected.values()] == [6, 4]
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
            page.goto("about:blank")  # the same view opened on its charts
            page.goto(f"{links[key]}&compareRunsMode=CHART")
            page.get_by_text("extune: the first questions").first.wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
            assert page.locator("svg.main-svg").count() > 0
            shots.append(_shot(page, folder, "3-search-charts"))
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

    # 5. the final run: beside its search, printed under it
    final = next(r for r in _runs(client, **{"extune.role": "final"})
                 if "extune.train_id" in r.data.tags)  # extune train's, not a study's
    assert final.info.experiment_id == demo.info.experiment_id
    final_link = links[f"search demo/train {final.info.run_name}"]  # printed under its search
    assert final_link == (f"{address}/#/experiments/{final.info.experiment_id}/runs/"
                          f"{final.info.run_id}")
    (model,) = client.search_logged_models(
        experiment_ids=[final.info.experiment_id],
        filter_string=f"source_run_id = '{final.info.run_id}'")
    version = client.get_model_version("demo-model", "1")
    assert version.run_id == final.info.run_id and version.source == f"models:/{model.model_id}"
    assert model.metrics and model.params  # the run's test metrics and config on the model
    chosen = final.data.tags["extune.lineage.trial"]

    def follow(name: str, then: str | re.Pattern) -> None:
        """Open the link named ``name`` of this page (a description's: MLflow opens them in
        a new tab, so in this one here), then wait for ``then`` on the new page."""
        link = page.get_by_role("link", name=name, exact=True).first
        link.wait_for(timeout=60_000)
        href = link.get_attribute("href")
        page.goto("about:blank")
        page.goto(href if href.startswith("http") else f"{address}/{href.lstrip('/')}")
        page.get_by_text(then).first.wait_for(timeout=60_000)
        page.wait_for_timeout(800)

    # 6. the chain, each page by a link on the one before: search -> its best trial -> the
    #    final run trained from it -> its logged model -> the registered version, and back
    page.goto("about:blank")
    page.goto(parent_page)
    page.get_by_text(re.compile(r"finished, best")).first.wait_for(timeout=60_000)
    page.wait_for_timeout(800)
    shots.append(_shot(page, folder, "7-search-run"))
    follow(chosen, re.compile(rf"excon · {chosen} · complete"))
    assert "Final run trained from this trial" in page.inner_text("body")
    follow(final.info.run_name, "Trained from")
    shots.append(_shot(page, folder, "8-final-run"))
    follow(model.name, "Registered as")
    body = page.inner_text("body")
    assert "test/accuracy" in body and "Not registered" not in body, body[:800]
    shots.append(_shot(page, folder, "9-logged-model"))
    follow("demo-model version 1", "The logged model")
    shots.append(_shot(page, folder, "10-model-version"))
    follow(model.name, "Registered as")  # and back: version -> model -> run -> trial -> search
    follow(final.info.run_name, "Trained from")
    follow(chosen, re.compile(rf"excon · {chosen} · complete"))
    follow("demo", re.compile(r"finished, best"))  # MLflow's own "Parent run" link
    page.goto(f"{address}/#/models/demo-model")
    page.get_by_text(re.compile(r"Version 1")).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    shots.append(_shot(page, folder, "11-model-registry"))
    context.close()
    print("screenshots:", *shots, sep="\n  ")


def _shown_live(page, link: str, search: subprocess.Popen, runs: Path,
                timeout_s: float = 120.0) -> tuple[str, float]:
    """Reload the view ``link`` until a trial's row shows its epoch (``k/N``) and latest
    val/accuracy while ``search`` still runs; returns the epoch shown and the seconds from the
    report it shows (the trial's ``result.json`` line) to the page showing it."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and search.poll() is None:
        page.goto("about:blank")
        page.goto(link)
        try:
            page.get_by_text(re.compile(r"\d+ matching runs?")).first.wait_for(timeout=20_000)
        except Exception:  # the table was slow to load this time: load it again
            continue
        page.wait_for_timeout(500)
        body = page.inner_text("body")
        shown = re.findall(r"\b(\d)/6\b", body)
        if shown and search.poll() is None:
            reported: dict[str, float] = {}  # epoch -> when the first trial reported it
            for result in runs.glob("trials/*/result.json"):  # one line per report
                for line in result.read_text().splitlines():
                    row = json.loads(line)
                    epoch = f"{row['training_iteration']}/6"
                    reported[epoch] = min(reported.get(epoch, row["timestamp"]),
                                          row["timestamp"])
            epoch = f"{max(shown)}/6"
            return epoch, time.time() - reported.get(epoch, time.time())
        time.sleep(1)
    raise AssertionError(f"no trial's epoch in {link} while the search ran (exit code "
                         f"{search.poll()})")


def test_a_search_started_later_shows_live_and_two_searches_side_by_side(
        browser, store, ui, tmp_path):
    from extune.tracking.client import mlflow_client

    process, port, printed = ui
    address = f"http://127.0.0.1:{port}"
    folder = Path(os.environ.get("EXTUNE_SCREENSHOTS") or tmp_path / "screenshots")
    sets = [arg for kv in [*TINY, "optim.epochs=6", "data.train_size=1600",
                           f"data.cache_dir={store / 'cache'}"] for arg in ("--set", kv)]
    search = subprocess.Popen(
        [sys.executable, "-m", "extune.cli", "search", "--space", "ce", "--trials", "2",
         "--sampler", "random", "--scheduler", "none", "--name", "other", "--no-live", *sets],
        cwd=store, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shots = []
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    try:
        # 1. the search prints its link as it starts: the running UI's, not a command to type
        started = "".join(read_until(search, "search folder", timeout=180))
        live = re.search(r"follow it live at (http\S+)", started)
        assert live and live.group(1).startswith(address), started
        assert "new: search other" in "".join(read_until(process, "new: search other",
                                                         timeout=60))  # extune ui lists it
        again = subprocess.run([sys.executable, "-m", "extune.cli", "ui", "--search", "other",
                                "--port", str(port)], cwd=store, capture_output=True,
                               text=True, timeout=120)  # a second ui: the running one answers
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already runs" in again.stdout and live.group(1) in again.stdout

        # 2. while it runs: each trial's epoch and latest val/accuracy in its view, and the
        #    parent's progress
        epoch, delay = _shown_live(page, live.group(1), search, store / "runs" / "other")
        assert delay < 15, f"epoch {epoch} shown {delay:.0f} s after the trial reported it"
        assert re.search(r"val/accuracy", page.inner_text("body"))
        shots.append(_shot(page, folder, "12-live-search"))
        client = mlflow_client(f"sqlite:///{store / 'mlflow.db'}")
        parent = next(r for r in _runs(client, **{"extune.role": "search"})
                      if r.info.run_name == "other")
        assert re.search(r"running|\d+ of 2", parent.data.tags["mlflow.note.content"])
        rest = search.communicate(timeout=600)[0]
        assert search.returncode == 0, started + rest

        # 3. the two searches side by side: their trials grouped by search, best so far
        compared = subprocess.run([sys.executable, "-m", "extune.cli", "ui", "--compare",
                                   "demo,other", "--port", str(port)], cwd=store,
                                  capture_output=True, text=True, timeout=120)
        assert compared.returncode == 0, compared.stdout + compared.stderr
        table = re.search(r"compare .*: (http\S+)", compared.stdout).group(1)
        charts = re.search(r"its charts: (http\S+)", compared.stdout).group(1)
        page.goto("about:blank")
        page.goto(table)
        page.get_by_text("other").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        body = page.inner_text("body")
        assert "demo" in body and "other" in body, body[:1500]
        shots.append(_shot(page, folder, "13-compare-table"))
        page.goto("about:blank")
        page.goto(charts)
        page.get_by_text("best_so_far").first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        assert page.locator("svg.main-svg").count() > 0  # plotly drew the charts
        shots.append(_shot(page, folder, "14-compare-charts"))
    finally:
        context.close()
        if search.poll() is None:
            search.send_signal(signal.SIGINT)
            search.wait(timeout=120)
    print("screenshots:", *shots, sep="\n  ")

    # 4. SIGTERM stops extune ui and the MLflow server it started
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) is not None
    assert port_closes(port, timeout=20), "MLflow's server outlived extune ui"
    rest = process.stdout.read()
    assert "Uvicorn" not in "".join(printed) + rest  # the server's noise is in its log
    assert (store / "mlflow-ui.log").stat().st_size > 0
