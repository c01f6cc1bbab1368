"""``extune ui`` stops the MLflow server it started (uvicorn workers included) on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
from processes import free_port

pytestmark = pytest.mark.slow


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_ctrl_c_stops_the_server_and_its_workers(tmp_path):
    from extune.search.tracking import mlflow_client

    mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()  # a store
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "extune.cli", "ui", "--port", str(port)],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    try:
        deadline = time.time() + 120
        while not _answers(port):
            assert ui.poll() is None and time.time() < deadline, "the UI did not start"
            time.sleep(0.5)
        ui.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert ui.wait(timeout=30) is not None
        deadline = time.time() + 20
        while _answers(port) and time.time() < deadline:
            time.sleep(0.5)
        assert not _answers(port), "the MLflow server outlived extune ui"
        assert "experiments: http://127.0.0.1:" in ui.stdout.read()
    finally:
        if ui.poll() is None:
            ui.kill()
