"""Where extune keeps things when the user does not say: read by the command line (its help
texts) and by the search, without importing either."""

from __future__ import annotations

__all__ = ["DEFAULT_TRACKING_URI"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""The MLflow store when ``--tracking-uri`` is not given: a SQLite file in the working folder."""
