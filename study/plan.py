"""A study's plan: everything that decides what it will conclude, fixed before its first trial.

The plan holds the claims (each metric's family and source), margins, controls, the share of
driven training images below which a method is "weakly tested", the evaluation protocol,
statistics, seeds, budgets, every method's search space (its distributions) and the settings
held for every method. ``extune study`` writes it to ``plan.json`` with its SHA-256 before the
first trial and logs both to MLflow; the report carries the hash. ``--resume`` checks that
``plan.json`` still matches its hash (refusing a plan edited by hand) and rebuilds the plan from
the saved settings and today's code: a difference is a recorded deviation (which parts
changed), and the report then analyses the plan in effect, ``plan-current.json``.

Users declare their own claims in a YAML plan file (``extune study --plan plan.yaml``):

.. code-block:: yaml

    claims:
      - a: excon                       # registered methods, yours included
        b: supcon
        source: ExCon (arXiv 2111.14271)
        primary: [avg_drop, increase_confidence, accuracy]
        secondary: [alignment, insertion_auc]
        sources:                       # optional: where a primary measure comes from
          avg_drop: ExCon's reference code, eval_drop_increase (top 15%)
    margins: {accuracy: 0.01}          # optional: equivalence margins
    min_driven_share: 0.2              # optional: below it, "weakly tested"
    controls: true                     # optional: switched-off arms of driven methods
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from extune.defaults import STUDY
from extune.errors import ConfigError

__all__ = ["PLAN_FILE", "CURRENT_PLAN_FILE", "DEFAULT_MIN_DRIVEN_SHARE", "PLAN_KEYS",
           "load_plan_file", "parse_plan", "plan_hash", "build_plan", "held_settings",
           "space_distributions", "plan_claims", "control_arms", "changed_parts"]

PLAN_FILE = "plan.json"
CURRENT_PLAN_FILE = "plan-current.json"
DEFAULT_MIN_DRIVEN_SHARE = STUDY.min_driven_share
"""A method whose explanation-driven part drove fewer of its training images than this share
(``train/driven_share`` averaged over its runs) is "weakly tested": its verdicts stand, with
the share beside them."""

PLAN_KEYS = ("claims", "margins", "min_driven_share", "controls")
"""What a plan file may say."""
_CLAIM_KEYS = ("a", "b", "source", "primary", "secondary", "sources")


def load_plan_file(path: str | Path) -> dict[str, Any]:
    """A user's plan file (YAML), checked: its claims, margins, share and controls.

    Raises:
        ConfigError: unreadable, not YAML, or a bad entry (one line naming it).
    """
    from extune.files import read_text_file
    from extune.train.config import parse_yaml

    text = read_text_file(path, "the plan file (--plan)")
    return parse_plan(parse_yaml(text, f"plan file {path}"), f"plan file {path}")


def parse_plan(data: Any, where: str = "the plan") -> dict[str, Any]:
    """Check a plan's content (a mapping as :func:`load_plan_file` reads it).

    Returns:
        ``{"claims": [claim dicts as in a study's plan], "margins": {...}, and
        "min_driven_share", "controls" where given}``.

    Raises:
        ConfigError: the first bad entry, in one line.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with 'claims', got "
                          f"{type(data).__name__}")
    unknown = [k for k in data if k not in PLAN_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'; a plan has "
                          f"{', '.join(PLAN_KEYS)}")
    claims = data.get("claims")
    if not isinstance(claims, list) or not claims:
        raise ConfigError(f"{where}: 'claims' must be a list of claims, e.g. "
                          "[{a: excon, b: supcon, primary: [accuracy]}]")
    plan: dict[str, Any] = {"claims": [_claim(c, i, where) for i, c in enumerate(claims, 1)]}
    plan["margins"] = _margins(data.get("margins") or {}, where)
    if "min_driven_share" in data:
        share = data["min_driven_share"]
        if isinstance(share, bool) or not isinstance(share, (int, float)) \
                or not 0 <= share <= 1:
            raise ConfigError(f"{where}: min_driven_share must be a number in [0, 1], got "
                              f"{share!r}")
        plan["min_driven_share"] = float(share)
    if "controls" in data:
        if not isinstance(data["controls"], bool):
            raise ConfigError(f"{where}: controls must be true or false, got "
                              f"{data['controls']!r}")
        plan["controls"] = data["controls"]
    return plan


