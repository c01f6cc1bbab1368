"""User-facing errors: each carries a one-line message that says what was wrong and what to do.

The CLI prints ``ExtuneError`` messages without a traceback; anything else is a bug.
"""

from __future__ import annotations

__all__ = ["ExtuneError", "ConfigError", "DataError", "RegistryError", "DiskFullError",
           "one_line"]


def one_line(value: object, limit: int | None = None) -> str:
    """``value``'s text on one line; longer than ``limit`` characters, cut at a word and ended
    with `` [...]`` so that a reader knows there was more (a library's message can run to pages:
    SQL statements, tracebacks of other processes)."""
    text = " ".join(str(value).split())
    if limit is None or len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return f"{cut} [...]"


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


class DiskFullError(ExtuneError):
    """A disk extune writes to is full; the message says what was kept and how to go on."""


class ServiceError(ExtuneError, ConnectionError):
    """A service extune needs (a Ray cluster, an MLflow tracking store) cannot be reached."""
