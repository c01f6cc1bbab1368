"""``Registry``: named components (backbones, explainers, data sets, spaces, methods).

One small class serves every registry (timm's ``_registry.py`` in miniature)::

    BACKBONES: Registry[BackboneFactory] = Registry("backbone")

    @BACKBONES.register("tiny_cnn")
    def tiny_cnn(*, cifar_stem: bool = True) -> nn.Module: ...

    BACKBONES.get("tiny_cnn")   # the factory
    BACKBONES.get("tiny_cn")    # RegistryError: unknown backbone 'tiny_cn'; did you mean
                                # 'tiny_cnn'? registered: resnet18, ..., tiny_cnn

A registry holds objects only; it never imports the modules that register into it (each
package imports its own built-in entries), so it sits below every package that uses it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar, overload

from extune.errors import RegistryError

__all__ = ["Registry", "unknown_name"]

T = TypeVar("T")


def unknown_name(kind: str, name: object, names: Iterable[str], *,
                 listing: str = "registered", tail: str = "") -> RegistryError:
    """The one-line error for a name that is not among ``names``.

    Args:
        kind: what is named (``"backbone"``).
        name: the name asked for.
        names: the names that exist, in the order they are listed.
        listing: the words before the list (``"registered"``, ``"built-in spaces"``).
        tail: text after the list (``", or the path of a YAML space file"``).

    Returns:
        ``RegistryError("unknown backbone 'x'; did you mean 'y'? registered: a, b")``; the hint
        is left out when no name is close.
    """
    names = list(names)
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return RegistryError(f"unknown {kind} '{name}'; {hint}{listing}: {', '.join(names)}{tail}")


class Registry(Generic[T]):
    """Objects by name, for one kind of component.

    Args:
        kind: what the names name, as error messages say it (``"backbone"``, ``"data set"``).
        listing: the words before the list of names in errors.
        tail: text after that list.

    Iterating a registry yields its names in registration order; :meth:`names` sorts them.
    """

    def __init__(self, kind: str, *, listing: str = "registered", tail: str = "") -> None:
        self.kind = kind
        self._listing = listing
        self._tail = tail
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name``; without ``obj``, a decorator that does.

        Raises:
            ValueError: ``name`` is already registered, or is not a non-empty string.
        """

        def add(item: T) -> T:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = item
            return item

        return add if obj is None else add(obj)

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests, plugins that replace an entry); no error when absent."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The object registered under ``name``.

        Raises:
            RegistryError: no such name; the message has the closest name and every name.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a config file
            raise self.error(name) from None

    def check(self, name: str) -> None:
        """Raise :meth:`error` unless ``name`` is registered."""
        self.get(name)

    def error(self, name: object) -> RegistryError:
        """The error :meth:`get` raises for ``name``."""
        return unknown_name(self.kind, name, self.names(), listing=self._listing,
                            tail=self._tail)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs in registration order."""
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
