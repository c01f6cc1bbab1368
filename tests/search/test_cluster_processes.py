"""docs/cluster.md on one machine, with processes started the way a user starts them: a Ray head
with its dashboard (the job server) on 127.0.0.1 and a worker node that declares one GPU (`ray
start`, each with its own temp folder, token authentication on), an MLflow tracking server over
HTTP (`mlflow server`, SQLite backend, served artifacts), and then

- `extune search --address ... --storage ... --tracking-uri http://...` as a separate process
  (the driver on the user's machine);
- `ray job submit` of a search, then of the final `extune train` of its best config with
  `--entrypoint-num-gpus 1` (the driver placed on the GPU node): the drivers live on the cluster;
- `ray job stop` of a search mid-trial, with the grace period docs/cluster.md gives: no MLflow run
  of it left RUNNING; then `extune search --resume` submitted as a job finishes it.

One cluster serves the whole module. Everything is stopped by the tests, by process group (never
`ray stop`, which would stop every Ray on the machine)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from processes import (
    BIN,
    free_port,
    http_ok,
    mlflow_server,
    search_runs,
    start,
    stop_all,
    wait_for,
)

pytestmark = pytest.mark.slow

TINY = ["data.image_size=16", "data.train_size=200", "data.num_classes=4", "data.test_size=40",
        "model.backbone=tiny_cnn", "optim.epochs=1", "optim.batch_size=32",
        "eval.explain_samples=8", "eval.corruptions=[contrast]", "eval.grid_images=2"]

STOPPED_EPOCHS = 20
"""Epochs of the search that ``ray job stop`` stops after its first epoch: enough that the stop
(a few seconds) lands mid-trial, not so many that the resumed trials take long."""
STOP_GRACE_S = 120  # RAY_JOB_STOP_WAIT_TIME_S of docs/cluster.md (Ray's default: 3 s)


@dataclass
class Cluster:
    address: str  # the head's GCS (ray start --address, extune search --address)
    dashboard: str  # the job server (ray job --address)
    tracking_uri: str
    env: dict[str, str]  # the user's shell: the cluster's token, the venv first on PATH
    work: Path  # the shared storage, search folders and the project folder live here
    token: str

    @property
    def project(self) -> Path:
        return self.work / "project"


def _dashboard_packages() -> bool:
    """Whether Ray's dashboard (and so its job server) can start: ray[default]'s packages."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401 (the import Ray itself tries)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A head (dashboard on 127.0.0.1 where ray[default] is installed) and a worker with one
    (declared) GPU, each 1 CPU, and an MLflow server; the project folder a user submits."""
    work = tmp_path_factory.mktemp("cluster")
    short = Path(tempfile.mkdtemp(prefix="xr", dir="/tmp"))  # Ray's sockets: <= 107 bytes
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    ray_port, dash_port, mlflow_port = free_port(), free_port(), free_port()
    address, dashboard = f"127.0.0.1:{ray_port}", f"http://127.0.0.1:{dash_port}"
    procs = []
    try:
        procs.append(start([*_node(), "--head", f"--port={ray_port}",
                            f"--include-dashboard={str(_dashboard_packages()).lower()}",
                            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
                            f"--ray-client-server-port={free_port()}",
                            f"--temp-dir={short / 'head'}"], work / "head.log", env))
        wait_for(lambda: len(_alive_nodes(address, env)) >= 1, "the Ray head")
        procs.append(start([*_node(), f"--address={address}", "--num-gpus=1",
                            f"--temp-dir={short / 'worker'}"], work / "worker.log", env))
        procs.append(mlflow_server(work, mlflow_port))
        wait_for(lambda: len(_alive_nodes(address, env)) >= 2, "the Ray worker node")
        uri = f"http://127.0.0.1:{mlflow_port}"
        wait_for(lambda: http_ok(f"{uri}/health"), "the MLflow server")
        if _dashboard_packages():
            wait_for(lambda: _job_server_answers(dashboard, token), "Ray's job server")
        _write_project(work / "project", work / "cache")
        yield Cluster(address, dashboard, uri, env, work, token)
    finally:
        stop_all(procs, grace_s=5)  # nothing of theirs is read after: no need to wait 20 s
        shutil.rmtree(short, ignore_errors=True)


def _node() -> list[str]:
    """``ray start`` of a node of 1 CPU; each node's dashboard agent on a port of its own."""
    return [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
            f"--dashboard-agent-listen-port={free_port()}"]


def _write_project(folder: Path, cache: Path) -> None:
    """A user's project folder: a base config and a YAML space (uploaded by --working-dir)."""
    folder.mkdir()
    sections: dict[str, dict[str, object]] = {}
    for item in [*TINY, f"data.cache_dir={cache}"]:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    lines = ["method: ce"]
    for section, values in sections.items():
        lines += [f"{section}:", *(f"  {k}: {v}" for k, v in values.items())]
    (folder / "base.yaml").write_text("\n".join(lines) + "\n")
    (folder / "space.yaml").write_text(
        "method: ce\noptim.lr: {type: float, low: 0.02, high: 0.2, log: true}\n")


