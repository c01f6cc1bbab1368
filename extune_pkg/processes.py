"""Child processes extune starts in their own session (``mlflow ui``, a driver's Ray)."""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["stop_process_group"]


def stop_process_group(process: subprocess.Popen, grace_s: float = 10.0) -> int:
    """Stop a process started with ``start_new_session=True`` and everything it started (its
    process group: ``mlflow ui``'s uvicorn workers, a driver's Ray processes): SIGTERM, then
    SIGKILL if it has not exited after ``grace_s`` seconds.

    Returns:
        Its exit status (negative: killed by that signal).
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            return process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()
