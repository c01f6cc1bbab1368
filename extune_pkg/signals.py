"""SIGTERM handled as Ctrl-C, so that ``timeout``, Slurm, Kubernetes and ``ray job stop`` stop a
command as cleanly as a user at the keyboard (runs ended KILLED, trials resumable).

Ray's driver installs its own SIGTERM handlers when it starts (a native one that prints a crash
dump and aborts, and a Python one that exits at once): :func:`handle_sigterm` installs ours
again, and is called at the start of the command line and right after ``ray.init``. The handler
turns SIGTERM into SIGINT, which Ray Tune answers by stopping the experiment gracefully (its
state saved, the trials resumable) and which elsewhere raises ``KeyboardInterrupt``;
:func:`terminated` then tells the command line to exit with 143 (128 + SIGTERM) instead of 130.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["handle_sigterm", "terminated", "interrupt_exit_code", "EXIT_TERMINATED",
           "EXIT_INTERRUPTED"]

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM

_received = threading.Event()


def _on_sigterm(signum: int, frame: Any) -> None:
    _received.set()
    signal.raise_signal(signal.SIGINT)  # run as Ctrl-C: Tune's handler or KeyboardInterrupt


def handle_sigterm() -> None:
    """Handle SIGTERM as Ctrl-C in this process (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def terminated() -> bool:
    """Whether this process received SIGTERM."""
    return _received.is_set()


def interrupt_exit_code() -> int:
    """The exit status of a stopped command: 143 after SIGTERM, else 130 (Ctrl-C)."""
    return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED
