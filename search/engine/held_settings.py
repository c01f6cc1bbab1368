"""``--set`` and ``--fix`` against what a space searches, made consistent before a search starts.

- ``--fix KEY=VALUE`` holds a searched key at a value: the space's question for that key is
  answered with the value (:class:`HeldSpace`), inside the space's range or not. On a key
  the space does not search it is applied to the base config, as ``--set`` would be (a value
  held where nothing varies is a base setting).
- ``--set KEY=VALUE`` changes the base config. On a key the space searches, the value would only
  be a starting point that every trial samples again; a user who sets a value expects it to
  hold, so it is held, as ``--fix`` does.

Each case is said in one line (docs/search.md, "Options").
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from extune.search.settings import SearchSettings, absolute_data_paths
from extune.spaces import validate_space
from extune.spaces.validate import SpaceCheck
from extune.train.config import Config

__all__ = ["HeldSpace", "reconcile_fixed"]


def reconcile_fixed(settings: SearchSettings, base: Config, space: Any, check: SpaceCheck
                    ) -> tuple[Config, SpaceCheck]:
    """Apply the rules of the module docstring; ``settings.fixed`` gains the held ``--set``
    keys (so a resumed search holds them too) and the base config every held value (so that
    the saved base config and a trial's config agree).

    Returns:
        The base config and the check of the held space against it (the held values are
        constants there, and a held ``optim.epochs`` is ASHA's horizon).
    """
    searched = check.keys - set(check.constants())
    held = {k: v for k, v in settings.overrides.items()
            if k in searched and k not in settings.fixed}
    if held:
        settings.fixed.update(held)
        _say(f"--set {_pairs(held)}: space '{settings.space}' searches "
             f"{_it(held)}; held at that value in every trial, as --fix does")
    unsearched = {k: v for k, v in settings.resolved_fixed.items() if k not in check.keys}
    told = {k: v for k, v in unsearched.items()
            if k in settings.fixed and base.flatten()[k] != v}
    if told:
        _say(f"--fix {_pairs(told)}: space '{settings.space}' does not search {_it(told)}; "
             "applied to the base config, as --set would")
    if not settings.resolved_fixed:
        return base, check
    base = absolute_data_paths(base.with_overrides(settings.resolved_fixed))
    return base, validate_space(held_space(space, settings), base, name=settings.space,
                                seed=settings.seed)


def held_space(space: Any, settings: SearchSettings) -> Any:
    """``space`` with the search's held keys answered (itself when nothing is held)."""
    return HeldSpace(space, settings.resolved_fixed) if settings.resolved_fixed else space


class HeldSpace:
    """A define-by-run space whose held keys are answered, not sampled.

    Each ``trial.suggest_*`` call for a held key returns the held value and is not passed to
    Optuna, so the study records only what varies and a held value may lie outside the range
    the space searches (``--set optim.batch_size=32`` where the space chooses among 64, 128,
    256). The returned dict has the held values too, so every trial's parameters are its whole
    set of overrides. Written by hand because Optuna's ``PartialFixedSampler`` refuses a value
    outside a distribution (``'32' not in (64, 128, 256)``).

    Args:
        space: a define-by-run space (see :class:`extune.spaces.Space`).
        held: ``{dotted key: value}`` to hold.
    """

    def __init__(self, space: Any, held: dict[str, Any]) -> None:
        self.space = space
        self.held = dict(held)

    def __call__(self, trial: Any) -> dict[str, Any]:
        answering = _HeldTrial(trial, self.held)
        returned = self.space(answering)
        return {**answering.answered, **(returned or {})}

    @property
    def max_epochs(self) -> int | None:
        """The largest ``optim.epochs`` a trial may run (ASHA's horizon): the held value when
        the epochs are held, else the space's own (``None`` when it does not say)."""
        if "optim.epochs" in self.held:
            return int(self.held["optim.epochs"])
        return getattr(self.space, "max_epochs", None)


class _HeldTrial:
    """An Optuna trial seen through :class:`HeldSpace`: ``suggest_*`` of a held key answers
    its value; everything else is the trial's own."""

    def __init__(self, trial: Any, held: dict[str, Any]) -> None:
        self._trial = trial
        self._held = held
        self.answered: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def _ask(self, kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self._held:
            self.answered[name] = self._held[name]
            return self._held[name]
        return getattr(self._trial, kind)(name, *args, **kwargs)

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> float:
        return self._ask("suggest_float", name, *args, **kwargs)

    def suggest_int(self, name: str, *args: Any, **kwargs: Any) -> int:
        return self._ask("suggest_int", name, *args, **kwargs)

    def suggest_categorical(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._ask("suggest_categorical", name, *args, **kwargs)


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _it(values: dict[str, Any]) -> str:
    return "it" if len(values) == 1 else "them"


def _say(text: str) -> None:
    Console().print(text, highlight=False, markup=False)
