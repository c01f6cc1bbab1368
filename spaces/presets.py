"""Built-in define-by-run spaces: ``excon``, ``edda``, ``random_occlusion``, ``supcon``, ``ce``.

Every parameter is named by its dotted Config key, so a trial's parameters are Config overrides
as they are. Conditional parameters are only asked for when they matter (``explain.layer`` only
for Grad-CAM, ``excon.background_anchor`` only with negative pairs), so Optuna never learns from
settings that had no effect. Nothing here computes: the functions only call ``trial.suggest_*``.
"""

from __future__ import annotations

from typing import Any

from extune.spaces.registry import register_space

__all__ = ["excon", "edda", "random_occlusion", "supcon", "ce", "explainer_choices",
           "GRADCAM_LAYERS"]

GRADCAM_LAYERS = (None, "layer3", "layer2")
"""Grad-CAM layers: ``None`` is the backbone's last stage; earlier stages give finer maps."""


def _optim(trial: Any, *, lr: tuple[float, float]) -> dict[str, Any]:
    """Learning rate and weight decay on a log scale, and the batch size."""
    return {
        "optim.lr": trial.suggest_float("optim.lr", *lr, log=True),
        "optim.weight_decay": trial.suggest_float("optim.weight_decay", 1e-6, 1e-3, log=True),
        "optim.batch_size": trial.suggest_categorical("optim.batch_size", [64, 128, 256]),
    }


def explainer_choices() -> list[str]:
    """Explainers the ExCon/EDDA presets choose from: every registered one, in registration
    order, ``gradcam`` first (the order of Optuna's choices: a resumed study must see the same
    choices in the same order)."""
    from extune.augment.explainers import EXPLAINERS  # imported on use: extune.spaces stays light

    return list(EXPLAINERS)


def _explainer(trial: Any) -> dict[str, Any]:
    """The explainer, with its own parameters only where they apply."""
    name = trial.suggest_categorical("explain.explainer", explainer_choices())
    params: dict[str, Any] = {"explain.explainer": name}
    if name == "gradcam":
        params["explain.layer"] = trial.suggest_categorical("explain.layer", list(GRADCAM_LAYERS))
    elif name == "integrated_gradients":
        params["explain.steps"] = trial.suggest_int("explain.steps", 4, 32, log=True)
    return params


WARMUP_SHARE = (0.0, 0.5)
"""Range of the searched warm-ups, as a share of the run: a method's own training runs at least
half of every trial, so no draw turns a trial into its baseline (a warm-up counted in epochs of
0-2 did that to 2-epoch trials), and a chosen share means the same in a longer final run."""


def _warmup(trial: Any, method: str) -> float:
    key = f"{method}.warmup_fraction"
    return trial.suggest_float(key, *WARMUP_SHARE)


def _temperature(trial: Any) -> dict[str, Any]:
    return {"supcon.temperature": trial.suggest_float("supcon.temperature", 0.05, 0.5, log=True)}


@register_space("excon")
def excon(trial: Any) -> dict[str, Any]:
    """ExCon: mask threshold, warm-up (share of the run), negative pairs / background
    anchors, explainer, SupCon temperature, lr (log 0.01-1), weight decay (log), batch size."""
    params: dict[str, Any] = {"method": "excon"}
    params["excon.mask_threshold"] = trial.suggest_float("excon.mask_threshold", 0.2, 0.8)
    params["excon.warmup_fraction"] = _warmup(trial, "excon")
    negative = trial.suggest_categorical("excon.negative_pair", [False, True])
    params["excon.negative_pair"] = negative
    if negative:
        params["excon.background_anchor"] = trial.suggest_categorical(
            "excon.background_anchor", [False, True])
    params.update(_explainer(trial))
    params.update(_temperature(trial))
    params.update(_optim(trial, lr=(0.01, 1.0)))
    return params


def _occlusion(trial: Any) -> dict[str, Any]:
    """What EDDA and its random-occlusion baseline share: occluded fraction of the batch,
    kept/occluded fractions, salient target (uniform or smoothed label), fill, loss weights."""
    params: dict[str, Any] = {}
    params["edda.ratio"] = trial.suggest_float("edda.ratio", 0.1, 0.9)
    params["edda.keep_fraction"] = trial.suggest_float("edda.keep_fraction", 0.1, 0.6)
    params["edda.occlude_fraction"] = trial.suggest_float("edda.occlude_fraction", 0.1, 0.6)
    target = trial.suggest_categorical("edda.salient_target", ["uniform", "smooth"])
    params["edda.salient_target"] = target
    if target == "smooth":
        params["edda.smoothing"] = trial.suggest_float("edda.smoothing", 0.1, 0.9)
    params["edda.fill"] = trial.suggest_categorical("edda.fill", ["mean", "blur", "noise"])
    params["edda.nonsalient_weight"] = trial.suggest_float("edda.nonsalient_weight", 0.1, 2.0,
                                                           log=True)
    params["edda.salient_weight"] = trial.suggest_float("edda.salient_weight", 0.1, 2.0, log=True)
    return params


@register_space("edda")
def edda(trial: Any) -> dict[str, Any]:
    """EDDA: warm-up (share of the run), the occlusion settings (see ``_occlusion``),
    explainer, lr, weight decay, batch size."""
    params: dict[str, Any] = {"method": "edda"}
    params["edda.warmup_fraction"] = _warmup(trial, "edda")
    params.update(_occlusion(trial))
    params.update(_explainer(trial))
    params.update(_optim(trial, lr=(0.005, 0.5)))
    return params


@register_space("random_occlusion")
def random_occlusion(trial: Any) -> dict[str, Any]:
    """EDDA's baseline: the same space as ``edda`` without the explainer (its occlusions are at
    random places), so that a study compares the two with equal freedom."""
    params: dict[str, Any] = {"method": "random_occlusion"}
    params["edda.warmup_fraction"] = _warmup(trial, "edda")
    params.update(_occlusion(trial))
    params.update(_optim(trial, lr=(0.005, 0.5)))
    return params


@register_space("supcon")
def supcon(trial: Any) -> dict[str, Any]:
    """SupCon baseline: temperature, lr (log 0.01-1), weight decay (log), batch size."""
    return {"method": "supcon", **_temperature(trial), **_optim(trial, lr=(0.01, 1.0))}


@register_space("ce")
def ce(trial: Any) -> dict[str, Any]:
    """Cross-entropy baseline: label smoothing, lr (log 0.005-0.5), weight decay (log),
    batch size."""
    params: dict[str, Any] = {"method": "ce"}
    params["optim.label_smoothing"] = trial.suggest_float("optim.label_smoothing", 0.0, 0.2)
    params.update(_optim(trial, lr=(0.005, 0.5)))
    return params
