"""The console's words for trial states are those of summary.md and MLflow."""

from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from extune.evaluate.objectives import Objective
from extune.search.reporting.console import LiveConsole, ranked_table
from extune.search.reporting.results import TrialRecord
from extune.tracking.trials import TRIAL_NUMBER
from extune.train.config import Config

ACC = Objective("accuracy", "val/accuracy", "max")
BASE = Config().with_overrides({"optim.epochs": 2}).to_dict()


def text(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def trial(trial_id: str, number: int, epoch: int, acc: float) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={TRIAL_NUMBER: number, "optim.lr": 0.1},
                           last_result={"epoch": epoch, "val/accuracy": acc})


def test_a_finished_trial_is_complete_and_a_stopped_one_pruned():
    console = LiveConsole(title="demo", objectives=[ACC], base=BASE, total=3, live=False)
    console.on_trial_complete(0, [], trial("a", 0, 2, 0.8))
    console.on_trial_complete(0, [], trial("b", 1, 1, 0.5))
    shown = text(console.render())
    assert "demo: 1 complete, 1 pruned, 0 failed, 0 running of 3" in shown
    rows = [line for line in shown.splitlines() if line.startswith("│")]
    assert "trial-000 │ complete" in rows[0] and "trial-001 │ pruned" in rows[1]
    assert "done" not in shown


def test_the_final_table_says_complete():
    records = [TrialRecord(0, "a", "complete", [0.8], {"epoch": 2, "val/accuracy": 0.8},
                           planned_epochs=2),
               TrialRecord(1, "b", "pruned", None, {"epoch": 1, "val/accuracy": 0.5},
                           planned_epochs=2)]
    shown = text(ranked_table(records, [ACC]))
    assert "complete" in shown and "pruned" in shown and "done" not in shown
    assert "pareto" not in shown  # one objective


def test_the_final_table_shows_every_state_even_one_without_a_colour():
    # a resumed search lists trials Optuna asked for but Ray never started ('waiting')
    records = [TrialRecord(i, str(i), state, None, {"epoch": 0}, planned_epochs=2)
               for i, state in enumerate(("waiting", "interrupted", "some[/]thing"))]
    shown = text(ranked_table(records, [ACC]))
    assert "waiting" in shown and "interrupted" in shown and "some[/]thing" in shown


def test_a_quiet_log_says_where_the_search_stands_with_restored_trials_counted():
    console = LiveConsole(title="final", objectives=[ACC], base=BASE, total=3, live=False)
    console._console = Console(record=True, width=200, force_terminal=False)
    running = trial("c", 2, 1, 0.4)
    console.on_trial_start(0, [], running)
    console.on_step_end(0, [])
    assert "trials done" not in console._console.export_text()  # it just said something
    console._quiet.last -= 11  # nothing printed for 11 s
    restored = [SimpleNamespace(status="TERMINATED"), SimpleNamespace(status="TERMINATED"),
                SimpleNamespace(status="RUNNING")]  # two ended before a resume: no event
    console.on_step_end(0, restored)
    assert "2 of 3 trials done; running: trial-002 in epoch 1/2" in console._console.export_text()


def test_a_console_pickled_by_an_older_extune_still_says_where_the_search_stands():
    import pickle

    console = LiveConsole(title="old", objectives=[ACC], base=BASE, total=2, live=False)
    state = console.__getstate__()
    del state["_quiet"]  # what a tuner.pkl written before the quiet-log lines holds
    restored = LiveConsole.__new__(LiveConsole)
    restored.__setstate__(state)
    restored = pickle.loads(pickle.dumps(restored))
    restored._console = Console(record=True, width=200, force_terminal=False)
    restored._quiet.last -= 11
    restored.on_step_end(0, [])
    assert "0 of 2 trials done" in restored._console.export_text()
