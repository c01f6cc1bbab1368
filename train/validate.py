"""``validate_config``: the registered names of a config, checked before anything trains.

:class:`~extune.train.config.Config` checks keys, types and ranges when it is built; the names
it holds are checked here, against the registries that define them:

========================  ==================================================
key                       registry
========================  ==================================================
``method``                :data:`extune.train.methods.METHODS`
``data.name``             :data:`extune.train.datasets.DATASETS`
``model.backbone``        :data:`extune.models.backbones.BACKBONES`
``explain.explainer``     :data:`extune.augment.explainers.EXPLAINERS`
``eval.explainer``        the same (when set)
``eval.corruptions``      :func:`extune.evaluate.list_corruptions`
========================  ==================================================

Every entry point calls it: ``fit``, ``extune train`` / ``evaluate`` / ``config``, a search (its
base config, its ``--fix`` values and every sampled draw of its space) and a study.
"""

from __future__ import annotations

from extune.augment.explainers import EXPLAINERS
from extune.errors import ConfigError
from extune.evaluate.corruptions import list_corruptions
from extune.models.backbones import BACKBONES
from extune.registry import Registry, unknown_name
from extune.train.config import Config
from extune.train.datasets import DATASETS
from extune.train.datasets.streamed import not_read_per_batch
from extune.train.methods import METHODS

__all__ = ["validate_config"]


def validate_config(cfg: Config) -> Config:
    """Check every registered name in ``cfg``.

    Returns:
        ``cfg`` itself, so that ``validate_config(Config.load(path))`` reads naturally.

    Raises:
        ConfigError: the first unknown name, in one line: its key, the closest registered
            name and every registered one, e.g. ``explain.explainer: unknown explainer
            'gradcm'; did you mean 'gradcam'? registered: deeplift, gradcam, ...``.
    """
    names: list[tuple[str, str, Registry]] = [
        ("method", cfg.method, METHODS),
        ("data.name", cfg.data.name, DATASETS),
        ("model.backbone", cfg.model.backbone, BACKBONES),
        ("explain.explainer", cfg.explain.explainer, EXPLAINERS),
    ]
    if cfg.eval.explainer is not None:
        names.append(("eval.explainer", cfg.eval.explainer, EXPLAINERS))
    for key, name, registry in names:
        if name not in registry:
            raise ConfigError(f"{key}: {registry.error(name)}")
    corruptions = list_corruptions()
    for name in cfg.eval.corruptions:
        if name not in corruptions:
            error = unknown_name("corruption", name, corruptions, listing="allowed")
            raise ConfigError(f"eval.corruptions: {error}")
    if cfg.data.in_memory is False and DATASETS.get(cfg.data.name).files is None:
        raise ConfigError(not_read_per_batch(cfg.data.name))
    return cfg
