"""The ``extune`` command line: ``train``, ``evaluate``, ``config``, ``search``, ``export``, ``ui``.

Every user error (bad key or value, unknown name, missing files, unreachable services) is printed
as one line ``error: ...`` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from extune.errors import ExtuneError

__all__ = ["app", "main", "load_config"]

app = typer.Typer(
    name="extune",
    help="Hyperparameter search for explanation-driven training (ExCon, EDDA) of image "
    "classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="Override a config key, e.g. --set optim.lr=0.1 (repeatable).")]


def load_config(config: Path | None, overrides: list[str] | None) -> Any:
    """The defaults, then the YAML file, then ``--set`` overrides, validated (names too)."""
    from extune.train.config import Config, parse_assignments
    from extune.train.validate import validate_config

    cfg = Config.load(config) if config is not None else Config()
    return validate_config(cfg.with_overrides(parse_assignments(overrides or [])))


@app.command()
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
    console.print(f"training [bold]{cfg.method}[/] on [bold]{cfg.data.name}[/] with "
                  f"{cfg.model.backbone} for {cfg.optim.epochs} epochs -> {out}")
    result = fit(cfg, out_dir=out, resume=resume, test=test)
    _print_metrics(result.metrics, title=f"{cfg.method} after {cfg.optim.epochs} epochs")
    console.print(f"wrote {out}/config.yaml, metrics.json, checkpoint.pt")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint.pt or the run folder holding it.")],
    set_: SetOpt = None,
    split: Annotated[str, typer.Option(help="val or test.")] = "val",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON file (default: "
                                             "evaluation-<split>.json beside the checkpoint).")]
    = None,
) -> None:
    """Evaluate a checkpoint: accuracy, calibration, robustness, explanation quality."""
    from extune.train.evaluation import evaluate_checkpoint

    if split not in ("val", "test"):
        raise ExtuneError(f"--split must be val or test, got '{split}'")
    metrics, default_out = evaluate_checkpoint(checkpoint, set_ or [], split)
    out = out or default_out
    out.write_text(json.dumps(metrics, indent=2))
    _print_metrics(metrics, title=f"{split} metrics of {checkpoint}")
    console.print(f"wrote {out}")


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config as YAML (every key, with its value)."""
    console.print(load_config(config, set_).to_yaml(), highlight=False, markup=False)


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        value = metrics[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def _register_search_commands() -> None:
    try:
        from extune.search.cli_search import register
    except ImportError:  # search commands not installed in this build
        return
    register(app)


_register_search_commands()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app, turning user errors into one-line messages."""
    try:
        code = app(args=argv, standalone_mode=False)
    except ExtuneError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]; a training run resumes with "
                          "--resume <out>/checkpoint.pt")
        return 130
    except Exception as e:  # click's own usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
