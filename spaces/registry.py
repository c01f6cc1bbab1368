"""The space registry: built-in presets by name, user spaces by YAML path."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from extune.errors import RegistryError

__all__ = ["Space", "register_space", "list_spaces", "get_space", "space_name"]


class Space(Protocol):
    """A define-by-run search space.

    ``space(trial)`` asks ``trial.suggest_*`` for each searched setting (named by its dotted
    Config key) and returns ``{dotted key: value}`` for every setting it decides, fixed ones
    included (``"method"``). It computes nothing else: Ray's OptunaSearch calls it on the driver
    for every new trial.
    """

    def __call__(self, trial: Any) -> dict[str, Any]: ...


_SPACES: dict[str, Space] = {}


def register_space(name: str) -> Callable[[Space], Space]:
    """Decorator that registers a define-by-run space under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(space: Space) -> Space:
        if name in _SPACES:
            raise ValueError(f"space '{name}' is already registered")
        _SPACES[name] = space
        return space

    return decorator


def list_spaces() -> list[str]:
    """Sorted names of the built-in spaces."""
    _load_presets()
    return sorted(_SPACES)


def get_space(name_or_path: str | Path) -> Space:
    """A registered space by name, or a user space from a YAML file.

    Args:
        name_or_path: a name from :func:`list_spaces` (``"excon"``) or the path of a YAML space
            file (see ``docs/search.md``).

    Raises:
        RegistryError: unknown name (the message lists the registered ones).
        ConfigError: the YAML file cannot be read or is not a valid space.
    """
    _load_presets()
    text = str(name_or_path)
    if text in _SPACES:
        return _SPACES[text]
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        from extune.spaces.yaml_space import YamlSpace

        return YamlSpace.from_file(text)
    close = difflib.get_close_matches(text, list(_SPACES), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise RegistryError(f"unknown space '{text}'; {hint}built-in spaces: "
                        f"{', '.join(sorted(_SPACES))}, or the path of a YAML space file")


def space_name(space: Space) -> str:
    """The registered name of ``space``, its YAML path, or its qualified name."""
    for name, registered in _SPACES.items():
        if registered is space:
            return name
    path = getattr(space, "path", None)
    if path:
        return str(path)
    return getattr(space, "__qualname__", type(space).__name__)


def _load_presets() -> None:
    from extune.spaces import presets  # noqa: F401  (registers the built-in spaces)
