"""``evaluate_split``: the one entry point the training loop calls after an epoch.

Metric names are ``{prefix}/...`` (``val/accuracy``, ``test/shift/contrast/ece``; the
validation split's shift and adversarial groups are top-level: ``shift/ece``,
``adv/fgsm_accuracy``); the full
list with formulas, ranges and directions is in ``docs/metrics.md`` and
:func:`metric_names` returns the keys that one call produces.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from extune.augment.model_state import eval_mode
from extune.augment.views import normalize, to_unit
from extune.evaluate.audit import AUDIT_SUMMARY, AuditSettings, audit_scores
from extune.evaluate.batching import batches, model_device
from extune.evaluate.classification import _classification_tensors, predict_logits
from extune.evaluate.corruptions import make_corruption
from extune.evaluate.explanations import (
    EXPLANATION_METRICS,
    LOCALISATION_METRICS,
    Explainer,
    compute_saliency,
    explanation_scores,
    explanation_subset,
    localisation_scores,
)
from extune.evaluate.robustness import fgsm_correct

__all__ = ["CLASSIFICATION_METRICS", "GROUPS", "FULL_GROUPS", "EvalSettings", "Part",
           "PerImage", "metric_names", "metric_groups", "evaluate_split"]

CLASSIFICATION_METRICS = ("accuracy", "top5", "loss", "ece")
"""Keys computed at every evaluation (also with ``full=False``)."""


class ImageSetLike(Protocol):
    """What :func:`evaluate_split` reads of a split (``extune.train.data.ImageSet``)."""

    images: Tensor  # uint8 [N, 3, H, W]
    labels: Tensor  # int64 [N]
    masks: Tensor | None  # bool [N, 1, H, W]


class EvalSettings(Protocol):
    """What :func:`evaluate_split` reads of its settings (the ``eval`` section of a config
    has these attributes; any object with them will do)."""

    batch_size: int  # images per forward pass
    corruptions: Sequence[str]  # names from extune.evaluate.list_corruptions()
    severity: int  # corruption severity, 1..5
    fgsm_eps: float  # FGSM step in [0, 1] pixel space
    explain_samples: int  # images of the explanation metrics (0: none)
    top_fraction: float  # salient fraction kept / filled by the explanation metrics
    deletion_steps: int  # steps of the deletion and insertion curves


def metric_names(prefix: str = "val", *, full: bool = True,
                 corruptions: Sequence[str] = (), explain: bool = False,
                 masks: bool = False, audit: bool = False) -> list[str]:
    """The keys :func:`evaluate_split` returns for these settings, in its order.

    Args:
        prefix: Namespace, e.g. ``val`` or ``test``.
        full: ``False``: only the classification metrics.
        corruptions: ``cfg.corruptions``.
        explain: An explainer was given and ``cfg.explain_samples > 0``.
        masks: The split has ground-truth masks (only counts with ``explain``).
        audit: The explanation audit was asked for (only counts with ``explain``).
    """
    names = [f"{prefix}/{m}" for m in CLASSIFICATION_METRICS]
    if not full:
        return names
    shift = group_prefix(prefix, "shift")
    for c in corruptions:
        names += [f"{shift}/{c}/accuracy", f"{shift}/{c}/ece"]
    if corruptions:
        names += [f"{shift}/accuracy", f"{shift}/ece"]
    names.append(f"{group_prefix(prefix, 'adv')}/fgsm_accuracy")
    if explain:
        names += [f"{prefix}/{m}" for m in EXPLANATION_METRICS]
        if masks:
            names += [f"{prefix}/{m}" for m in LOCALISATION_METRICS]
        if audit:
            names += [f"{prefix}/{m}" for m in AUDIT_SUMMARY]
    return names


def group_prefix(prefix: str, group: str) -> str:
    """Namespace of the ``shift`` and ``adv`` metric groups of a split.

    The validation split's are top-level (``shift/ece``, ``adv/fgsm_accuracy``: the names the
    search objective and MLflow use); other splits nest them (``test/shift/ece``).
    """
    return group if prefix == "val" else f"{prefix}/{group}"


Part = Callable[[str], None]
"""``part("FGSM")``: told the part of an evaluation that starts (a progress display)."""


def _no_part(part: str) -> None:
    """A :data:`Part` that does nothing."""


PerImage = dict[str, Tensor]
"""Per-image outputs of an evaluation, by key (CPU tensors), for resampling the test images:

