"""``extune train``, ``extune evaluate`` and ``extune config``: one model, one config."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from extune.cli._common import (
    ExperimentOpt,
    TrackingUriOpt,
    console,
    echo,
    exit_stopped,
    warn_job_paths,
)
from extune.errors import ConfigError, ExtuneError
from extune.signals import interrupt_exit_code

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
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output folder "
                                            "(default runs/<method>-<time>).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Checkpoint file or run folder to "
                                                "continue from.")] = None,
    test: Annotated[bool, typer.Option(help="Evaluate on the test split at the end.")] = True,
    track: Annotated[bool, typer.Option(
        "--track/--no-track", help="Record the run in MLflow: params, metrics, files, the "
        "model.")] = True,
    tracking_uri: TrackingUriOpt = None,
    experiment: ExperimentOpt = None,
    register: Annotated[str | None, typer.Option(
        help="Add the model to the MLflow Model Registry under this name.")] = None,
) -> None:
    """Train one model (the synthetic default with no config) and evaluate it."""
    from extune.files import check_output_folder
    from extune.train import fit

    cfg = load_config(config, set_)
    if out == "":
        raise ConfigError("--out is empty (it would train into the current folder); give the "
                          "run's folder, e.g. --out runs/my-run")
    folder = Path(out) if out else Path("runs") / f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_output_folder(folder, "the output folder (--out)", "choose another --out")
    warn_job_paths(folder, tracking_uri, tracked=track)
    again = _TrainCommand(config, set_, folder, resume, test=test, track=track,
                          tracking_uri=tracking_uri, experiment=experiment, register=register)
    with _claimed(folder, resume):
        echo("training ", (cfg.method, "bold"), " on ", (cfg.data.name, "bold"),
             f" with {cfg.model.backbone} for {cfg.optim.epochs} epochs -> {folder}")
        run = _open_run(cfg, folder, config, resume, track=track, tracking_uri=tracking_uri,
                        experiment=experiment, register=register)
        if run is not None:
            _say_run(run)
        warn_inactive(cfg)
        try:
            with run if run is not None else contextlib.nullcontext():
                result = fit(cfg, out_dir=folder, resume=resume, test=test,
                             on_epoch=run.epoch if run is not None else None)
        except KeyboardInterrupt:
            _say_interrupted(folder, resume, again)
            raise typer.Exit(interrupt_exit_code()) from None
    epochs = cfg.optim.epochs
    table = _metrics_table(result.metrics, title=f"{cfg.method} after {epochs} epoch"
                           + ("" if epochs == 1 else "s"))
    console.print(table)
    echo(f"wrote {folder}/config.yaml, metrics.json, checkpoint.pt")
    if run is not None:
        _finish_run(run, result.metrics, epochs, table)


@dataclass
class _TrainCommand:
    """The options of an ``extune train``, to say the command that continues it (or starts
    it again) after an interruption."""

    config: Path | None
    set_: list[str] | None
    out: Path
    resume: Path | None
    test: bool
    track: bool
    tracking_uri: str | None
    experiment: str | None
    register: str | None

    def text(self, resume: Path | None) -> str:
        """``extune train ...`` with the same options, ``--resume resume`` and ``--out``."""
        parts = ["extune", "train"]
        if self.config is not None:
            parts += ["--config", str(self.config)]
        for assignment in self.set_ or []:
            parts += ["--set", assignment]
        if resume is not None:
            parts += ["--resume", str(resume)]
        parts += ["--out", str(self.out)]
        parts += [] if self.test else ["--no-test"]
        parts += [] if self.track else ["--no-track"]
        for flag, value in (("--tracking-uri", self.tracking_uri),
                            ("--experiment", self.experiment), ("--register", self.register)):
            if value is not None:
                parts += [flag, value]
        return shlex.join(parts)


def _say_interrupted(out: Path, resume: Path | None, command: _TrainCommand) -> None:
    """After Ctrl-C (or SIGTERM): the command that continues the training from its last
    checkpoint, or, before the first one, that there is nothing to continue and the command
    that starts it again (:func:`_claimed` has removed what it wrote)."""
    from extune.signals import stop_words
    from extune.train.checkpoint import CHECKPOINT_NAME

    what = stop_words()
    if (out / CHECKPOINT_NAME).is_file():
        echo((what, "bold red"), f"; continue with: {command.text(out)}", err=True)
    elif resume is not None:
        echo((what, "bold red"), f" before the first checkpoint in {out}; continue with: "
             f"{command.text(resume)}", err=True)
    else:
        kept = _unsent_writes(out)
        then = (f"{kept} MLflow write(s) are kept in {out / 'tracking'}: send them with extune "
                f"sync {out}, then start it again with: " if kept else "start it again with: ")
        echo((what, "bold red"), " before the first checkpoint, so there is nothing to "
             f"continue; {then}{command.text(None)}", err=True)


@contextlib.contextmanager
def _claimed(out: Path, resume: Path | None) -> Any:
    """Hold ``out`` for this training (:mod:`extune.locks`; the folder is made for the lock
    if needed), then refuse a folder that holds a run (:func:`refuse_existing_run`).

    When the training ends without a checkpoint in ``out`` (a failed start, an error or Ctrl-C
    in the first epoch) and continues none (no ``--resume``), what it wrote is removed so that
    the same command starts it again: the files it made, the folder if it made it (its MLflow
    run, ended FAILED or KILLED, stays in the store; MLflow writes not yet sent stay in
    ``out/tracking`` for ``extune sync``).

    Raises:
        FolderInUse: another process trains into ``out``.
        ConfigError: ``out`` holds a run, or cannot be made.
    """
    from extune.locks import LOCK_NAME, folder_lock
    from extune.train.checkpoint import CHECKPOINT_NAME

    made = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out {out} ({e.strerror or e}); choose another "
                          "--out") from None
    locked_before = (out / LOCK_NAME).exists()
    try:
        with folder_lock(out, "training", fix="wait for it to end, or choose another --out"):
            there = {name for name in (*_STARTED_FILES, "tracking") if (out / name).exists()}
            try:
                refuse_existing_run(out, resume)
                yield
            except BaseException:
                if resume is None and not (out / CHECKPOINT_NAME).exists():
                    _remove_start(out, keep=there)
                if not locked_before or [p.name for p in out.iterdir()] == [LOCK_NAME]:
                    (out / LOCK_NAME).unlink(missing_ok=True)  # nothing came of it
                raise
    finally:
        for folder in made:  # the innermost first; only what this made and left empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


_STARTED_FILES = ("config.yaml", "saliency_grid.png", "grids", "test_outputs.npz")
"""What a training writes before its first checkpoint (besides ``tracking/``)."""


def _remove_start(out: Path, keep: set[str]) -> None:
    """Remove what a training wrote in ``out`` before its first checkpoint (not the names in
    ``keep``, which were there before it): its files, and its MLflow journal once every write
    was sent."""
    import shutil

    for name in set(_STARTED_FILES) - keep:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if "tracking" not in keep and (out / "tracking").is_dir() and not _unsent_writes(out):
        shutil.rmtree(out / "tracking", ignore_errors=True)


def _unsent_writes(out: Path) -> int:
    """MLflow writes of a training kept in ``out/tracking`` that the store has not taken."""
    if not (out / "tracking").is_dir():
        return 0
    from extune.tracking.journal import Journal

    return len(Journal(out / "tracking").unsent())


_REGISTERED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")


def _open_run(cfg: Any, out: Path, config: Path | None, resume: Path | None, *, track: bool,
              tracking_uri: str | None, experiment: str | None, register: str | None) -> Any:
    """The MLflow run of this training (:mod:`extune.tracking.training_run`), the store
    checked before anything trains; ``None`` with ``--no-track``.

    Raises:
        ConfigError: tracking options with ``--no-track``, a bad ``--register`` name.
        ServiceError: the store cannot be reached or used.
    """
    if not track:
        given = [f for f, v in (("--tracking-uri", tracking_uri), ("--experiment", experiment),
                                ("--register", register)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} "
                              "MLflow tracking; drop --no-track")
        return None
    if register is not None and not _REGISTERED_NAME.fullmatch(register):
        raise ConfigError(f"--register '{register}': a registered model's name has letters, "
                          "digits, '.', '_' and '-' (at most 100), e.g. --register excon-cifar10")
    from extune.tracking.training_run import open_final_run
    from extune.train.config import load_lineage

    return open_final_run(cfg, out, tracking_uri=tracking_uri, experiment=experiment,
                          lineage=load_lineage(config) if config is not None else {},
                          resume=resume, register=register)


def _say_run(run: Any) -> None:
    """Where the run is in MLflow as it starts: its page in a running UI of its store (or a
    server store), else the command that shows it."""
    from extune.tracking.mlflow_app import running_ui

    uri = run.tracker.uri
    address = running_ui(uri)
    where = (f"{address}/{run.page}" if address
             else f"extune ui --tracking-uri {uri} lists it")
    echo(f"MLflow: run {run.name} in experiment {run.tracker.experiment}; {where}")


def _finish_run(run: Any, metrics: dict[str, Any], epochs: int, table: Table) -> None:
    """Log the end of training (test metrics, files, the model), wait for the store (a minute
    at most), and say where the run and the model are, or how to send what it did not take."""
    from extune.tracking.journal import FLUSH_TIMEOUT_S

    try:
        run.finish(metrics, epochs, _table_text(table))
        pending = run.close(FLUSH_TIMEOUT_S)
    except KeyboardInterrupt:  # the run is ended KILLED (FinalRun.close)
        exit_stopped(f"the training is complete in {run.out}; the MLflow writes not sent yet "
                     f"are kept in {run.out / 'tracking'}: send them with extune sync {run.out}")
    from extune.tracking.mlflow_app import DEFAULT_UI, running_ui

    uri = run.tracker.uri
    address = running_ui(uri)
    where = (f"{address}/{run.page}" if address
             else f"extune ui --tracking-uri {uri}, then {DEFAULT_UI}/{run.page}")
    echo(f"MLflow: run {run.name} ({run.run_id}) in experiment {run.tracker.experiment}; "
         f"browse: {where}")
    if pending:
        echo(("warning:", "bold yellow"), f" {pending} MLflow write(s) could not be sent; they "
             f"are kept in {run.out / 'tracking'}: send them with extune sync {run.out}")
        return
    version = run.registered_version()
    if version is not None:
        echo(f"registered model {run.register} version {version}: models:/{run.register}/"
             f"{version} (load it with mlflow.pyfunc.load_model or mlflow.pytorch.load_model)")


def refuse_existing_run(out: Path, resume: Path | None) -> None:
    """``--out`` must not hold a run's results unless ``--resume`` continues a run into it (as
    ``extune search`` refuses a name that exists), nor MLflow writes of an earlier training
    that were never sent.

    Raises:
        ConfigError: naming the folder and the way on.
    """
    from extune.train.checkpoint import CHECKPOINT_NAME

    if resume is not None:  # e.g. its own checkpoint, or the rescue copy of a full disk
        return
    held = [n for n in (CHECKPOINT_NAME, "config.yaml", "metrics.json") if (out / n).exists()]
    if CHECKPOINT_NAME in held:
        config = f" --config {out / 'config.yaml'}" if "config.yaml" in held else ""
        untracked = "" if (out / "tracking" / "run.json").is_file() else " --no-track"
        raise ConfigError(f"--out {out} already holds a run ({', '.join(held)}); continue it "
                          f"with: extune train{config} --resume {out} --out {out}{untracked}, "
                          "or choose another --out")
    if held:
        raise ConfigError(f"--out {out} holds a run that saved no checkpoint "
                          f"({', '.join(held)}), so there is nothing in it to continue; "
                          "choose another --out, or remove those files to train there")
    unsent = _unsent_writes(out)
    if unsent:
        raise ConfigError(f"--out {out} holds {unsent} MLflow write(s) of an earlier training "
                          f"that were never sent; send them with: extune sync {out}, or choose "
                          "another --out")


def warn_inactive(cfg: Any) -> None:
    """One line when ``cfg`` would never switch its method on (it would train the baseline)."""
    from extune.train.methods import inactive_reason

    reason = inactive_reason(cfg)
    if reason:
        echo(("warning:", "bold yellow"), f" {reason}")


CheckpointOpt = Annotated[str, typer.Option(
    help="checkpoint.pt, the run folder holding it, or an MLflow model: models:/NAME/VERSION, "
         "models:/NAME@ALIAS, runs:/RUN_ID/model.")]
ModelStoreOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", help="MLflow store of a models:/ or runs:/ --checkpoint. (default: "
    "sqlite:///mlflow.db)")]


@contextlib.contextmanager
def _local_checkpoint(checkpoint: str, tracking_uri: str | None) -> Any:
    """A checkpoint path for ``--checkpoint``: as given, or an MLflow model's, downloaded."""
    from extune.tracking.logged_model import is_model_uri, model_checkpoint

    if not is_model_uri(checkpoint):
        if tracking_uri is not None:
            raise ConfigError("--tracking-uri applies to a models:/ or runs:/ --checkpoint")
        yield Path(checkpoint)
        return
    with model_checkpoint(checkpoint, tracking_uri) as path:
        yield path


