"""Growth: how a search's own cost grows with its trials, through the real ``run_search``.

A search of many tiny one-epoch trials (the load search of ``load_search.py``, TPE, one trial
at a time so that nothing hides the driver's time) with clocks on the driver:

- **per-trial driver overhead**: the driver's time from one trial's end to the next one's end,
  less the next trial's own training and evaluation (Tune's ``time_total_s``), for trials
  1-100 against the last 100 (goal: ratio <= 1.3);
- **the sampler**: the searcher's ``suggest`` (Optuna's ask, TPE's fit and sample) per trial;
- **the driver's memory** (RSS) over the search;
- **what reads every trial at the end**: the summary files, the plots, ``extune export``;
- **a scoped MLflow view**: the first page (100 runs, best first) of the search's trials view
  and the count of all its runs, through MLflow's REST API (an ``mlflow server`` on the
  search's store), as the UI asks for them (goal: < 5 s).

Writes ``benchmarks/results/growth-<date>.json`` and the overhead plot
``docs/performance/growth.png``.

    python benchmarks/growth.py --trials 2000          # the figures in docs/performance.md
    python benchmarks/growth.py --trials 60 --quick    # a smoke run (no files written)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_search import TINY, RssSampler, _rss_at  # noqa: E402 (benchmarks/ is no package)
from rows_search import EndClock  # noqa: E402

WINDOW = 100
"""Trials at each end of the search compared (the goal's 1-100 against the last 100)."""


def _timed_suggest(times: list[float]) -> None:
    """Time every ``suggest`` of extune's Optuna searcher (in this, the driver's, process)."""
    from extune.search.engine.optuna_search import PruneAwareOptunaSearch

    real = PruneAwareOptunaSearch.suggest

    def suggest(self, trial_id):
        start = time.perf_counter()
        try:
            return real(self, trial_id)
        finally:
            times.append(time.perf_counter() - start)

    PruneAwareOptunaSearch.suggest = suggest


def run(trials: int, work: Path) -> tuple[dict, list[float], list[float]]:
    from extune.search.engine.run import run_search
    from extune.search.settings import SearchSettings

    clock = EndClock()
    suggest_s: list[float] = []
    _timed_suggest(suggest_s)
    settings = SearchSettings(
        space="ce", trials=trials, max_concurrent=1, scheduler="none", sampler="tpe",
        live=False, name="growth", out=str(work / "runs"),
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
        overrides={**TINY, "data.cache_dir": str(work / "cache")})
    with RssSampler(every_s=2.0) as rss:
        start = time.time()
        result = run_search(settings, callbacks=[clock])
        wall = time.time() - start
    overhead = clock.overhead()
    first, last = overhead[:WINDOW], overhead[-WINDOW:]
    figures = {
        "trials": trials, "complete": result.count("complete"), "wall_s": round(wall, 1),
        "trials_per_min": round(trials / wall * 60, 1),
        "overhead_first_s": round(_mean(first), 3), "overhead_last_s": round(_mean(last), 3),
        "overhead_ratio": round(_mean(last) / _mean(first), 2),
        "suggest_first_ms": round(1000 * _mean(suggest_s[:WINDOW]), 1),
        "suggest_last_ms": round(1000 * _mean(suggest_s[-WINDOW:]), 1),
        # the rest of the overhead: Ray's and extune's own, the sampler's O(n) TPE fit taken out
        **_less_sampler(first, last, suggest_s[:WINDOW], suggest_s[-WINDOW:]),
        "rss_at_10pct_mb": round(_rss_at(rss.samples, 0.1) / 2**20),
        "rss_at_90pct_mb": round(_rss_at(rss.samples, 0.9) / 2**20),
        "rss_peak_mb": round(max(m for _, m in rss.samples) / 2**20),
        **_end_readers(result.path, work),
        **_scoped_view(work / "mlflow.db", result.search_id),
    }
    return figures, overhead, suggest_s


def _less_sampler(first: list[float], last: list[float], suggest_first: list[float],
                  suggest_last: list[float]) -> dict[str, float]:
    """The overhead per trial less the sampler's ``suggest`` (both means over each window)."""
    rest_first = _mean(first) - _mean(suggest_first)
    rest_last = _mean(last) - _mean(suggest_last)
    return {"overhead_less_sampler_first_s": round(rest_first, 3),
            "overhead_less_sampler_last_s": round(rest_last, 3),
            "overhead_less_sampler_ratio": round(rest_last / rest_first, 2)}


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def _end_readers(search: Path, work: Path) -> dict[str, float]:
    """Seconds of what reads every trial once the search ended: the summary files, the plots
    (Optuna's, of every trial) and ``extune export``, each run again on the finished folder."""
    from extune.search.folder import SearchDir
    from extune.search.reporting.export import export_search
    from extune.search.reporting.results import select_trial
    from extune.search.reporting.summary import write_outputs, write_plots

    sdir = SearchDir.load(search)
    timed = {}
    start = time.perf_counter()
    records = sdir.records()
    best = select_trial(records, sdir.objectives)
    write_outputs(sdir, records, sdir.objectives, best)
    timed["summary_s"] = time.perf_counter() - start
    start = time.perf_counter()
    write_plots(sdir, sdir.study(), sdir.objectives)
    timed["plots_s"] = time.perf_counter() - start
    start = time.perf_counter()
    export_search(search, work / "best.yaml")
    timed["export_s"] = time.perf_counter() - start
    sizes = sum(p.stat().st_size for p in (search / "plots").glob("*"))
    return {**{k: round(v, 2) for k, v in timed.items()}, "plots_mb": round(sizes / 2**20, 2)}


def _scoped_view(store: Path, search_id: str) -> dict[str, float]:
    """The search's trials view through MLflow's REST API: the first page the UI asks for (100
    runs, best first) and every run of the view paged through (its count)."""
    import socket

    from extune.cli.ui import SERVER_ENV
    from extune.processes import stop_process_group
    from extune.tracking.views import search_filter

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**SERVER_ENV, **os.environ})
    address = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                experiment = _post(f"{address}/experiments/get-by-name",
                                   {"experiment_name": "extune"}, method="GET")
                break
            except OSError:
                time.sleep(1)
        else:
            raise RuntimeError("the MLflow server did not answer in 120 s")
        query = {"experiment_ids": [experiment["experiment"]["experiment_id"]],
                 "filter": search_filter(search_id), "max_results": 100,
                 "order_by": ["metrics.`objective/accuracy` DESC"]}
        start = time.perf_counter()
        page = _post(f"{address}/runs/search", query)
        first_page = time.perf_counter() - start
        count, start = len(page.get("runs", [])), time.perf_counter()
        while page.get("next_page_token"):
            page = _post(f"{address}/runs/search",
                         {**query, "max_results": 1000, "page_token": page["next_page_token"]})
            count += len(page.get("runs", []))
        return {"view_first_page_s": round(first_page, 2),
                "view_all_pages_s": round(first_page + time.perf_counter() - start, 2),
                "view_runs": count}
    finally:
        stop_process_group(server, grace_s=10)


