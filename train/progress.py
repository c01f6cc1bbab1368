"""Console progress of a training run: a bar per epoch and a one-line summary after it."""

from __future__ import annotations

from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["EpochProgress", "SUMMARY_KEYS"]

SUMMARY_KEYS = ("train/loss", "train/mask_keep_rate", "val/accuracy", "val/ece", "val/alignment")


class EpochProgress:
    """Rich progress bar over the steps of each epoch (silent when ``enabled`` is false)."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)

    def steps(self, epoch: int, epochs: int, steps: int) -> Iterator[int]:
        """Yield ``range(steps)`` while showing a bar for epoch ``epoch`` (0-based)."""
        if not self.enabled:
            yield from range(steps)
            return
        columns = (TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task("train", total=steps)
            for i in range(steps):
                yield i
                bar.advance(task)

    def summary(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        """Print ``epoch 2/3  train/loss 1.23  val/accuracy 0.61 ...``."""
        if not self.enabled:
            return
        parts = [f"{k} {metrics[k]:.4g}" for k in SUMMARY_KEYS if k in metrics]
        speed = metrics.get("train/images_per_s")
        if speed is not None:
            parts.append(f"{speed:.0f} img/s")
        self.console.print(f"epoch {epoch + 1}/{epochs}  " + "  ".join(parts), highlight=False)
