"""docs/cluster.md on one machine, with processes started the way a user starts them: a Ray head
and a worker node (`ray start`, each with its own temp folder, token authentication on), an
MLflow tracking server over HTTP (`mlflow server`, SQLite backend, served artifacts), and
`extune search --address ... --storage ... --tracking-uri http://...` as a separate process.
Everything is stopped by the test, by process group (never `ray stop`, which would stop every
Ray on the machine)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from processes import BIN, free_port, http_ok, mlflow_server, start, stop, wait_for

pytestmark = pytest.mark.slow

TINY = ["data.image_size=16", "data.train_size=200", "data.num_classes=4", "data.test_size=40",
        "model.backbone=tiny_cnn", "optim.epochs=1", "optim.batch_size=32",
        "eval.explain_samples=8", "eval.corruptions=[contrast]", "eval.grid_images=2"]












def _ray_nodes(address: str, env: dict[str, str]) -> int:
    code = (f"import ray; ray.init(address={address!r}, log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))")
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return 0
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


def test_search_on_a_cluster_started_like_a_user(tmp_path):
    short = Path(tempfile.mkdtemp(prefix="xr", dir="/tmp"))  # Ray's sockets: <= 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0"}
    ray_port, mlflow_port = free_port(), free_port()
    address = f"127.0.0.1:{ray_port}"
    procs = []
    try:
        procs.append(start([str(BIN / "ray"), "start", "--head", "--block",
                             f"--port={ray_port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=1", "--include-dashboard=false",
                             f"--temp-dir={short / 'head'}"], tmp_path / "head.log", env))
        wait_for(lambda: _ray_nodes(address, env) >= 1, "the Ray head")
        procs.append(start([str(BIN / "ray"), "start", "--block", f"--address={address}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=1",
                             f"--temp-dir={short / 'worker'}"], tmp_path / "worker.log",
                            env))
        procs.append(mlflow_server(tmp_path, mlflow_port))
        wait_for(lambda: _ray_nodes(address, env) >= 2, "the Ray worker node")
        uri = f"http://127.0.0.1:{mlflow_port}"
        wait_for(lambda: http_ok(f"{uri}/health"), "the MLflow server")

        args = [str(BIN / "extune"), "search", "--space", "ce", "--trials", "2",
                "--max-concurrent", "2", "--scheduler", "none", "--address", address,
                "--tracking-uri", uri, "--storage", str(tmp_path / "shared"), "--name",
                "cluster", "--out", str(tmp_path / "runs"), "--no-live",
                "--set", f"data.cache_dir={tmp_path / 'cache'}"]
        for item in TINY:
            args += ["--set", item]
        run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=400,
                             cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "2 complete, 0 pruned, 0 failed" in " ".join(run.stdout.split())

        study = tmp_path / "runs" / "cluster"
        meta = json.loads((study / "search.json").read_text())
        assert meta["experiment_path"].startswith(str(tmp_path / "shared"))
        nodes = _trial_nodes(study)
        assert len(nodes) == 2, nodes  # one trial on each node

        from extune.search.tracking.client import mlflow_client

        client = mlflow_client(uri)
        experiment = client.get_experiment_by_name("extune")
        runs = client.search_runs([experiment.experiment_id])
        trials = [r for r in runs if r.data.tags.get("extune.role") == "trial"]
        assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
        assert all("val/accuracy" in r.data.metrics for r in trials)
        artifacts = {a.path for a in client.list_artifacts(trials[0].info.run_id)}
        assert "saliency_grid.png" in artifacts  # served by the tracking server
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(short, ignore_errors=True)


def _trial_nodes(search_dir: Path) -> set[str]:
    import optuna

    study = optuna.load_study(study_name="cluster",
                              storage=f"sqlite:///{search_dir / 'optuna.db'}")
    return {t.user_attrs.get("extune.node_id") for t in study.get_trials()}