def _post(url: str, body: dict, method: str = "POST") -> dict:
    if method == "GET":
        from urllib.parse import urlencode

        request = urllib.request.Request(f"{url}?{urlencode(body)}")
    else:
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 (loopback)
        return json.loads(answer.read())


def plot(overhead: list[float], suggest_s: list[float], path: Path) -> None:
    """Per-trial driver overhead and sampler time against the trial number (each point a
    trial; the lines: means over 50 trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    trial = range(2, len(overhead) + 2)
    ax.scatter(trial, overhead, s=2, alpha=0.25, color="tab:blue")
    ax.plot(*_rolling(overhead, 50, first=2), color="tab:blue",
            label="driver overhead per trial (mean of 50)")
    ax.plot(*_rolling(suggest_s, 50, first=1), color="tab:orange",
            label="of which the sampler's suggest (TPE, mean of 50)")
    ax.set_xlabel("trial number")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.set_title(f"A search's own cost per trial, {len(overhead) + 1} one-epoch trials, "
                 "one at a time (2 CPUs)")
    ax.legend(loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _rolling(values: list[float], window: int, first: int) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for i in range(0, len(values) - window + 1, max(1, window // 5)):
        xs.append(first + i + window // 2)
        ys.append(_mean(values[i:i + window]))
    return xs, ys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="write no results file or plot")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="extune-growth-") as tmp:
        figures, overhead, suggest_s = run(args.trials, Path(tmp))
    for key, value in figures.items():
        print(f"{key:24s} {value}")
    if not args.quick:
        root = Path(__file__).resolve().parents[1]
        out = root / "benchmarks" / "results" / f"growth-{time.strftime('%Y-%m-%d')}.json"
        if out.exists():  # never over an earlier run's figures
            out = out.with_name(f"growth-{time.strftime('%Y-%m-%d-%H%M')}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**figures, "cpus": os.cpu_count(), "overhead_s": [
            round(v, 4) for v in overhead], "suggest_s": [round(v, 5) for v in suggest_s]},
            indent=1) + "\n")
        plot(overhead, suggest_s, root / "docs" / "performance" / "growth.png")
        print(f"wrote {out} and docs/performance/growth.png")


if __name__ == "__main__":
    main()
