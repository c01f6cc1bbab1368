"""Evaluate a saved checkpoint (``extune evaluate``)."""

from __future__ import annotations

from pathlib import Path

from extune.errors import ConfigError, ExtuneError
from extune.evaluate import evaluate_split
from extune.models import Network
from extune.train.checkpoint import checkpoint_path, load_checkpoint
from extune.train.config import Config, parse_assignments
from extune.train.data import load_data
from extune.train.methods import config_model, evaluation_explainer
from extune.train.runtime import resolve_device, seed_everything
from extune.train.validate import validate_config

__all__ = ["evaluate_checkpoint", "evaluation_path", "load_model"]


def load_model(checkpoint: str | Path, overrides: list[str] | None = None
               ) -> tuple[Network, Config]:
    """Rebuild the network of a checkpoint (on CPU) and its config (+ ``KEY=VALUE`` overrides)."""
    ckpt = load_checkpoint(checkpoint)
    cfg = validate_config(Config.from_dict(ckpt["config"]).with_overrides(
        parse_assignments(overrides or [])))
    num_classes = ckpt["model"]["classifier.weight"].shape[0]
    model = config_model(cfg, num_classes)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise ExtuneError(f"checkpoint {checkpoint} does not match model.backbone="
                          f"{cfg.model.backbone}; do not override model.* keys") from None
    return model, cfg


def evaluation_path(checkpoint: str | Path, split: str) -> Path:
    """Where ``extune evaluate`` writes by default: ``evaluation-<split>.json`` beside the
    checkpoint."""
    return checkpoint_path(checkpoint).parent / f"evaluation-{split}.json"


def evaluate_checkpoint(checkpoint: str | Path, overrides: list[str], split: str
                        ) -> dict[str, float]:
    """All metrics of a checkpoint on ``split`` (``val`` or ``test``).

    Returns:
        The metrics (``{split}/accuracy``, ``shift/ece``, ``adv/fgsm_accuracy``, ...).

    Raises:
        ExtuneError: not an extune checkpoint, a data set with another number of classes, no
            test split.
    """
    model, cfg = load_model(checkpoint, overrides)
    device = resolve_device(cfg.runtime)
    seed_everything(cfg.runtime.seed)
    splits = load_data(cfg.data)
    trained = model.classifier.out_features
    if splits.num_classes != trained:
        raise ConfigError(f"checkpoint {checkpoint} was trained on {trained} classes but data "
                          f"set '{cfg.data.name}' (data.root={cfg.data.root}) has "
                          f"{splits.num_classes}; evaluate on the data set it was trained on")
    images = splits.val if split == "val" else splits.test
    if images is None:
        raise ExtuneError(f"data set '{cfg.data.name}' has no test split; use --split val")
    explainer = evaluation_explainer(cfg)
    metrics = evaluate_split(model.to(device).eval(), images.to(device), mean=splits.mean,
                             std=splits.std, num_classes=splits.num_classes, cfg=cfg.eval,
                             explainer=explainer, prefix=split, full=True)
    return metrics
