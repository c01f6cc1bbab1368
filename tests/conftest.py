"""Shared fixtures: tiny, fast configs (16 px synthetic images, tiny backbone, fixed seeds)."""

from __future__ import annotations

import pytest

from extune.train.config import Config

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
