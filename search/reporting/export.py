"""Export the config of a trial as a YAML file that ``extune train --config`` consumes.

Two sources: a search folder (the trial chosen by a rule: the best by an objective, or the knee
of the Pareto front) or any MLflow child run (a trial picked in the UI), whose ``config.yaml``
artifact is its full Config (runs of older versions: the params, the flattened Config as
strings, over the parent run's constant params).

The file is the config a user would train: the keys a search changes for its trials (absolute
data paths, no progress bar: :data:`~extune.search.settings.GIVEN_KEYS`) are written back as
the user gave them (:func:`as_given`), and its comment lines are sentences about this export:
where it comes from, why it may not be final, its warm-ups, where its relative paths start.
Its last key, ``lineage:``, says the same for machines (search name and id, trial, MLflow runs,
selection rule, extune version): ``extune train`` records it as tags of its MLflow run and
links the run to the trial and the search (:mod:`~extune.tracking.training_run`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from extune import __version__
from extune.errors import ConfigError, one_line
from extune.evaluate.objectives import Objective
from extune.files import atomic_write_text, check_output_file, check_writable
from extune.search.folder import SearchDir
from extune.search.reporting.results import TrialRecord, select_trial
from extune.tracking.store import existing_store
from extune.train.config import LINEAGE_KEY, Config, load_yaml

__all__ = ["export_search", "export_run", "search_lineage", "run_caveat", "search_caveat",
           "config_from_params", "epoch_settings", "as_given", "relative_paths_note",
           "rescale_epochs", "EPOCH_KEYS"]

EPOCH_KEYS = ("optim.warmup_epochs",)
"""Settings counted in epochs: chosen on short trials, they mean less of a longer final run
(the cosine schedule needs nothing: it always spans ``optim.epochs``; the methods' warm-ups are
shares of the run, ``excon.warmup_fraction`` and ``edda.warmup_fraction``)."""


def epoch_settings(config: Config) -> str:
    """The warm-ups of ``config`` as one sentence without its final period, naming only the
    settings of its method.

    >>> epoch_settings(Config().with_overrides({"method": "ce", "optim.epochs": 3}))
    '3-epoch training has no warm-up'
    """
    epochs = config.optim.epochs
    parts = [p for p in (_lr_warmup(config), _method_warmup(config)) if p]
    if not parts:
        return f"{epochs}-epoch training has no warm-up"
    return f"in {epochs}-epoch training, " + " and ".join(parts)


def _lr_warmup(config: Config) -> str | None:
    """``the learning rate warms up for 2 epochs (optim.warmup_epochs=2, counted in epochs:
    50% of training)``, or ``None`` without a learning-rate warm-up."""
    warmup, epochs = config.optim.warmup_epochs, config.optim.epochs
    if not warmup:
        return None
    return (f"the learning rate warms up for {_epochs(warmup)} (optim.warmup_epochs={warmup}, "
            f"counted in epochs: {warmup / epochs:.0%} of training)")


def _method_warmup(config: Config) -> str | None:
    """``excon trains plain SupCon for the first 25% of its training steps
    (excon.warmup_fraction=0.25, counted in steps: the same share of any run)``, or ``None``
    when the method has no warm-up."""
    from extune.train.methods import METHODS

    method = METHODS.get(config.method)
    share = method.warmup_share(config)
    if not share:
        return None
    return (f"{config.method} trains {method.warmup_trains} for the first {share:.0%} of its "
            f"training steps ({method.warmup_key}={share:g}, counted in steps: the same share "
            "of any run)")


def _epochs(count: int) -> str:
    return f"{count} epoch" + ("" if count == 1 else "s")


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
        The exported config (its :data:`~extune.search.settings.GIVEN_KEYS` as the user gave
        them: :func:`as_given`) and the trial it came from.

    Raises:
        ConfigError: not a search folder, no complete trial, unknown rule.
    """
    check_output_file(out, "the exported config (-o)", "best.yaml")
    sdir = SearchDir.load(search_dir)
    sdir.refuse_failed("there is nothing to export; start a new search")
    records = sdir.records()
    record = select_trial(records, sdir.objectives, select)
    config = as_given(sdir.base_config().with_overrides(record.params), sdir)
    notes = [f"exported from search {sdir.name}: {record.name} (Tune trial {record.trial_id}), "
             f"{_rule(select, sdir.objectives)}{_scores(record, sdir.objectives)}",
             _warning(search_caveat(sdir, records)), relative_paths_note(config, sdir)]
    notes += _epoch_notes(config, epochs)
    if epochs is not None:
        config = rescale_epochs(config, epochs)
    _write(out, notes, config, search_lineage(sdir, record, select))
    return config, record


