"""A study's plots, drawn from ``results.json``'s dict: the test metrics (bars of the method
means with their interval, one dot per seed) and the final runs' learning curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from extune.study.claims import StudyMetric, metric_by_name

__all__ = ["write_plots", "plot_metric", "CURVES"]

CURVES = (("val/accuracy", "validation accuracy"), ("val/loss", "validation loss"),
          ("val/ece", "validation ECE"), ("train/loss", "training loss"))
"""The learning curves drawn, one plot each (``plots/curve_val_accuracy.png``, ...)."""

_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def _seed_values(summary: dict[str, Any], metric: StudyMetric) -> list[float]:
    return [r["metrics"][metric.key] for r in summary["runs"]
            if r["state"] == "complete" and metric.key in r["metrics"]]


def plot_metric(ax: Any, metric: StudyMetric, results: dict[str, Any]) -> None:
    """Bars of the method means with their interval and one dot per seed on ``ax``."""
    import numpy as np

    methods = list(results["methods"])
    xs = np.arange(len(methods))
    cells = [results["methods"][m]["final"].get(metric.name, {}) for m in methods]
    heights = [c.get("mean") if c.get("mean") is not None else 0.0 for c in cells]
    err = np.array([[h - c["low"] if c.get("low") is not None else 0.0
                     for h, c in zip(heights, cells, strict=True)],
                    [c["high"] - h if c.get("high") is not None else 0.0
                     for h, c in zip(heights, cells, strict=True)]])
    ax.bar(xs, heights, color="#9ecae1", edgecolor="#3182bd", yerr=err, capsize=4)
    rng = np.random.default_rng(0)
    for x, method in zip(xs, methods, strict=True):
        values = _seed_values(results["methods"][method], metric)
        ax.scatter(x + rng.uniform(-0.15, 0.15, len(values)), values, s=14, color="black",
                   zorder=3)
    ax.set_xticks(xs, methods, rotation=20, fontsize=8)
    ax.set_title(f"{metric.name} ({'higher' if metric.higher_is_better else 'lower'} is better)",
                 fontsize=9)


def _plot_curve(ax: Any, key: str, title: str, results: dict[str, Any]) -> None:
    """One thin line per final run and a thick line of the method's mean, per epoch."""
    for colour, (method, summary) in zip(_COLOURS, results["methods"].items(), strict=False):
        series = [[(h["epoch"], h[key]) for h in r.get("history", []) if key in h]
                  for r in summary["runs"] if r["state"] == "complete"]
        series = [s for s in series if s]
        for s in series:
            ax.plot(*zip(*s, strict=True), color=colour, alpha=0.25, linewidth=0.8)
        if series:
            by_epoch: dict[float, list[float]] = {}
            for s in series:
                for epoch, value in s:
                    by_epoch.setdefault(epoch, []).append(value)
            epochs = sorted(by_epoch)
            ax.plot(epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs],
                    color=colour, linewidth=2, label=method)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, f"no run reported {key}", ha="center", va="center",
                transform=ax.transAxes, fontsize=8)


def write_plots(results: dict[str, Any], folder: Path) -> dict[str, Path]:
    """``plots/<metric>.png``, ``plots/overview.png``, ``plots/curve_<key>.png`` and
    ``plots/curves.png``; returns them by name (``plot_...``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    metrics = [metric_by_name(n) for n in results["metrics"]]
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        plot_metric(ax, metric, results)
        files[f"plot_{metric.name}"] = _save(fig, folder / f"{metric.name}.png", 110)
    fig, axes = _grid(plt, len(metrics), cols=4)
    for ax, metric in zip(axes, metrics, strict=False):
        plot_metric(ax, metric, results)
    fig.suptitle(f"{results['study']}: test metrics, mean and "
                 f"{results['statistics']['confidence']:.0%} CI over {_covered(results)} "
                 "(dots: runs)")
    files["plot_overview"] = _save(fig, folder / "overview.png", 100)
    for key, title in CURVES:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        _plot_curve(ax, key, title, results)
        name = key.replace("/", "_")
        files[f"plot_curve_{name}"] = _save(fig, folder / f"curve_{name}.png", 110)
    fig, axes = _grid(plt, len(CURVES), cols=len(CURVES))
    for ax, (key, title) in zip(axes, CURVES, strict=False):
        _plot_curve(ax, key, title, results)
    fig.suptitle(f"{results['study']}: learning curves of the final runs (thin: seeds, thick: "
                 "mean)")
    files["plot_curves"] = _save(fig, folder / "curves.png", 100)
    return files


def _covered(results: dict[str, Any]) -> str:
    """What the intervals cover, in a few words (the report says it in full)."""
    stats = results["statistics"]
    parts = ["searches and seeds" if stats.get("search_clusters") else "seeds"]
    if stats.get("test_set"):
        parts.append("test images")
    return ", ".join(parts)


def _grid(plt: Any, count: int, cols: int) -> tuple[Any, list[Any]]:
    rows = max(1, math.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.axis("off")
    return fig, flat[:count]


def _save(fig: Any, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
