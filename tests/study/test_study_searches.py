"""How many method searches a study runs at once, and a search driver that fails (its Ray is
unreachable): one line naming the search, its error and its log."""

from __future__ import annotations

import pytest

from extune.errors import ExtuneError
from extune.study.searches import SearchJob, run_searches, searches_at_once
from extune.study.settings import StudySettings


@pytest.mark.parametrize("cpus, gpus, given, expected", [
    (2, 0, {}, 1),  # one search's 2 trials fill 2 CPUs: one after another
    (8, 0, {}, 3),  # 8 CPUs hold three searches of 2 trials (at most the 3 searches)
    (8, 0, {"max_concurrent": 1}, 3),
    (6, 0, {"trials": 4}, 1),  # each search would take 4 of the 6 CPUs
    (16, 2, {}, 1),  # one GPU per trial by default: 2 GPUs hold one search's 2 trials
    (16, 2, {"gpus_per_trial": 0.5}, 2),
    (2, 0, {"searches_at_once": 2}, 2),  # asked: Ray queues what does not fit
    (64, 0, {"searches_at_once": 1}, 1),
])
def test_searches_at_once_is_what_the_cluster_holds_unless_given(monkeypatch, cpus, gpus,
                                                                  given, expected):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": cpus, "GPU": gpus})
    settings = StudySettings(methods=["ce", "supcon", "edda"], **{"trials": 2, **given})
    assert searches_at_once(settings, 3) == expected
    assert searches_at_once(settings, 1) == 1


def test_a_driver_that_fails_stops_the_study_with_its_error_and_log(tmp_path):
    said: list[str] = []
    job = SearchJob("ce", tmp_path / "ce", settings={"space": "ce"})
    with pytest.raises(ExtuneError) as error:
        run_searches([job], 1, "127.0.0.1:9", said.append, tmp_path / "drivers")
    message = str(error.value)
    assert message.startswith("the search ce failed (exit 2): error: ")
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in message and str(tmp_path / "drivers" / "ce.log") in message
    assert "\n" not in message
    assert any(line.startswith("[ce] error: ") for line in said)  # printed as it came
