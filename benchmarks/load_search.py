"""Load: a search of many very short trials through the real ``run_search`` (Ray Tune, Optuna,
MLflow), with the driver's memory sampled while it runs.

Prints trials per minute, the driver's overhead per trial (wall time beyond the trials' own
training time, divided by the number of trials, with 1 trial at a time so it is not hidden by
parallelism: ``--concurrent`` to change), the driver's peak and final RSS, and checks that every
trial reached Optuna and MLflow exactly once. Writes ``benchmarks/results/load-<date>.json``.

    python benchmarks/load_search.py --trials 300          # the figure in docs/reliability.md
    python benchmarks/load_search.py --trials 20 --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

TINY = {"data.image_size": 16, "data.train_size": 128, "data.num_classes": 4,
        "data.test_size": 32, "model.backbone": "tiny_cnn", "optim.epochs": 1,
        "optim.batch_size": 64, "eval.explain_samples": 8, "eval.deletion_steps": 4,
        "eval.corruptions": ["contrast"], "eval.grid_images": 2, "runtime.seed": 0}


class RssSampler:
    """The driver process's resident memory, sampled every ``every_s`` seconds."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        start = time.time()
        while not self._stop.is_set():
            self.samples.append((time.time() - start, _rss()))
            self._stop.wait(every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _rss() -> int:
    """Resident bytes of this process (Linux ``/proc``; elsewhere the peak from ``resource``)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(trials: int, concurrent: int, work: Path) -> dict:
    from extune.search.engine.run import run_search
    from extune.search.settings import SearchSettings
    from extune.tracking.client import mlflow_client

    settings = SearchSettings(
        space="ce", trials=trials, max_concurrent=concurrent, scheduler="none",
        sampler="random", live=False, name="load", out=str(work / "runs"),
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
        overrides={**TINY, "data.cache_dir": str(work / "cache")})
    with RssSampler() as rss:
        start = time.time()
        result = run_search(settings)
        wall = time.time() - start
    trained = sum(_train_seconds(p) for p in (result.path / "trials").glob("*/result.json"))
    client = mlflow_client(result.tracking_uri)
    experiment = client.get_experiment_by_name("extune")
    runs = client.search_runs([experiment.experiment_id], max_results=50_000,
                              filter_string=f"tags.`extune.search_id` = '{result.search_id}' "
                                            "and tags.`extune.role` = 'trial'")
    mlflow_trials = [r.data.tags.get("extune.trial_id") for r in runs]
    optuna_ids = [r.trial_id for r in result.records]
    steps_ok = all(r.info.status == "FINISHED" for r in runs)
    # memory while trials run: at a quarter and at three quarters of the search's time (the end,
    # with its plots of every trial, is reported as the peak)
    rss_q1, rss_q3 = (_rss_at(rss.samples, q) for q in (0.25, 0.75))
    return {
        "trials": trials, "concurrent": concurrent, "wall_s": round(wall, 1),
        "trials_per_min": round(trials / wall * 60, 1),
        "training_s": round(trained, 1),
        "driver_overhead_per_trial_s": round((wall * concurrent - trained) / trials, 3),
        "rss_peak_mb": round(max(m for _, m in rss.samples) / 2**20),
        "rss_at_25pct_mb": round(rss_q1 / 2**20), "rss_at_75pct_mb": round(rss_q3 / 2**20),
        "rss_growth_per_100_trials_mb": round((rss_q3 - rss_q1) / 2**20 / (trials / 2) * 100),
        "optuna_trials": len(optuna_ids), "optuna_unique": len(set(optuna_ids)),
        "optuna_complete": result.count("complete"),
        "mlflow_trial_runs": len(mlflow_trials), "mlflow_unique": len(set(mlflow_trials)),
        "mlflow_all_finished": steps_ok,
        "mlflow_matches_optuna": set(mlflow_trials) == set(optuna_ids),
        "tracking_pending": result.tracking_pending,
    }


def _rss_at(samples: list[tuple[float, int]], fraction: float) -> int:
    """The RSS sample nearest to ``fraction`` of the run's duration."""
    end = samples[-1][0]
    return min(samples, key=lambda sample: abs(sample[0] - fraction * end))[1]


def _train_seconds(result_json: Path) -> float:
    """Seconds the trial spent in its epochs (Tune's ``time_this_iter_s``)."""
    lines = result_json.read_text().splitlines()
    return sum(json.loads(line).get("time_this_iter_s", 0.0) for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--concurrent", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="do not write a results file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="extune-load-") as tmp:
        figures = run(args.trials, args.concurrent, Path(tmp))
    for key, value in figures.items():
        print(f"{key:32s} {value}")
    if not args.quick:
        out = Path(__file__).parent / "results" / f"load-{time.strftime('%Y-%m-%d')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**figures, "cpus": os.cpu_count()}, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
