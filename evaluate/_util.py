"""Private helpers shared by the evaluation modules (not part of the public API)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

__all__: list[str] = []


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` (and every submodule) in eval mode; restore each module's flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


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
