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