def evaluate(
    checkpoint: CheckpointOpt,
    set_: SetOpt = None,
    split: Annotated[str, typer.Option(help="val or test.")] = "val",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON file (default: "
                                             "evaluation-<split>.json beside the checkpoint; "
                                             "for an MLflow model, evaluation-<name>-<version>"
                                             "-<split>.json here).")]
    = None,
    tracking_uri: ModelStoreOpt = None,
) -> None:
    """Evaluate a checkpoint: accuracy, calibration, robustness, explanation quality."""
    from extune.evaluate.metric_info import metrics_json
    from extune.files import (
        atomic_write_text,
        check_free_space,
        check_output_file,
        refuse_full_disk,
    )
    from extune.tracking.logged_model import is_model_uri, model_slug
    from extune.train.checkpoint_eval import evaluate_checkpoint, evaluation_path
    from extune.train.progress import EpochProgress

    if split not in ("val", "test"):
        raise ExtuneError(f"--split must be val or test, got '{split}'")
    if out is None and is_model_uri(checkpoint):
        out = Path(f"evaluation-{model_slug(checkpoint)}-{split}.json")
    out = out or evaluation_path(checkpoint, split)
    check_output_file(out, "the evaluation file (--out)", "evaluation.json")
    check_free_space(out.parent, "the evaluation file (--out)", need=_OUTPUT_ROOM)
    with _local_checkpoint(checkpoint, tracking_uri) as local:
        metrics = evaluate_checkpoint(local, set_ or [], split, progress=EpochProgress())
    with refuse_full_disk(out, "the evaluation file"):
        atomic_write_text(out, metrics_json(metrics))  # NaN as null: JSON has no NaN
    _print_metrics(metrics, title=f"{split} metrics of {checkpoint}")
    echo(f"wrote {out}")


