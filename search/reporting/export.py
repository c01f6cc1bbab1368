"""Export the config of a trial as a YAML file that ``extune train --config`` consumes.

Two sources: a search folder (the trial chosen by a rule: the best by an objective, or the knee
of the Pareto front) or any MLflow child run (a trial picked in the UI), whose ``config.yaml``
artifact is its full Config (runs of older versions: the params, the flattened Config as
strings, over the parent run's constant params).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from extune.errors import ConfigError, one_line
from extune.files import atomic_write_text, check_output_file, check_writable
from extune.search.connections import existing_store
from extune.search.folder import SearchDir
from extune.search.reporting.results import TrialRecord, select_trial
from extune.train.config import Config, load_yaml

__all__ = ["export_search", "export_run", "run_caveat", "search_caveat",
           "config_from_params", "epoch_settings",
           "rescale_epochs", "EPOCH_KEYS"]

EPOCH_KEYS = ("optim.warmup_epochs",)
"""Settings counted in epochs: chosen on short trials, they mean less of a longer final run
(the cosine schedule needs nothing: it always spans ``optim.epochs``; the methods' warm-ups are
shares of the run, ``excon.warmup_fraction`` and ``edda.warmup_fraction``)."""


def epoch_settings(config: Config) -> str:
    """One line with the warm-ups of ``config`` as epochs of its run and shares of it."""
    from extune.train.methods import warmup_epochs

    epochs = config.optim.epochs
    parts = []
    if config.optim.warmup_epochs:
        parts.append(f"learning rate {config.optim.warmup_epochs} epoch(s) "
                     f"({config.optim.warmup_epochs / epochs:.0%}, counted in epochs)")
    share = {"excon": config.excon.warmup_fraction, "edda": config.edda.warmup_fraction,
             "random_occlusion": config.edda.warmup_fraction}.get(config.method)
    if share:
        parts.append(f"{config.method} {warmup_epochs(share, epochs)} epoch(s) "
                     f"({share:.0%} of the run)")
    return f"warm-ups of {epochs}-epoch training: {', '.join(parts) if parts else 'none'}"


def rescale_epochs(config: Config, epochs: int) -> Config:
    """``config`` trained for ``epochs`` with each epoch-counted setting kept as the same share
    of training (rounded; a warm-up of at least one epoch stays at least one)."""
    flat = config.flatten()
    factor = epochs / config.optim.epochs
    scaled = {k: max(1, round(flat[k] * factor)) if flat[k] else 0 for k in EPOCH_KEYS}
    return config.with_overrides({"optim.epochs": epochs, **scaled})


def export_search(search_dir: str | Path, out: str | Path, select: str | None = None,
                  epochs: int | None = None) -> tuple[Config, TrialRecord]:
    """Write the full Config of the trial ``select`` picks in a search folder.

    Args:
        search_dir: the folder ``extune search`` wrote.
        out: the YAML file to write.
        select: ``None`` (the objective; ``knee`` with several objectives), ``knee``, or an
            objective/metric name (``accuracy``, ``alignment``): see
            :func:`extune.search.reporting.results.select_trial`. Only complete trials are
            candidates.
        epochs: train the export for this many epochs, with the epoch-counted settings
            (warm-ups) scaled to keep their share of training (:func:`rescale_epochs`).

    Returns:
        The exported config and the trial it came from.

    Raises:
        ConfigError: not a search folder, no complete trial, unknown rule.
    """
    check_output_file(out, "the exported config (-o)", "best.yaml")
    sdir = SearchDir.load(search_dir)
    sdir.refuse_failed("there is nothing to export; start a new search")
    records = sdir.records()
    record = select_trial(records, sdir.objectives, select)
    config = sdir.base_config().with_overrides(record.params)
    values = ", ".join(f"{o.metric}={record.value(o):.4g}" for o in sdir.objectives
                       if record.value(o) is not None)
    note = search_caveat(sdir, records)
    header = (f"# exported from search {sdir.name}: {record.name} (Tune trial "
              f"{record.trial_id}), rule {select or 'default'}: {values}\n"
              + (f"# warning: {note}\n" if note else "")
              + f"# {epoch_settings(config)}\n")
    if epochs is not None:
        config = rescale_epochs(config, epochs)
        header += f"# rescaled: {epoch_settings(config)}\n"
    _write(out, header, config)
    return config, record


def search_caveat(sdir: SearchDir, records: list[TrialRecord] | None = None) -> str | None:
    """Why a search's best trial may not be its final answer (``None`` when it finished): it
    is still running, or was interrupted, so the best is the best so far."""
    status = sdir.meta.get("status")
    if status == "finished":
        return None
    records = records if records is not None else sdir.records()
    done = sum(r.state in ("complete", "pruned", "failed") for r in records)
    state = {"running": "is still running (or its driver stopped without saying so)",
             "interrupted": "was interrupted"}.get(status, f"is {status}")
    return (f"search {sdir.name} {state}: this is the best of the {done} trial(s) that ended, of "
            f"{sdir.settings.trials}; export again once `extune search --resume {sdir.path}` "
            "has finished it")


def export_run(run_id: str, out: str | Path, tracking_uri: str | None = None,
               epochs: int | None = None) -> tuple[Config, str | None]:
    """Write the Config of an MLflow trial run (``epochs``: as :func:`export_search`).

    Returns:
        The exported config, and a warning when the run is not a complete trial (pruned,
        failed or interrupted: its scores are partial or missing), else ``None``. The warning
        is also a comment at the top of the file.

    Raises:
        ServiceError: the tracking store cannot be reached.
        ConfigError: no such run, a search (parent) run, or params that do not make a Config.
    """
    check_output_file(out, "the exported config (-o)", "best.yaml")
    uri = existing_store(tracking_uri)
    from mlflow.exceptions import MlflowException

    from extune.search.tracking.client import mlflow_client

    client = mlflow_client(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        message = one_line(e.message if hasattr(e, "message") else e, 200)
        raise ConfigError(f"cannot read MLflow run '{run_id}' from {uri}: {message}") from None
    if run.data.tags.get("extune.role") == "search":
        raise ConfigError(f"run '{run_id}' is a search's parent run; export one of its trial "
                          "runs, or the search folder with `extune export SEARCH_DIR`")
    config = _logged_config(client, run) or config_from_params(
        _run_params(client, run), source=f"run '{run_id}'")
    note = run_caveat(run)
    header = (f"# exported from MLflow run {run_id} ({run.info.run_name})\n"
              + (f"# warning: {note}\n" if note else "")
              + f"# {epoch_settings(config)}\n")
    if epochs is not None:
        config = rescale_epochs(config, epochs)
        header += f"# rescaled: {epoch_settings(config)}\n"
    _write(out, header, config)
    return config, note


def run_caveat(run: Any) -> str | None:
    """Why an MLflow trial run is not a complete trial (``None`` when it is one)."""
    tags, name = run.data.tags, f"run {run.info.run_id} ({run.info.run_name})"
    if tags.get("extune.pruned") == "true":
        return (f"{name} was pruned: stopped early by the scheduler, so it never trained all "
                "its epochs and its scores are partial (a search exports only complete trials)")
    if run.info.status == "FAILED":
        return f"{name} failed ({tags.get('extune.error', 'no error recorded')})"
    if run.info.status != "FINISHED":
        return f"{name} did not finish (status {run.info.status})"
    return None


def _logged_config(client: Any, run: Any) -> Config | None:
    """The run's ``config.yaml`` artifact as a Config, or ``None`` when it has none."""
    import tempfile

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run.info.run_id, "config.yaml", tmp)
        except (MlflowException, OSError):
            return None
        return Config.load(path)


