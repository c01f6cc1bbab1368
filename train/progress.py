"""Console progress of a training run: a bar per epoch, a sign while it evaluates, and a
one-line summary after each epoch.

Nothing is printed when ``enabled`` is false (``runtime.progress=false``: search trials). On a
terminal (or in a notebook) the bar and the evaluation sign are live and vanish when done;
elsewhere (a log file, CI, a dumb terminal) the bar prints nothing and each evaluation prints
one line when it starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

__all__ = ["EpochProgress", "SUMMARY_KEYS"]

SUMMARY_KEYS = ("train/loss", "train/mask_keep_rate", "val/accuracy", "val/ece", "val/alignment")


def _ignore(part: str) -> None:
    """A part callback that shows nothing."""


class EpochProgress:
    """Rich progress of a training run (silent when ``enabled`` is false)."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)

    @property
    def live(self) -> bool:
        """Whether the console redraws a line in place (a terminal, a notebook), not a log."""
        return self.console.is_interactive or self.console.is_jupyter

    def steps(self, epoch: int, epochs: int, steps: int) -> Iterator[int]:
        """Yield ``range(steps)`` while showing a bar for epoch ``epoch`` (0-based)."""
        if not self.enabled or not self.live:  # a log gets no bar (nor its blank line)
            yield from range(steps)
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
            ``what: name…``; elsewhere it prints nothing (one line per phase, never one per
            part).
        """
        if not self.enabled:
            yield _ignore
            return
        if not self.live:
            self.console.print(f"{what}…", highlight=False, markup=False)
            yield _ignore
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