_OUTPUT_ROOM = 2**20
"""Free bytes ``evaluate`` and ``explain`` want for their file before they start the work (a
JSON file, an image: far less)."""


def explain(
    checkpoint: CheckpointOpt,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG file to write (default "
                                             "grid.png; with --audit, audit.png).")] = None,
    images: Annotated[Path | None, typer.Option(
        help="Folder of images (one sub-folder per class, or flat: explained for the predicted "
             "class). Default: validation images of the checkpoint's data set.")] = None,
    explainer: Annotated[str | None, typer.Option(
        help="Explainer (gradcam, integrated_gradients, ...). Default: the training one.")]
    = None,
    count: Annotated[int, typer.Option(help="Number of images (with --audit: rows of the "
                                       "figure).")] = 8,
    set_: SetOpt = None,
    tracking_uri: ModelStoreOpt = None,
    audit: Annotated[bool, typer.Option(
        "--audit", help="Audit the explainer instead (sanity checks, robustness, complexity, "
        "faithfulness) on the images of the explanation metrics: print the audit and draw the "
        "randomisation test's cascade.")] = False,
) -> None:
    """Draw a trained model's explanations: image, saliency, and the views its method trains on;
    or, with --audit, audit its explainer."""
    from extune.files import check_free_space, check_output_file, refuse_full_disk
    from extune.train.checkpoint_eval import GRID_SUFFIXES, explain_checkpoint

    if audit:
        _audit(checkpoint, out or Path("audit.png"), images=images, explainer=explainer,
               count=count, overrides=set_ or [], tracking_uri=tracking_uri)
        return
    out = out or Path("grid.png")
    check_output_file(out, "the grid image (-o)", "grid.png", GRID_SUFFIXES)  # before a download
    check_free_space(out.parent, "the grid image (-o)", need=_OUTPUT_ROOM)
    with _local_checkpoint(checkpoint, tracking_uri) as local, \
            refuse_full_disk(out, "the grid image"):  # written whole or not at all
        path = explain_checkpoint(local, out, images=images, explainer=explainer, count=count,
                                  overrides=set_ or [])
    console.print(f"wrote {path}", highlight=False, markup=False, soft_wrap=True)


