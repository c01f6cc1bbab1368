"""User-facing errors: each carries a one-line message that says what was wrong and what to do.

The CLI prints ``ExtuneError`` messages without a traceback; anything else is a bug.
"""

from __future__ import annotations

__all__ = ["ExtuneError", "ConfigError", "DataError", "RegistryError"]


class ExtuneError(Exception):
    """Base class of errors caused by user input (config, data, names, services)."""


class ConfigError(ExtuneError, ValueError):
    """A config key, value or file is invalid."""


class DataError(ExtuneError, FileNotFoundError):
    """A data set cannot be found or read."""


class RegistryError(ExtuneError, KeyError):
    """An unknown name was asked of a registry (backbone, explainer, data set, method)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
