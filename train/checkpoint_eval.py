"""What extune does with a saved checkpoint: load its model, evaluate it (``extune evaluate``),
explain it and audit its explainer (``extune explain``, ``--audit``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from extune.errors import ConfigError, ExtuneError
from extune.evaluate import evaluate_split
from extune.files import check_output_file
from extune.models import Network
from extune.train.checkpoint import checkpoint_path, load_checkpoint
from extune.train.config import Config, parse_assignments
from extune.train.data import load_data
from extune.train.methods import config_model, evaluation_explainer
from extune.train.progress import EpochProgress
from extune.train.runtime import resolve_device, seed_everything
from extune.train.validate import validate_config

__all__ = ["evaluate_checkpoint", "evaluation_path", "explain_checkpoint", "audit_checkpoint",
           "CheckpointAudit", "load_model", "model_from_checkpoint", "GRID_SUFFIXES"]

GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
"""Image formats of ``extune explain -o`` (matplotlib writes them without extra packages)."""


def load_model(checkpoint: str | Path, overrides: list[str] | None = None
               ) -> tuple[Network, Config]:
    """Rebuild the network of a checkpoint (on CPU) and its config (+ ``KEY=VALUE`` overrides)."""
    return model_from_checkpoint(load_checkpoint(checkpoint), checkpoint, overrides)


def model_from_checkpoint(ckpt: dict, checkpoint: str | Path,
                          overrides: list[str] | None = None) -> tuple[Network, Config]:
    """:func:`load_model` of a checkpoint already read (``checkpoint`` names it in errors)."""
    cfg = validate_config(Config.from_dict(ckpt["config"]).with_overrides(
        parse_assignments(overrides or [])))
    classifier = ckpt["model"].get("classifier.weight")
    if classifier is None or classifier.dim() != 2:
        raise ExtuneError(f"checkpoint {checkpoint} holds no classifier weights "
                          "(classifier.weight); pass the checkpoint.pt of an extune run")
    num_classes = classifier.shape[0]
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


def evaluate_checkpoint(checkpoint: str | Path, overrides: list[str], split: str,
                        progress: EpochProgress | None = None) -> dict[str, float]:
    """All metrics of a checkpoint on ``split`` (``val`` or ``test``), shown as a phase of
    ``progress`` once the checkpoint and the data are loaded.

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
    progress = progress or EpochProgress(enabled=False)
    with progress.phase(f"evaluating on the {split} split") as part:
        return evaluate_split(model.to(device).eval(), images.to(device), mean=splits.mean,
                              std=splits.std, num_classes=splits.num_classes, cfg=cfg.eval,
                              explainer=explainer, prefix=split, full=True, part=part,
                              audit=cfg.eval.audit)


def explain_checkpoint(checkpoint: str | Path, out: str | Path, *,
                       images: str | Path | None = None, explainer: str | None = None,
                       count: int = 8, overrides: list[str] | None = None) -> Path:
    """The labelled saliency grid of a checkpoint (``extune explain``).

    Args:
        checkpoint: ``checkpoint.pt`` or the run folder holding it.
        out: PNG to write.
        images: a folder of images: with one sub-folder per class (named as the checkpoint's
            classes) each image is explained for its class, else for the predicted class;
            ``None``: the first ``count`` validation images of the checkpoint's data set.
        explainer: an explainer name (default: the one the model was trained with).
        count: how many images (the first, by name).
        overrides: ``KEY=VALUE`` config overrides (``explain.layer=...``).

    Raises:
        ExtuneError: unreadable checkpoint, unknown explainer, no images, unknown class folder.
    """
    from extune.augment import create_explainer
    from extune.train.grid import explanation_grid
    from extune.train.methods import create_method

    if count < 1:
        raise ExtuneError(f"--count must be >= 1, got {count}")
    check_output_file(out, "the grid image (-o)", "grid.png", GRID_SUFFIXES)
    ckpt = load_checkpoint(checkpoint)
    model, cfg = load_model(checkpoint, overrides)
    if explainer is not None:
        cfg = validate_config(cfg.with_overrides({"explain.explainer": explainer,
                                                  "explain.layer": None}))
    device = resolve_device(cfg.runtime)
    seed_everything(cfg.runtime.seed)
    stats = (ckpt.get("classes"), ckpt.get("mean"), ckpt.get("std"))
    if images is None or None in stats:  # older checkpoints: the statistics of the data
        splits = load_data(cfg.data)
        stats = (splits.classes, splits.mean, splits.std)
    classes, mean, std = list(stats[0]), tuple(stats[1]), tuple(stats[2])
    if images is None:
        batch, labels = splits.val.images[:count], splits.val.labels[:count]
    else:
        batch, labels = _folder_images(Path(images), classes, cfg.data.image_size, count)
    model = model.to(device).eval()
    method = create_method(cfg, model, len(classes), mean, std)
    if explainer is not None:
        method.explainer = create_explainer(cfg.explain.explainer, layer=None,
                                            steps=cfg.explain.steps)
    source = "validation images" if images is None else str(images)
    return explanation_grid(model, method, batch.to(device),
                            None if labels is None else labels.to(device), classes, out,
                            heading=f"{cfg.method} · {method.explainer.name} · {source}")


