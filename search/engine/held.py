"""``--set`` and ``--fix`` against what a space searches, made consistent before a search starts.

- ``--fix KEY=VALUE`` holds a searched key at a value (Optuna's ``PartialFixedSampler``
  answers the space). On a key the space does not search it is applied to the base config, as
  ``--set`` would be (a value held where nothing varies is a base setting).
- ``--set KEY=VALUE`` changes the base config. On a key the space searches, the value would only
  be a starting point that every trial samples again; a user who sets a value expects it to
  hold, so it is held, as ``--fix`` does.

Each case is said in one line (docs/search.md, "Options").
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from extune.search.settings import SearchSettings
from extune.spaces import validate_space
from extune.spaces.validate import SpaceCheck
from extune.train.config import Config

__all__ = ["reconcile_fixed"]


def reconcile_fixed(settings: SearchSettings, base: Config, space: Any, check: SpaceCheck
                    ) -> tuple[Config, SpaceCheck]:
    """Apply the rules of the module docstring; ``settings.fixed`` gains the held ``--set``
    keys (so a resumed search holds them too).

    Returns:
        The base config and the space's check against it (again, when the base changed).
    """
    searched = check.keys - set(check.constants())
    held = {k: v for k, v in settings.overrides.items()
            if k in searched and k not in settings.fixed}
    if held:
        settings.fixed.update(held)
        _say(f"--set {_pairs(held)}: space '{settings.space}' searches "
             f"{_it(held)}; held at that value in every trial, as --fix does")
    unsearched = {k: v for k, v in settings.resolved_fixed.items() if k not in check.keys}
    if not unsearched or all(base.flatten()[k] == v for k, v in unsearched.items()):
        return base, check
    told = {k: v for k, v in unsearched.items() if k in settings.fixed}
    if told:
        _say(f"--fix {_pairs(told)}: space '{settings.space}' does not search {_it(told)}; "
             "applied to the base config, as --set would")
    base = base.with_overrides(unsearched)
    return base, validate_space(space, base, name=settings.space, seed=settings.seed)


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _it(values: dict[str, Any]) -> str:
    return "it" if len(values) == 1 else "them"


def _say(text: str) -> None:
    Console().print(text, highlight=False, markup=False)
