"""An OptunaSearch that records early-stopped trials as PRUNED and failed ones as FAIL.

Why a subclass: Ray's ``OptunaSearch`` (checked with Ray 2.60; tests/search cover it on every
version the pyproject allows) fixes the study's pruner to ``NopPruner`` and its
``on_trial_complete`` tells Optuna ``COMPLETE`` with whatever the trial reported last. Ray's
TuneController calls ``search_alg.on_trial_complete(trial_id, result=last_result)`` both when a
trial ends on its own and when the scheduler (ASHA) stops it (``stop_trial``), so a trial
stopped after 1 of 10 epochs would enter the study as a complete trial with a partial score,
which misleads TPE and the exported best trial. A trial that raised after reporting some epochs
would also be told COMPLETE, since Ray only tells FAIL when there is no value at all.

Here the trial's planned epochs are known at ``suggest`` time (the base config with the trial's
parameters, :func:`extune.tracking.trials.trial_config`), so ``on_trial_complete`` tells
``PRUNED`` when the last reported ``epoch`` is short of them and ``FAIL`` on any error or
non-finite objective, through the same ``_ot_trials`` map and ``study.tell`` that Ray uses.

Every Optuna trial also gets user attributes that make the study self-describing (used by
export and the summary): ``extune.params`` (the full override dict, fixed values included),
``extune.ray_trial_id``, ``extune.planned_epochs`` and, once it ends, ``extune.metrics`` (the last
reported numeric metrics) and ``extune.node_id`` / ``extune.hostname`` / ``extune.pid``.
"""

from __future__ import annotations

import logging
import math
import pickle
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from extune.tracking.trials import PLACE_KEYS, TRIAL_NUMBER, reported_metrics, trial_config

__all__ = ["PruneAwareOptunaSearch"]

log = logging.getLogger(__name__)

_SAVE_FORMAT = "extune.optuna_search/1"
"""The first object of a file :meth:`PruneAwareOptunaSearch.save` writes."""


class PruneAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna PRUNED / FAIL correctly (see the module docstring).

    Args:
        space: define-by-run space (dotted Config keys).
        base: the base config as a dict (``Config.to_dict()``), to know each trial's epochs.
        **kwargs: passed to :class:`ray.tune.search.optuna.OptunaSearch` (``metric``, ``mode``,
            ``sampler``, ``storage``, ``study_name``).
    """

    def __init__(self, space: Any, *, base: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        self._base = base
        self._planned: dict[str, int] = {}
        self._reported: dict[str, int] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params = super().suggest(trial_id)
        if params is None:
            return None
        epochs = trial_config(self._base, params).optim.epochs
        self._planned[trial_id] = epochs
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("extune.params", params)
        ot_trial.set_user_attr("extune.ray_trial_id", trial_id)
        ot_trial.set_user_attr("extune.planned_epochs", epochs)
        return {**params, TRIAL_NUMBER: ot_trial.number}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        self._reported[trial_id] = int(result.get("training_iteration", 0))

    def _report_last(self, trial_id: str, ot_trial: Any, result: dict[str, Any]) -> None:
        """Give a pruned trial its last value: Tune does not pass the result that made the
        scheduler stop it to ``on_trial_result``."""
        step = int(result.get("training_iteration", 0))
        value = result.get(self._metric) if not isinstance(self._metric, list) else None
        if isinstance(value, (int, float)) and math.isfinite(value) and step > \
                self._reported.get(trial_id, 0):
            ot_trial.report(float(value), step)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        ot_trial = self._ot_trials[trial_id]
        if result:
            self._record(ot_trial, result)
        state, values = self._outcome(trial_id, result, error)
        if state == TrialState.PRUNED and result:
            self._report_last(trial_id, ot_trial, result)
        try:
            self._ot_study.tell(ot_trial, values, state=state)
        except Exception as exc:  # the trial was told elsewhere (e.g. a resumed study)
            log.warning("could not tell Optuna trial %s: %s", ot_trial.number, exc)
        self._completed_trials.add(trial_id)
        # an ended trial is the study's: Ray pickles this searcher whole at every save of the
        # search's state (OptunaSearch.save), so what it keeps per trial must not pile up
        for kept in (self._ot_trials, self._planned, self._reported):
            kept.pop(trial_id, None)

    def _outcome(self, trial_id: str, result: dict[str, Any] | None,
                 error: bool) -> tuple[TrialState, Any]:
        if error or not result:
            return (TrialState.FAIL if error else TrialState.PRUNED), None
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        values = [result.get(m) for m in metrics]
        if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            return TrialState.FAIL, None
        planned = self._planned.get(trial_id)
        if planned is not None and result.get("epoch", planned) < planned:
            return TrialState.PRUNED, None
        return TrialState.COMPLETE, (values if len(values) > 1 else values[0])

    @staticmethod
    def _record(ot_trial: Any, result: dict[str, Any]) -> None:
        ot_trial.set_user_attr("extune.metrics", reported_metrics(result))
        for key in PLACE_KEYS:
            if key in result:
                ot_trial.set_user_attr(f"extune.{key}", result[key])

    def save(self, checkpoint_path: str) -> None:
        """Save the searcher without its study: Ray's ``save`` pickles it whole, and with it
        Optuna's cache of every trial of the study (``_CachedStorage``), which made each
        snapshot of a search's state O(trials) (the growth benchmark, docs/performance.md).
        The study lives in its RDB storage; the file holds where it is, the sampler, and the
        rest of the searcher with the study, its cached storage and the sampler as references
        (pickle's persistent ids) that :meth:`restore` resolves to the study loaded again."""
        if self._storage is None:  # an in-memory study exists only in this pickle
            super().save(checkpoint_path)
            return
        shared = self._shared_objects()
        with open(checkpoint_path, "wb") as out:
            pickle.dump({"format": _SAVE_FORMAT, "study_name": self._ot_study.study_name,
                         "storage": self._storage, "sampler": self._ot_study.sampler}, out)
            _ReferencePickler(out, shared).dump(self.__dict__)

    def _shared_objects(self) -> dict[str, Any]:
        """The objects :meth:`save` writes as references, by name."""
        return {"study": self._ot_study, "cached_storage": self._ot_study._storage,
                "storage": self._storage, "sampler": self._ot_study.sampler}

    def restore(self, checkpoint_path: str) -> None:
        """Restore (``--resume``), then fail study trials that were asked but never started.

        Trials suggested after Ray's last experiment snapshot exist in the study (RUNNING) but
        not in the restored searcher, so nothing would ever end them.
        """
        self._load(checkpoint_path)
        known = {t.number for t in self._ot_trials.values()}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in known:
                self._ot_study.tell(frozen.number, state=TrialState.FAIL)

    def _load(self, checkpoint_path: str) -> None:
        """Read a file of :meth:`save` (or of Ray's own ``save``, an older search's)."""
        import optuna

        with open(checkpoint_path, "rb") as saved:
            head = pickle.load(saved)
            if not (isinstance(head, dict) and head.get("format") == _SAVE_FORMAT):
                super().restore(checkpoint_path)
                return
            # the study as its storage holds it now (trials told after the snapshot included)
            study = optuna.load_study(study_name=head["study_name"], storage=head["storage"],
                                      sampler=head["sampler"], pruner=optuna.pruners.NopPruner())
            self._ot_study = study
            self._storage = head["storage"]
            shared = self._shared_objects()
            self.__dict__.update(_ReferenceUnpickler(saved, shared).load())


class _ReferencePickler(pickle.Pickler):
    """Pickles the objects of ``shared`` as their names (pickle's persistent ids)."""

    def __init__(self, file: Any, shared: dict[str, Any]) -> None:
        super().__init__(file)
        self._names = {id(obj): name for name, obj in shared.items()}

    def persistent_id(self, obj: Any) -> str | None:
        return self._names.get(id(obj))


class _ReferenceUnpickler(pickle.Unpickler):
    """Resolves the names :class:`_ReferencePickler` wrote to the objects of ``shared``."""

    def __init__(self, file: Any, shared: dict[str, Any]) -> None:
        super().__init__(file)
        self._shared = shared

    def persistent_load(self, name: str) -> Any:
        return self._shared[name]
