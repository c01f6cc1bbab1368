"""User search spaces written in YAML (the format is documented in ``docs/search.md``).

.. code-block:: yaml

    method: excon                                   # a fixed value
    optim.lr: {type: float, low: 0.01, high: 1.0, log: true}
    optim.batch_size: {type: int, low: 64, high: 256, step: 64}
    explain.explainer: {type: choice, values: [gradcam, saliency]}
    explain.layer: {type: choice, values: [null, layer3], when: {explain.explainer: gradcam}}
    excon:                                          # sections may be nested
      mask_threshold: {type: float, low: 0.2, high: 0.8}

Everything is checked against :class:`~extune.train.config.Config` and the registered names
(:func:`~extune.train.validate.validate_config`) when the file is loaded, so a bad space fails
before any trial starts.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extune.errors import ConfigError
from extune.files import read_text_file
from extune.train.config import Config, as_float, parse_yaml

__all__ = ["Param", "YamlSpace"]

_FIELDS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "choice": {"type", "values", "when"},
    "bool": {"type", "when"},
}
_ALIASES = {"categorical": "choice", "uniform": "float", "loguniform": "float", "integer": "int"}


@dataclass(frozen=True)
class Param:
    """One entry of a YAML space.

    Attributes:
        key: dotted Config key.
        kind: ``float``, ``int``, ``choice`` or ``fixed``.
        low, high, log, step: numeric range (``float``/``int``).
        values: the choices (``choice``) or ``(value,)`` (``fixed``).
        when: conditions ``((key, allowed values), ...)``; all must hold.
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    values: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, chosen: dict[str, Any]) -> bool:
        """Whether every condition holds for the values chosen so far."""
        return all(k in chosen and chosen[k] in allowed for k, allowed in self.when)

    def sample(self, trial: Any) -> Any:
        """Ask ``trial`` for this parameter (or return the fixed value)."""
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


@dataclass
class YamlSpace:
    """A define-by-run space read from YAML: ``space(trial) -> {dotted key: value}``.

    Attributes:
        params: the entries in file order (conditions refer to earlier entries).
        path: the file it came from (``None`` for :meth:`from_dict`).
        text: the YAML text (logged with the search).
    """

    params: list[Param]
    path: str | None = None
    text: str = field(default="", repr=False)

    def __call__(self, trial: Any) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.active(chosen):
                chosen[param.key] = param.sample(trial)
        return chosen

    @property
    def keys(self) -> list[str]:
        """The Config keys this space may set."""
        return [p.key for p in self.params]

    @property
    def max_epochs(self) -> int | None:
        """The largest ``optim.epochs`` the space allows (ASHA's horizon); ``None`` when the
        space does not set it."""
        for p in self.params:
            if p.key == "optim.epochs":
                return int(p.high) if p.kind == "int" else int(max(p.values))
        return None

    @classmethod
    def from_file(cls, path: str | Path) -> YamlSpace:
        """Read and validate a YAML space file.

        Raises:
            ConfigError: the file is missing, not YAML, or not a valid space.
        """
        path = Path(path)
        return cls.from_yaml(read_text_file(path, "space file"), path=str(path))

    @classmethod
    def from_yaml(cls, text: str, path: str | None = None) -> YamlSpace:
        """Parse and validate YAML text (see :meth:`from_dict`)."""
        where = f"space file {path}" if path else "space"
        space = cls.from_dict(parse_yaml(text, where), where=where)
        space.path, space.text = path, text
        return space

    @classmethod
    def from_dict(cls, data: Any, where: str = "space") -> YamlSpace:
        """Build and validate a space from ``{key: spec or fixed value}``.

        Raises:
            ConfigError: unknown key (with the closest key), bad spec fields, ``low > high``,
                an empty choice, a value :class:`Config` rejects, or a condition on a key that
                is not declared before it.
        """
        if not isinstance(data, dict) or not data:
            raise ConfigError(f"{where} must be a non-empty mapping of config keys to "
                              "{type: float|int|choice, ...} specs or fixed values")
        params: list[Param] = []
        for key, spec in _flatten(data, where):
            param = _parse_param(key, spec, where)
            _check_conditions(param, params, where)
            _check_values(param, where)
            params.append(param)
        return cls(params)


