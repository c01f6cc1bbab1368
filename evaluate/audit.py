"""Explanation audit: sanity checks and the metric families reviewers expect.

Every score is computed per image, for the class in ``target`` (the evaluation suite passes the
predicted class), on the maps ``S`` of one explainer (``[B, 1, H, W]`` in ``[0, 1]``, see
:mod:`extune.augment.explainers`). Each agrees with Quantus 0.6 on the same inputs and the same
random draws (``tests/evaluate/test_audit_quantus.py``); everything is batched torch on the
model's device (why not Quantus: ``docs/metrics.md``, "Explanation audit").

- ``randomisation_similarity`` (model-parameter randomisation test, Adebayo et al. 2018; Quantus
  ``MPRT``, ``layer_order="top_down"``): Spearman rank correlation between ``S`` and the map of
  a deep copy of the model whose layers have all been re-initialised, cascading from the top
  layer down (lower better). The per-layer cascade comes with it; ``randomisation_pass`` is 1
  when its mean over images is below :data:`RANDOMISATION_THRESHOLD`.
- ``random_logit_similarity`` (Sixt et al. 2020; Quantus ``RandomLogit``): Spearman rank
  correlation between ``S`` and the map of a uniformly drawn other class (lower better).
- ``max_sensitivity`` / ``avg_sensitivity`` (Yeh et al. 2019; Quantus ``MaxSensitivity`` /
  ``AvgSensitivity``): ``||S(x + u) - S(x)||_2 / ||S(x)||_2`` over ``samples`` draws of
  ``u ~ U(-r, r)`` per input value in normalised space, maximum / mean (lower better).
- ``sparseness`` (Gini index, Chalasani et al. 2020; Quantus ``Sparseness``): Gini index of
  ``|S| + 1e-7`` (higher better: a few pixels carry the map).
- ``effective_complexity`` (Nguyen & Martinez 2020; Quantus ``EffectiveComplexity``): number of
  pixels with ``|S| > eps`` (lower better).
- ``faithfulness_correlation`` (Bhatt et al. 2020; Quantus ``FaithfulnessCorrelation``): Pearson
  correlation, over ``runs`` random pixel subsets, between the map's mass on the subset and the
  drop of the target logit when the subset is filled with 0 (the mean colour) (higher better).

Correlations (Spearman = Pearson of average ranks, as scipy) are NaN where both vectors are
constant (nothing to compare) and 0 where exactly one is (one ranks the pixels, the other does
not: they share no order); scipy and Quantus return NaN for both cases. Means over images skip
NaN. The model is left exactly as found: forward passes run in eval mode with every training
flag restored, explainers restore their own state, the randomisation acts on a deep copy, and
the global random state is untouched (draws come from seeded generators; the re-initialisation
runs inside :func:`torch.random.fork_rng`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from extune.augment.model_state import eval_mode
from extune.augment.views import normalize, to_unit
from extune.evaluate.batching import batches, model_device
from extune.evaluate.explanations import Explainer, compute_saliency

__all__ = [
    "AUDIT_METRICS",
    "AUDIT_SUMMARY",
    "RANDOMISATION_THRESHOLD",
    "AuditSettings",
    "Audit",
    "audit_scores",
    "rank_correlation",
    "pearson",
    "randomised_layers",
    "randomisation_cascade",
    "cascade_maps",
    "random_other_class",
    "random_logit_similarity",
    "uniform_noise",
    "sensitivity_scores",
    "sparseness",
    "effective_complexity",
    "random_pixel_subsets",
    "faithfulness_correlation",
]

AUDIT_METRICS = ("randomisation_similarity", "random_logit_similarity", "max_sensitivity",
                 "avg_sensitivity", "sparseness", "effective_complexity",
                 "faithfulness_correlation")
"""Per-image keys of :attr:`Audit.scores`."""
AUDIT_SUMMARY = (*AUDIT_METRICS, "randomisation_pass")
"""Keys of :meth:`Audit.summary`: the means of :data:`AUDIT_METRICS` and the verdict."""

RANDOMISATION_THRESHOLD = math.sqrt(0.5)
"""The randomisation test passes when the mean rank correlation after randomising the whole
model is below sqrt(1/2) ~ 0.707, i.e. when the maps of the destroyed model share less than half
of their rank variance (rho^2 < 1/2) with the trained model's: most of what the map ranks comes
from the learned parameters. A model-independent explainer (edges, the image) scores exactly 1.
Input-weighted methods keep some input structure by design (integrated gradients and
input x gradient multiply by ``x - baseline``, Adebayo et al. 2018): on trained tiny CNNs
and ResNet-minis (synthetic shapes, 16-32 px) integrated gradients scored 0.53-0.64 and
Grad-CAM -0.08-0.29 (docs/metrics.md, "The randomisation threshold")."""


@dataclass(frozen=True)
class AuditSettings:
    """Knobs of :func:`audit_scores` (defaults: ``docs/metrics.md``, "Explanation audit").

    Attributes:
        seed: Seeds every draw: the re-initialisation of each layer (``torch.manual_seed(seed)``
            before its ``reset_parameters()``), the other classes, the noise, the subsets.
        threshold: ``randomisation_pass`` is 1 when the mean ``randomisation_similarity`` is
            below it (:data:`RANDOMISATION_THRESHOLD`).
        cascade: Explain after every randomised layer (the cascade, ``L`` explainer passes);
            ``False``: only once, after all of them (Quantus ``skip_layers=True``).
        sensitivity_radius: ``r`` of the uniform noise, in normalised input units (Quantus's
            default ``lower_bound``, 0.2; i.e. ``0.2 * std`` in [0, 1] pixel units).
        sensitivity_samples: Noise draws per image (one explainer pass each).
        complexity_eps: Threshold of ``effective_complexity`` on maps in [0, 1] (Quantus's).
        faithfulness_runs: Random subsets per image (one forward pass each).
        faithfulness_fraction: Share of the ``H * W`` pixels in each subset.
    """

    seed: int = 0
    threshold: float = RANDOMISATION_THRESHOLD
    cascade: bool = True
    sensitivity_radius: float = 0.2
    sensitivity_samples: int = 10
    complexity_eps: float = 1e-5
    faithfulness_runs: int = 64
    faithfulness_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not -1.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (-1, 1], got {self.threshold}")
        if self.sensitivity_radius <= 0 or self.sensitivity_samples < 1:
            raise ValueError("need sensitivity_radius > 0 and sensitivity_samples >= 1, got "
                             f"{self.sensitivity_radius}, {self.sensitivity_samples}")
        if self.complexity_eps < 0:
            raise ValueError(f"complexity_eps must be >= 0, got {self.complexity_eps}")
        if self.faithfulness_runs < 2 or not 0.0 < self.faithfulness_fraction < 1.0:
            raise ValueError("need faithfulness_runs >= 2 and 0 < faithfulness_fraction < 1, "
                             f"got {self.faithfulness_runs}, {self.faithfulness_fraction}")


@dataclass(frozen=True)
class Audit:
    """What :func:`audit_scores` returns.

    Attributes:
        scores: ``{name: float32 [N]}`` for every name in :data:`AUDIT_METRICS`.
        target: int64 ``[N]``, the explained classes.
        layers: Names (``model.named_modules()``) of the cascade's rows, top layer first: row
            ``l`` is after re-initialising ``layers[0] .. layers[l]`` (with ``cascade=False``
            only the last, the whole model).
        cascade: float32 ``[len(layers), N]`` rank correlations; ``cascade[-1]`` is
            ``scores["randomisation_similarity"]``.
        threshold: The ``randomisation_pass`` threshold used.
    """

    scores: dict[str, Tensor]
    target: Tensor
    layers: tuple[str, ...]
    cascade: Tensor
    threshold: float

    @property
    def passed(self) -> bool:
        """The randomisation test: mean ``randomisation_similarity`` below the threshold (a
        model whose maps are all undefined, NaN, fails)."""
        return bool(self.scores["randomisation_similarity"].nanmean() < self.threshold)

    def summary(self) -> dict[str, float]:
        """``{name: mean over images}`` (NaN skipped) for :data:`AUDIT_SUMMARY`;
        ``randomisation_pass`` is 1.0 or 0.0."""
        means = {k: float(v.float().nanmean()) for k, v in self.scores.items()}
        return {**means, "randomisation_pass": float(self.passed)}


# --------------------------------------------------------------------------- correlations
def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation (float64 accumulation).

    Args:
        a, b: ``[B, P]``.

    Returns:
        float32 ``[B]``; 0 where exactly one row is constant, NaN where both are.
    """
    a, b = a.double(), b.double()
    const_a = a.amax(dim=1) == a.amin(dim=1)
    const_b = b.amax(dim=1) == b.amin(dim=1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denom = (a.square().sum(dim=1) * b.square().sum(dim=1)).sqrt()
    r = (a * b).sum(dim=1) / torch.where(const_a | const_b, 1.0, denom)
    r = torch.where(const_a ^ const_b, 0.0, r)
    return torch.where(const_a & const_b, math.nan, r).float()


def _average_ranks(v: Tensor) -> Tensor:
    """Ranks ``1..P`` of each row, ties given their average rank (scipy's ``rankdata``).

    Hand-written because torchmetrics' ``spearman_corrcoef`` ranks one output column at a time
    in a Python loop; this ranks the whole batch with one sort.

    Args:
        v: ``[B, P]``.

    Returns:
        float64 ``[B, P]``.
    """
    sorted_v, order = v.sort(dim=1)
    new = torch.ones_like(sorted_v, dtype=torch.bool)
    new[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = new.long().cumsum(dim=1) - 1  # tie group of each sorted entry, 0-based
    counts = torch.zeros_like(sorted_v, dtype=torch.float64).scatter_add_(
        1, group, torch.ones_like(sorted_v, dtype=torch.float64))
    start = counts.cumsum(dim=1) - counts  # sorted position of each group's first entry
    mean_rank = (start + (counts + 1) / 2).gather(1, group)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Per-image Spearman rank correlation of two maps (Quantus's ``correlation_spearman``).

    Args:
        a, b: ``[B, ...]`` (flattened per image).

    Returns:
        float32 ``[B]`` in [-1, 1]; 0 where exactly one map is constant, NaN where both are.
    """
    return pearson(_average_ranks(a.flatten(1)), _average_ranks(b.flatten(1)))


# ------------------------------------------------------------------------------- explaining
def _explain(model: nn.Module, explainer: Explainer, x: Tensor, target: Tensor) -> Tensor:
    """``explainer`` on normalised ``x [B,3,H,W]`` in eval mode -> float32 ``[B,1,H,W]``."""
    with eval_mode(model), torch.enable_grad():
        s = explainer(model, x, target)
    if s.shape != (x.shape[0], 1, *x.shape[-2:]):
        raise ValueError(f"explainer returned saliency {tuple(s.shape)}, expected "
                         f"{(x.shape[0], 1, *x.shape[-2:])}")
    return s.detach().float().clamp(0.0, 1.0)


def _target_logit(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    return model(x).float().gather(1, target[:, None]).squeeze(1)


# ------------------------------------------------------------------- parameter randomisation
def randomised_layers(model: nn.Module, x: Tensor) -> list[str]:
    """The layers the randomisation test re-initialises, top layer first.

    As Quantus: the modules with a ``reset_parameters`` method (convolutions, linear layers,
    normalisation layers), in reverse ``named_modules()`` order; unlike Quantus, only those that
    run in a forward pass of ``x`` (a projection head the logits do not use would add rows in
    which nothing changes).

    Args:
        model: Classifier on normalised input.
        x: A normalised batch ``[B, 3, H, W]`` (one image is enough).
    """
    ran: set[str] = set()
    handles = [m.register_forward_hook(lambda *_, name=name: ran.add(name))
               for name, m in model.named_modules() if callable(getattr(m, "reset_parameters",
                                                                          None))]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [name for name, _ in reversed(list(model.named_modules())) if name in ran]


@contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """The global generators of the CPU and ``device`` seeded with ``seed`` inside, restored
    after (``reset_parameters`` draws from them)."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()
            ] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def randomisation_cascade(model: nn.Module, explainer: Explainer, images: Tensor,
                          saliency: Tensor, target: Tensor, *, mean: Sequence[float],
                          std: Sequence[float], seed: int = 0, cascade: bool = True,
                          batch_size: int = 64) -> tuple[tuple[str, ...], Tensor]:
    """Model-parameter randomisation test, cascading from the top (Quantus ``MPRT``).

    A deep copy of ``model`` has its :func:`randomised_layers` re-initialised one at a time,
    top first, each with ``torch.manual_seed(seed)`` before its ``reset_parameters()`` (Quantus
    seeds ``seed + 1`` the same way); after each, the copy explains ``images`` again for the
    same ``target`` and the maps are compared with ``saliency`` by :func:`rank_correlation`.

    Args:
        model: Classifier on normalised input (not modified).
        explainer: ``(model, x normalised [B,3,H,W], target [B]) -> [B,1,H,W]`` in [0, 1].
        images: uint8 ``[N, 3, H, W]``.
        saliency: The original maps ``[N, 1, H, W]`` of ``model``.
        target: int64 ``[N]``.
        mean, std: Per-channel normalisation in [0, 1].
        seed: Re-initialisation seed.
        cascade: Explain after every layer; ``False``: only after the last (whole model).
        batch_size: Images per explainer call.

    Returns:
        ``(layers, similarity float32 [len(layers), N])``: row ``l`` after re-initialising
        ``layers[:l + 1]`` (``cascade=False``: one row, the whole model, named by the last
        layer). No randomisable layer: ``((), [0, N])``.
    """
    names, rows = [], []
    for _, name, randomised, last in _randomised_copies(model, images, seed, mean, std):
        if cascade or last:
            maps, _ = compute_saliency(randomised, explainer, images, mean=mean, std=std,
                                       target=target, batch_size=batch_size)
            names.append(name)
            rows.append(rank_correlation(saliency, maps))
    similarity = torch.stack(rows) if rows else saliency.new_zeros(0, len(images))
    return tuple(names), similarity


def cascade_maps(model: nn.Module, explainer: Explainer, images: Tensor, target: Tensor, *,
                 mean: Sequence[float], std: Sequence[float], seed: int = 0,
                 batch_size: int = 64) -> tuple[tuple[str, ...], Tensor]:
    """The maps of the randomisation cascade themselves, for a few images (a figure).

    The same randomised models as :func:`randomisation_cascade` with the same ``seed``: row
    ``l`` of the result is explained by the copy whose ``layers[:l + 1]`` are re-initialised, so
    its rank correlation with the original map is row ``l`` of the cascade.

    Args:
        model: Classifier on normalised input (not modified).
        explainer: ``(model, x normalised [B,3,H,W], target [B]) -> [B,1,H,W]`` in [0, 1].
        images: uint8 ``[n, 3, H, W]`` (keep ``n`` small: every map is kept).
        target: int64 ``[n]``, the classes explained.
        mean, std: Per-channel normalisation in [0, 1].
        seed: Re-initialisation seed.
        batch_size: Images per explainer call.

    Returns:
        ``(layers, maps float32 [len(layers), n, 1, H, W])``, top layer first.
    """
    names, maps = [], []
    for _, name, randomised, _ in _randomised_copies(model, images, seed, mean, std):
        found, _ = compute_saliency(randomised, explainer, images, mean=mean, std=std,
                                    target=target, batch_size=batch_size)
        names.append(name)
        maps.append(found)
    h, w = images.shape[-2:]
    stacked = torch.stack(maps) if maps else torch.zeros(0, len(images), 1, h, w)
    return tuple(names), stacked


def _randomised_copies(model: nn.Module, images: Tensor, seed: int, mean: Sequence[float],
                       std: Sequence[float]) -> Iterator[tuple[int, str, nn.Module, bool]]:
    """A deep copy of ``model`` with one more of its :func:`randomised_layers` re-initialised
    at each step, top first: ``(index, layer name, the copy, whether it is the last)``."""
    device = model_device(model, images.device)
    x0 = normalize(to_unit(images[:1].to(device)), mean, std)
    layers = randomised_layers(model, x0)
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    for i, name in enumerate(layers):
        with _seeded_global_rng(seed, device):
            modules[name].reset_parameters()
        yield i, name, randomised, i == len(layers) - 1


# ---------------------------------------------------------------------------- random logit
def random_other_class(target: Tensor, num_classes: int, *,
                       generator: torch.Generator | None = None) -> Tensor:
    """A class drawn uniformly among the ``num_classes - 1`` others, per image.

    Args:
        target: int64 ``[B]``.
        num_classes: ``C >= 2``.
        generator: Generator on ``target.device``.

    Returns:
        int64 ``[B]``, never equal to ``target``.
    """
    if num_classes < 2:
        raise ValueError(f"the random-logit test needs 2 or more classes, got {num_classes}")
    offset = torch.randint(1, num_classes, target.shape, generator=generator,
                           device=target.device)
    return (target + offset) % num_classes


def random_logit_similarity(model: nn.Module, explainer: Explainer, x: Tensor, saliency: Tensor,
                            other: Tensor) -> Tensor:
    """Random-logit test (Sixt et al. 2020; Quantus ``RandomLogit``): rank correlation of the
    map of the target with the map of another class (one explainer pass).

    Args:
        model: Classifier on normalised input.
        explainer: The explainer that gave ``saliency``.
        x: Normalised images ``[B, 3, H, W]``.
        saliency: Maps of the target ``[B, 1, H, W]``.
        other: int64 ``[B]`` other classes (:func:`random_other_class`).

    Returns:
        float32 ``[B]`` (see :func:`rank_correlation`).
    """
    return rank_correlation(saliency, _explain(model, explainer, x, other))


# ----------------------------------------------------------------------------- sensitivity
def uniform_noise(x: Tensor, radius: float, *, generator: torch.Generator | None = None
                  ) -> Tensor:
    """``U(-radius, radius)`` noise of ``x``'s shape, dtype and device (one draw)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (2 * u - 1) * radius


def sensitivity_scores(model: nn.Module, explainer: Explainer, x: Tensor, saliency: Tensor,
                       target: Tensor, *, radius: float = 0.2, samples: int = 10,
                       generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Max- and average-sensitivity (Yeh et al. 2019; Quantus ``MaxSensitivity`` and
    ``AvgSensitivity`` with their default ``difference`` and Frobenius norms).

    For each of ``samples`` draws ``u = uniform_noise(x, radius)`` (in this order from
    ``generator``), ``||S(x + u) - S(x)|| / ||S(x)||`` per image; one explainer pass per draw.

    Args:
        model: Classifier on normalised input.
        explainer: The explainer that gave ``saliency``.
        x: Normalised images ``[B, 3, H, W]``.
        saliency: ``S(x)``, ``[B, 1, H, W]``.
        target: int64 ``[B]``, kept for the perturbed inputs.
        radius: Noise half-width in normalised units.
        samples: Draws per image.
        generator: Generator on ``x.device``.

    Returns:
        ``{"max_sensitivity": float32 [B], "avg_sensitivity": float32 [B]}``; NaN where
        ``S(x)`` is all zeros (no relative change).
    """
    base = saliency.flatten(1)
    norm = base.norm(dim=1)
    ratios = []
    for _ in range(samples):
        moved = _explain(model, explainer, x + uniform_noise(x, radius, generator=generator),
                         target)
        ratios.append((moved.flatten(1) - base).norm(dim=1) / norm)
    r = torch.where(norm[:, None] > 0, torch.stack(ratios, dim=1), math.nan)
    return {"max_sensitivity": r.amax(dim=1), "avg_sensitivity": r.mean(dim=1)}


# ------------------------------------------------------------------------------ complexity
def sparseness(saliency: Tensor) -> Tensor:
    """Gini index of each map (Chalasani et al. 2020; Quantus ``Sparseness``).

    ``G = sum_i (2i - P - 1) a_(i) / (P sum_i a_(i))`` over the ``P`` values
    ``a = |S| + 1e-7`` sorted ascending (``i = 1..P``; the ``1e-7`` is Quantus's, it makes an
    all-zero map uniform, ``G = 0``). 0: uniform map; ``(P - 1) / P``: one pixel.

    Args:
        saliency: ``[B, 1, H, W]``.

    Returns:
        float32 ``[B]`` in [0, 1).
    """
    a = (saliency.flatten(1).double().abs() + 1e-7).sort(dim=1).values
    p = a.shape[1]
    i = torch.arange(1, p + 1, device=a.device, dtype=a.dtype)
    return (((2 * i - p - 1) * a).sum(dim=1) / (p * a.sum(dim=1))).float()


def effective_complexity(saliency: Tensor, *, eps: float = 1e-5) -> Tensor:
    """Number of pixels with ``|S| > eps`` (Nguyen & Martinez 2020; Quantus
    ``EffectiveComplexity``).

    Args:
        saliency: ``[B, 1, H, W]``.
        eps: Threshold.

    Returns:
        float32 ``[B]`` in ``[0, H * W]``.
    """
    return (saliency.flatten(1).abs() > eps).sum(dim=1).float()


# ---------------------------------------------------------------------------- faithfulness
def random_pixel_subsets(batch: int, pixels: int, runs: int, size: int, *,
                         device: torch.device | str = "cpu",
                         generator: torch.Generator | None = None) -> Tensor:
    """``runs`` uniformly random subsets of ``size`` distinct pixels per image.

    Returns:
        int64 ``[runs, batch, size]`` pixel indices in ``[0, pixels)`` (row-major ``H x W``).
    """
    if not 1 <= size < pixels:
        raise ValueError(f"need 1 <= subset size < {pixels} pixels, got {size}")
    keys = torch.rand(runs, batch, pixels, generator=generator, device=device)
    return keys.argsort(dim=2)[..., :size]


@torch.no_grad()
def faithfulness_correlation(model: nn.Module, x: Tensor, saliency: Tensor, target: Tensor,
                             subsets: Tensor) -> Tensor:
    """Faithfulness correlation (Bhatt et al. 2020; Quantus ``FaithfulnessCorrelation``).

    For each run ``r`` the pixels ``subsets[r]`` (all channels) are filled with 0 (the mean
    colour); the correlation is Pearson's, over the runs, between the map's mass on the subset
    ``sum S[subset]`` and the drop of the target logit ``f_t(x) - f_t(x_filled)``. One forward
    pass per run.

    Args:
        model: Classifier on normalised input.
        x: Normalised images ``[B, 3, H, W]``.
        saliency: ``[B, 1, H, W]``.
        target: int64 ``[B]``.
        subsets: int64 ``[R, B, k]`` pixel indices (:func:`random_pixel_subsets`), ``R >= 2``.

    Returns:
        float32 ``[B]`` in [-1, 1] (see :func:`pearson`).
    """
    b, _, h, w = x.shape
    s = saliency.to(x.device).flatten(1).float()
    with eval_mode(model):
        base = _target_logit(model, x, target)
        drops, mass = [], []
        for idx in subsets.to(x.device):
            keep = torch.ones(b, h * w, device=x.device, dtype=x.dtype).scatter_(1, idx, 0.0)
            drops.append(base - _target_logit(model, x * keep.view(b, 1, h, w), target))
            mass.append(s.gather(1, idx).sum(dim=1))
    return pearson(torch.stack(mass, dim=1), torch.stack(drops, dim=1))


# ------------------------------------------------------------------------------ entry point
def audit_scores(model: nn.Module, explainer: Explainer, images: Tensor, *,
                 mean: Sequence[float], std: Sequence[float], target: Tensor | None = None,
                 settings: AuditSettings | None = None, batch_size: int = 64) -> Audit:
    """Every audit score of ``images`` under ``explainer``, per image, and the cascade.

    Costs, per image: 1 + ``L`` (the randomised layers; 1 with ``cascade=False``) + 1 +
    ``sensitivity_samples`` explainer passes and 1 + ``faithfulness_runs`` forward passes,
    all in batches of ``batch_size`` on the model's device.

    Args:
        model: Classifier on normalised input ``[B,3,H,W] -> [B,C]``; left as found.
        explainer: ``(model, x normalised [B,3,H,W], target [B]) -> [B,1,H,W]`` in [0, 1].
        images: uint8 ``[N, 3, H, W]``.
        mean, std: Per-channel normalisation in [0, 1] (the training set's).
        target: int64 ``[N]`` classes to explain; ``None``: the predicted class.
        settings: :class:`AuditSettings` (``None``: the defaults).
        batch_size: Images per explainer call and forward pass.

    Returns:
        :class:`Audit` (scores and cascade on the model's device).
    """
    if len(images) == 0:
        raise ValueError("audit_scores needs at least one image")
    cfg = settings or AuditSettings()
    saliency, target = compute_saliency(model, explainer, images, mean=mean, std=std,
                                        target=target, batch_size=batch_size)
    device = saliency.device
    layers, cascade = randomisation_cascade(model, explainer, images, saliency, target,
                                            mean=mean, std=std, seed=cfg.seed,
                                            cascade=cfg.cascade, batch_size=batch_size)
    with torch.no_grad(), eval_mode(model):
        num_classes = model(normalize(to_unit(images[:1].to(device)), mean, std)).shape[1]
    draws = {k: torch.Generator(device).manual_seed(cfg.seed)
             for k in ("other", "noise", "subsets")}  # one stream per family
    parts: dict[str, list[Tensor]] = {k: [] for k in AUDIT_METRICS[1:]}
    for sl in batches(len(images), batch_size):
        x = normalize(to_unit(images[sl].to(device)), mean, std)
        found = _batch_scores(model, explainer, x, saliency[sl], target[sl], num_classes, cfg,
                              draws)
        for k, v in found.items():
            parts[k].append(v)
    final = cascade[-1] if len(layers) else saliency.new_full((len(images),), math.nan)
    scores = {"randomisation_similarity": final, **{k: torch.cat(v) for k, v in parts.items()}}
    return Audit(scores, target, layers, cascade, cfg.threshold)


def _batch_scores(model: nn.Module, explainer: Explainer, x: Tensor, saliency: Tensor,
                  target: Tensor, num_classes: int, cfg: AuditSettings,
                  draws: dict[str, torch.Generator]) -> dict[str, Tensor]:
    """Every score but the randomisation test's, for one batch ``x [B, 3, H, W]``."""
    other = random_other_class(target, num_classes, generator=draws["other"])
    pixels = x.shape[-2] * x.shape[-1]
    subsets = random_pixel_subsets(len(x), pixels, cfg.faithfulness_runs,
                                   max(1, round(cfg.faithfulness_fraction * pixels)),
                                   device=x.device, generator=draws["subsets"])
    return {
        "random_logit_similarity": random_logit_similarity(model, explainer, x, saliency, other),
        **sensitivity_scores(model, explainer, x, saliency, target,
                             radius=cfg.sensitivity_radius, samples=cfg.sensitivity_samples,
                             generator=draws["noise"]),
        "sparseness": sparseness(saliency),
        "effective_complexity": effective_complexity(saliency, eps=cfg.complexity_eps),
        "faithfulness_correlation": faithfulness_correlation(model, x, saliency, target,
                                                             subsets),
    }
