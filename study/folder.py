"""The study folder and its ``study.json``: settings, status, times, deviations, experiments.

.. code-block:: text

    <out>/<name>/
      study.json           settings, study id, MLflow parent run, status, stage times,
                           versions, deviations, the final runs' Tune experiments
      base_config.yaml     the config every search starts from
      searches/<search>/   one search folder per method and search seed
      final/configs/<method>.yaml   the config each final run of a method trains
      final/trials*/       Ray Tune experiments of the final runs (unless --storage)
      final/runs.json      every final run: method, seed, state, metrics, history, checkpoint
      final/sensitivity.json   the explanation metrics re-scored under other protocols
      report.md, results.json, plots/*.png
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extune.errors import ConfigError
from extune.files import atomic_write_text
from extune.study.settings import StudySettings

__all__ = ["StudyDir", "STUDY_META", "software_versions"]

STUDY_META = "study.json"


def software_versions() -> dict[str, str]:
    """Versions of what changes a study's numbers: extune, Python, torch, torchvision, captum,
    Ray, Optuna, MLflow, numpy, scipy."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("extune", "torch", "torchvision", "captum", "ray", "optuna", "mlflow", "numpy",
                 "scipy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


@dataclass
class StudyDir:
    """A study folder and its ``study.json``."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def create(cls, settings: StudySettings) -> StudyDir:
        """Make ``<out>/<name>`` with the settings and the base config.

        Raises:
            ConfigError: the folder already holds a study (use ``--resume``).
        """
        name = settings.resolved_name()
        path = (Path(settings.out) / name).resolve()
        if (path / STUDY_META).exists():
            raise ConfigError(f"{path} already holds a study; pass --resume {path} to continue "
                              "it or choose another --name")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the study folder {path}: {e.strerror}") from None
        settings.base_config().save(path / "base_config.yaml")
        meta = {"name": name, "study_id": uuid.uuid4().hex,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"), "status": "created",
                "settings": settings.to_dict(), "stage_seconds": {},
                "versions": software_versions(), "deviations": [], "final_experiments": []}
        found = cls(path, meta)
        found.save()
        return found

    @classmethod
    def load(cls, path: str | Path) -> StudyDir:
        """Open an existing study folder.

        Raises:
            ConfigError: no readable ``study.json`` there.
        """
        path = Path(path).resolve()
        try:
            meta = json.loads((path / STUDY_META).read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{path} is not a study folder (no readable {STUDY_META}); pass "
                              "the folder `extune study` printed") from None
        return cls(path, meta)

    def save(self) -> None:
        atomic_write_text(self.path / STUDY_META, json.dumps(self.meta, indent=2, default=str))

    def update(self, **values: Any) -> None:
        self.meta.update(values)
        self.save()

    def add_seconds(self, stage: str, seconds: float) -> None:
        times = self.meta.setdefault("stage_seconds", {})
        times[stage] = times.get(stage, 0.0) + seconds
        self.save()

    def change_settings(self, **changes: Any) -> list[dict[str, Any]]:
        """Apply the settings ``--resume`` may change (``final_epochs``, ``seeds``); each
        change is recorded as a deviation with the versions it ran under.

        Returns:
            The deviations recorded by this call.
        """
        settings = self.meta["settings"]
        new = []
        for key, value in changes.items():
            if value is None or settings.get(key) == value:
                continue
            new.append({"setting": key, "from": settings.get(key), "to": value,
                        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "status_before": self.meta.get("status")})
            settings[key] = value
        if new:
            StudySettings.from_dict(settings)  # still valid
            self.meta.setdefault("deviations", []).extend(new)
            self.save()
        return new

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def study_id(self) -> str:
        return self.meta["study_id"]

    @property
    def settings(self) -> StudySettings:
        return StudySettings.from_dict(self.meta["settings"])

    @property
    def base_file(self) -> Path:
        return self.path / "base_config.yaml"

    @property
    def final_dir(self) -> Path:
        return self.path / "final"

    def search_dir(self, name: str) -> Path:
        return self.path / "searches" / name

    def new_final_experiment(self, labels: list[str], epochs: int) -> str:
        """Register (and return the path of) a new Tune experiment for the final runs
        ``labels`` of ``epochs`` epochs: ``final/trials``, then ``final/trials-2``, ..."""
        experiments = self.meta.setdefault("final_experiments", [])
        suffix = "" if not experiments else f"-{len(experiments) + 1}"
        storage = self.settings.storage
        if storage:
            from extune.search.folder import storage_root

            path = f"{storage_root(storage)}/{self.name}/final{suffix}"
        else:
            path = str(self.final_dir / f"trials{suffix}")
        experiments.append({"path": path, "labels": labels, "epochs": epochs})
        self.save()
        return path
