"""The files a search leaves in its folder: ``summary.csv``, ``summary.md``, the history or
Pareto plot, ``best_config.yaml`` and Optuna's plots (``plots/``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extune.errors import one_line
from extune.evaluate.objectives import Objective
from extune.files import atomic_write_text
from extune.search.folder import SearchDir
from extune.search.reporting.export import as_given
from extune.search.reporting.results import (
    TrialRecord,
    plot_summary,
    summary_csv,
    summary_markdown,
)

if TYPE_CHECKING:
    from extune.search.reporting.plots import SearchPlots

__all__ = ["write_outputs", "write_plots", "config_header"]

log = logging.getLogger(__name__)


def write_outputs(sdir: SearchDir, records: list[TrialRecord], objectives: list[Objective],
                   best: TrialRecord | None) -> dict[str, Path]:
    files = {"summary_csv": sdir.path / "summary.csv", "summary_md": sdir.path / "summary.md"}
    atomic_write_text(files["summary_csv"], summary_csv(records, objectives))
    atomic_write_text(files["summary_md"], summary_markdown(records, objectives, title=sdir.name))
    if any(r.state in ("complete", "pruned") for r in records):
        plot = "pareto_front.png" if len(objectives) > 1 else "optimization_history.png"
        files["plot"] = plot_summary(records, objectives, sdir.path / plot)
    if best is not None:
        config = as_given(sdir.base_config().with_overrides(best.params), sdir)
        files["best_config"] = sdir.path / "best_config.yaml"
        atomic_write_text(files["best_config"], config_header(sdir, best) + config.to_yaml())
    return files


def write_plots(sdir: SearchDir, study: Any, objectives: list[Objective]) -> SearchPlots:
    """Optuna's plots of the search (:mod:`extune.search.reporting.plots`); the plots left
    out are logged with the reason. A plotting failure costs the plots, never the search's
    results."""
    from extune.search.reporting.plots import PLOTS_DIR, SearchPlots, search_plots

    try:
        plots = search_plots(study, objectives, sdir.path / PLOTS_DIR, title=sdir.name)
    except Exception as e:  # plotting libraries raise many types on odd studies
        log.warning("could not draw the search's plots: %s", one_line(e, 300))
        return SearchPlots(left_out={"plots": f"could not draw them: {one_line(e, 300)}"})
    if plots.left_out:
        log.info("plots left out: %s", plots.left_out_text())
    return plots


def config_header(sdir: SearchDir, best: TrialRecord) -> str:
    values = ", ".join(f"{o.metric}={best.value(o):.4g}" for o in sdir.objectives
                       if best.value(o) is not None)
    return (f"# best config of search {sdir.name} ({best.name}, Tune trial {best.trial_id}): "
            f"{values}\n# train it: extune train --config best_config.yaml\n")
