"""The MLflow server app that ``extune ui`` runs: MLflow's own, opening in the model-training view.

MLflow 3's UI picks its GenAI or model-training view per browser: from the page address
(``workflowType=machine_learning``, which extune's links carry) or else from what the browser
stored when its user last flipped the sidebar switch (local storage ``mlflow.workflowType_v1``;
GenAI when never flipped). The links inside the UI carry no ``workflowType``, so a new user who
opens a search's link and clicks a trial lands in the GenAI view (Evaluations, Judges, Prompts)
and loses the runs' model-training pages.

This app is MLflow's server app (``mlflow.server.fastapi_app:app``) with one change: the UI's
page gets a line of script that stores "model training" as the browser's choice *when it has
none*; a user who flipped the switch keeps theirs. It is registered as the MLflow app plugin
``extune`` (entry point group ``mlflow.app``, as MLflow's own ``basic-auth``) and started with
``mlflow ui --app-name extune``. Written by hand because MLflow has no server setting for the
default view (the switch is a browser setting); ``tests/search/test_ui_browser.py`` fails if a
new MLflow stores the choice under another key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["DefaultViewApp", "with_default_view", "WORKFLOW_KEY", "DEFAULT_WORKFLOW",
           "DEFAULT_UI", "UI_RECORD", "ui_record", "running_ui"]

DEFAULT_UI = "http://127.0.0.1:5000"
"""Where ``extune ui`` serves by default."""
UI_RECORD = "mlflow-ui.json"
"""The file beside a SQLite store that says where ``extune ui`` serves it (``address``,
``pid``, ``store``), written while it runs: a search that starts prints its link there."""

WORKFLOW_KEY = "mlflow.workflowType_v1"
DEFAULT_WORKFLOW = "machine_learning"
_KEY, _VALUE = json.dumps(WORKFLOW_KEY), json.dumps(json.dumps(DEFAULT_WORKFLOW))
_SCRIPT = (f"<script>try{{if(localStorage.getItem({_KEY})===null)"
           f"localStorage.setItem({_KEY},{_VALUE})}}catch(e){{}}</script>").encode()
_PAGES = ("/", "/index.html")


def with_default_view(page: bytes) -> bytes:
    """The UI's HTML page with the default-view script first in its ``<head>``."""
    return page.replace(b"<head>", b"<head>" + _SCRIPT, 1)


class DefaultViewApp:
    """An ASGI app: ``inner`` unchanged except its UI page (:func:`with_default_view`).

    A class, not a function: MLflow starts a plain function app as a factory.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET" or \
                scope.get("path") not in _PAGES:
            await self.inner(scope, receive, send)
            return
        start: dict[str, Any] = {}
        body: list[bytes] = []

        async def rewrite(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = b"".join(body)
            headers = [(k, v) for k, v in start.get("headers", [])
                       if k.lower() != b"content-length"]
            if any(k.lower() == b"content-type" and v.startswith(b"text/html")
                   for k, v in headers):
                page = with_default_view(page)
            await send({**start, "headers": [*headers, (b"content-length",
                                                        str(len(page)).encode())]})
            await send({"type": "http.response.body", "body": page})

        await self.inner(scope, receive, rewrite)


def ui_record(store: str) -> Path | None:
    """The :data:`UI_RECORD` of a SQLite store (``None`` for another store)."""
    if not store.startswith("sqlite:///"):
        return None
    return Path(store[len("sqlite:///"):]).resolve().parent / UI_RECORD


def running_ui(store: str) -> str | None:
    """The address of the MLflow UI of ``store``: a server store's own address, else that of
    an ``extune ui`` running on it (its :data:`UI_RECORD`, its process alive); ``None`` when
    none runs."""
    if store.startswith(("http://", "https://")):
        return store.rstrip("/")
    path = ui_record(store)
    try:
        record = json.loads(path.read_text()) if path is not None else None
        if not isinstance(record, dict) or record.get("store") != store:
            return None
        os.kill(int(record["pid"]), 0)  # alive (a kill -9 leaves the file behind)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(record["address"])


_app: DefaultViewApp | None = None


def __getattr__(name: str) -> Any:
    """``app``, what ``mlflow ui --app-name extune`` serves, built on first use (importing
    this module does not build MLflow's server)."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        from mlflow.server.fastapi_app import app as mlflow_app

        _app = DefaultViewApp(mlflow_app)
    return _app
