"""The MLflow app of ``extune ui``: MLflow's page with the model-training view as a new
browser's default, every other response untouched."""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points

from extune.tracking.mlflow_app import WORKFLOW_KEY, DefaultViewApp

PAGE = b"<!doctype html><html><head><title>MLflow</title></head><body></body></html>"


async def _inner(scope, receive, send):
    kind = b"text/html; charset=utf-8" if scope["path"] in ("/", "/x") else b"application/json"
    body = PAGE if kind.startswith(b"text/html") else b'{"runs": []}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
    half = len(body) // 2  # in two parts, as a streamed file
    await send({"type": "http.response.body", "body": body[:half], "more_body": True})
    await send({"type": "http.response.body", "body": body[half:]})


def _get(path: str, method: str = "GET") -> tuple[dict, bytes]:
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path}
    asyncio.run(DefaultViewApp(_inner)(scope, None, send))
    start = sent[0]
    return dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_the_page_stores_model_training_only_where_the_browser_chose_nothing():
    headers, body = _get("/")
    assert body.startswith(b"<!doctype html><html><head><script>")
    assert f'localStorage.getItem("{WORKFLOW_KEY}")===null'.encode() in body
    assert b'"\\"machine_learning\\""' in body  # stored as MLflow stores it: JSON text
    assert int(headers[b"content-length"]) == len(body)
    assert body.endswith(PAGE[len(b"<!doctype html><html><head>"):])


def test_other_responses_pass_untouched():
    assert _get("/ajax-api/2.0/mlflow/runs/search")[1] == b'{"runs": []}'
    assert _get("/x")[1] == PAGE  # not the UI's page
    assert _get("/", method="HEAD")[1] == PAGE  # (a fake HEAD with a body: passed as it is)


def test_mlflow_finds_the_app_by_name():
    apps = {e.name: e.value for e in entry_points(group="mlflow.app")}
    assert apps["extune"] == "extune.tracking.mlflow_app:app"