def search_lineage(sdir: SearchDir, record: TrialRecord, select: str | None) -> dict[str, str]:
    """Where an export of ``record`` comes from (the file's ``lineage:``; ``extune train``
    records it with its MLflow run): the search, the trial, their MLflow runs (the trial's
    looked up in the search's store when it answers), the selection rule, extune's version."""
    objectives = sdir.objectives
    lineage = {
        "search": sdir.name, "search_id": sdir.search_id, "trial": record.name,
        "trial_id": record.trial_id,
        "run_id": _trial_run_id(sdir, record.trial_id),
        "parent_run_id": sdir.meta.get("parent_run_id"),
        "tracking_uri": sdir.meta.get("tracking_uri"), "experiment": sdir.settings.experiment,
        "select": _rule_name(select, objectives),
        "rule": _rule(select, objectives), "extune_version": __version__}
    return {k: str(v) for k, v in lineage.items() if v is not None}


def _trial_run_id(sdir: SearchDir, trial_id: str | None) -> str | None:
    """The MLflow run of a search's trial, when the search's store has it and answers (an
    export needs no store: ``extune train`` finds the run by its tags otherwise)."""
    uri = sdir.meta.get("tracking_uri")
    if not uri or not trial_id:
        return None
    from extune.tracking.client import mlflow_client, tag_filter
    from extune.tracking.journal import bounded_http_client

    bounded_http_client()
    try:
        existing_store(uri)  # a missing SQLite file is not read (it would be created)
        client = mlflow_client(uri)
        experiment = client.get_experiment_by_name(sdir.settings.experiment)
        if experiment is None:
            return None
        runs = client.search_runs(
            [experiment.experiment_id], max_results=1,
            filter_string=tag_filter({"extune.search_id": sdir.search_id,
                                      "extune.trial_id": trial_id}))
        return runs[0].info.run_id if runs else None
    except Exception:  # MLflow, requests and SQLAlchemy raise many types: no run id then
        return None


def as_given(config: Config, sdir: SearchDir | None) -> Config:
    """``config`` (a search's base config with a trial's parameters) with the keys the search
    changed for its trials (:data:`~extune.search.settings.GIVEN_KEYS`: absolute data paths,
    no progress bar) back as the user gave them.

    A key the trial itself changed is kept. A search folder of an older version, or no folder
    (an MLflow run whose search is elsewhere), gives ``runtime.progress`` Config's default and
    keeps the absolute paths (they are right on the machine that ran the search).
    """
    given = {"runtime.progress": Config().runtime.progress}
    if sdir is None:
        return config.with_overrides(given)
    given.update(sdir.given_values())
    base, flat = sdir.base_config().flatten(), config.flatten()
    return config.with_overrides({k: v for k, v in given.items() if flat[k] == base[k]})


def relative_paths_note(config: Config, sdir: SearchDir | None) -> str | None:
    """Where the relative data paths of an export start (the folder the search was started
    in), or ``None`` when none of its paths is relative. ``data.root`` counts only for a data
    set that reads files (not ``synthetic``)."""
    if sdir is None or sdir.started_in is None:
        return None
    keys = ("data.cache_dir",) if config.data.name == "synthetic" else ("data.root",
                                                                         "data.cache_dir")
    flat = config.flatten()
    relative = [f"{k}={flat[k]}" for k in keys
                if flat[k] and not Path(flat[k]).expanduser().is_absolute()]
    if not relative:
        return None
    one = len(relative) == 1
    return (f"the relative {'path' if one else 'paths'} {' and '.join(relative)} "
            f"{'starts' if one else 'start'} from {sdir.started_in}, the folder the search was "
            f"started in: start `extune train` there, or make {'it' if one else 'them'} "
            "absolute")


def _rule_name(select: str | None, objectives: list[Objective]) -> str:
    """The selection rule: ``select``, else the default (the knee for several objectives,
    else the first objective)."""
    return select or ("knee" if len(objectives) > 1 else objectives[0].name)


def _rule(select: str | None, objectives: list[Objective]) -> str:
    """How the trial was chosen, in words."""
    rule = _rule_name(select, objectives)
    if rule == "knee":
        return "the knee of the Pareto front"
    return f"the best complete trial by {rule}"


def _scores(record: TrialRecord, objectives: list[Objective]) -> str:
    """``; it scored val/accuracy=0.8 and val/alignment=0.6`` (``""`` without a score)."""
    values = [f"{o.metric}={record.value(o):.4g}" for o in objectives
              if record.value(o) is not None]
    if not values:
        return ""
    listed = values[0] if len(values) == 1 else ", ".join(values[:-1]) + f" and {values[-1]}"
    return f"; it scored {listed}"


def _warning(note: str | None) -> str | None:
    return f"warning: {note}" if note else None