def _alive_nodes(address: str, env: dict[str, str]) -> list[dict]:
    """The cluster's live nodes as ``{"id", "gpus"}`` (empty while it does not answer)."""
    code = (f"import json, ray; ray.init(address={address!r}, log_to_driver=False); "
            "print(json.dumps([{'id': n['NodeID'], 'gpus': n['Resources'].get('GPU', 0)} "
            "for n in ray.nodes() if n['Alive']]))")
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=60)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return []


def test_search_on_a_cluster_started_like_a_user(cluster):
    args = [str(BIN / "extune"), "search", "--space", "ce", "--trials", "2",
            "--max-concurrent", "2", "--gpus-per-trial", "0", "--scheduler", "none",
            "--address", cluster.address, "--tracking-uri", cluster.tracking_uri, "--storage",
            str(cluster.work / "shared"), "--name", "cluster", "--out",
            str(cluster.work / "runs"), "--no-live",
            "--set", f"data.cache_dir={cluster.work / 'cache'}"]
    for item in TINY:
        args += ["--set", item]
    run = subprocess.run(args, env=cluster.env, capture_output=True, text=True, timeout=400,
                         cwd=cluster.work)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 complete, 0 pruned, 0 failed" in " ".join(run.stdout.split())

    study = cluster.work / "runs" / "cluster"
    meta = json.loads((study / "search.json").read_text())
    assert meta["experiment_path"].startswith(str(cluster.work / "shared"))
    nodes = _trial_nodes(study)
    assert len(nodes) == 2, nodes  # one trial on each node

    from extune.tracking.client import mlflow_client

    trials = _trial_runs(cluster.tracking_uri, study)
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    assert all("val/accuracy" in r.data.metrics for r in trials)
    client = mlflow_client(cluster.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(trials[0].info.run_id)}
    assert "saliency_grid.png" in artifacts  # served by the tracking server