@dataclass(frozen=True)
class CheckpointAudit:
    """What :func:`audit_checkpoint` found and drew.

    Attributes:
        audit: The :class:`~extune.evaluate.audit.Audit` (cascade included).
        figure: The PNG of the cascade.
        protocol: The explainer in words (``gradcam at layer3``).
        images: The audited images in words (``64 validation images``).
    """

    audit: Any
    figure: Path
    protocol: str
    images: str


def audit_checkpoint(checkpoint: str | Path, out: str | Path, *,
                     images: str | Path | None = None, explainer: str | None = None,
                     count: int = 8, overrides: list[str] | None = None) -> CheckpointAudit:
    """The explanation audit of a checkpoint and the figure of its randomisation cascade
    (``extune explain --audit``).

    The explainer is the one of the checkpoint's explanation metrics
    (:func:`~extune.train.methods.evaluation_explainer`: ``eval.explainer`` or the training
    one), or ``explainer`` (at its default layer). The images are those of ``extune evaluate``'s
    explanation metrics (``eval.explain_samples`` validation images, the same subset), or up to
    that many of the folder ``images``; each is explained for its predicted class. The figure
    shows the first ``count`` of them.

    Raises:
        ExtuneError: unreadable checkpoint, unknown explainer or layer, no images.
    """
    from extune.evaluate.audit import AuditSettings, audit_scores
    from extune.train.methods import check_explain_layer

    if count < 1:
        raise ExtuneError(f"--count must be >= 1, got {count}")
    check_output_file(out, "the audit figure (-o)", "audit.png", GRID_SUFFIXES)
    ckpt = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ckpt, checkpoint, overrides)
    if explainer is not None:
        cfg = validate_config(cfg.with_overrides({"eval.explainer": explainer,
                                                  "eval.layer": None}))
    check_explain_layer(cfg, model)
    if cfg.eval.explain_samples < 1:
        raise ExtuneError("the audit needs images: eval.explain_samples is 0; add --set "
                          "eval.explain_samples=64")
    device = resolve_device(cfg.runtime)
    seed_everything(cfg.runtime.seed)
    classes, mean, std, batch, labels = _audit_images(ckpt, cfg, images)
    model = model.to(device).eval()
    explain = evaluation_explainer(cfg)
    audit = audit_scores(model, explain, batch.to(device), mean=mean, std=std,
                         settings=AuditSettings(), batch_size=cfg.eval.batch_size)
    protocol = _protocol_words(cfg, model)
    source = (f"{len(batch)} validation images" if images is None
              else f"{len(batch)} images of {images}")
    shown = batch[:count].to(device)
    predicted = [classes[t] for t in audit.target[:count].tolist()]
    truth = [classes[y] + "\n" for y in labels[:count].tolist()] if labels is not None \
        else [""] * len(predicted)
    names = [f"{y}pred {p}" for y, p in zip(truth, predicted, strict=True)]
    figure = _draw_cascade(model, explain, shown, audit, out, mean=mean, std=std,
                           batch_size=cfg.eval.batch_size, row_labels=names,
                           heading=f"{cfg.method} · {cfg.model.backbone} · {protocol} · "
                                   f"{source} (ρ̄ over all of them; rows: the first "
                                   f"{len(shown)})")
    return CheckpointAudit(audit, figure, protocol, source)