def _claim(claim: Any, number: int, where: str) -> dict[str, Any]:
    from extune.study.claims import _EXTUNE, FAMILIES, STUDY_METRICS
    from extune.train.methods import METHODS

    here = f"{where}, claim {number}"
    if not isinstance(claim, Mapping):
        raise ConfigError(f"{here}: expected a mapping with a, b and metrics")
    unknown = [k for k in claim if k not in _CLAIM_KEYS]
    if unknown:
        raise ConfigError(f"{here}: unknown key '{unknown[0]}'; use {', '.join(_CLAIM_KEYS)}")
    for side in ("a", "b"):
        name = claim.get(side)
        if not isinstance(name, str) or name not in METHODS:
            raise ConfigError(f"{here}: {side}={name!r} is not a registered method; use "
                              f"{', '.join(METHODS.names())} or register yours")
    if claim["a"] == claim["b"]:
        raise ConfigError(f"{here}: a and b are both {claim['a']}")
    names = [m.name for m in STUDY_METRICS]
    sources = claim.get("sources") or {}
    if not isinstance(sources, Mapping):
        raise ConfigError(f"{here}: sources must map a metric to where it comes from")
    metrics, seen = [], set()
    for family in FAMILIES:
        listed = claim.get(family) or []
        if isinstance(listed, str):
            listed = [listed]
        if not isinstance(listed, list):
            raise ConfigError(f"{here}: {family} must be a list of metrics")
        for metric in listed:
            if metric not in names:
                raise ConfigError(f"{here}: unknown metric {metric!r} in {family}; use "
                                  f"{', '.join(names)}")
            if metric in seen:
                raise ConfigError(f"{here}: {metric} is listed twice; give each metric one "
                                  "family")
            seen.add(metric)
            default = "the plan's author" if family == "primary" else _EXTUNE
            metrics.append({"metric": metric, "family": family,
                            "source": str(sources.get(metric, default))})
    if not metrics:
        raise ConfigError(f"{here}: name its metrics under primary and/or secondary")
    stray = [k for k in sources if k not in seen]
    if stray:
        raise ConfigError(f"{here}: sources names {stray[0]}, which the claim does not test")
    return {"a": claim["a"], "b": claim["b"],
            "source": str(claim.get("source") or "the plan file"), "metrics": metrics}


def _margins(margins: Any, where: str) -> dict[str, float]:
    from extune.study.claims import STUDY_METRICS

    names = [m.name for m in STUDY_METRICS]
    if not isinstance(margins, Mapping):
        raise ConfigError(f"{where}: margins must map a metric to a number > 0")
    out = {}
    for name, value in margins.items():
        if name not in names or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or value <= 0:
            raise ConfigError(f"{where}: margin {name}={value!r}: give METRIC: VALUE with "
                              f"VALUE > 0 and METRIC one of {', '.join(names)}")
        out[name] = float(value)
    return out


def plan_hash(plan: Mapping[str, Any]) -> str:
    """SHA-256 of the plan's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(plan, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def plan_claims(settings: Any) -> list[dict[str, Any]]:
    """The claims a study tests: its plan file's, else the built-in ones whose two methods
    are in the study."""
    from extune.study.claims import BUILTIN_CLAIMS, claims_to_plan

    if settings.plan:
        return list(settings.plan["claims"])
    return [c for c in claims_to_plan(BUILTIN_CLAIMS)
            if c["a"] in settings.methods and c["b"] in settings.methods]


def control_arms(settings: Any, claims: Sequence[Mapping[str, Any]]
                 ) -> dict[str, list[dict[str, str]]]:
    """Method -> its control arms (``arm``, ``trains``, ``what``) for every explanation-driven
    method that is the ``a`` of a claim; none when the study runs without controls."""
    from extune.train.methods import controls_of

    if not settings.resolved_controls():
        return {}
    found: dict[str, list[dict[str, str]]] = {}
    for claim in claims:
        method = claim["a"]
        if method in found:
            continue
        arms = [{"arm": f"{method}-{c.suffix}", "trains": c.trains, "what": c.what}
                for c in controls_of(method)]
        if arms:
            found[method] = arms
    return found


def space_distributions(space: Any, samples: int = 64, seed: int = 0
                        ) -> dict[str, dict[str, Any]]:
    """What a define-by-run space searches: key -> Optuna distribution (as JSON data), from
    ``samples`` seeded random draws (conditional keys included once drawn); and its constant
    keys (``method``) with their value."""
    import optuna

    from extune.spaces.validate import sample_params

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    searched: dict[str, Any] = {}
    returned: dict[str, list[Any]] = {}
    for _ in range(samples):
        trial = study.ask()
        params = sample_params(space, trial)
        for name, dist in trial.distributions.items():
            searched[name] = json.loads(optuna.distributions.distribution_to_json(dist))
        for key, value in params.items():
            if key not in trial.distributions:
                returned.setdefault(key, []).append(value)
        study.tell(trial, 0.0)
    constants = {k: v[0] for k, v in returned.items() if all(x == v[0] for x in v)}
    return {"searched": dict(sorted(searched.items())), "constant": dict(sorted(
        constants.items()))}


def held_settings(methods: Sequence[str], spaces: Mapping[str, Mapping[str, Any]],
                  base: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Settings some methods search that other methods of the study also read: held at the
    base value for every method, so that no method gets a knob its rivals lack
    (``optim.label_smoothing``: the CE space searches it, and every method's loss on true
    labels uses it).

    Args:
        methods: the study's methods; spaces: method -> :func:`space_distributions`;
        base: the base config, flattened.

    Returns:
        key -> ``{"value", "searched_by", "read_by"}``.
    """
    from extune.train.methods import method_reads

    searched = {m: set(spaces[m]["searched"]) for m in methods}
    held = {}
    for key in sorted(set().union(*searched.values())):
        readers = [m for m in methods if method_reads(m, key)]
        by = [m for m in readers if key in searched[m]]
        if len(by) < len(readers):
            held[key] = {"value": base.get(key), "searched_by": by, "read_by": readers}
    return held


