"""Explanation quality (faithfulness, model-explanation alignment) and localisation.

Every metric is computed per image for the class given in ``target`` (the evaluation suite
passes the model's predicted class) and is batched: each perturbation level is one forward
pass of the whole batch. Confidence ``p(x)`` is the softmax probability of the target class.

Pixels are ordered by saliency through :func:`saliency_ranks` (rank 0 = most salient; ties
broken uniformly at random with a seeded generator, so a constant map behaves like a random
one instead of favouring the top-left corner). With ``P = H * W`` pixels,
``k = max(1, round(top_fraction * P))`` and "fill" meaning the value 0 in normalised space
(the data set's mean colour), for each image:

- ``avg_drop``: ``max(0, p(x) - p(x_keep)) / p(x)`` where ``x_keep`` keeps the ``k`` most
  salient pixels and fills the rest (Average Drop, Chattopadhyay et al. 2018; lower better);
- ``increase_confidence``: ``1[p(x_keep) > p(x)]`` (Increase in Confidence; higher better);
- ``alignment``: ``(p(x) - p(x_sal)) - (p(x) - p(x_nonsal)) = p(x_nonsal) - p(x_sal)`` where
  ``x_sal`` fills the ``k`` most salient and ``x_nonsal`` the ``k`` least salient pixels
  (EDDA's principle as one score; in [-1, 1], higher better);
- ``deletion_auc``: area under ``p`` while the ``round(j / S * P)`` most salient pixels are
  filled, ``j = 0..S``, trapezoid rule over the fraction axis [0, 1] (Petsiuk et al. 2018;
  lower better);
- ``insertion_auc``: the same curve starting from a blurred copy of the image (Gaussian,
  sigma ``H / 16`` px) into which the most salient original pixels are inserted first
  (higher better).

Averaged over images these give the metrics of ``docs/metrics.md``; ``avg_drop`` and
``increase_confidence`` are reported as fractions in [0, 1] (the paper's percentages / 100).

Localisation against a ground-truth mask (images with an empty mask give NaN and are left
out of the mean):

- ``pointing_game``: the share of the saliency maximisers that lie inside the mask, i.e. the
  probability of a hit when ties of the maximum are broken uniformly at random (1 or 0
  without ties; a constant map scores the mask's area fraction); no pixel tolerance;
- ``saliency_in_mask``: ``sum(s * m) / sum(s)`` (an all-zero map scores the mask's area
  fraction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extune.augment.model_state import eval_mode
from extune.augment.views import normalize, to_unit
from extune.evaluate.batching import batches, model_device

__all__ = [
    "EXPLANATION_METRICS",
    "LOCALISATION_METRICS",
    "explanation_subset",
    "compute_saliency",
    "saliency_ranks",
    "explanation_scores",
    "localisation_scores",
]

EXPLANATION_METRICS = ("avg_drop", "increase_confidence", "alignment", "deletion_auc",
                       "insertion_auc")
"""Per-image keys of :func:`explanation_scores`."""
LOCALISATION_METRICS = ("pointing_game", "saliency_in_mask")
"""Per-image keys of :func:`localisation_scores`."""

Explainer = Callable[[nn.Module, Tensor, Tensor], Tensor]


def explanation_subset(num_images: int, num_samples: int, *, seed: int = 0) -> Tensor:
    """The fixed images on which explanations are evaluated.

    A seeded random choice (not the first ``num_samples``, in case a split is ordered by
    class), returned sorted; the same arguments give the same indices on every machine.

    Args:
        num_images: Size of the split ``N``.
        num_samples: Wanted subset size; clipped to ``N``.
        seed: Seed of the CPU generator.

    Returns:
        int64 ``[min(num_samples, N)]`` ascending indices on the CPU.
    """
    n = max(0, min(int(num_samples), int(num_images)))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(int(num_images), generator=generator)[:n].sort().values


def compute_saliency(model: nn.Module, explainer: Explainer, images: Tensor, *,
                     mean: Sequence[float], std: Sequence[float],
                     target: Tensor | None = None, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Saliency maps of ``images`` for ``target`` (default: the predicted class), batched.

    The model is in eval mode during the explainer call (BatchNorm statistics are not
    touched) and gets its training flags back afterwards.

    Args:
        model: Classifier on normalised input ``[B,3,H,W] -> [B,C]``.
        explainer: ``(model, x normalised [B,3,H,W], target [B]) -> [B,1,H,W]`` in [0, 1].
        images: ``uint8 [N, 3, H, W]``.
        mean: Per-channel mean in [0, 1].
        std: Per-channel standard deviation in [0, 1].
        target: Optional int64 ``[N]`` classes to explain.
        batch_size: Images per explainer call.

    Returns:
        ``(saliency float [N, 1, H, W] in [0, 1], target int64 [N])`` on the model's device.
    """
    device = model_device(model, images.device)
    maps, targets = [], []
    with eval_mode(model):
        for sl in batches(len(images), batch_size):
            x = normalize(to_unit(images[sl].to(device, non_blocking=True)), mean, std)
            if target is None:
                with torch.no_grad():
                    t = model(x).argmax(dim=1)
            else:
                t = target[sl].to(device)
            with torch.enable_grad():
                s = explainer(model, x, t)
            if s.shape != (x.shape[0], 1, *x.shape[-2:]):
                raise ValueError(f"explainer returned saliency {tuple(s.shape)}, expected "
                                 f"{(x.shape[0], 1, *x.shape[-2:])}")
            maps.append(s.detach().float().clamp(0.0, 1.0))
            targets.append(t)
    return torch.cat(maps), torch.cat(targets)