def _draw_cascade(model: Network, explain: Any, shown: Tensor, audit: Any, out: str | Path, *,
                  mean: tuple, std: tuple, batch_size: int, row_labels: list[str],
                  heading: str) -> Path:
    """The cascade figure of ``shown`` (the first images of ``audit``)."""
    from extune.evaluate.audit import cascade_maps
    from extune.evaluate.explanations import compute_saliency
    from extune.evaluate.visualize import cascade_figure

    target = audit.target[:len(shown)]
    original, _ = compute_saliency(model, explain, shown, mean=mean, std=std, target=target)
    layers, maps = cascade_maps(model, explain, shown, target, mean=mean, std=std,
                                batch_size=batch_size)
    return cascade_figure(shown, original, maps, layers,
                          [float(r.nanmean()) for r in audit.cascade], out,
                          threshold=audit.threshold, passed=audit.passed,
                          row_labels=row_labels, heading=heading)


def _protocol_words(cfg: Config, model: Network) -> str:
    """The evaluation explainer in words: ``gradcam at layer3``, ``integrated_gradients (16
    steps)``."""
    from extune.augment.explainers import EXPLAINERS
    from extune.train.methods import evaluation_protocol

    used = evaluation_protocol(cfg)
    kind = EXPLAINERS.get(used["explainer"])
    if kind.uses_layer:
        return f"{used['explainer']} at {used['layer'] or model.default_layer}"
    if kind.uses_steps:
        return f"{used['explainer']} ({used['steps']} steps)"
    return used["explainer"]


def _audit_images(ckpt: dict, cfg: Config, images: str | Path | None
                  ) -> tuple[list[str], tuple, tuple, Tensor, Tensor | None]:
    """``(classes, mean, std, uint8 images, labels or None)``: the explanation subset of the
    validation split (``eval.explain_samples``), or up to that many images of a folder."""
    from extune.evaluate.explanations import explanation_subset

    n = cfg.eval.explain_samples
    stats = (ckpt.get("classes"), ckpt.get("mean"), ckpt.get("std"))
    splits = None
    if images is None or None in stats:  # older checkpoints: the statistics of the data
        splits = load_data(cfg.data)
        stats = (splits.classes, splits.mean, splits.std)
    classes, mean, std = list(stats[0]), tuple(stats[1]), tuple(stats[2])
    if images is not None:
        batch, labels = _folder_images(Path(images), classes, cfg.data.image_size, n)
        return classes, mean, std, batch, labels
    index = explanation_subset(len(splits.val), n, seed=0)
    return classes, mean, std, splits.val.images[index], splits.val.labels[index]


def _folder_images(folder: Path, classes: list[str], size: int, count: int
                   ) -> tuple[Tensor, Tensor | None]:
    """Up to ``count`` images of ``folder`` (uint8 ``[N,3,size,size]``) and their labels
    (``None`` for a flat folder)."""
    from extune.train.datasets._common import decode_files, image_files

    if not folder.is_dir():
        raise ExtuneError(f"--images {folder} is not a folder")
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir())
    if subdirs:
        unknown = [d.name for d in subdirs if d.name not in classes]
        if unknown:
            raise ExtuneError(f"--images {folder}: sub-folder(s) {', '.join(unknown[:5])} are "
                              f"not classes of this model ({', '.join(classes[:10])}, ...); "
                              "name them as the classes, or pass a flat folder of images")
        pairs = [(f, classes.index(d.name)) for d in subdirs for f in image_files(d)]
    else:
        pairs = [(f, -1) for f in image_files(folder)]
    pairs = _spread(pairs, count)
    if not pairs:
        raise ExtuneError(f"--images {folder} holds no image files (.png, .jpg, ...)")
    decoded, _ = decode_files([f for f, _ in pairs], size)
    labels = None if subdirs == [] else torch.tensor([y for _, y in pairs])
    return decoded, labels


def _spread(pairs: list[tuple[Path, int]], count: int) -> list[tuple[Path, int]]:
    """``count`` items taking the classes in turn (first files of each class first)."""
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for pair in pairs:
        by_class.setdefault(pair[1], []).append(pair)
    queues = list(by_class.values())
    picked: list[tuple[Path, int]] = []
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked
