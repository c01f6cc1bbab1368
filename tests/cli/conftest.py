"""Fixtures of the command-line tests: the tiny config as ``--set`` arguments."""

from __future__ import annotations

import pytest


def sets(overrides: dict) -> list[str]:
    """``{"optim.lr": 0.1}`` -> ``["--set", "optim.lr=0.1"]``."""
    args = []
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    return args


@pytest.fixture
def tiny_args(tiny_config) -> list[str]:
    """The tiny config (tests/conftest.py) as ``--set`` options of ``extune train``."""
    return sets({k: v for k, v in tiny_config.flatten().items()
                 if k.startswith(("data.", "model.", "optim.", "eval.", "runtime."))
                 and k != "eval.corruptions"})