# --------------------------------------------------------------------------- parsing
def _flatten(data: dict[str, Any], where: str, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"excon": {"mask_threshold": ...}}`` -> ``[("excon.mask_threshold", ...)]``."""
    sections = {k.split(".")[0] for k in Config.keys() if "." in k}
    out: list[tuple[str, Any]] = []
    for raw_key, spec in data.items():
        key = f"{prefix}{raw_key}"
        if isinstance(spec, dict) and "type" not in spec and key in sections:
            out.extend(_flatten(spec, where, prefix=f"{key}."))
        else:
            out.append((key, spec))
    seen: set[str] = set()
    for key, _ in out:
        if key in seen:
            raise ConfigError(f"{where}: '{key}' is declared twice")
        seen.add(key)
    return out


def _parse_param(key: str, spec: Any, where: str) -> Param:
    if key not in Config.keys():
        close = difflib.get_close_matches(key, Config.keys(), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else "; run `extune config` for the keys"
        raise ConfigError(f"{where}: unknown config key '{key}'{hint}")
    if not isinstance(spec, dict):
        return Param(key, "fixed", values=(spec,))
    kind = _ALIASES.get(str(spec.get("type")), spec.get("type"))
    if spec.get("type") == "loguniform":  # log by definition: sampled evenly over the decades
        if spec.get("log", True) is not True:
            raise ConfigError(f"{where}: {key}: type loguniform is a log range; drop log: "
                              "false or use type: float")
        spec = {**spec, "log": True}
    if kind not in _FIELDS:
        raise ConfigError(f"{where}: {key}: type must be float, int, choice or bool, got "
                          f"{spec.get('type')!r}")
    extra = set(spec) - _FIELDS[kind]
    if extra:
        raise ConfigError(f"{where}: {key}: unknown field(s) {', '.join(sorted(map(str, extra)))}"
                          f" for type {kind}; allowed: {', '.join(sorted(_FIELDS[kind]))}")
    when = _parse_when(key, spec.get("when"), where)
    if kind == "bool":
        return Param(key, "choice", values=(False, True), when=when)
    if kind == "choice":
        return Param(key, "choice", values=_parse_values(key, spec.get("values"), where),
                     when=when)
    return _parse_range(key, kind, spec, when, where)


def _number(key: str, name: str, value: Any, where: str, integer: bool) -> float | int | None:
    if value is None:
        return None
    try:
        number = as_float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or (integer and number != int(number)):
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{where}: {key}: {name} must be {kind}, got {value!r}")
    return int(number) if integer else number


def _parse_range(key: str, kind: str, spec: dict[str, Any], when: Any, where: str) -> Param:
    integer = kind == "int"
    low = _number(key, "low", spec.get("low"), where, integer)
    high = _number(key, "high", spec.get("high"), where, integer)
    step = _number(key, "step", spec.get("step"), where, integer)
    log = spec.get("log", False)
    if low is None or high is None:
        raise ConfigError(f"{where}: {key}: type {kind} needs both low and high")
    if low > high:
        raise ConfigError(f"{where}: {key}: low ({low:g}) is greater than high ({high:g})")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {key}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: {key}: a log range needs low > 0, got {low:g}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}: {key}: step must be > 0 and cannot be combined with log")
    return Param(key, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_values(key: str, values: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {key}: a choice needs a non-empty list of values, e.g. "
                          "values: [a, b]")
    for value in values:
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ConfigError(f"{where}: {key}: choice values must be null, booleans, numbers "
                              f"or strings, got {value!r}")
    return tuple(values)


def _parse_when(key: str, when: Any, where: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        raise ConfigError(f"{where}: {key}: when must be a mapping such as "
                          "{explain.explainer: gradcam}")
    return tuple((str(k), tuple(v) if isinstance(v, list) else (v,)) for k, v in when.items())


# ------------------------------------------------------------------------ validation
def _check_conditions(param: Param, earlier: list[Param], where: str) -> None:
    declared = {p.key: p for p in earlier}
    for cond_key, allowed in param.when:
        if cond_key not in declared:
            raise ConfigError(f"{where}: {param.key}: condition on '{cond_key}', which is not "
                              "declared above it in the space")
        source = declared[cond_key]
        if source.kind == "float":
            raise ConfigError(f"{where}: {param.key}: condition on '{cond_key}', a float drawn "
                              "from a range, can never hold; condition on a choice, bool, int "
                              "or fixed key")
        if source.kind == "int" and not any(
                isinstance(v, int) and source.low <= v <= source.high for v in allowed):
            raise ConfigError(f"{where}: {param.key}: condition {cond_key} in {list(allowed)} "
                              f"can never hold; {cond_key} takes whole numbers "
                              f"{source.low:g}-{source.high:g}")
        if source.kind in ("choice", "fixed") and not set(allowed) & set(source.values):
            raise ConfigError(f"{where}: {param.key}: condition {cond_key} in "
                              f"{list(allowed)} can never hold; {cond_key} takes "
                              f"{list(source.values)}")


def _check_values(param: Param, where: str) -> None:
    """Every value the parameter can take (range ends, each choice) must pass Config and
    :func:`~extune.train.validate.validate_config` (a choice of explainers names registered
    ones)."""
    if param.kind in ("float", "int"):
        candidates: tuple[Any, ...] = (param.low, param.high)
    else:
        candidates = param.values
    from extune.train.validate import validate_config  # the registries: imported on use

    base = Config()
    for value in candidates:
        try:
            validate_config(base.with_overrides({param.key: value}))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
