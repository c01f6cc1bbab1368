"""Evaluation protocols: which explainer, at which layer, scores every method's explanations.

A study scores every final run with one protocol (``--eval-explainer``, ``--eval-layer``) and
re-scores the saved checkpoints under the protocols of its sensitivity section. A protocol is
written ``explainer[:layer]``: ``gradcam`` (the backbone's last stage), ``gradcam:layer2``,
``gradcam:previous`` (the stage before the last), ``integrated_gradients``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from extune.errors import ConfigError

__all__ = ["Protocol", "parse_protocol", "main_protocol", "check_protocols"]

PREVIOUS = "previous"


@dataclass(frozen=True)
class Protocol:
    """An explainer and the layer it explains (``None``: the backbone's last stage)."""

    explainer: str
    layer: str | None = None

    @property
    def text(self) -> str:
        return self.explainer if self.layer is None else f"{self.explainer}:{self.layer}"

    def resolved_layer(self, last_stage: str) -> str | None:
        """The layer for a backbone whose last stage is ``last_stage`` (``layer4``):
        ``previous`` -> ``layer3``; ``None`` for explainers without a layer.

        Raises:
            ConfigError: ``previous`` of a first stage, or of a layer not named ``layerN``.
        """
        from extune.augment.explainers import EXPLAINERS

        if not EXPLAINERS.get(self.explainer).uses_layer:
            return None
        if self.layer != PREVIOUS:
            return self.layer or last_stage
        match = re.fullmatch(r"layer(\d+)", last_stage)
        if match is None or int(match.group(1)) < 2:
            raise ConfigError(f"protocol {self.text}: the backbone's last stage "
                              f"'{last_stage}' has no stage before it")
        return f"layer{int(match.group(1)) - 1}"

    def describe(self, last_stage: str, steps: int) -> str:
        """In words, for reports: ``gradcam at layer3 (the last stage)``."""
        from extune.augment.explainers import EXPLAINERS

        cls = EXPLAINERS.get(self.explainer)
        if cls.uses_layer:
            layer = self.resolved_layer(last_stage)
            where = "the last stage" if layer == last_stage else "one stage earlier" if \
                self.layer == PREVIOUS else "a chosen layer"
            return f"{self.explainer} at {layer} ({where})"
        if cls.uses_steps:
            return f"{self.explainer} ({steps} steps)"
        return self.explainer


def parse_protocol(text: str) -> Protocol:
    """``explainer[:layer]`` -> :class:`Protocol`.

    Raises:
        ConfigError: an unknown explainer, or a layer given to one that explains no layer.
    """
    from extune.augment.explainers import EXPLAINERS

    name, _, layer = text.strip().partition(":")
    if name not in EXPLAINERS:
        raise ConfigError(f"protocol '{text}': {EXPLAINERS.error(name)}")
    if layer and not EXPLAINERS.get(name).uses_layer:
        raise ConfigError(f"protocol '{text}': {name} explains no layer; write '{name}'")
    return Protocol(name, layer or None)


def main_protocol(explainer: str, layer: str | None) -> Protocol:
    """The protocol of a study's final runs (``--eval-explainer``, ``--eval-layer``)."""
    return parse_protocol(explainer if layer is None else f"{explainer}:{layer}")


def check_protocols(texts: list[str], model: object) -> None:
    """Every protocol's layer must be a layer of ``model`` (a
    :class:`~extune.models.Network` of the study's backbone), so that a bad protocol fails
    before anything is trained, not after every final run.

    Raises:
        ConfigError: the first protocol whose layer the backbone lacks.
    """
    from extune.errors import RegistryError

    for text in texts:
        protocol = parse_protocol(text)
        try:
            layer = protocol.resolved_layer(model.default_layer)
            if layer is not None:
                model.get_layer(layer)
        except RegistryError as e:
            raise ConfigError(f"--protocols {text}: {e}") from None
