"""Batches of a split and the tensors an evaluation builds on the model's device."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = ["batches", "model_device", "stats"]


def model_device(model: nn.Module, default: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer, else ``default``."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return default


def stats(values: Sequence[float], device: torch.device) -> Tensor:
    """Per-channel statistics as a ``[1, 3, 1, 1]`` float32 tensor on ``device``."""
    return torch.as_tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices ``[start, start + batch_size)`` covering ``range(n)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
