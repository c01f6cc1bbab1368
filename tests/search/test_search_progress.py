"""The parent run's progress while a search runs (:class:`ParentProgress`)."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import extune.search.reporting.progress as progress_module
from extune.evaluate.objectives import Objective
from extune.search.reporting.progress import ParentProgress
from extune.tracking.trials import TRIAL_NUMBER
from extune.train.config import Config

OBJECTIVES = (Objective("accuracy", "val/accuracy", "max"),)
BASE = Config().with_overrides({"optim.epochs": 3}).to_dict()


def _trial(number: int, status: str, epoch: int, acc: float) -> SimpleNamespace:
    return SimpleNamespace(trial_id=f"t{number}", status=status,
                           config={TRIAL_NUMBER: number, "optim.lr": 0.1},
                           last_result={"epoch": epoch, "val/accuracy": acc})


def test_counts_the_best_so_far_and_reads_each_ended_trial_once(monkeypatch):
    reads = []
    real = progress_module.planned_epochs
    monkeypatch.setattr(progress_module, "planned_epochs",
                        lambda base, config: reads.append(config[TRIAL_NUMBER]) or real(base, config))
    facts = SimpleNamespace(objectives=OBJECTIVES, trials=6, started_s=0)
    callback = ParentProgress(facts, BASE, tracker=None, journal_dir=None)
    trials = [_trial(0, "TERMINATED", 3, 0.6), _trial(1, "TERMINATED", 1, 0.9),
              _trial(2, "RUNNING", 1, 0.7), _trial(3, "ERROR", 0, 0.0),
              _trial(4, "PENDING", 0, 0.0)]
    shown, improved = callback.look(trials)
    assert improved == {"accuracy": 0.6}  # the pruned trial's 0.9 is not a result
    for _ in range(2):  # one look per trial event: an ended trial is read once
        shown, improved = callback.look(trials)
        assert improved == {}  # no better value since
    assert shown.counts == {"complete": 1, "pruned": 1, "running": 1, "failed": 1, "waiting": 1}
    assert shown.best[:2] == ("trial-000", "t0")
    assert sorted(reads) == [0, 1]

    trials[2] = _trial(2, "TERMINATED", 3, 0.7)  # the running trial ends, better
    trials.append(_trial(5, "TERMINATED", 3, 0.65))
    shown, improved = callback.look(trials)
    assert improved == {"accuracy": 0.7} and shown.best[:2] == ("trial-002", "t2")
    assert shown.counts == {"complete": 3, "pruned": 1, "failed": 1, "waiting": 1}

    restored = pickle.loads(pickle.dumps(callback))  # Ray's saved callback starts afresh
    shown, improved = restored.look(trials)
    assert improved == {"accuracy": 0.7} and shown.counts["complete"] == 3
