"""extune.train: the ``Config``, data sets, the training loop and checkpoints.

``fit`` and friends are imported lazily so that ``import extune.train.config`` stays light and
free of import cycles (models/augment/evaluate may use the config for typing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from extune.errors import ConfigError, DataError, ExtuneError, RegistryError
from extune.train.config import Config

if TYPE_CHECKING:
    from extune.train.loop import FitResult, TrainingDiverged, fit

__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "ExtuneError",
    "FitResult",
    "RegistryError",
    "TrainingDiverged",
    "fit",
]


def __getattr__(name: str) -> Any:
    if name in ("fit", "FitResult", "TrainingDiverged"):
        from extune.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'extune.train' has no attribute '{name}'")
