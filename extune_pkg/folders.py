"""A command's folder described by one JSON file it keeps up to date (a search's
``search.json``, a study's ``study.json``): read with a one-line error, written atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from extune.errors import ConfigError
from extune.files import atomic_write_text

__all__ = ["MetaFolder"]


@dataclass
class MetaFolder:
    """A folder and the JSON ``meta`` in its :attr:`META_NAME` file.

    Subclasses name the file and the command that writes it (:attr:`KIND`).
    """

    path: Path
    meta: dict[str, Any]

    META_NAME: ClassVar[str] = "meta.json"
    KIND: ClassVar[str] = "extune"

    @classmethod
    def read_meta(cls, path: str | Path) -> tuple[Path, dict[str, Any]]:
        """The resolved folder and its meta.

        Raises:
            ConfigError: no readable meta file there (one line naming the folder).
        """
        path = Path(path).resolve()
        try:
            return path, json.loads((path / cls.META_NAME).read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{path} is not a {cls.KIND} folder (no readable {cls.META_NAME});"
                              f" pass the folder `extune {cls.KIND}` printed") from None

    def save(self) -> None:
        """Write the meta file atomically."""
        atomic_write_text(self.path / self.META_NAME,
                          json.dumps(self.meta, indent=2, default=str))

    def update(self, **values: Any) -> None:
        """Set ``values`` in the meta and save it."""
        self.meta.update(values)
        self.save()
