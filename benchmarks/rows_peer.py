"""Rows of ``run.py`` that put extune beside the search a user writes by hand: Ray Tune's
``Tuner`` + ``OptunaSearch`` + ``ASHAScheduler`` + ``MLflowLoggerCallback`` around extune's
own training function (:func:`extune.train.fit`), the same space, trials and data.

Both searches run in this process on one Ray instance, one trial at a time, the hand-written
one first and then extune's, each with its own SQLite MLflow store. Per trial, the driver's
overhead is the time from one trial's end to the next one's less the next trial's own time
in its worker (Tune's ``time_total_s``): what each search adds around the same training. What
each recorded is read back from its MLflow store afterwards.
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from rows_search import OVERHEAD_BASE, EndClock, quiet_search
from timing import Row

from extune.search import SearchSettings
from extune.train.config import Config

__all__ = ["peer_rows", "hand_written_search"]

PEER_BASE = {**OVERHEAD_BASE, "optim.epochs": 2}
"""The trials of both searches: CE on tiny_cnn, two epochs (ASHA may stop one after the first)."""
PEER_TRIALS = 12
RESUMED_TRIALS = 4
"""Trials of the searches stopped mid-trial (once a first trial ended) and resumed (the table's
resume rows)."""
QUICK = {"data.train_size": 300, "optim.epochs": 1}
METRIC = "val/accuracy"


def _train(config: dict[str, Any], *, base: dict[str, Any], data: Any) -> None:
    """The function a user hands Ray Tune: extune's training with the trial's values, each
    epoch's metrics and checkpoint reported to Tune."""
    from ray import tune

    from extune.train import fit

    cfg = Config.from_dict(base).with_overrides({**config, "runtime.threads": 1})

    def report(metrics: dict[str, float], out_dir: Path) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(out_dir)))

    fit(cfg, report=report, data=data, objectives=(METRIC,))


def _trainable(base: dict[str, Any]) -> Any:
    """The function with its base config and data, one CPU per trial."""
    from ray import tune

    from extune.train.data import load_data

    data = load_data(Config.from_dict(base).data)
    return tune.with_resources(tune.with_parameters(_train, base=base, data=data), {"cpu": 1})


def hand_written_search(base: dict[str, Any], trials: int, folder: str, tracking_uri: str,
                        clock: Callback, seed: int = 0, reuse_actors: bool = False,
                        name: str = "plain") -> float:
    """The hand-written search over extune's ``ce`` space (``base``: the config as a nested
    dict; ``reuse_actors``: Ray's default is a new worker per trial); returns its wall
    seconds."""
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    start = time.time()
    trainable = _trainable(base)
    space = {"method": "ce",  # extune's `ce` space (spaces/presets.py), written for Tune
             "optim.label_smoothing": tune.uniform(0.0, 0.2),
             "optim.lr": tune.loguniform(0.005, 0.5),
             "optim.weight_decay": tune.loguniform(1e-6, 1e-3),
             "optim.batch_size": tune.choice([64, 128, 256])}
    epochs = int(base["optim"]["epochs"])
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", num_samples=trials, max_concurrent_trials=1,
            reuse_actors=reuse_actors,
            search_alg=OptunaSearch(seed=seed),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                    grace_period=1, reduction_factor=3)),
        run_config=tune.RunConfig(
            storage_path=folder, name=name, verbose=0,
            callbacks=[clock, MLflowLoggerCallback(tracking_uri=tracking_uri,
                                                   experiment_name="plain",
                                                   save_artifact=True)]))
    tuner.fit()
    return time.time() - start


class StopOnce(Callback):
    """Stops the search as Ctrl-C would (SIGUSR1: Ray Tune's own graceful stop, its state
    saved) mid-trial: at the first report after a trial ended, once; the interruption both
    searches are resumed from. The file ``flag`` says it was sent (Ray saves the callbacks with
    the experiment and gives them back to the restored search)."""

    def __init__(self, flag: str) -> None:
        self.flag, self.one_ended = Path(flag), False

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.one_ended = True

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if self.one_ended and not self.flag.exists():
            self.flag.write_text("sent")
            os.kill(os.getpid(), signal.SIGUSR1)


def resumed_records(base: dict[str, Any], overrides: dict[str, Any], trials: int, tmp: str
                    ) -> dict[str, dict[str, Any]]:
    """Each search stopped mid-trial once a first trial ended (:class:`StopOnce`) and resumed
    as its user would (extune:
    ``run_search(resume=...)``; by hand: ``Tuner.restore(..., resume_unfinished=True)`` and
    ``fit``): what its MLflow store then holds per trial."""
    from ray import tune

    plain_uri, extune_uri = f"sqlite:///{tmp}/plain-resumed.db", f"sqlite:///{tmp}/ext-r.db"
    hand_written_search(base, trials, f"{tmp}/plain-resumed", plain_uri,
                        StopOnce(f"{tmp}/plain-stopped"), name="resumed")
    restored = tune.Tuner.restore(f"{tmp}/plain-resumed/resumed", _trainable(base),
                                  resume_unfinished=True)
    restored.fit()
    settings = _extune_settings(overrides, trials, f"{tmp}/extune-resumed", extune_uri)
    first = quiet_search(settings, callbacks=[StopOnce(f"{tmp}/extune-stopped")])
    quiet_search(None, resume=first.path)
    return {"plain": _per_trial(plain_uri, "plain"), "extune": _per_trial(extune_uri, "extune")}


