"""``extune ui`` stops the MLflow server it started (uvicorn workers included) on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from processes import free_port, port_closes, wait_for_port

pytestmark = pytest.mark.slow


def test_ctrl_c_stops_the_server_and_its_workers(tmp_path):
    from extune.search.tracking.client import mlflow_client

    mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()  # a store
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "extune.cli", "ui", "--port", str(port)],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    try:
        wait_for_port(port, ui, timeout=120)
        ui.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert ui.wait(timeout=30) is not None
        assert port_closes(port, timeout=20), "the MLflow server outlived extune ui"
        assert "experiments: http://127.0.0.1:" in ui.stdout.read()
    finally:
        if ui.poll() is None:
            ui.kill()
