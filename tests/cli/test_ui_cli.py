"""``extune ui`` stops the MLflow server it started (uvicorn workers included) on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from processes import free_port, port_answers, port_closes, read_until
from stores import sqlite_store

pytestmark = pytest.mark.slow


def test_ctrl_c_stops_the_server_and_its_workers(tmp_path):
    sqlite_store(tmp_path / "mlflow.db")  # a store
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "extune.cli", "ui", "--port", str(port)],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    try:
        printed = read_until(ui, "experiments: http://127.0.0.1:", timeout=120)
        assert port_answers(port), "the links were printed before the server answered"
        assert printed[-2].startswith("MLflow UI on")
        ui.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert ui.wait(timeout=30) is not None
        assert port_closes(port, timeout=20), "the MLflow server outlived extune ui"
    finally:
        if ui.poll() is None:
            ui.kill()
