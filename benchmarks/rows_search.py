"""Rows of ``run.py`` that start Ray: start-up, the data set's fetch from the object store, the
search's own overhead per trial, and time to quality of TPE + ASHA against random sampling.

Every figure comes from the real ``run_search`` path (Tune, Optuna, MLflow on a temporary
SQLite store), not from a mock.
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.stopper import Stopper
from timing import Row

from extune.search import SearchSettings, run_search
from extune.search.connections import connect_ray, quiet_ray_env
from extune.train.config import Config

__all__ = ["ray_rows", "TargetReached", "EndClock"]

OVERHEAD_BASE = {"method": "ce", "model.backbone": "tiny_cnn", "data.train_size": 3000,
                 "optim.epochs": 1, "eval.explain_samples": 64}
"""Row 5's trials: one-epoch CE trials on the former quick base (about 1 s of training each)."""

TTQ_BASE = {"method": "ce", "model.backbone": "tiny_cnn", "data.train_size": 3000,
            "data.val_fraction": 0.25, "optim.epochs": 4, "eval.explain_samples": 32}
"""Row 7's trials: 4-epoch CE on 2250 training images, validated on 750 (a 200-image
validation set, as 10% of 2000 gave, has a standard error of 3.4 points: wider than the gap
between a good config and the best one, so the "time to target" measured noise)."""
TTQ_TARGET = 0.45
"""Row 7: a validation accuracy that good 4-epoch CE configs of :data:`TTQ_BASE` reach (the
best of 24 random configs: 0.45-0.46, the median one 0.42)."""
TTQ_TRIALS = 24
TTQ_BUDGET_S = 60.0
"""Row 7: a search that has not reached the target after this long stops and counts this time
(a lower bound on its time to the target, printed with ``+``)."""
TTQ_QUICK = {"data.train_size": 300, "optim.epochs": 1}


def ray_rows(quick: bool, *, time_to_quality: bool = True, command: bool = False,
             keep_ray: bool = False) -> list[Row]:
    """Start Ray and the MLflow store (a row each: one-time costs), then the rows that need
    them; every search writes under one temporary folder; Ray is shut down at the end unless
    ``keep_ray`` (a later group uses it: one start of Ray less)."""
    import ray

    from extune.tracking.client import MlflowTracker

    quiet_ray_env()
    start = time.perf_counter()
    started = connect_ray(None)
    rows = [Row("ray start-up (once per search)", time.perf_counter() - start, unit="s",
                detail="ray.init of a local instance" if started else "Ray was running")]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            MlflowTracker(_tracking_uri(tmp), "extune", "warm-up", "warm-up").check()
            rows.append(Row("mlflow store: first use (once per store)",
                            time.perf_counter() - start, unit="s",
                            detail="import, new SQLite schema, experiment"))
            rows.append(fetch_row(quick))
            rows += overhead_rows(quick, tmp, command=command)
            if time_to_quality:
                rows.append(time_to_quality_row(quick, tmp))
    finally:
        if started and not keep_ray:
            ray.shutdown()
    return rows


