"""Console progress of a training run: a bar per epoch, a sign while it evaluates, and a
one-line summary after each epoch.

Nothing is printed when ``enabled`` is false (``runtime.progress=false``: search trials). On a
terminal (or in a notebook) the bar and the evaluation sign are live and vanish when done;
elsewhere (a log file, CI, a dumb terminal) each evaluation prints one line when it starts, and
training and evaluating print a line of where they are when :data:`LOG_EVERY_S` passed
without one (a log is never silent for long).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

__all__ = ["EpochProgress", "QuietClock", "SUMMARY_KEYS", "LOG_EVERY_S"]

SUMMARY_KEYS = ("train/loss", "train/mask_keep_rate", "val/accuracy", "val/ece", "val/alignment")
LOG_EVERY_S = 10.0
"""In a log, a line at least this often (when a step or a part starts) while training or
evaluating: ``epoch 1/3: step 40/120`` or ``evaluating on the test split: audit…``."""


class QuietClock:
    """How long a log has been silent: :meth:`due` once :data:`LOG_EVERY_S` seconds passed since
    the last line (:meth:`said`). One clock serves a training, a search's console and a study's
    re-scoring alike."""

    def __init__(self) -> None:
        self.said()

    def said(self) -> None:
        """A line was printed: the quiet time starts again."""
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= LOG_EVERY_S


def _ignore(part: str) -> None:
    """A part callback that shows nothing."""


class EpochProgress:
    """Rich progress of a training run (silent when ``enabled`` is false)."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._quiet = QuietClock()

    def _log(self, text: str) -> None:
        """One line of a log; the quiet time starts again."""
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)
        self._quiet.said()

    @property
    def live(self) -> bool:
        """Whether the console redraws a line in place (a terminal, a notebook), not a log."""
        return self.console.is_interactive or self.console.is_jupyter

    def steps(self, epoch: int, epochs: int, steps: int) -> Iterator[int]:
        """Yield ``range(steps)`` while showing a bar for epoch ``epoch`` (0-based)."""
        if not self.enabled:
            yield from range(steps)
            return
        if not self.live:  # a log gets no bar (nor its blank line): a line now and then
            for i in range(steps):
                if self._quiet.due():
                    self._log(f"epoch {epoch + 1}/{epochs}: step {i + 1}/{steps}")
                yield i
            return
        columns = (TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task("train", total=steps)
            for i in range(steps):
                yield i
                bar.advance(task)

    @contextlib.contextmanager
    def phase(self, what: str) -> Iterator[Callable[[str], None]]:
        """Show ``what`` (``epoch 2/3: validating``) while the block runs.

        Yields:
            ``part(name)``, to call as each part of the phase starts (the ``part`` argument of
            :func:`extune.evaluate.evaluate_split`): on a terminal the live line becomes
            ``what: name…``; elsewhere it prints one line per phase, and ``what: name…`` for a
            part that starts :data:`LOG_EVERY_S` or more after the last line.
        """
        if not self.enabled:
            yield _ignore
            return
        if not self.live:
            self._log(f"{what}…")
            yield lambda part: self._log(f"{what}: {part}…") if self._quiet.due() else None
            return
        with self.console.status(Text(f"{what}…")) as status:
            yield lambda part: status.update(Text(f"{what}: {part}…"))

    def summary(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        """Print ``epoch 2/3  train/loss 1.23  val/accuracy 0.61 ...``."""
        if not self.enabled:
            return
        parts = [f"{k} {metrics[k]:.4g}" for k in SUMMARY_KEYS if k in metrics]
        speed = metrics.get("train/images_per_s")
        if speed is not None:
            parts.append(f"{speed:.0f} img/s")
        self.console.print(f"epoch {epoch + 1}/{epochs}  " + "  ".join(parts), highlight=False,
                           soft_wrap=True)  # one line, also in a log
        self._quiet.said()