def _epoch_notes(config: Config, epochs: int | None) -> list[str]:
    """The warm-ups of the trial's config and, with ``--epochs``, of the rescaled one."""
    notes = [epoch_settings(config)]
    if epochs is None:
        if config.optim.warmup_epochs:
            notes.append(f"a longer run keeps optim.warmup_epochs={config.optim.warmup_epochs}"
                         " as it is: export with --epochs N to scale it with the run")
        return notes
    scaled = rescale_epochs(config, epochs)
    how = (f", optim.warmup_epochs scaled from {config.optim.warmup_epochs} to "
           f"{scaled.optim.warmup_epochs}" if config.optim.warmup_epochs else "")
    notes.append(f"rescaled with --epochs {epochs} from the trial's {config.optim.epochs} "
                 f"epochs{how}: {epoch_settings(scaled)}")
    return notes


def search_caveat(sdir: SearchDir, records: list[TrialRecord] | None = None) -> str | None:
    """Why a search's best trial may not be its final answer (``None`` when it finished): it
    is still running, or was interrupted, so the best is the best so far."""
    status = sdir.meta.get("status")
    if status == "finished":
        return None
    records = records if records is not None else sdir.records()
    done = sum(r.state in ("complete", "pruned", "failed") for r in records)
    state = {"running": "is still running (or its driver stopped without saying so)",
             "interrupted": "was interrupted"}.get(status, f"has not finished (status {status})")
    return (f"search {sdir.name} {state}, so this is the best of the {done} trial(s) that "
            f"ended, of {sdir.settings.trials}; export again once `extune search --resume "
            f"{sdir.path}` has finished it")


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

    from extune.tracking.client import mlflow_client

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
    parent = _parent_run(client, run)
    sdir = _search_of_run(parent)
    config = as_given(config, sdir)
    note = run_caveat(run)
    notes = [f"exported from MLflow run {run_id} ({run.info.run_name})", _warning(note),
             relative_paths_note(config, sdir), *_epoch_notes(config, epochs)]
    if epochs is not None:
        config = rescale_epochs(config, epochs)
    _write(out, notes, config, _run_lineage(client, run, parent, uri))
    return config, note


def _parent_run(client: Any, run: Any) -> Any:
    """The parent run of a trial run (its search's), ``None`` without one or where the store
    no longer has it."""
    from mlflow.exceptions import MlflowException

    parent_id = run.data.tags.get("mlflow.parentRunId")
    if not parent_id:
        return None
    try:
        return client.get_run(parent_id)
    except MlflowException:
        return None


def _run_lineage(client: Any, run: Any, parent: Any, uri: str) -> dict[str, str]:
    """Where an export of an MLflow run comes from (see :func:`search_lineage`)."""
    tags = run.data.tags
    experiment = client.get_experiment(run.info.experiment_id).name
    lineage = {"search": parent.info.run_name if parent is not None else None,
               "search_id": tags.get("extune.search_id"),
               "trial": run.info.run_name, "trial_id": tags.get("extune.trial_id"),
               "run_id": run.info.run_id, "parent_run_id": tags.get("mlflow.parentRunId"),
               "tracking_uri": uri, "experiment": experiment, "select": "run",
               "rule": "picked by its MLflow run id", "extune_version": __version__}
    return {k: str(v) for k, v in lineage.items() if v is not None}


def _search_of_run(parent: Any) -> SearchDir | None:
    """The search folder of a trial run (its parent run's ``search_dir`` param), when this
    machine has it."""
    folder = parent.data.params.get("search_dir") if parent is not None else None
    try:
        return SearchDir.load(folder) if folder else None
    except ConfigError:  # the search ran elsewhere, or its folder is gone
        return None


def run_caveat(run: Any) -> str | None:
    """Why an MLflow trial run is not a complete trial (``None`` when it is one)."""
    tags, name = run.data.tags, f"run {run.info.run_id} ({run.info.run_name})"
    if tags.get("extune.state") == "pruned" or tags.get("extune.pruned") == "true":  # older runs
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


def _write(out: str | Path, notes: list[str | None], config: Config,
           lineage: dict[str, str]) -> None:
    """The config as YAML under its notes, one comment line each, written as sentences, and
    its lineage at the end (:data:`~extune.train.config.LINEAGE_KEY`)."""
    out = Path(out)
    check_writable(out.parent, "the exported config (-o)")
    header = "".join(f"# {_sentence(n)}\n" for n in notes if n)
    source = yaml.safe_dump({LINEAGE_KEY: lineage}, sort_keys=False).replace(
        f"{LINEAGE_KEY}:", f"{LINEAGE_KEY}:  # where this config comes from (not a setting; "
        "extune train records it with its MLflow run)", 1)
    atomic_write_text(out, header + config.to_yaml() + source)


def _sentence(note: str) -> str:
    """``in 3-epoch training, ...`` -> ``In 3-epoch training, ....``"""
    return note[:1].upper() + note[1:] + ("" if note.endswith(".") else ".")
