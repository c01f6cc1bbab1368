"""The Ray Tune function trainable: one trial = ``train.fit`` on the base config + the trial's
parameters, reporting every epoch to Tune with the epoch's checkpoint folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from extune.errors import ConfigError, ExtuneError
from extune.search.engine.resources import hide_unassigned_gpus
from extune.tracking.trials import trial_config
from extune.train.config import Config

__all__ = ["train_trial", "FAILED_MARKER"]

FAILED_MARKER = ".extune_failed"
"""Folder of the search's storage (``<experiment path>/.extune_failed/<trial id>.json``) that
records a trial failing for a reason a retry cannot fix. It lives on the storage path, which
every node sees, so a retry placed on another node reads it too."""


def train_trial(params: dict[str, Any], *, base: dict[str, Any], data: Any = None,
                cpus: float = 1.0, objectives: tuple[str, ...] = (),
                storage: str | None = None, full_epochs: tuple[int, ...] | None = None) -> None:
    """Run one trial inside Ray Tune.

    Args:
        params: the trial's parameters (dotted Config keys), from the search space.
        base: the base config as a dict.
        data: the decoded data set (``DataSplits``) from Ray's object store, shared by all
            trials; used only when the trial's ``data`` section equals the base's.
        cpus: CPUs Ray gave the trial (torch threads).
        objectives: metrics the search optimises; a trial whose training does not report
            them fails with a message naming them (instead of Tune stopping the search).
        storage: the experiment's storage path or URI (where the failure marker goes);
            ``None``: the trial folder (tests without a shared path).
        full_epochs: epochs after which the full evaluation suite runs besides the last
            (``fit(full_epochs=...)``); the objectives are evaluated every epoch. ``None``:
            the config's ``eval.every``.

    Raises:
        ExtuneError: bad parameters or a non-finite loss (the trial is marked failed; a retry
            with ``--max-failures`` re-raises at once instead of training again).
    """
    import ray
    from ray import tune

    from extune.train import fit

    cfg = hide_unassigned_gpus(trial_config(base, params, cpus), ray.get_gpu_ids())
    context = tune.get_context()
    trial_dir = Path(context.get_trial_dir())
    marker = _Marker(storage or str(trial_dir), context.get_trial_id())
    saved = marker.read()
    if saved is not None:  # deterministic failure: retrying from a checkpoint cannot help
        raise _saved_error(saved)
    if data is not None and cfg.data != Config.from_dict(base).data:
        data = None  # the space changed the data settings: load this trial's own data
    node_id = ray.get_runtime_context().get_node_id()
    gpu_ids = ",".join(str(g) for g in ray.get_gpu_ids())  # "" without a GPU

    def report(metrics: dict[str, float], checkpoint_dir: Path) -> None:
        missing = [m for m in objectives if m not in metrics]
        if missing:
            raise ConfigError(f"objective metric(s) {', '.join(missing)} are not reported by "
                              f"training; it reports: {', '.join(sorted(metrics))}")
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir))
        tune.report({**metrics, "node_id": node_id, "gpu_ids": gpu_ids}, checkpoint=checkpoint)

    # fit's folder (and a restored checkpoint) live outside the trial's working folder: Ray
    # uploads that folder with every experiment snapshot where the driver runs, which would
    # store each checkpoint twice and copy files while fit replaces them. Each epoch's folder
    # reaches the storage path as the trial's checkpoint (tune.report copies it).
    work = Path(tempfile.mkdtemp(prefix=f"extune-trial-{context.get_trial_id()}-"))
    try:
        fit(cfg, report=report, out_dir=work / "fit", resume=_restore_checkpoint(work),
            data=data, objectives=objectives, full_epochs=full_epochs)
    except ExtuneError as e:
        marker.write({"type": type(e).__name__, "message": str(e)})
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Marker:
    """``<root>/.extune_failed/<trial id>.json`` on any storage pyarrow reaches (local, NFS,
    bucket URIs), as Ray itself writes trial results there."""

    def __init__(self, root: str, trial_id: str) -> None:
        self.root, self.trial_id = root.rstrip("/"), trial_id

    def _fs(self) -> tuple[Any, str]:
        import pyarrow.fs

        root = self.root if "://" in self.root else str(Path(self.root).resolve())
        fs, path = pyarrow.fs.FileSystem.from_uri(root)
        return fs, f"{path}/{FAILED_MARKER}/{self.trial_id}.json"

    def read(self) -> str | None:
        try:
            fs, path = self._fs()
            with fs.open_input_stream(path) as f:
                return f.read().decode()
        except (OSError, FileNotFoundError):
            return None

    def write(self, error: dict[str, str]) -> None:
        fs, path = self._fs()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(json.dumps(error).encode())


def _saved_error(text: str) -> BaseException:
    """The error a previous attempt of this trial raised (same class where known, same message).

    Stored as JSON, not pickled: the marker sits on shared storage.
    """
    from extune.errors import DataError, RegistryError
    from extune.train import TrainingDiverged

    known = {c.__name__: c for c in (ConfigError, DataError, RegistryError, TrainingDiverged)}
    try:
        saved = json.loads(text)
        return known.get(saved["type"], ExtuneError)(saved["message"])
    except (ValueError, KeyError, TypeError):  # unreadable: still do not train again
        return ExtuneError("this trial failed before with an error a retry cannot fix")


def _restore_checkpoint(work: Path) -> Path | None:
    """Copy Tune's latest checkpoint of this trial (a retry or a resumed search) into ``work``
    and return it for ``fit(resume=...)``."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    target = work / "resume"
    shutil.rmtree(target, ignore_errors=True)
    checkpoint.to_directory(str(target))
    return target
