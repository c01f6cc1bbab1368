"""The space registry: built-in presets by name, user spaces by YAML path.

The presets (:mod:`extune.spaces.presets`) register themselves; the package imports them, so
whoever imports :mod:`extune.spaces` finds them here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from extune.registry import Registry

__all__ = ["SPACES", "Space", "register_space", "list_spaces", "get_space", "space_name"]


class Space(Protocol):
    """A define-by-run search space.

    ``space(trial)`` asks ``trial.suggest_*`` for each searched setting (named by its dotted
    Config key) and returns ``{dotted key: value}`` for every setting it decides, fixed ones
    included (``"method"``). It computes nothing else: Ray's OptunaSearch calls it on the driver
    for every new trial.
    """

    def __call__(self, trial: Any) -> dict[str, Any]: ...


SPACES: Registry[Space] = Registry("space", listing="built-in spaces",
                                   tail=", or the path of a YAML space file")
"""Define-by-run spaces by name (``--space``)."""


def register_space(name: str) -> Callable[[Space], Space]:
    """Decorator that registers a define-by-run space under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """
    return SPACES.register(name)


def list_spaces() -> list[str]:
    """Sorted names of the built-in spaces."""
    return SPACES.names()


def get_space(name_or_path: str | Path) -> Space:
    """A registered space by name, or a user space from a YAML file.

    Args:
        name_or_path: a name from :func:`list_spaces` (``"excon"``) or the path of a YAML space
            file (see ``docs/search.md``).

    Raises:
        RegistryError: unknown name (the message lists the registered ones).
        ConfigError: the YAML file cannot be read or is not a valid space.
    """
    text = str(name_or_path)
    if text in SPACES:
        return SPACES.get(text)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        from extune.spaces.yaml_space import YamlSpace

        return YamlSpace.from_file(text)
    raise SPACES.error(text)


def space_name(space: Space) -> str:
    """The registered name of ``space``, its YAML path, or its qualified name."""
    for name, registered in SPACES.items():
        if registered is space:
            return name
    path = getattr(space, "path", None)
    if path:
        return str(path)
    return getattr(space, "__qualname__", type(space).__name__)