def _audit(checkpoint: str, out: Path, *, images: Path | None, explainer: str | None,
           count: int, overrides: list[str], tracking_uri: str | None) -> None:
    """``extune explain --audit``: the audit's table on the console, the cascade's PNG."""
    from extune.files import check_free_space, check_output_file, refuse_full_disk
    from extune.train.checkpoint_eval import GRID_SUFFIXES, audit_checkpoint

    check_output_file(out, "the audit figure (-o)", "audit.png", GRID_SUFFIXES)
    check_free_space(out.parent, "the audit figure (-o)", need=_OUTPUT_ROOM)
    with _local_checkpoint(checkpoint, tracking_uri) as local, \
            refuse_full_disk(out, "the audit figure"):  # written whole or not at all
        found = audit_checkpoint(local, out, images=images, explainer=explainer, count=count,
                                 overrides=overrides)
    console.print(_audit_table(found, title=f"explanation audit of {checkpoint}"))
    console.print(f"wrote {found.figure}", highlight=False, markup=False, soft_wrap=True)


def _audit_table(found: Any, title: str) -> Table:
    """Each audit metric's mean over the images with its direction, then the randomisation
    cascade layer by layer; the verdict in the caption."""
    from extune.evaluate.metric_info import metric_info

    audit = found.audit
    summary = audit.summary()
    verdict = "passed" if audit.passed else "FAILED"
    mean = summary["randomisation_similarity"]
    caption = Text(f"randomisation test {verdict}: mean similarity {mean:.3f} "
                   f"{'<' if audit.passed else '>='} {audit.threshold:.3f}",
                   style="bold green" if audit.passed else "bold red")
    table = Table(title=Text(f"{title}\n{found.protocol}, {found.images}"),
                  header_style="bold", caption=caption)
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("what")
    table.add_row(Text("audit", style="bold"))
    for name, value in summary.items():
        info = metric_info(name)
        table.add_row(Text(f"  {name} {info.arrow}"), _value(value), Text(info.label))
    table.add_section()
    table.add_row(Text("randomisation cascade", style="bold"), "",
                  Text("randomisation_similarity after re-initialising the layers from the top "
                       "down to this one"))
    for layer, row in zip(audit.layers, audit.cascade, strict=True):
        table.add_row(Text(f"  {layer}"), _value(float(row.nanmean())))
    return table


def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config as YAML (every key, with its value)."""
    console.print(load_config(config, set_).to_yaml(), highlight=False, markup=False)


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    console.print(_metrics_table(metrics, title))


def _table_text(table: Table) -> str:
    """A table as the console shows it, in plain text (``summary.txt`` of the MLflow run)."""
    buffer = io.StringIO()
    Console(file=buffer, width=100, color_system=None, force_terminal=False).print(table)
    return buffer.getvalue()


def _metrics_table(metrics: dict[str, Any], title: str) -> Table:
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
    return table


_SECTION_TITLES = {"per corruption": "corruptions: accuracy / ECE", "audit": "explanation audit"}


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
