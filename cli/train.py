"""``extune train``, ``extune evaluate`` and ``extune config``: one model, one config."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from extune.cli._common import console, echo
from extune.errors import ConfigError, ExtuneError

__all__ = ["train", "evaluate", "explain", "show_config", "load_config", "warn_inactive",
           "refuse_existing_run"]

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="Override a config key, e.g. --set optim.lr=0.1 (repeatable).")]


def load_config(config: Path | None, overrides: list[str] | None) -> Any:
    """The defaults, then the YAML file, then ``--set`` overrides, validated (names too)."""
    from extune.train.config import Config, parse_assignments
    from extune.train.validate import validate_config

    cfg = Config.load(config) if config is not None else Config()
    return validate_config(cfg.with_overrides(parse_assignments(overrides or [])))


def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder "
                                             "(default runs/<method>-<time>).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Checkpoint file or run folder to "
                                                "continue from.")] = None,
    test: Annotated[bool, typer.Option(help="Evaluate on the test split at the end.")] = True,
) -> None:
    """Train one model (the synthetic default with no config) and evaluate it."""
    from extune.train import fit

    cfg = load_config(config, set_)
    out = out or Path("runs") / f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    refuse_existing_run(out, resume)
    echo("training ", (cfg.method, "bold"), " on ", (cfg.data.name, "bold"),
         f" with {cfg.model.backbone} for {cfg.optim.epochs} epochs -> {out}")
    warn_inactive(cfg)
    result = fit(cfg, out_dir=out, resume=resume, test=test)
    epochs = cfg.optim.epochs
    _print_metrics(result.metrics, title=f"{cfg.method} after {epochs} epoch"
                   + ("" if epochs == 1 else "s"))
    echo(f"wrote {out}/config.yaml, metrics.json, checkpoint.pt")


def refuse_existing_run(out: Path, resume: Path | None) -> None:
    """``--out`` must not hold a run's results unless ``--resume`` continues a run into it (as
    ``extune search`` refuses a name that exists).

    Raises:
        ConfigError: naming the folder and both ways on.
    """
    from extune.train.checkpoint import CHECKPOINT_NAME

    held = [n for n in (CHECKPOINT_NAME, "config.yaml", "metrics.json") if (out / n).exists()]
    if not held:
        return
    if resume is not None:  # e.g. its own checkpoint, or the rescue copy of a full disk
        return
    raise ConfigError(f"--out {out} already holds a run ({', '.join(held)}); continue it with "
                      f"--resume {out}, or choose another --out")


def warn_inactive(cfg: Any) -> None:
    """One line when ``cfg`` would never switch its method on (it would train the baseline)."""
    from extune.train.methods import inactive_reason

    reason = inactive_reason(cfg)
    if reason:
        echo(("warning:", "bold yellow"), f" {reason}")


def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint.pt or the run folder holding it.")],
    set_: SetOpt = None,
    split: Annotated[str, typer.Option(help="val or test.")] = "val",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON file (default: "
                                             "evaluation-<split>.json beside the checkpoint).")]
    = None,
) -> None:
    """Evaluate a checkpoint: accuracy, calibration, robustness, explanation quality."""
    from extune.files import atomic_write_text, check_writable
    from extune.train.saved_model import evaluate_checkpoint, evaluation_path

    if split not in ("val", "test"):
        raise ExtuneError(f"--split must be val or test, got '{split}'")
    out = out or evaluation_path(checkpoint, split)
    check_writable(out.parent, "the evaluation file's folder (--out)")
    metrics = evaluate_checkpoint(checkpoint, set_ or [], split)
    atomic_write_text(out, json.dumps(metrics, indent=2))
    _print_metrics(metrics, title=f"{split} metrics of {checkpoint}")
    echo(f"wrote {out}")


def explain(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint.pt or the run folder holding it.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")]
    = Path("grid.png"),
    images: Annotated[Path | None, typer.Option(
        help="Folder of images (one sub-folder per class, or flat: explained for the predicted "
             "class). Default: validation images of the checkpoint's data set.")] = None,
    explainer: Annotated[str | None, typer.Option(
        help="Explainer (gradcam, integrated_gradients, ...). Default: the training one.")]
    = None,
    count: Annotated[int, typer.Option(help="Number of images.")] = 8,
    set_: SetOpt = None,
) -> None:
    """Draw a trained model's explanations: image, saliency, and the views its method trains on."""
    from extune.train.saved_model import explain_checkpoint

    path = explain_checkpoint(checkpoint, out, images=images, explainer=explainer, count=count,
                              overrides=set_ or [])
    console.print(f"wrote {path}", highlight=False, markup=False)


def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config as YAML (every key, with its value)."""
    console.print(load_config(config, set_).to_yaml(), highlight=False, markup=False)


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    """The metrics as a reader takes them in (:func:`~extune.evaluate.metric_info.summary_rows`):
    by kind, a column per split (test first), the training statistics in the caption."""
    from extune.evaluate.metric_info import summary_rows

    rows = summary_rows(metrics)
    shown = [r for r in rows if r.section != "training"]
    columns = [c for c in ("test", "val", "value") if any(c in r.cells for r in shown)]
    table = Table(title=Text(title), header_style="bold",
                  caption=_training_caption(rows, metrics))
    table.add_column("metric")
    for column in columns:
        table.add_column(column, justify="right")
    section = None
    for row in shown:
        if row.section != section:
            if section is not None:
                table.add_section()
            table.add_row(Text(_SECTION_TITLES.get(row.section, row.section), style="bold"))
            section = row.section
        name = f"{row.name} {row.info.arrow}" if row.info is not None else row.name
        table.add_row(Text(f"  {name}"),
                      *(_cell(metrics, row.cells.get(column, ())) for column in columns))
    console.print(table)


_SECTION_TITLES = {"per corruption": "corruptions: accuracy / ECE"}


def _cell(metrics: dict[str, Any], keys: tuple[str, ...]) -> str:
    """``0.6100``, or ``0.5200 / 0.1000`` for a corruption's accuracy and ECE."""
    return " / ".join(_value(metrics[k]) for k in keys)


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _training_caption(rows: list[Any], metrics: dict[str, Any]) -> Text | None:
    """``training, last epoch: loss 1.2345 · accuracy 0.6100`` (``None`` without them)."""
    parts = [f"{r.name} {_value(metrics[r.cells['train'][0]])}"
             for r in rows if r.section == "training"]
    return Text("training, last epoch: " + " · ".join(parts)) if parts else None