def test_no_address_starts_ray_of_its_own_beside_a_cluster_ray_start_left(cluster):
    """``ray start`` leaves its address in Ray's temp folder (``ray_current_cluster``) and
    ``ray.init()`` joins that cluster, then refuses extune's ``num_cpus`` (a traceback, seen when
    a search started beside another test's cluster); without ``--address`` or ``RAY_ADDRESS`` a
    search starts Ray of its own."""
    temp = Path(tempfile.mkdtemp(prefix="xt", dir="/tmp"))  # Ray's sockets: <= 107 bytes
    (temp / "ray").mkdir()
    (temp / "ray" / "ray_current_cluster").write_text(cluster.address)  # as `ray start` does
    code = ("import ray; from extune.search.connections import connect_ray; "
            "assert connect_ray(None, num_cpus=1); "
            "print(ray.get_runtime_context().gcs_address); ray.shutdown()")
    env = {**{k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": str(temp)}
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=120, cwd=cluster.work)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.split()[-1] != cluster.address


def _trial_nodes(search_dir: Path) -> set[str]:
    import optuna

    study = optuna.load_study(study_name=search_dir.name,
                              storage=f"sqlite:///{search_dir / 'optuna.db'}")
    return {t.user_attrs.get("extune.node_id") for t in study.get_trials()}


# ------------------------------------------------------------------------------ Ray jobs


def _job_search(cluster: Cluster, name: str, *extra: str) -> list[str]:
    """``extune search`` as docs/cluster.md submits it: files of the project folder by relative
    path, no --address (the job's driver joins the cluster it runs on), shared storage and
    search folders, the tracking server."""
    return ["extune", "search", "--space", "space.yaml", "--config", "base.yaml", "--trials",
            "2", "--max-concurrent", "2", "--gpus-per-trial", "0", "--scheduler", "none",
            "--storage", str(cluster.work / "shared"), "--out", str(cluster.work / "runs"),
            "--name", name, "--tracking-uri", cluster.tracking_uri, *extra]


def _ray_job(cluster: Cluster, verb: str, *args: str, timeout: float = 400
             ) -> subprocess.CompletedProcess:
    """``ray job VERB --address <the dashboard> ...`` as the user types it."""
    return subprocess.run([str(BIN / "ray"), "job", verb, "--address", cluster.dashboard,
                           *args], env=cluster.env, capture_output=True, text=True,
                          timeout=timeout, cwd=cluster.work)


def _submit(cluster: Cluster, job_id: str, entrypoint: list[str], *options: str,
            timeout: float = 400) -> subprocess.CompletedProcess:
    return _ray_job(cluster, "submit", "--submission-id", job_id, "--working-dir",
                    str(cluster.project), *options, "--", *entrypoint, timeout=timeout)


def _get(dashboard: str, path: str, token: str) -> dict | list:
    """GET a JSON page of Ray's dashboard with the cluster's token."""
    request = urllib.request.Request(f"{dashboard}{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        return json.loads(response.read())


def _job_server_answers(dashboard: str, token: str) -> bool:
    try:
        return isinstance(_get(dashboard, "/api/jobs/", token), list)
    except (OSError, ValueError):
        return False


def _job_info(cluster: Cluster, job_id: str) -> dict:
    """The job server's record of a job (its status, the node its driver ran on)."""
    return _get(cluster.dashboard, f"/api/jobs/{job_id}", cluster.token)


def _needs_job_server() -> None:
    if not _dashboard_packages():
        pytest.skip("Ray's job server needs its dashboard packages (ray[default]); install "
                    "them with pip install -e '.[dev]'")


def _trial_runs(uri: str, search_dir: Path) -> list:
    return [r for r in search_runs(uri, search_dir) if r.data.tags.get("extune.role") == "trial"]


def _log(run: subprocess.CompletedProcess) -> str:
    return run.stdout[-4000:] + run.stderr[-4000:]


def test_search_and_final_run_submitted_as_ray_jobs(cluster):
    _needs_job_server()
    started = time.time()
    search = _submit(cluster, "extune-search", _job_search(cluster, "job-search"))
    search_s = time.time() - started
    out = " ".join(search.stdout.split())
    assert search.returncode == 0, _log(search)
    assert "2 complete, 0 pruned, 0 failed" in out, _log(search)
    # the driver joined the cluster it runs on (a Ray of its own would have no GPU)
    assert "Ray: 2 CPUs, 1 GPUs" in out and "Ray local" not in out, _log(search)
    assert _job_info(cluster, "extune-search")["status"] == "SUCCEEDED"
    folder = cluster.work / "runs" / "job-search"
    assert json.loads((folder / "search.json").read_text())["status"] == "finished"
    trials = _trial_runs(cluster.tracking_uri, folder)
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)

    started = time.time()
    final = _submit(cluster, "extune-final", ["extune", "train", "--config",
                                              str(folder / "best_config.yaml"), "--out",
                                              str(cluster.work / "final"), "--tracking-uri",
                                              cluster.tracking_uri],
                    "--entrypoint-num-gpus", "1")
    train_s = time.time() - started
    assert final.returncode == 0, _log(final)
    assert (cluster.work / "final" / "metrics.json").is_file()
    assert (cluster.work / "final" / "checkpoint.pt").is_file()
    gpu_nodes = [n["id"] for n in _alive_nodes(cluster.address, cluster.env) if n["gpus"]]
    assert _job_info(cluster, "extune-final")["driver_node_id"] in gpu_nodes
    print(f"search job {search_s:.0f} s, training job {train_s:.0f} s")


def test_ray_job_stop_leaves_no_running_mlflow_run_and_a_job_resumes_the_search(cluster):
    _needs_job_server()
    folder = cluster.work / "runs" / "stopped"
    grace = json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)}})
    submitted = _submit(cluster, "extune-stopped",
                        _job_search(cluster, "stopped", "--set", f"optim.epochs={STOPPED_EPOCHS}"),
                        "--no-wait", "--runtime-env-json", grace, timeout=120)
    assert submitted.returncode == 0, _log(submitted)
    wait_for(lambda: _reported(folder), "a trial reporting its first epoch", timeout=300)

    started = time.time()
    stopped = _ray_job(cluster, "stop", "extune-stopped", timeout=STOP_GRACE_S + 60)
    stop_s = time.time() - started
    assert stopped.returncode == 0, _log(stopped)
    assert _job_info(cluster, "extune-stopped")["status"] == "STOPPED"
    logs = _ray_job(cluster, "logs", "extune-stopped", timeout=120).stdout
    assert f"continue with: extune search --resume {folder}" in logs, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    assert json.loads((folder / "search.json").read_text())["status"] == "interrupted"
    states = [r.info.status for r in search_runs(cluster.tracking_uri, folder)]
    assert "RUNNING" not in states and "KILLED" in states, states  # stopped mid-trial

    started = time.time()
    resumed = _submit(cluster, "extune-resumed", ["extune", "search", "--resume", str(folder)])
    resume_s = time.time() - started
    assert resumed.returncode == 0, _log(resumed)
    assert "2 complete, 0 pruned, 0 failed" in " ".join(resumed.stdout.split()), _log(resumed)
    _check_every_epoch_once(cluster.tracking_uri, folder, epochs=STOPPED_EPOCHS)
    print(f"ray job stop {stop_s:.1f} s, resume job {resume_s:.0f} s")


def _reported(folder: Path) -> bool:
    """A trial of the search in ``folder`` has reported an epoch."""
    if not (folder / "search.json").is_file():
        return False
    experiment = Path(json.loads((folder / "search.json").read_text())["experiment_path"])
    return any(p.stat().st_size for p in experiment.glob("*/result.json"))


def _check_every_epoch_once(uri: str, folder: Path, epochs: int) -> None:
    """The search's parent run and both trials FINISHED, each epoch in MLflow once."""
    from extune.tracking.client import mlflow_client

    runs = search_runs(uri, folder)
    assert [r.info.status for r in runs].count("FINISHED") == len(runs) == 3, [
        (r.info.run_name, r.info.status) for r in runs]
    client = mlflow_client(uri)
    for run in runs:
        if run.data.tags.get("extune.role") == "trial":
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/accuracy")]
            assert sorted(steps) == list(range(1, epochs + 1)), (run.info.run_name, steps)
