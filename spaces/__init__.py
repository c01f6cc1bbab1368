"""extune.spaces: Optuna define-by-run search spaces.

A space is a function ``space(trial) -> {dotted config key: value}`` that only calls
``trial.suggest_*`` (no computation). Built-in presets: ``excon``, ``edda``, ``supcon``, ``ce``;
user spaces are YAML files (format in ``docs/search.md``).

>>> from optuna.trial import FixedTrial
>>> space = get_space("supcon")
>>> space(FixedTrial({"supcon.temperature": 0.1, "optim.lr": 0.5,
...                   "optim.weight_decay": 1e-4, "optim.batch_size": 128}))["method"]
'supcon'
"""

from __future__ import annotations

from extune.spaces import presets  # noqa: F401  (registers the built-in spaces)
from extune.spaces.registry import (
    SPACES,
    Space,
    get_space,
    list_spaces,
    register_space,
    space_name,
)
from extune.spaces.validate import SpaceCheck, base_point, sample_params, validate_space
from extune.spaces.yaml_space import Param, YamlSpace

__all__ = [
    "SPACES",
    "Param",
    "Space",
    "SpaceCheck",
    "YamlSpace",
    "get_space",
    "list_spaces",
    "register_space",
    "sample_params",
    "base_point",
    "space_name",
    "validate_space",
]
