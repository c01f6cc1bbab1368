"""extune.train: the ``Config``, data sets, the training loop and checkpoints.

``fit``, ``validate_config`` and friends are imported lazily, so that ``import
extune.train.config`` stays light (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from extune.errors import ConfigError, DataError, ExtuneError, RegistryError
from extune.train.config import Config

if TYPE_CHECKING:
    from extune.train.loop import FitResult, TrainingDiverged, fit
    from extune.train.validate import validate_config

__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "ExtuneError",
    "FitResult",
    "RegistryError",
    "TrainingDiverged",
    "fit",
    "validate_config",
]


def __getattr__(name: str) -> Any:
    if name in ("fit", "FitResult", "TrainingDiverged"):
        from extune.train import loop

        return getattr(loop, name)
    if name == "validate_config":
        from extune.train.validate import validate_config

        return validate_config
    raise AttributeError(f"module 'extune.train' has no attribute '{name}'")