def _per_trial(tracking_uri: str, experiment: str) -> dict[str, Any]:
    """Trial runs of a resumed search: how many, for how many trials, how many left RUNNING."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              max_results=1000)
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs} - {None}
    trials = [r for r in runs if r.info.run_id not in parents]
    names = [r.data.tags.get("extune.trial_id") or r.data.tags.get("trial_name")
             or r.info.run_name for r in trials]
    return {"resumed: trial runs": len(trials), "resumed: trials": len(set(names)),
            "resumed: trials with one run": sum(names.count(n) == 1 for n in set(names)),
            "resumed: runs left RUNNING": sum(r.info.status == "RUNNING" for r in trials)}


def _extune_settings(overrides: dict[str, Any], trials: int, folder: str, tracking_uri: str,
                     seed: int = 0) -> SearchSettings:
    return SearchSettings(space="ce", trials=trials, max_concurrent=1, sampler="tpe",
                          scheduler="asha", seed=seed, grace_period=1, reduction_factor=3,
                          out=folder, name="extune", tracking_uri=tracking_uri, live=False,
                          overrides=overrides)


def extune_search(overrides: dict[str, Any], trials: int, folder: str, tracking_uri: str,
                  clock: EndClock, seed: int = 0) -> float:
    """extune's search of the same space, trials, sampler and scheduler settings
    (``overrides``: the base config's dotted keys, as ``--set`` gives them)."""
    settings = _extune_settings(overrides, trials, folder, tracking_uri, seed)
    start = time.time()
    quiet_search(settings, callbacks=[clock])
    return time.time() - start


def recorded(tracking_uri: str, experiment: str) -> dict[str, Any]:
    """What a search left in its MLflow store: runs, parents, states, pruned, pictures."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs} - {None}
    trials = [r for r in runs if r.info.run_id not in parents]

    def pictures(run: Any) -> int:
        stack, found = [None], 0
        while stack:
            for f in client.list_artifacts(run.info.run_id, stack.pop()):
                if f.is_dir:
                    stack.append(f.path)
                found += f.path.endswith(".png")
        return found

    return {"parent runs": len(parents), "trial runs": len(trials),
            "trial statuses": sorted({r.info.status for r in trials}),
            "trials tagged with a state": sum("extune.state" in r.data.tags for r in trials),
            "pruned trials said so": sum(r.data.tags.get("extune.state") == "pruned"
                                         for r in trials),
            "metric steps = epochs": all(r.data.metrics for r in trials),
            "trial runs with a picture": sum(pictures(r) > 0 for r in trials)}


def peer_rows(quick: bool) -> list[Row]:
    """The wall-time ratio and per-trial overhead of extune against the hand-written search;
    prints what each recorded (a table, also in the wall-time row's ``facts``)."""
    import ray

    from extune.search.connections import connect_ray, quiet_ray_env

    quiet_ray_env()
    started = connect_ray(None)
    overrides = {**PEER_BASE, **(QUICK if quick else {})}
    base = Config().with_overrides(overrides).to_dict()
    trials = 2 if quick else PEER_TRIALS
    try:
        with tempfile.TemporaryDirectory() as tmp:
            clocks = {"plain": EndClock(), "reused": EndClock(), "extune": EndClock()}
            uris = {k: f"sqlite:///{tmp}/{k}.db" for k in clocks}
            wall = {"plain": hand_written_search(base, trials, f"{tmp}/plain", uris["plain"],
                                                 clocks["plain"])}
            if not quick:  # the CI size checks the rows run, not this second comparison
                wall["reused"] = hand_written_search(base, trials, f"{tmp}/reused",
                                                     uris["reused"], clocks["reused"],
                                                     reuse_actors=True)
            wall["extune"] = extune_search(overrides, trials, f"{tmp}/extune", uris["extune"],
                                           clocks["extune"])
            kept = {k: recorded(uris[k], "plain" if k == "reused" else k)
                    for k in ("plain", "extune")}
            if not quick:  # two more searches and their resumes: the full table only
                for k, facts in resumed_records(base, overrides, RESUMED_TRIALS, tmp).items():
                    kept[k].update(facts)
    finally:
        if started:
            ray.shutdown()
    med = {k: statistics.median(c.overhead()) for k, c in clocks.items() if k in wall}
    epochs = overrides["optim.epochs"]
    print(f"{'what each recorded':34s} {'extune':>16s} {'plain Ray Tune':>16s}")
    for what in kept["plain"]:
        print(f"{what:34s} {kept['extune'][what]!s:>16s} {kept['plain'][what]!s:>16s}")
    return [Row("peer: wall time extune / plain Ray Tune", wall["extune"] / wall["plain"],
                detail=f"{trials} trials of {epochs} epochs, TPE + ASHA, one at a time: "
                f"{wall['extune']:.0f} vs {wall['plain']:.0f} s (set-up, data, summary and "
                "plots included; ASHA may stop other trials in each)",
                facts={"recorded": kept, "wall_s": wall}),
            Row("peer: overhead per trial extune / plain",
                med["extune"] / max(med["plain"], 1e-3), goal="<= 1.2",
                detail=f"median s/trial beyond the trial's own time: {med['extune']:.2f} vs "
                f"{med['plain']:.2f} (trials 2..{trials}; Ray's default: a new worker per "
                "trial)", facts={k: c.overhead() for k, c in clocks.items() if k in wall}),
            *([] if quick else [Row(
                "peer: overhead per trial extune / plain reusing workers",
                med["extune"] / max(med["reused"], 1e-3), goal="<= 1.2",
                detail=f"the same with TuneConfig(reuse_actors=True), as extune sets it: "
                f"{med['extune']:.2f} vs {med['reused']:.2f} s/trial "
                f"(wall {wall['reused']:.0f} s)")])]
