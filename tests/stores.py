"""A new MLflow SQLite store for a test, copied from one built once per test process.

MLflow builds a new store's schema by running its migrations (1-2 s of CPU on a 2-core
machine, in the process that first opens the store); dozens of process tests paid it again,
each for a store that is the same. A test whose subject is the first use of a store (the
schema built by extune's first command) opens its own: tests/search/test_search_e2e.py,
tests/search/test_final_e2e.py and tests/search/test_ui_browser.py do.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

__all__ = ["sqlite_store"]


def sqlite_store(path: Path) -> str:
    """An empty MLflow store at ``path`` (a copy of this process's template, where ``path``
    does not exist yet); returns its ``sqlite:///`` URI."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_template(), path)
    return f"sqlite:///{path}"


@cache
def _template() -> Path:
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="extune-test-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    template = folder / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()  # builds the schema
    return template
