"""SIGTERM and SIGHUP handled as Ctrl-C, so that ``timeout``, Slurm's ``scancel``, systemd,
Kubernetes, ``ray job stop`` and a closing terminal stop a command as cleanly as a user at the
keyboard: runs ended KILLED, trials resumable, one line, exit 128 + the signal's number.

:func:`handle_signals` (called when the command line starts, and again after ``ray.init``)
turns each into SIGINT, which Ray Tune answers by stopping the experiment gracefully (its state
saved, the trials resumable) and which elsewhere raises ``KeyboardInterrupt``; a second signal
skips the clean stop, as a second Ctrl-C does (a stop signal repeated within
:data:`REPEAT_S` is the same stop: ``timeout`` and shells send theirs twice). :func:`stop_words` and
:func:`interrupt_exit_code` then say which signal stopped the command: 143 (SIGTERM), 129
(SIGHUP) or 130 (Ctrl-C).

SIGHUP means the terminal is gone: standard output and error that went to it are pointed at
``/dev/null`` first, so that neither the clean stop nor the last line fails on a write to it.

A signal the command was started with ignored stays ignored (``nohup extune ...`` outlives
its terminal). A command started in the background of a script has SIGINT ignored (shells do
that for background jobs): SIGTERM and SIGHUP then raise ``KeyboardInterrupt`` themselves
where no SIGINT handler (Ray Tune's) is there to route them to.

:func:`deferred` holds the signals while something must not be cut in half (Ray starting:
:func:`extune.search.connections.connect_ray`) and raises ``KeyboardInterrupt`` after it;
:func:`exit_at_once_on_signals` makes a signal that comes once the command has said its last
line end the process at once, quietly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["handle_signals", "deferred", "sigint_kept", "exit_at_once_on_signals", "received",
           "stop_words", "interrupt_exit_code", "STOP_SIGNALS", "EXIT_INTERRUPTED",
           "EXIT_TERMINATED", "EXIT_HUNG_UP"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a command as Ctrl-C does."""
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
EXIT_HUNG_UP = 128 + signal.SIGHUP  # 129

_WORDS = {signal.SIGTERM: "terminated (SIGTERM)", signal.SIGHUP: "hung up (SIGHUP)"}

REPEAT_S = 2.0
"""A stop signal this soon after the last is the same stop sent twice, not a second one:
``timeout`` sends its signal to the command and then to its whole process group, and the
shell of a closing terminal passes on to its jobs the SIGHUP they got already."""

_stops: list[tuple[int, float]] = []
"""The stop signals this process received (not their repeats), with their times."""
_terminal_fds: tuple[int, ...] | None = None
"""Standard output and error where they went to a terminal when the handlers were installed."""


def _on_stop_signal(signum: int, frame: Any) -> None:
    if not _news(signum):
        return
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        # SIGINT ignored: a background job of a script (the shell ignores SIGINT for it), so
        # SIGTERM would do nothing as Ctrl-C; outside Tune's fit, the stop is raised here
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)  # run as Ctrl-C: Tune's handler or KeyboardInterrupt


def _news(signum: int) -> bool:
    """Record a signal; whether it counts (a stop signal within :data:`REPEAT_S` of the last
    does not)."""
    if signum == signal.SIGHUP:
        _leave_terminal()
    if signum not in STOP_SIGNALS:
        return True
    now = time.monotonic()
    if _stops and now - _stops[-1][1] < REPEAT_S:
        return False
    _stops.append((signum, now))
    return True


def _leave_terminal() -> None:
    """Point standard output and error that went to the (closed) terminal at /dev/null."""
    if not _terminal_fds:
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in _terminal_fds:
            os.dup2(null, fd)
    finally:
        os.close(null)


def handle_signals() -> None:
    """Handle SIGTERM and SIGHUP as Ctrl-C in this process (main thread only; elsewhere a
    no-op). A signal the command was started with ignored stays ignored: ``nohup extune ...``
    keeps running when its terminal closes."""
    global _terminal_fds
    if threading.current_thread() is not threading.main_thread():
        return
    if _terminal_fds is None:
        _terminal_fds = tuple(fd for fd in (1, 2) if _is_terminal(fd))
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_stop_signal)


def _is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP while the block runs, then raise ``KeyboardInterrupt``
    if one came; a second one raises at once (as a second Ctrl-C skips the clean stop).

    In the main thread only (elsewhere signals are not delivered to Python: a no-op).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if not _news(signum):
            return
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, *STOP_SIGNALS)
                if signal.getsignal(s) is not signal.SIG_IGN}  # ignored (nohup): stays so
    try:
        yield
    finally:
        for signum, handler in previous.items():  # None: a handler not set from Python
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    if held:
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_kept() -> Iterator[None]:
    """Put back the SIGINT handler after the block. Ray Tune's ``fit`` installs its own (the
    clean stop) and leaves it there: the first Ctrl-C or stop signal after a search (during its
    summary, a study's next stage) only set an event nobody waits for any more."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)


def exit_at_once_on_signals(code: int) -> None:
    """From now on Ctrl-C, SIGTERM and SIGHUP end this process at once with ``code``, its
    output flushed: the command has said its last line and is exiting. A signal then used to
    interrupt the interpreter's clean-up (threads still sending, ``atexit`` handlers) with
    "Exception ignored in ... Traceback", or kill it without a word.

    The exit skips that clean-up; what it would have finished is safe already: MLflow writes
    are in their journal, Ray's processes end with this one (the kernel kills them).
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def now(signum: int, frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed terminal or stream
                pass
        os._exit(code)

    for signum in (signal.SIGINT, *STOP_SIGNALS):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored (nohup): stays so
            signal.signal(signum, now)


def received() -> int | None:
    """The stop signal this process received first (``None``: none, or Ctrl-C only)."""
    return _stops[0][0] if _stops else None


def stop_words() -> str:
    """How the command was stopped, to begin its last line: ``terminated (SIGTERM)``,
    ``hung up (SIGHUP)`` or ``interrupted`` (Ctrl-C)."""
    signum = received()
    return _WORDS[signum] if signum is not None else "interrupted"


def interrupt_exit_code() -> int:
    """The exit status of a stopped command: 128 + the signal's number (143 after SIGTERM, 129
    after SIGHUP, 130 after Ctrl-C)."""
    return 128 + (received() or signal.SIGINT)
