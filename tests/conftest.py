"""Shared fixtures: tiny, fast configs (16 px synthetic images, tiny backbone, fixed seeds)."""

from __future__ import annotations

import pytest

from extune.train.config import Config

LONGEST_FIRST = (
    "search/test_search_reliability.py", "search/test_ui_browser.py", "study/test_study_e2e.py",
    "search/test_cluster_processes.py", "cli/test_signals.py", "search/test_search_e2e.py",
    "study/test_study_cluster.py", "test_benchmarks_quick.py", "search/test_full_disk.py")
"""The longest test files (about 50-150 s each, measured on a 2-core machine), run first: with
``--dist loadfile`` the workers take files in collection order, so the short files fill the
end instead of one long file running alone at the end of the run."""


def _default_stop_signals() -> None:
    """The tests' commands start as from a terminal: SIGINT and SIGHUP handled by default,
    even where the suite itself was started in the background of a script (the shell ignores
    SIGINT for a background job, ``nohup`` SIGHUP) and every command would inherit that."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


_default_stop_signals()


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core, at most 4. (Measured on 2 cores: 3 workers took the
    whole suite 12:20 against 12:35 with 2, but the fast lane 103 s against 2 workers' less.)"""
    import os

    return max(1, min(4, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """Collect :data:`LONGEST_FIRST` first, in that order; the rest keep their order."""
    def rank(item) -> int:
        path = item.path.as_posix()
        return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith(name)),
                    len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: tests of a file keep their order

TINY = {
    "data.name": "synthetic",
    "data.image_size": 16,
    "data.train_size": 240,
    "data.test_size": 40,
    "data.num_classes": 4,
    "model.backbone": "tiny_cnn",
    "optim.epochs": 2,
    "optim.batch_size": 32,
    "optim.lr": 0.05,
    "eval.explain_samples": 16,
    "eval.deletion_steps": 4,
    "eval.grid_images": 4,
    "runtime.progress": False,
    "runtime.seed": 0,
}


@pytest.fixture
def tiny_config(tmp_path) -> Config:
    """A config that trains in about a second on a CPU."""
    return Config().with_overrides({**TINY, "data.cache_dir": str(tmp_path / "cache")})


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch single-threaded for a module of tiny batches (:func:`extune.threads.one_torch_thread`:
    one thread is fastest there, and much faster than two on a busy machine)."""
    from extune.threads import one_torch_thread as single

    with single():
        yield
