"""Shared by the benchmark scripts: interleaved timing and one table row."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Row", "interleaved", "time_call", "skipped"]


@dataclass
class Row:
    """One line of the table.

    Attributes:
        name: what is compared (``A vs B``).
        value: the figure (a ratio, or seconds for the start-up rows); ``None``: skipped.
        unit: ``x`` for ratios, ``s`` or ``s/trial`` for times.
        goal: ``<= 1.3``, ``>= 5``, or ``None`` for rows that report only.
        detail: the medians behind the ratio, the floor, a skip reason.
        facts: what is behind the figure, for the JSON (per-trial times, what was recorded).
    """

    name: str
    value: float | None
    unit: str = "x"
    goal: str | None = None
    detail: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def verdict(self) -> str:
        """``met``, ``not met``, ``-`` (no goal) or ``skipped``."""
        if self.value is None:
            return "skipped"
        if self.goal is None:
            return "-"
        op, threshold = self.goal.split()
        ok = self.value <= float(threshold) if op == "<=" else self.value >= float(threshold)
        return "met" if ok else "not met"


def skipped(name: str, reason: str, goal: str | None = None) -> Row:
    """A row that could not run here, with the reason."""
    return Row(name, None, goal=goal, detail=reason)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (synchronising CUDA around it)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], *, reps: int, warmup: int = 1,
                device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Median seconds per call of each function, timed in turn (A, B, A, B, ...).

    Args:
        fns: name -> zero-argument callable.
        reps: timed rounds.
        warmup: untimed rounds first (allocator, kernels, caches).
        device: synchronised around each call when CUDA.

    Returns:
        name -> median seconds.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):  # interleave so that drift hits every variant alike
        for name, fn in fns.items():
            times[name].append(time_call(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}
