"""Torch's intra-op threads for a while."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["one_torch_thread"]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch ops single-threaded for a while (the thread count is restored after).

    Many small memory-bound ops (rendering synthetic images, tiny batches) gain little from
    intra-op threads, and on a busy CPU (several processes on 2 cores) each op waits for a
    descheduled peer thread: measured 10-20x slower than one thread. Results do not depend on
    the thread count.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