- ``{prefix}/label``, ``{prefix}/predicted`` int64 ``[N]``; ``{prefix}/correct`` bool ``[N]``;
  ``{prefix}/confidence`` float ``[N]`` (top-1 softmax probability);
- ``{shift}/{corruption}/correct`` and ``/confidence`` ``[N]`` for each corruption;
- ``{adv}/fgsm_correct`` bool ``[N]``;
- ``{prefix}/explain_index`` int64 ``[n]`` (the explanation images, indices into the split) and
  ``{prefix}/{metric}`` float ``[n]`` for every explanation and localisation metric and, with
  the audit, every :data:`~extune.evaluate.audit.AUDIT_METRICS` name (NaN where a metric is
  undefined for an image, e.g. an empty mask; ``randomisation_pass`` is not per image: it is
  the mean ``randomisation_similarity`` below the threshold).

Averaged (ECE: binned) over images they give the metrics :func:`evaluate_split` returns."""


def _keep(per_image: PerImage | None, key: str, value: Tensor) -> None:
    if per_image is not None:
        per_image[key] = value.detach().cpu()


def _keep_classified(per_image: PerImage | None, prefix: str, logits: Tensor,
                     labels: Tensor) -> None:
    """``{prefix}/correct`` and ``{prefix}/confidence`` (and the prediction) of each image."""
    if per_image is None:
        return
    logits = logits.float()
    predicted = logits.topk(1, dim=1).indices[:, 0]  # as the accuracy counts it
    confidence = logits.softmax(dim=1).gather(1, predicted[:, None])[:, 0]
    _keep(per_image, f"{prefix}/predicted", predicted)
    _keep(per_image, f"{prefix}/correct", predicted == labels)
    _keep(per_image, f"{prefix}/confidence", confidence)


GROUPS = ("shift", "adv", "explain", "audit")
"""Metric groups beyond the classification metrics."""

FULL_GROUPS = ("shift", "adv", "explain")
"""The groups ``full`` computes. The explanation audit (``audit``) costs as much again as the
explanation metrics: it runs only when asked (``evaluate_split(audit=True)``: the end-of-run
suite, ``eval.audit``) or when ``metrics`` names one of its keys."""


def metric_groups(prefix: str, metrics: Collection[str]) -> set[str]:
    """The groups of :data:`GROUPS` that compute any of ``metrics`` for this ``prefix``.

    >>> sorted(metric_groups("val", ["val/accuracy", "val/alignment", "shift/ece"]))
    ['explain', 'shift']
    >>> sorted(metric_groups("val", ["val/faithfulness_correlation"]))
    ['audit']
    """
    shift, adv = group_prefix(prefix, "shift") + "/", group_prefix(prefix, "adv") + "/"
    explain = {f"{prefix}/{m}" for m in (*EXPLANATION_METRICS, *LOCALISATION_METRICS)}
    audit = {f"{prefix}/{m}" for m in AUDIT_SUMMARY}
    groups = {"shift" for m in metrics if m.startswith(shift)}
    groups |= {"adv" for m in metrics if m.startswith(adv)}
    groups |= {"audit" for m in metrics if m in audit}
    return groups | {"explain" for m in metrics if m in explain}


def _shift_metrics(model: nn.Module, images: Tensor, labels: Tensor, *, mean: Sequence[float],
                   std: Sequence[float], num_classes: int, cfg: EvalSettings, prefix: str,
                   seed: int, part: Part, per_image: PerImage | None) -> dict[str, Tensor]:
    device = labels.device
    shift = group_prefix(prefix, "shift")
    out: dict[str, Tensor] = {}
    for i, name in enumerate(cfg.corruptions):
        part(f"corruptions {i + 1}/{len(cfg.corruptions)} ({name})")
        corruption = make_corruption(name, cfg.severity, seed=seed + i, device=device)
        logits = predict_logits(model, images, mean=mean, std=std, batch_size=cfg.batch_size,
                                transform=corruption)
        values = _classification_tensors(logits, labels, num_classes)
        _keep_classified(per_image, f"{shift}/{name}", logits, labels)
        out[f"{shift}/{name}/accuracy"] = values["accuracy"]
        out[f"{shift}/{name}/ece"] = values["ece"]
    if cfg.corruptions:
        for m in ("accuracy", "ece"):
            per = [out[f"{shift}/{c}/{m}"] for c in cfg.corruptions]
            out[f"{shift}/{m}"] = torch.stack(per).mean()
    return out


def _explanation_metrics(model: nn.Module, split: ImageSetLike, explainer: Explainer, *,
                         mean: Sequence[float], std: Sequence[float], cfg: EvalSettings,
                         prefix: str, seed: int, per_image: PerImage | None
                         ) -> dict[str, Tensor]:
    device = model_device(model, split.images.device)
    index = explanation_subset(len(split.images), cfg.explain_samples, seed=seed)
    images = split.images[index.to(split.images.device)]
    saliency, target = compute_saliency(model, explainer, images, mean=mean, std=std,
                                        batch_size=cfg.batch_size)
    generator = torch.Generator(device=device).manual_seed(seed)
    scores: dict[str, list[Tensor]] = {m: [] for m in EXPLANATION_METRICS}
    for sl in batches(len(images), cfg.batch_size):
        x = normalize(to_unit(images[sl].to(device, non_blocking=True)), mean, std)
        batch = explanation_scores(model, x, saliency[sl], target[sl],
                                   top_fraction=cfg.top_fraction, steps=cfg.deletion_steps,
                                   generator=generator)
        for m, v in batch.items():
            scores[m].append(v)
    masks = getattr(split, "masks", None)
    if masks is not None:
        masks = masks[index.to(masks.device)].to(device)
        scores.update({m: [v] for m, v in localisation_scores(saliency, masks).items()})
    _keep(per_image, f"{prefix}/explain_index", index)
    for m, v in scores.items():
        _keep(per_image, f"{prefix}/{m}", torch.cat(v))
    return {f"{prefix}/{m}": torch.cat(v).nanmean() for m, v in scores.items()}


def _audit_metrics(model: nn.Module, split: ImageSetLike, explainer: Explainer, *,
                   mean: Sequence[float], std: Sequence[float], cfg: EvalSettings, prefix: str,
                   seed: int, per_image: PerImage | None) -> dict[str, Tensor]:
    """The explanation audit (:func:`~extune.evaluate.audit.audit_scores`) on the explanation
    images, for the predicted class; the randomisation test without its cascade (the same
    ``randomisation_similarity``: only the fully randomised model's maps are needed)."""
    index = explanation_subset(len(split.images), cfg.explain_samples, seed=seed)
    images = split.images[index.to(split.images.device)]
    audit = audit_scores(model, explainer, images, mean=mean, std=std,
                         settings=AuditSettings(seed=seed, cascade=False),
                         batch_size=cfg.batch_size)
    _keep(per_image, f"{prefix}/explain_index", index)
    for m, v in audit.scores.items():
        _keep(per_image, f"{prefix}/{m}", v)
    return {f"{prefix}/{m}": torch.tensor(v) for m, v in audit.summary().items()}


def evaluate_split(model: nn.Module, images: ImageSetLike, *, mean: Sequence[float],
                   std: Sequence[float], num_classes: int, cfg: EvalSettings,
                   explainer: Explainer | None = None, prefix: str = "val", full: bool = True,
                   seed: int = 0, metrics: Collection[str] = (), part: Part | None = None,
                   per_image: PerImage | None = None, audit: bool = False) -> dict[str, float]:
    """Evaluate a classifier on one split; every metric as a plain float.

    Always: ``{prefix}/accuracy``, ``top5`` (top-min(5, C)), ``loss`` (cross-entropy) and
    ``ece`` (15 bins). With ``full``: accuracy and ECE under each ``cfg.corruptions`` at
    ``cfg.severity`` (``{shift}/{name}/accuracy|ece`` and their means
    ``{shift}/accuracy|ece``), ``{adv}/fgsm_accuracy`` at ``cfg.fgsm_eps``,
    and, when ``explainer`` is given and ``cfg.explain_samples > 0``, the explanation
    metrics of the predicted class on :func:`explanation_subset` images (plus the
    localisation metrics when ``images.masks`` is not ``None``). With ``audit`` (and an
    explainer), the explanation audit on the same images (``{prefix}/randomisation_similarity``
    ... ``{prefix}/randomisation_pass``, :data:`~extune.evaluate.audit.AUDIT_SUMMARY`). See
    ``docs/metrics.md``.

    The model runs in eval mode (no BatchNorm update) under ``torch.no_grad`` except for
    the FGSM and explainer gradients, which touch no parameter ``.grad``; every module's
    training flag is restored. Do not call under ``torch.inference_mode``.

    Args:
        model: Classifier on normalised input ``[B,3,H,W] -> [B,C]``, on its device.
        images: An ``ImageSet``: ``images`` uint8 ``[N,3,H,W]``, ``labels`` int64 ``[N]``,
            ``masks`` bool ``[N,1,H,W]`` or ``None``.
        mean: Per-channel mean in [0, 1] (of the training set).
        std: Per-channel standard deviation in [0, 1].
        num_classes: ``C``.
        cfg: the settings (:class:`EvalSettings`: batch_size, explain_samples,
            top_fraction, deletion_steps, corruptions, severity, fgsm_eps), e.g. a config's
            ``eval`` section.
        explainer: ``(model, x, target) -> saliency [B,1,H,W]`` from
            ``extune.augment.create_explainer``; ``None`` skips the explanation metrics.
        prefix: Namespace of the keys (``val``, ``test``).
        full: ``False`` computes only the four classification metrics (cheap epochs) and the
            groups that ``metrics`` need.
        seed: Seed of the corruption noise, the explanation subset and tie-breaking.
        metrics: Keys needed even when ``full`` is ``False`` (a search's objectives): their
            whole group (:func:`metric_groups`) is computed, e.g. ``val/alignment`` brings
            every explanation metric.
        part: ``None``, or called with the name of each part before it runs (``classification``,
            ``corruptions 3/15 (contrast)``, ``FGSM``, ``explanation metrics``, ``explanation
            audit``), for a progress display (:meth:`extune.train.progress.EpochProgress.phase`).
        per_image: ``None``, or a dict that receives the per-image outputs of every metric
            computed (:data:`PerImage`), e.g. a final run's, for resampling the test images.
        audit: Also the explanation audit (the ``audit`` group, whether ``full`` or not): the
            end-of-run suite (``eval.audit``); about as costly as the explanation metrics.

    Returns:
        ``{name: float}`` with the keys of :func:`metric_names` for these settings.
    """
    if len(images.images) == 0:
        raise ValueError("evaluate_split needs a non-empty split")
    device = model_device(model, images.images.device)
    labels = images.labels.to(device)
    kw = {"mean": mean, "std": std}
    part = part or _no_part
    with eval_mode(model):
        part("classification")
        logits = predict_logits(model, images.images, batch_size=cfg.batch_size, **kw)
        if logits.shape[1] != num_classes:
            raise ValueError(f"model returns {logits.shape[1]} logits, num_classes={num_classes}")
        values = _classification_tensors(logits, labels, num_classes)
        out = {f"{prefix}/{k}": v for k, v in values.items()}
        _keep(per_image, f"{prefix}/label", labels)
        _keep_classified(per_image, prefix, logits, labels)
        groups = (set(FULL_GROUPS) if full else set()) | metric_groups(prefix, metrics)
        if audit:
            groups.add("audit")
        if "shift" in groups:
            out.update(_shift_metrics(model, images.images, labels, num_classes=num_classes,
                                      cfg=cfg, prefix=prefix, seed=seed, part=part,
                                      per_image=per_image, **kw))
        if "adv" in groups:
            part("FGSM")
            adv = group_prefix(prefix, "adv")
            correct = fgsm_correct(model, images.images, labels, eps=cfg.fgsm_eps,
                                   batch_size=cfg.batch_size, **kw)
            _keep(per_image, f"{adv}/fgsm_correct", correct)
            out[f"{adv}/fgsm_accuracy"] = correct.float().mean()
        if "explain" in groups and explainer is not None and cfg.explain_samples > 0:
            part("explanation metrics")
            out.update(_explanation_metrics(model, images, explainer, cfg=cfg,
                                            prefix=prefix, seed=seed, per_image=per_image, **kw))
        if "audit" in groups and explainer is not None and cfg.explain_samples > 0:
            part("explanation audit")
            out.update(_audit_metrics(model, images, explainer, cfg=cfg, prefix=prefix,
                                      seed=seed, per_image=per_image, **kw))
    return {k: float(v) for k, v in out.items()}
