"""A search folder built by hand (no Ray): its settings, base config and an Optuna study of
finished trials, as ``extune search`` leaves them.

Imported by the test modules as ``handmade_search`` (a unique name: tests/ has no packages).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from extune.search.folder import SearchDir
from extune.search.settings import SearchSettings
from extune.spaces import get_space


def handmade_search(out: str, trials: Sequence[tuple[dict[str, Any], float]], *,
                    space: str = "excon", overrides: dict[str, Any] | None = None,
                    name: str = "handmade") -> SearchDir:
    """A finished one-objective (accuracy) search under ``out`` whose complete trials have
    these ``(params, val/accuracy)``; each ``params`` holds ``optim.lr``, the searched key."""
    settings = SearchSettings(space=space, out=out, name=name, overrides=dict(overrides or {}))
    sdir = SearchDir.create(settings, settings.base_config(), get_space(space))
    study = optuna.create_study(study_name=name, storage=sdir.meta["optuna_storage"],
                                direction="maximize")
    epochs = sdir.base_config().optim.epochs
    for i, (params, accuracy) in enumerate(trials):
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, values=[accuracy],
            params={"optim.lr": params["optim.lr"]},
            distributions={"optim.lr": FloatDistribution(0.001, 1.0)},
            user_attrs={"extune.params": params, "extune.ray_trial_id": f"t{i}",
                        "extune.planned_epochs": epochs,
                        "extune.metrics": {"epoch": float(epochs), "val/accuracy": accuracy}}))
    sdir.set_status("finished")
    return sdir