def build_plan(settings: Any) -> dict[str, Any]:
    """The plan of a study with these settings (module docstring), as plain data."""
    from extune.spaces import get_space
    from extune.study.claims import metric_by_name

    base = settings.base_config()
    seeds = settings.final_seeds()
    final = settings.final_config(base, seeds[0])
    claims = plan_claims(settings)
    spaces = {m: space_distributions(get_space(m), seed=settings.seed)
              for m in settings.methods}
    metrics = sorted({m["metric"] for c in claims for m in c["metrics"]},
                     key=lambda n: [x.name for x in _metrics()].index(n))
    return {
        "methods": list(settings.methods),
        "claims": claims,
        "margins": {m: settings.margin(m) for m in metrics},
        "directions": {m: "higher" if metric_by_name(m).higher_is_better else "lower"
                       for m in metrics},
        "controls": control_arms(settings, claims),
        "min_driven_share": settings.resolved_min_driven_share(),
        "protocol": {"explainer": final.eval.explainer, "layer": final.eval.layer,
                     "steps": final.eval.steps, "explain_samples": final.eval.explain_samples,
                     "top_fraction": final.eval.top_fraction,
                     "deletion_steps": final.eval.deletion_steps,
                     "sensitivity": list(settings.protocols), "audit": _audit_plan()},
        "statistics": {"test": settings.test, "correction": settings.correction,
                       "confidence": settings.confidence, "power": 0.8,
                       "families": "Holm within primary and secondary, claims and controls "
                                   "apart",
                       "searches": "hierarchical: each search's runs are one cluster",
                       "test_set": "bootstrap over the test images"},
        "seeds": {"final": seeds, "search_seeds": settings.search_seeds,
                  "sampler_seeds": [settings.seed + i for i in range(settings.search_seeds)]},
        "budget": {"trials": settings.trials, "epochs": settings.budget_epochs,
                   "seconds": settings.budget_seconds, "trial_epochs": base.optim.epochs,
                   "final_epochs": settings.resolved_final_epochs(),
                   "startup_trials": settings.startup_trials, "sampler": settings.sampler,
                   "scheduler": settings.scheduler, "objective": settings.objective},
        "fixed": dict(settings.fixed),
        "held": held_settings(settings.methods, spaces, base.flatten()),
        "spaces": spaces,
        "base_config": base.flatten(),
    }


def _audit_plan() -> dict[str, Any]:
    """The explanation audit a study runs and the rule it decides by (docs/study.md)."""
    from extune.evaluate.audit import RANDOMISATION_THRESHOLD, AuditSettings

    return {"settings": dataclasses.asdict(AuditSettings(cascade=False)),  # the suite's
            "threshold": RANDOMISATION_THRESHOLD,
            "main_protocol": "every audit metric", "sensitivity": "the randomisation test",
            "not_tested": "every explanation row of a protocol whose explainer fails the "
                          "randomisation test on the study's models: the mean "
                          "randomisation_similarity of some arm's complete final runs at or "
                          "above the threshold"}


def _metrics() -> Sequence[Any]:
    from extune.study.claims import STUDY_METRICS

    return STUDY_METRICS


def changed_parts(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The plan's top-level parts that differ (``claims``, ``spaces``, ``seeds``...)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