def _run_params(client: Any, run: Any) -> dict[str, str]:
    """The run's params over its parent's (a search logs its constants on the parent)."""
    parent_id = run.data.tags.get("mlflow.parentRunId")
    if not parent_id:
        return dict(run.data.params)
    return {**client.get_run(parent_id).data.params, **run.data.params}


def config_from_params(params: dict[str, str], source: str = "params") -> Config:
    """Rebuild a typed Config from MLflow params (dotted keys, string values).

    Each value is read as YAML (:func:`~extune.train.config.load_yaml`: ``0.1``, ``1e-3``,
    ``true``, ``null``, ``[a, b]``); a value the setting's type rejects that way is kept as the
    raw string (a string setting that looks like a number). Params that are not Config keys
    are ignored.

    Raises:
        ConfigError: no Config key among the params, or a value Config rejects.
    """
    keys = set(Config.keys())
    found = {k: v for k, v in params.items() if k in keys}
    if not found:
        raise ConfigError(f"{source} has no extune config params (is it a trial run of "
                          "`extune search`?)")
    overrides: dict[str, Any] = {}
    base = Config()
    for key, raw in found.items():
        overrides[key] = _typed(base, key, raw)
    return base.with_overrides(overrides)


def _typed(base: Config, key: str, raw: str) -> Any:
    try:
        value = load_yaml(raw)
    except yaml.YAMLError:
        return raw
    try:
        base.with_overrides({key: value})
        return value
    except ConfigError:
        return raw


def _write(out: str | Path, header: str, config: Config) -> None:
    out = Path(out)
    check_writable(out.parent, "the exported config (-o)")
    atomic_write_text(out, header + config.to_yaml())
