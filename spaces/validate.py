"""Check a space against a base config before any trial starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from extune.errors import ConfigError
from extune.train.config import Config

__all__ = ["SpaceCheck", "sample_params", "validate_space", "base_point"]


@dataclass
class SpaceCheck:
    """What sampling a space showed.

    Attributes:
        keys: every Config key the space set in the samples.
        max_epochs: the scheduler's horizon: the largest ``optim.epochs`` the space allows
            (YAML spaces declare it), else the largest of the sampled configs.
        samples: the sampled parameter dicts.
    """

    keys: set[str] = field(default_factory=set)
    max_epochs: int = 1
    samples: list[dict[str, Any]] = field(default_factory=list)

    def constants(self) -> dict[str, Any]:
        """Keys the space set to the same value in every sample (``method: excon`` in a YAML
        space), with that value; the other keys are the ones it searches."""
        found: dict[str, Any] = {}
        for key in self.keys:
            values = [sample.get(key, _ABSENT) for sample in self.samples]
            if values and all(v == values[0] for v in values) and values[0] is not _ABSENT:
                found[key] = values[0]
        return found


_ABSENT = object()


def sample_params(space: Any, trial: Any) -> dict[str, Any]:
    """Run ``space`` on ``trial`` as Ray's OptunaSearch does: suggested plus returned values.

    Raises:
        ConfigError: the space did not return a mapping of string keys (or ``None``).
    """
    returned = space(trial)
    if returned is not None and (not isinstance(returned, dict)
                                 or not all(isinstance(k, str) for k in returned)):
        raise ConfigError(f"a search space must return a dict of dotted config keys, got "
                          f"{type(returned).__name__}")
    return {**trial.params, **(returned or {})}


def validate_space(space: Any, base: Config, *, samples: int = 64, seed: int = 0,
                   name: str = "space") -> SpaceCheck:
    """Sample ``space`` ``samples`` times (random sampler, no training) and build every config.

    The base and every sampled config pass :class:`Config` and
    :func:`~extune.train.validate.validate_config` (registered names); the base's
    ``explain.layer`` must name a layer of its backbone
    (:func:`~extune.train.methods.check_explain_layer`; a draw with a bad layer is left to fail
    as a trial, as any trial that raises).

    Args:
        space: a define-by-run space (see :class:`extune.spaces.Space`).
        base: the config the trials override.
        samples: how many random draws to check.
        seed: seed of the random draws.
        name: how the space is named in error messages.

    Returns:
        The keys the space sets and the largest number of epochs it asks for.

    Raises:
        ConfigError: the base has an unknown name, or a draw gives an unknown key, a value
            Config rejects or an unknown name (the message names the space, the key and the
            allowed values).
    """
    import optuna

    from extune.train.methods import check_explain_layer  # torch: imported on use
    from extune.train.validate import validate_config

    validate_config(base)
    check_explain_layer(base)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    check = SpaceCheck(max_epochs=base.optim.epochs)
    for _ in range(samples):
        trial = study.ask()
        try:
            params = sample_params(space, trial)
            cfg = validate_config(base.with_overrides(params))
        except ConfigError as e:
            raise ConfigError(f"space '{name}' gives an invalid config: {e}") from None
        check.keys.update(params)
        check.max_epochs = max(check.max_epochs, cfg.optim.epochs)
        check.samples.append(params)
        study.tell(trial, 0.0)
    declared = getattr(space, "max_epochs", None)  # YAML spaces know their largest value
    if declared is not None:
        check.max_epochs = max(declared, check.max_epochs)
    return check


def base_point(space: Any, base: Config) -> dict[str, Any] | None:
    """The space's own parameters at the base config's values: the point a search evaluates
    first (Optuna's ``enqueue_trial``), so that it never leaves a config worse than its base.

    The space runs on :class:`optuna.trial.FixedTrial` objects; every parameter it asks for
    (conditional ones included, as the base's values lead to them) takes the value of the
    Config key of the same name.

    Returns:
        ``{parameter: value}``, or ``None`` when the base lies outside the space (a value out
        of a range or not among the choices, or a parameter that is not a Config key).
    """
    import warnings

    import optuna

    flat = base.flatten()
    params: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FixedTrial warns about out-of-range values
        while True:
            trial = optuna.trial.FixedTrial(params)
            try:
                sample_params(space, trial)
            except ValueError as e:
                name = _missing_parameter(e)
                if name is None or name not in flat or name in params:
                    return None  # a value not among the choices, or not a Config key
                params[name] = flat[name]
                continue
            inside = all(_within(dist, params[name])
                         for name, dist in trial.distributions.items())
            return params if inside else None


def _within(distribution: Any, value: Any) -> bool:
    """Whether ``value`` is one of a distribution's choices or inside its range (from the
    public attributes of Optuna's distributions)."""
    import optuna.distributions as d

    if isinstance(distribution, d.CategoricalDistribution):
        return value in distribution.choices
    if isinstance(distribution, (d.FloatDistribution, d.IntDistribution)):
        return distribution.low <= value <= distribution.high
    return True


def _missing_parameter(error: ValueError) -> str | None:
    """The parameter an :class:`optuna.trial.FixedTrial` was not given, from its error."""
    import re

    found = re.match(r"The value of the parameter '(.+)' is not found", str(error))
    return found.group(1) if found else None
