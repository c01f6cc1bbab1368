"""Which Ray a search starts or joins: ``--address``, else ``RAY_ADDRESS`` (Ray sets it for the
command of a job, ``ray job submit``), else a new Ray on this machine."""

from __future__ import annotations

import pytest

from extune.errors import ServiceError
from extune.search import connections
from extune.search.connections import connect_ray, probe_ray_address, ray_address


def test_the_option_then_the_job_environment_then_a_local_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_address(None) == "10.0.0.1:6379"
    assert ray_address("10.0.0.2:6379") == "10.0.0.2:6379"


def test_a_job_driver_joins_its_cluster_and_brings_no_cpus(monkeypatch):
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(connections, "_probe", lambda *args, **kwargs: None)
    monkeypatch.setattr(connections, "handle_signals", lambda: None)  # pytest keeps its own
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert connect_ray(None, num_cpus=3)
    # ray.init refuses num_cpus when it joins a cluster (a ValueError, not a second Ray)
    assert calls[-1]["address"] == "127.0.0.1:6379" and "num_cpus" not in calls[-1]
    monkeypatch.delenv("RAY_ADDRESS")
    assert connect_ray(None, num_cpus=3)
    # "local": a Ray of its own, even where `ray start` left a cluster on this machine
    assert calls[-1]["address"] == "local" and calls[-1]["num_cpus"] == 3


def test_the_dashboard_address_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # as the Ray docs export it
    with pytest.raises(ServiceError, match=r"^RAY_ADDRESS http://127.0.0.1:8265 is the address "
                                           r"of Ray's dashboard .*RAY_API_SERVER_ADDRESS"):
        probe_ray_address(None)
    with pytest.raises(ServiceError, match=r"^--address https://head:8265 is the address"):
        probe_ray_address("https://head:8265")