def quiet_search(settings: SearchSettings, **kw: Any) -> Any:
    """``run_search`` with its console lines (plan, one line per trial) kept out of the table;
    one progress line on stderr instead."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_search(settings, **kw)
    print(f"  search {Path(result.path).name}: {len(result.records)} trials, "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return result


def _tracking_uri(tmp: str) -> str:
    return f"sqlite:///{tmp}/mlflow.db"


def _fetch_seconds(refs: list[Any]) -> float:
    """Seconds a worker takes to get ``refs[0]`` from the object store and read one pixel."""
    import ray

    start = time.perf_counter()
    value = ray.get(refs[0])
    images = value["images"] if isinstance(value, dict) else value.images
    int(images[-1, -1, -1, -1])
    return time.perf_counter() - start


def fetch_row(quick: bool) -> Row:
    """Per-trial data start-up: the decoded set fetched in a Ray worker as torch tensors (as
    before: Ray copies them) vs as extune's ``ImageSet`` (numpy buffers read without a copy).

    Images uint8 ``[N, 3, S, S]``: 2000 x 32 px (quick) or 20000 x 64 px (a fifth of Tiny
    ImageNet); the time is taken inside the worker, alternating the two forms.
    """
    import ray
    import torch

    from extune.train.data import ImageSet

    n, size = (2000, 32) if quick else (20000, 64)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 200, (n,))
    refs = {"torch": [ray.put({"images": images, "labels": labels})],
            "numpy": [ray.put(ImageSet(images, labels))]}
    fetch = ray.remote(num_cpus=0)(_fetch_seconds)
    times: dict[str, list[float]] = {k: [] for k in refs}
    for _ in range(2 if quick else 6):
        for k, ref in refs.items():
            times[k].append(ray.get(fetch.remote(ref)))
    t = {k: statistics.median(v[1:]) for k, v in times.items()}  # the first is a warm-up
    return Row("data fetch per trial: torch / zero-copy numpy", t["torch"] / t["numpy"],
               detail=f"{images.numel() / 2**20:.0f} MiB in a worker: "
               f"{t['torch'] * 1e3:.1f} vs {t['numpy'] * 1e3:.2f} ms")


def _settings(tmp: str, name: str, **kw: Any) -> SearchSettings:
    """Search settings that write only under ``tmp`` (search folder and MLflow store)."""
    return SearchSettings(out=tmp, name=name, tracking_uri=_tracking_uri(tmp), live=False, **kw)


class EndClock(Callback):
    """Tune callback (driver side): each trial's end (``time.perf_counter``) and its own time
    in its worker (Tune's ``time_total_s``), by trial id."""

    def __init__(self) -> None:
        self.ends: dict[str, tuple[float, float]] = {}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        own = float((trial.last_result or {}).get("time_total_s", 0.0))
        self.ends[trial.trial_id] = (time.perf_counter(), own)

    def overhead(self, trained: dict[str, float] | None = None) -> list[float]:
        """Per trial after the first, in the order they ended: the time from the trial before
        it ended, less the trial's own time (``trained[trial id]`` where given, else Tune's)."""
        order = sorted(self.ends, key=lambda t: self.ends[t][0])
        return [self.ends[b][0] - self.ends[a][0] - (trained or {}).get(b, self.ends[b][1])
                for a, b in pairwise(order)]


def sequential_seconds(result: Any) -> dict[str, float]:
    """Seconds of each of the search's trainings run again one after another in this process
    (same configs, one torch thread as a trial has, data loaded beforehand as the search does,
    after one untimed warm-up training for the lazy imports); by Tune trial id."""
    from extune.tracking.trials import trial_config
    from extune.train import fit
    from extune.train.data import load_data

    base = Config.load(result.path / "base_config.yaml").to_dict()
    data = load_data(trial_config(base, {}).data)
    seconds: dict[str, float] = {}
    for record in [result.records[0], *result.records]:  # the first run warms up
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            fit(trial_config(base, record.params, cpus=1), out_dir=out, data=data)
            seconds[record.trial_id] = time.perf_counter() - start
    return seconds


def overhead_rows(quick: bool, tmp: str, *, command: bool = False) -> list[Row]:
    """Row 5: N one-epoch trials through ``run_search`` (one at a time, no early stopping) vs
    the same N trainings in one process.

    Per trial: the time between one trial's end and the next one's, less that trial's
    training (trials 2..N); one-time: the rest of ``run_search`` (set-up, the worker's start
    and first imports, the summary). With ``command`` also ``extune search`` end to end.
    """
    n = 3 if quick else 6
    overrides = {**OVERHEAD_BASE, "data.train_size": 300} if quick else OVERHEAD_BASE
    kw = {"space": "ce", "trials": n, "max_concurrent": 1, "scheduler": "none",
          "overrides": overrides}
    times = EndClock()
    result = quiet_search(_settings(tmp, "overhead", **kw), callbacks=[times])
    train = sequential_seconds(result)
    gaps = times.overhead(train)
    one_time = result.wall_s - sum(train.values()) - sum(gaps)
    pids = {r.pid for r in result.records if r.pid is not None}
    rows = [Row("search overhead per trial, beyond training", statistics.median(gaps),
                unit="s/trial", goal="<= 0.5", detail=f"median of trials 2..{n}; {len(pids)} "
                f"worker process(es) for {n} trials (reuse_actors)"),
            Row("search one-time cost (Ray, store up)", one_time, unit="s",
                detail=f"run_search {result.wall_s:.1f} s = {sum(train.values()):.1f} s "
                f"training + {sum(gaps):.1f} s per trial + this (set-up, the worker's start "
                "and first imports, summary)")]
    if command:
        rows.append(command_row(tmp, n, sum(train.values())))
    return rows


def command_row(tmp: str, n: int, sequential: float) -> Row:
    """``extune search`` as a user runs it (imports, Ray start-up, search, shutdown)."""
    sets = [a for k, v in OVERHEAD_BASE.items() for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "extune.cli", "search", "--space", "ce", "--trials", str(n),
           "--max-concurrent", "1", "--scheduler", "none", "--no-live", "--out", tmp,
           "--name", "command", "--tracking-uri", _tracking_uri(tmp), *sets]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    return Row(f"extune search end to end: {n} trials", wall, unit="s",
               detail=f"{(wall - sequential) / n:.2f} s/trial beyond training, Ray's start "
               "and imports included")


class TargetReached(Stopper):
    """Tune stopper (driver side): notes the first time any trial reports ``metric >= target``
    and then ends the whole search (``stop_all``), so that a search costs only its time to
    the target."""

    def __init__(self, metric: str, target: float) -> None:
        self.metric, self.target = metric, target
        self.reached: float | None = None
        self.last: float | None = None  # when the latest result came
        self.best = float("nan")

    def __call__(self, trial_id: str, result: dict) -> bool:
        value = result.get(self.metric)
        self.last = time.time()
        if isinstance(value, float):
            if math.isnan(self.best) or value > self.best:
                self.best = value
            if self.reached is None and value >= self.target:
                self.reached = time.time()
        return False

    def stop_all(self) -> bool:
        return self.reached is not None


def _time_to_target(tmp: str, sampler: str, scheduler: str, seed: int, trials: int,
                    quick: bool) -> tuple[float, bool, float]:
    """(seconds to the target, reached, best value reported by then); a search that never
    reaches it counts until its last result (its budget's end, or its last trial's), not its
    summary: a lower bound on its time to the target."""
    reach = TargetReached("val/accuracy", TTQ_TARGET)
    settings = _settings(tmp, f"ttq-{sampler}-{seed}", space="ce", trials=trials,
                         sampler=sampler, scheduler=scheduler, seed=seed, start_at_base=False,
                         time_budget_s=None if quick else TTQ_BUDGET_S,
                         overrides={**TTQ_BASE, **(TTQ_QUICK if quick else {})})
    start = time.time()
    quiet_search(settings, stop=reach)
    if reach.reached is None:
        return (reach.last or time.time()) - start, False, reach.best
    return reach.reached - start, True, reach.best


def time_to_quality_row(quick: bool, tmp: str) -> Row:
    """Row 7: wall time until any trial reaches :data:`TTQ_TARGET`, TPE + ASHA (the defaults)
    vs random sampling without early stopping, same trial budget, over sampler seeds (median
    ratio). Each search ends at the target (:class:`TargetReached`)."""
    seeds, trials = ((0,), 1) if quick else ((0, 1, 2), TTQ_TRIALS)
    times: dict[str, list[tuple[float, bool, float]]] = {"tpe": [], "random": []}
    for seed in seeds:  # interleaved: seed by seed, both arms
        times["tpe"].append(_time_to_target(tmp, "tpe", "asha", seed, trials, quick))
        times["random"].append(_time_to_target(tmp, "random", "none", seed, trials, quick))
    med = {k: statistics.median(t for t, _, _ in v) for k, v in times.items()}

    def text(arm: str) -> str:
        return " ".join(f"{t:.0f}{'' if ok else '+'}s/{b:.3f}" for t, ok, b in times[arm])

    epochs = (TTQ_QUICK if quick else TTQ_BASE)["optim.epochs"]
    asha = SearchSettings()
    return Row(f"time to val acc {TTQ_TARGET}: random / tpe+asha", med["random"] / med["tpe"],
               goal=">= 2", detail=f"up to {trials} trials x {epochs} epochs, ASHA grace "
               f"{asha.grace_period} reduction {asha.reduction_factor:g}, seeds {list(seeds)}; "
               f"time/best per seed: tpe+asha {text('tpe')}, random {text('random')} "
               "(+: target not reached)")
