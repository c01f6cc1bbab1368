"""The study folder and its ``study.json``: settings, status, times, deviations, experiments.

.. code-block:: text

    <out>/<name>/
      study.json           settings, study id, MLflow parent run, status, stage times,
                           versions, deviations, the final runs' Tune experiments, plan hash
      plan.json            the plan, written before the first trial (extune.study.plan)
      plan-current.json    the plan in effect after a deviation (absent without one)
      base_config.yaml     the config every search starts from
      searches/<search>/   one search folder per method and search seed
      final/configs/<method>.yaml   the config each final run of a method trains
      final/trials*/       Ray Tune experiments of the final runs (unless --storage)
      final/runs.json      every final run and control: arm, seed, state, metrics, history,
                           protocol, checkpoint (with its per-image test outputs)
      final/sensitivity.json   the explanation metrics re-scored under other protocols
      final/sensitivity/   their per-image scores
      report.md, results.json, plots/*.png
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from extune.errors import ConfigError
from extune.files import atomic_write_text
from extune.folders import MetaFolder
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
class StudyDir(MetaFolder):
    """A study folder and its ``study.json``."""

    META_NAME: ClassVar[str] = STUDY_META
    KIND: ClassVar[str] = "study"

    @classmethod
    def create(cls, settings: StudySettings) -> StudyDir:
        """Make ``<out>/<name>`` with the settings and the base config, holding its lock
        (:mod:`extune.locks`) for the rest of the process.

        Raises:
            ConfigError: the folder already holds a study (use ``--resume``), or another
                process is creating one there.
        """
        from extune.locks import hold_folder

        name = settings.resolved_name()
        path = (Path(settings.out) / name).resolve()
        if (path / STUDY_META).exists():
            raise ConfigError(f"{path} already holds a study; pass --resume {path} to continue "
                              "it or choose another --name")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the study folder {path}: {e.strerror}") from None
        hold_folder(path, "study")  # claim, then look again: two studies of one name race here
        if (path / STUDY_META).exists():
            raise ConfigError(f"{path} already holds a study; pass --resume {path} to continue "
                              "it or choose another --name")
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
        return cls(*cls.read_meta(path))

    def add_seconds(self, stage: str, seconds: float) -> None:
        times = self.meta.setdefault("stage_seconds", {})
        times[stage] = times.get(stage, 0.0) + seconds
        self.save()

    # ------------------------------------------------------------------ the plan
    def write_plan(self, plan: dict[str, Any]) -> str:
        """Write the study's plan before its first trial; returns its hash."""
        from extune.study.plan import PLAN_FILE, plan_hash

        digest = plan_hash(plan)
        atomic_write_text(self.path / PLAN_FILE, json.dumps(plan, indent=2, sort_keys=True,
                                                            default=str))
        self.update(plan_hash=digest, plan_current_hash=digest,
                    plan_written=time.strftime("%Y-%m-%d %H:%M:%S"))
        return digest

    def plan(self) -> dict[str, Any]:
        """The plan in effect: ``plan-current.json`` after a deviation, else ``plan.json``."""
        from extune.study.plan import CURRENT_PLAN_FILE, PLAN_FILE

        for name in (CURRENT_PLAN_FILE, PLAN_FILE):
            if (self.path / name).is_file():
                return json.loads((self.path / name).read_text())
        raise ConfigError(f"{self.path} has no {PLAN_FILE}: it was made by an extune without "
                          "plans; run the study again")

    def check_plan(self) -> list[dict[str, Any]]:
        """On resume: ``plan.json`` must match the hash recorded when it was written, and the
        plan rebuilt from the settings and today's code must match the plan in effect; a
        difference is recorded as a deviation (the parts that changed) and becomes the plan
        in effect.

        Returns:
            The deviation recorded (or none).

        Raises:
            ConfigError: ``plan.json`` was changed after it was written, or is missing.
        """
        from extune.study.plan import (
            CURRENT_PLAN_FILE,
            PLAN_FILE,
            build_plan,
            changed_parts,
            plan_hash,
        )

        try:
            written = json.loads((self.path / PLAN_FILE).read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{self.path / PLAN_FILE} is missing or unreadable: a study "
                              "cannot resume without the plan it fixed before its first "
                              "trial; start a new study") from None
        if plan_hash(written) != self.meta.get("plan_hash"):
            raise ConfigError(f"{self.path / PLAN_FILE} was changed after the study started "
                              f"(its hash is no longer {str(self.meta.get('plan_hash'))[:12]}); "
                              "restore it (MLflow keeps a copy with the study's run) or start a "
                              "new study")
        current = self.plan()
        rebuilt = _known_settings_only(build_plan(self.settings), current)
        digest = plan_hash(rebuilt)
        if digest == plan_hash(current):
            return []
        deviation = {"setting": "plan", "from": plan_hash(current), "to": digest,
                     "changed": changed_parts(current, rebuilt),
                     "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "status_before": self.meta.get("status")}
        atomic_write_text(self.path / CURRENT_PLAN_FILE,
                          json.dumps(rebuilt, indent=2, sort_keys=True, default=str))
        self.meta.setdefault("deviations", []).append(deviation)
        self.update(plan_current_hash=digest)
        return [deviation]

    def change_settings(self, **changes: Any) -> list[dict[str, Any]]:
        """Apply the settings ``--resume`` may change (``final_epochs``, ``seeds``, ``plan``);
        each change is recorded as a deviation with the versions it ran under.

        Returns:
            The deviations recorded by this call.
        """
        settings = self.meta["settings"]
        new = []
        for key, value in changes.items():
            if value is None or settings.get(key) == value:
                continue
            if key == "plan":  # check_plan records it, with the parts that changed
                settings[key] = value
                continue
            new.append({"setting": key, "from": settings.get(key), "to": value,
                        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "status_before": self.meta.get("status")})
            settings[key] = value
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
            from extune.search import storage_root

            path = f"{storage_root(storage)}/{self.name}/final{suffix}"
        else:
            path = str(self.final_dir / f"trials{suffix}")
        experiments.append({"path": path, "labels": labels, "epochs": epochs})
        self.save()
        return path


def _known_settings_only(rebuilt: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``rebuilt`` without the base config keys ``current`` did not have: settings added to
    extune after the study started did not exist for its runs, so they are no deviation."""
    known = current.get("base_config", {})
    base = {k: v for k, v in rebuilt.get("base_config", {}).items() if k in known}
    return {**rebuilt, "base_config": base}
