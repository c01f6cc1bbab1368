"""Per-method training steps: ``ce``, ``supcon``, ``excon``, ``edda``, ``random_occlusion``.

A method turns one batch of uint8 images into a scalar loss plus a few per-batch statistics
(tensors, so that the step never synchronises with the host). The loop sums the statistics
over the epoch and reads them once at its end.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from extune.augment import (
    Explainer,
    SupConViews,
    create_explainer,
    keep_mask,
    mask_salient,
    nonsalient_occlusion,
    random_nonsalient_occlusion,
    random_salient_occlusion,
    salient_occlusion,
    soft_targets,
    standard_view,
)
from extune.augment.explainers import EXPLAINERS
from extune.augment.model_state import eval_mode
from extune.errors import ConfigError, RegistryError
from extune.models import Network, SupConLoss, create_model
from extune.registry import Registry
from extune.train.config import Config

__all__ = ["METHODS", "Method", "StepOutput", "Control", "COMMON_SECTIONS", "config_explainer",
           "config_model", "check_explain_layer", "evaluation_explainer", "evaluation_protocol",
           "warmup_steps", "inactive_reason", "create_method", "list_methods", "method_reads",
           "controls_of"]

COMMON_SECTIONS = ("optim", "data", "model", "runtime", "eval")
"""Config sections every method reads (its optimiser, data, model, run and evaluation)."""


@dataclass(frozen=True)
class Control:
    """A switched-off arm of an explanation-driven method: its chosen config trained with the
    explanation-driven part turned off and everything else equal (docs/study.md, "Controls").

    Attributes:
        suffix: the arm's name after the method's (``off`` -> ``excon-off``).
        trains: the method that trains the arm (``supcon``: ExCon without masked views).
        what: the arm in words, for reports.
    """

    suffix: str
    trains: str
    what: str


@dataclass
class StepOutput:
    """What one training step returns.

    Attributes:
        loss: scalar loss to back-propagate.
        stats: per-batch means keyed by metric name (``train/...``), 0-dim tensors; the loop
            averages them over the batches that reported them.
    """

    loss: Tensor
    stats: dict[str, Tensor]


class Method(ABC):
    """Base class: holds the model, views and explainer that every step needs.

    Args:
        cfg: the full config.
        model: the network being trained.
        num_classes: number of real classes (ExCon's background label is ``num_classes``).
        mean, std: per-channel statistics of the training images, in [0, 1].
    """

    name = "base"
    warmup_key: str | None = None
    """The config key of the share of the run's training steps the method first trains as its
    baseline (:func:`warmup_steps`); ``None``: no warm-up."""
    warmup_trains = ""
    """What the warm-up steps train, in words (``plain SupCon``)."""
    sections: tuple[str, ...] = ()
    """Config sections the method reads besides :data:`COMMON_SECTIONS` (``supcon``,
    ``excon``, ``explain``...): a study holds a setting for every method that reads it when
    not every such method searches it (:func:`method_reads`)."""
    controls: tuple[Control, ...] = ()
    """The method's switched-off arms (explanation-driven methods): a study trains each with
    the method's chosen config and seeds."""

    def __init__(self, cfg: Config, model: Network, num_classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...],
                 total_steps: int | None = None) -> None:
        self.cfg = cfg
        self.model = model
        self.num_classes = num_classes
        self.mean, self.std = mean, std
        self.total_steps = total_steps
        """Training steps of the whole run (``optim.epochs`` x steps per epoch); the warm-up
        is a share of them. ``None``: no warm-up (a step outside a run: the grid, tests)."""
        size = cfg.data.image_size
        # The SupCon recipe for contrastive methods; classification methods use crop + flip only
        # (colour jitter and grayscale would erase the colour cue some classes are defined by).
        self.contrastive_views = SupConViews(size, mean, std)
        self.classifier_views = SupConViews(size, mean, std, scale=(0.5, 1.0), jitter_p=0.0,
                                            gray_p=0.0)
        self.explainer = config_explainer(cfg)

    @classmethod
    def warmup_share(cls, cfg: Config) -> float:
        """The share of the run's training steps ``cfg`` warms this method up for (0: none)."""
        if cls.warmup_key is None:
            return 0.0
        section, key = cls.warmup_key.split(".")
        return getattr(getattr(cfg, section), key)

    def warming_up(self, step: int) -> bool:
        """Whether training step ``step`` (0-based, counted over the whole run) is a warm-up
        step, trained as the method's baseline."""
        if self.total_steps is None:
            return False
        return step < warmup_steps(self.warmup_share(self.cfg), self.total_steps)

    @abstractmethod
    def step(self, images: Tensor, labels: Tensor, step: int) -> StepOutput:
        """Loss of one batch. ``images``: uint8 [B,3,H,W]; ``labels``: int64 [B]; ``step``:
        the batch's 0-based index among the run's training steps."""

    def label_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of ``logits`` [N, C] against ``labels`` [N] with
        ``optim.label_smoothing``: every method's loss on true labels (the classifier, EDDA's
        clean and non-salient terms, the contrastive methods' probe)."""
        return F.cross_entropy(logits, labels, label_smoothing=self.cfg.optim.label_smoothing)

    def standard(self, images: Tensor) -> Tensor:
        return standard_view(images, self.mean, self.std)

    def grid_views(self, x: Tensor, saliency: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The views this method trains on, for the saliency grid's extra rows.

        Args:
            x: float ``[N, 3, H, W]`` standard views (normalised).
            saliency: ``[N, 1, H, W]`` in [0, 1], of ``x`` for ``labels``.
            labels: int64 ``[N]``.

        Returns:
            Row label -> normalised ``[N, 3, H, W]``; none for CE and SupCon.
        """
        return {}


# ----------------------------------------------------------------------------- CE
class CrossEntropy(Method):
    """Plain cross-entropy on one crop+flip view."""

    name = "ce"

    def step(self, images: Tensor, labels: Tensor, step: int) -> StepOutput:
        logits = self.model(self.classifier_views(images))
        return StepOutput(self.label_loss(logits, labels), _accuracy_stats(logits, labels))


# ------------------------------------------------------------------------- SupCon
class SupCon(Method):
    """SupCon on two random views, plus an online linear probe on detached features."""

    name = "supcon"
    sections = ("supcon",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.criterion = SupConLoss(self.cfg.supcon.temperature, self.cfg.supcon.base_temperature)

    def step(self, images: Tensor, labels: Tensor, step: int) -> StepOutput:
        view0 = self.contrastive_views(images)
        view1 = self.contrastive_views(images)
        return self.contrast(view0, view1, labels)

    def contrast(self, view0: Tensor, view1: Tensor, labels: Tensor) -> StepOutput:
        """SupCon on a pair of view batches ([B,3,H,W] each) + probe loss."""
        feats = self.model.features(torch.cat([view0, view1]))  # [2B, D]
        z = self.model.project(feats)  # [2B, P]
        loss = self.criterion(_pairs(z), labels)
        probe_loss, stats = self.probe(feats, labels.repeat(2))
        return StepOutput(loss + probe_loss, stats)

    def probe(self, feats: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy of the linear classifier on detached features [N, D]."""
        logits = self.model.classifier(feats.detach())
        return self.label_loss(logits, labels), _accuracy_stats(logits, labels)


# -------------------------------------------------------------------------- ExCon
class ExCon(SupCon):
    """Explanation-driven SupCon (docs/methods.md, ExCon).

    Per batch: saliency of the standard view for the true label -> masked image (saliency <=
    threshold set to the mean colour) -> kept where the classifier still predicts the label.
    Kept masked images replace the second random view as view 0.

    Two code paths keep the step free of host synchronisation (fixed shapes, no indexing by
    data-dependent masks):

    - ``negative_pair=false``: the filter runs as a no-grad, eval-mode forward of the masked
      images; view 0 is composed in image space; one contrastive forward of 2B images.
    - ``negative_pair=true``: one forward of [masked, random view 2, random view 1] (3B images)
      whose masked-view features serve as view 0 where kept and as the background sample where
      rejected. Background rows are appended for every sample and switched off with SupCon's
      ``valid`` mask where the masked view was kept.
    """

    name = "excon"
    warmup_key = "excon.warmup_fraction"
    warmup_trains = "plain SupCon"
    sections = ("supcon", "excon", "explain")
    controls = (Control("off", "supcon", "ExCon without masked views (plain SupCon pairs, "
                                         "its chosen settings)"),)

    def grid_views(self, x: Tensor, saliency: Tensor, labels: Tensor) -> dict[str, Tensor]:
        t = self.cfg.excon.mask_threshold
        return {f"masked view\n(saliency > {t:.3g})": mask_salient(x, saliency, t)}

    def step(self, images: Tensor, labels: Tensor, step: int) -> StepOutput:
        view1 = self.contrastive_views(images)
        view2 = self.contrastive_views(images)
        if self.warming_up(step):
            out = self.contrast(view2, view1, labels)
            out.stats["train/driven_share"] = labels.new_zeros((), dtype=torch.float32)
            return out
        standard = self.standard(images)
        saliency = self.explainer(self.model, standard, labels)  # [B,1,H,W]
        masked = mask_salient(standard, saliency, self.cfg.excon.mask_threshold)
        if self.cfg.excon.negative_pair:
            return self.step_with_background(masked, view2, view1, labels)
        with torch.no_grad(), eval_mode(self.model):
            keep = keep_mask(self.model(masked), labels)  # [B] bool
        view0 = torch.where(keep[:, None, None, None], masked, view2)
        out = self.contrast(view0, view1, labels)
        out.stats["train/mask_keep_rate"] = keep.float().mean()
        out.stats["train/driven_share"] = out.stats["train/mask_keep_rate"]
        out.stats["train/background_samples"] = keep.new_zeros((), dtype=torch.float32)
        return out

    def step_with_background(self, masked: Tensor, view2: Tensor, view1: Tensor,
                             labels: Tensor) -> StepOutput:
        batch = labels.shape[0]
        feats = self.model.features(torch.cat([masked, view2, view1]))  # [3B, D]
        f_masked, f_view2, f_view1 = feats.split(batch)
        keep = keep_mask(self.model.classifier(f_masked.detach()), labels)  # [B]
        f_view0 = torch.where(keep[:, None], f_masked, f_view2)
        z_masked, z_view0, z_view1 = self.model.project(
            torch.cat([f_masked, f_view0, f_view1])).split(batch)
        pairs = torch.stack([z_view0, z_view1], dim=1)  # [B, 2, P]
        background = torch.stack([z_masked, z_masked], dim=1)  # [B, 2, P]
        all_labels = torch.cat([labels, torch.full_like(labels, self.num_classes)])
        valid = torch.cat([torch.ones_like(keep), ~keep])
        anchor = torch.cat([torch.ones_like(keep),
                            torch.full_like(keep, self.cfg.excon.background_anchor)])
        loss = self.criterion(torch.cat([pairs, background]), all_labels, valid=valid,
                              anchor=anchor)
        probe_loss, stats = self.probe(torch.cat([f_view0, f_view1]), labels.repeat(2))
        stats["train/mask_keep_rate"] = keep.float().mean()
        stats["train/driven_share"] = stats["train/mask_keep_rate"]
        stats["train/background_samples"] = (~keep).float().sum()  # per batch
        return StepOutput(loss + probe_loss, stats)


# --------------------------------------------------------------------------- EDDA
class EDDA(Method):
    """Explanation-driven data augmentation (docs/methods.md, EDDA).

    After the warm-up (:func:`warmup_steps` of ``edda.warmup_fraction``), the first
    ``round(ratio * B)`` images of each (shuffled) batch are explained for their label and
    occluded twice: the non-salient occlusion keeps the top ``keep_fraction`` pixels and is
    trained with the label; the salient occlusion fills the top ``occlude_fraction`` and is
    trained toward the low-confidence target. One forward covers the clean and both occluded
    batches, so BatchNorm sees them together.
    Loss = CE(x, y) + w_ns * CE(x_ns, y) + w_s * CE_soft(x_s, target).
    """

    name = "edda"
    warmup_key = "edda.warmup_fraction"
    warmup_trains = "plain cross-entropy"
    sections = ("edda", "explain")
    controls = (Control("off", "ce", "EDDA without occlusions (plain cross-entropy, its chosen "
                                     "settings)"),
                Control("random", "random_occlusion", "EDDA's occlusions of its chosen sizes "
                                                      "at random places"))

    def occlude(self, x: Tensor, labels: Tensor,
                saliency: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Non-salient and salient occlusions of ``x`` [n,3,H,W] -> two [n,3,H,W] tensors.

        ``saliency`` [n,1,H,W] when already computed, else ``x`` is explained for ``labels``.
        """
        c = self.cfg.edda
        if saliency is None:
            saliency = self.explainer(self.model, x, labels)
        return (nonsalient_occlusion(x, saliency, c.keep_fraction, c.fill),
                salient_occlusion(x, saliency, c.occlude_fraction, c.fill))

    def step(self, images: Tensor, labels: Tensor, step: int) -> StepOutput:
        c = self.cfg.edda
        x = self.classifier_views(images)
        n = round(c.ratio * labels.shape[0])
        if self.warming_up(step) or n == 0:
            logits = self.model(x)
            stats = _accuracy_stats(logits, labels)
            stats["train/driven_share"] = logits.new_zeros((), dtype=torch.float32)
            return StepOutput(self.label_loss(logits, labels), stats)
        x_ns, x_s = self.occlude(x[:n], labels[:n])
        logits, logits_ns, logits_s = self.model(torch.cat([x, x_ns, x_s])).split(
            [labels.shape[0], n, n])
        target = soft_targets(labels[:n], self.num_classes, c.salient_target, c.smoothing)
        loss = (self.label_loss(logits, labels)
                + c.nonsalient_weight * self.label_loss(logits_ns, labels[:n])
                + c.salient_weight * F.cross_entropy(logits_s, target))
        stats = _accuracy_stats(logits, labels)
        stats["train/driven_share"] = logits.new_full((), n / labels.shape[0],
                                                      dtype=torch.float32)
        probs_s = logits_s.detach().float().softmax(1)
        stats["train/salient_confidence"] = probs_s.gather(1, labels[:n, None]).mean()
        return StepOutput(loss, stats)

    occlusion_kind = "salient"

    def grid_views(self, x: Tensor, saliency: Tensor, labels: Tensor) -> dict[str, Tensor]:
        c, kind = self.cfg.edda, self.occlusion_kind
        kept, filled = self.occlude(x, labels, saliency)
        return {f"occluded, {c.keep_fraction:.0%}\n{kind} kept": kept,
                f"occluded, {c.occlude_fraction:.0%}\n{kind} filled": filled}


class RandomOcclusion(EDDA):
    """EDDA's baseline: occlusions of the same areas at random places, all else equal."""

    name = "random_occlusion"
    occlusion_kind = "random"
    sections = ("edda",)
    controls = ()

    def occlude(self, x: Tensor, labels: Tensor,
                saliency: Tensor | None = None) -> tuple[Tensor, Tensor]:
        c = self.cfg.edda
        return (random_nonsalient_occlusion(x, c.keep_fraction, c.fill),
                random_salient_occlusion(x, c.occlude_fraction, c.fill))


# ------------------------------------------------------------------------ helpers
METHODS: Registry[type[Method]] = Registry("method")
"""Training methods by name (``method``)."""
for _method in (CrossEntropy, SupCon, ExCon, EDDA, RandomOcclusion):
    METHODS.register(_method.name, _method)
del _method


def config_model(cfg: Config, num_classes: int) -> Network:
    """The :class:`~extune.models.Network` described by ``cfg.model`` (fresh weights).

    ``model.cifar_stem=None`` means the CIFAR stem when ``data.image_size <= 64``.
    """
    m = cfg.model
    cifar_stem = cfg.data.image_size <= 64 if m.cifar_stem is None else m.cifar_stem
    return create_model(backbone=m.backbone, num_classes=num_classes, cifar_stem=cifar_stem,
                        projection_dim=m.projection_dim, projection_hidden=m.projection_hidden)


def check_explain_layer(cfg: Config, model: Network | None = None) -> None:
    """``explain.layer`` (and ``eval.layer``) must name a layer of the model when its explainer
    explains a layer (Grad-CAM); otherwise the first explanation, after the run folder exists,
    would fail.

    Args:
        cfg: the config.
        model: its network; built from ``cfg`` (two classes) when ``None``.

    Raises:
        ConfigError: ``explain.layer: unknown layer ...`` with the backbone's layers.
    """
    checks = [("explain.layer", cfg.explain.layer, cfg.explain.explainer),
              ("eval.layer", cfg.eval.layer, cfg.eval.explainer)]
    for key, layer, explainer in checks:
        if layer is None or explainer is None or not EXPLAINERS.get(explainer).uses_layer:
            continue
        try:
            model = model or config_model(cfg, 2)
            model.get_layer(layer)
        except RegistryError as e:
            raise ConfigError(f"{key}: {e} (model.backbone={cfg.model.backbone})") from None


def config_explainer(cfg: Config) -> Explainer:
    """The explainer named by ``cfg.explain`` (training steps and evaluation share it)."""
    return create_explainer(cfg.explain.explainer, layer=cfg.explain.layer,
                            steps=cfg.explain.steps)


def evaluation_explainer(cfg: Config) -> Explainer:
    """The explainer of the explanation metrics (the evaluation protocol).

    ``eval.explainer`` set: that explainer with ``eval.layer`` and ``eval.steps``, whatever the
    model trained with, so that methods trained with different explainers or layers are
    measured alike (a study sets it); the training explainer's own layer never leaks in.
    ``eval.explainer`` unset: the training explainer as it is (``explain.*``).
    """
    name = cfg.eval.explainer
    if name is None:
        return config_explainer(cfg)
    return create_explainer(name, layer=cfg.eval.layer, steps=cfg.eval.steps)


def evaluation_protocol(cfg: Config) -> dict[str, Any]:
    """What :func:`evaluation_explainer` uses, as plain data (``explainer``, ``layer``,
    ``steps``; a layer of ``None`` is the backbone's last stage) for reports and records."""
    e = cfg.eval if cfg.eval.explainer is not None else cfg.explain
    uses = EXPLAINERS.get(e.explainer)
    return {"explainer": e.explainer, "layer": e.layer if uses.uses_layer else None,
            "steps": e.steps if uses.uses_steps else None}


def warmup_steps(share: float, steps: int) -> int:
    """Warm-up steps of a method whose warm-up is ``share`` of a run of ``steps`` training
    steps: the floor, so a share below 1 always leaves the method at least one step (``1e-9``
    absorbs float error: ``0.3 * 10`` is 3, not 2). Counted in steps, a share means the same
    in a 4-epoch trial as in a 12-epoch final run (in epochs, 0.44 was a quarter of the one and
    five twelfths of the other)."""
    return math.floor(share * steps + 1e-9)


def method_reads(method: str, key: str) -> bool:
    """Whether training ``method`` reads the config key ``key`` (``optim.label_smoothing``:
    every method; ``supcon.temperature``: SupCon and ExCon)."""
    section = key.split(".", 1)[0]
    return section in COMMON_SECTIONS or section in METHODS.get(method).sections


def controls_of(method: str) -> tuple[Control, ...]:
    """The switched-off arms of ``method`` (none for a baseline)."""
    return METHODS.get(method).controls


def inactive_reason(cfg: Config) -> str | None:
    """Why ``cfg`` would train its method as a plain baseline, in one line; ``None`` when its
    explanation-driven (or random-occlusion) part runs.

    Cases: EDDA and random occlusion whose ``edda.ratio`` of a batch rounds to no image, or
    whose two occlusion losses both weigh 0.
    """
    if cfg.method not in ("edda", "random_occlusion"):
        return None
    e = cfg.edda
    if round(e.ratio * cfg.optim.batch_size) == 0:
        return (f"{cfg.method} never occludes an image: edda.ratio={e.ratio:g} of a batch of "
                f"{cfg.optim.batch_size} rounds to 0 images, so it trains plain CE; raise "
                "edda.ratio")
    if e.nonsalient_weight == 0 and e.salient_weight == 0:
        return (f"{cfg.method} trains plain CE: edda.nonsalient_weight and edda.salient_weight "
                "are both 0; give one of them a weight")
    return None


def list_methods() -> list[str]:
    """Sorted names of the registered methods."""
    return METHODS.names()


def create_method(cfg: Config, model: Network, num_classes: int, mean: tuple[float, ...],
                  std: tuple[float, ...], total_steps: int | None = None) -> Method:
    """Instantiate the method named by ``cfg.method``; ``total_steps``: the run's training
    steps, of which the method's warm-up is a share (``None``: no warm-up).

    Raises:
        RegistryError: ``cfg.method`` is not registered.
    """
    return METHODS.get(cfg.method)(cfg, model, num_classes, mean, std, total_steps)


def _pairs(z: Tensor) -> Tensor:
    """[2B, P] (view 0 batch then view 1 batch) -> [B, 2, P]."""
    return torch.stack(z.chunk(2), dim=1)


def _accuracy_stats(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    return {"train/accuracy": (logits.detach().argmax(1) == labels).float().mean()}