def saliency_ranks(saliency: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Rank of every pixel by saliency, 0 = most salient, ties broken uniformly at random.

    Args:
        saliency: ``[B, 1, H, W]`` (any real values).
        generator: Generator on ``saliency.device`` for the tie-breaking order.

    Returns:
        int64 ``[B, 1, H, W]`` holding a permutation of ``0 .. H*W-1`` per image.
    """
    s = saliency.detach().flatten(1).float()
    b, p = s.shape
    shuffle = torch.rand(b, p, generator=generator, device=s.device).argsort(dim=1)
    order = shuffle.gather(1, s.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(p, device=s.device).expand(b, p))
    return ranks.view_as(saliency)


def _confidence(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    return model(x).float().softmax(dim=1).gather(1, target[:, None]).squeeze(1)


def _baseline(x: Tensor, kind: Literal["blur", "mean"]) -> Tensor:
    if kind == "mean":
        return torch.zeros_like(x)
    from kornia.filters import gaussian_blur2d

    sigma = x.shape[-2] / 16.0
    size = min(2 * math.ceil(3.0 * sigma) + 1, 2 * min(x.shape[-2:]) - 1)
    return gaussian_blur2d(x, (size, size), (sigma, sigma), border_type="reflect")


def _curve_auc(curve: list[Tensor]) -> Tensor:
    return torch.trapezoid(torch.stack(curve, dim=1), dx=1.0 / (len(curve) - 1), dim=1)


@torch.no_grad()
def explanation_scores(model: nn.Module, x: Tensor, saliency: Tensor, target: Tensor, *,
                       top_fraction: float = 0.15, steps: int = 16,
                       insertion_baseline: Literal["blur", "mean"] = "blur",
                       generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Per-image faithfulness and alignment scores (formulas in the module docstring).

    Costs ``2 * steps + 4`` batched forward passes. The model is in eval mode and gets its
    training flags back.

    Args:
        model: Classifier on normalised input ``[B,3,H,W] -> [B,C]``.
        x: Normalised images ``[B, 3, H, W]``.
        saliency: ``[B, 1, H, W]``; only the pixel order matters.
        target: int64 ``[B]`` class explained (the predicted class in the suite).
        top_fraction: Share of pixels kept (Average Drop) or occluded (alignment), in (0, 1).
        steps: Deletion/insertion steps ``S`` (curve of ``S + 1`` points), >= 1.
        insertion_baseline: Start of the insertion curve: ``blur`` or ``mean`` (zeros).
        generator: Generator on ``x.device`` for tie-breaking (see :func:`saliency_ranks`).

    Returns:
        ``{name: float32 [B]}`` for every name in :data:`EXPLANATION_METRICS`.
    """
    if saliency.shape != (x.shape[0], 1, *x.shape[-2:]) or target.shape != x.shape[:1]:
        raise ValueError(f"expected x [B,3,H,W], saliency [B,1,H,W], target [B]; got "
                         f"{tuple(x.shape)}, {tuple(saliency.shape)}, {tuple(target.shape)}")
    if not 0.0 < top_fraction < 1.0 or steps < 1:
        raise ValueError(f"need 0 < top_fraction < 1 and steps >= 1, got {top_fraction}, {steps}")
    pixels = x.shape[-2] * x.shape[-1]
    k = max(1, min(pixels, round(top_fraction * pixels)))
    ranks = saliency_ranks(saliency.to(x.device), generator=generator)
    zero = x.new_zeros(())
    with eval_mode(model):
        p0 = _confidence(model, x, target)
        p_keep = _confidence(model, torch.where(ranks < k, x, zero), target)
        p_sal = _confidence(model, torch.where(ranks < k, zero, x), target)
        p_nonsal = _confidence(model, torch.where(ranks >= pixels - k, zero, x), target)
        counts = [round(j / steps * pixels) for j in range(steps + 1)]
        deletion = [p0] + [_confidence(model, torch.where(ranks < n, zero, x), target)
                           for n in counts[1:]]
        base = _baseline(x, insertion_baseline)
        insertion = [_confidence(model, torch.where(ranks < n, x, base), target)
                     for n in counts[:-1]] + [p0]
    return {
        "avg_drop": (p0 - p_keep).clamp(min=0.0) / p0.clamp(min=1e-12),
        "increase_confidence": (p_keep > p0).float(),
        "alignment": p_nonsal - p_sal,
        "deletion_auc": _curve_auc(deletion),
        "insertion_auc": _curve_auc(insertion),
    }


def localisation_scores(saliency: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """Per-image pointing game and saliency mass inside a ground-truth mask.

    Args:
        saliency: ``[B, 1, H, W]`` non-negative.
        masks: bool ``[B, 1, h, w]`` object masks (resized to ``H x W`` by nearest neighbour
            if they differ).

    Returns:
        ``{"pointing_game": float32 [B], "saliency_in_mask": float32 [B]}``, NaN where a mask
        is empty.
    """
    if masks.shape[-2:] != saliency.shape[-2:]:
        masks = F.interpolate(masks.float(), size=saliency.shape[-2:], mode="nearest") > 0.5
    s = saliency.detach().float().clamp(min=0.0).flatten(1)
    m = masks.to(s.device).bool().flatten(1)
    is_max = s == s.amax(dim=1, keepdim=True)
    pointing = (is_max & m).sum(dim=1) / is_max.sum(dim=1).clamp(min=1)
    total = s.sum(dim=1)
    share = torch.where(total > 0, (s * m).sum(dim=1) / total.clamp(min=1e-12), m.float().mean(1))
    nan = s.new_full((), float("nan"))
    valid = m.any(dim=1)
    return {
        "pointing_game": torch.where(valid, pointing.float(), nan),
        "saliency_in_mask": torch.where(valid, share, nan),
    }
