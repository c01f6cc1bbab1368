"""EDDA's occlusions (docs/methods.md, EDDA) and their random-place baseline, as pure tensor
functions.

All functions are batched: no Python loop over samples and no host synchronisation. Areas are
exact: a fraction ``f`` of an ``H x W`` image is :func:`fraction_count` ``(f, H * W)`` pixels,
``floor(f * H * W + 0.5)`` (round half up), in every image.

Fill modes (in normalised space): ``"mean"`` -> 0 (the data set's mean colour); ``"blur"`` -> a
Gaussian blur of the same image (kernel about a quarter of the side, odd; sigma an eighth);
``"noise"`` -> standard normal noise.
"""

from __future__ import annotations

import math
from typing import Literal

import kornia.filters
import torch
from torch import Tensor

__all__ = [
    "FillMode",
    "fraction_count",
    "top_fraction_mask",
    "random_fraction_mask",
    "fill",
    "nonsalient_occlusion",
    "salient_occlusion",
    "random_nonsalient_occlusion",
    "random_salient_occlusion",
    "soft_targets",
]

FillMode = Literal["mean", "blur", "noise"]
FILL_MODES = ("mean", "blur", "noise")


def fraction_count(fraction: float, n: int) -> int:
    """Number of pixels in a ``fraction`` of ``n``: ``floor(fraction * n + 0.5)``.

    Raises:
        ValueError: if ``fraction`` is outside ``[0, 1]``.
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(n, int(math.floor(float(fraction) * n + 0.5)))


def _scatter_first(order: Tensor, k: int, shape: tuple[int, ...]) -> Tensor:
    """bool ``shape`` with True at the first ``k`` flat indices of each row of ``order [B, N]``."""
    mask = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    mask.scatter_(1, order[:, :k], True)
    return mask.view(shape)


def top_fraction_mask(saliency: Tensor, fraction: float) -> Tensor:
    """The most salient ``fraction`` of each image's pixels.

    Exactly ``fraction_count(fraction, H * W)`` pixels per image are True. Ties are broken
    deterministically: among equal saliency, the lower flat index (row-major) wins (stable sort).

    Args:
        saliency: ``[B, 1, H, W]``.
        fraction: in ``[0, 1]``.

    Returns:
        bool ``[B, 1, H, W]``.
    """
    if saliency.dim() != 4 or saliency.shape[1] != 1:
        raise ValueError(f"saliency must be [B, 1, H, W], got {tuple(saliency.shape)}")
    flat = saliency.reshape(saliency.shape[0], -1)
    k = fraction_count(fraction, flat.shape[1])
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    return _scatter_first(order, k, tuple(saliency.shape))


def random_fraction_mask(shape: tuple[int, ...] | torch.Size, fraction: float, *,
                         generator: torch.Generator | None = None,
                         device: torch.device | str | None = None) -> Tensor:
    """A random ``fraction`` of each image's pixels (the same area as :func:`top_fraction_mask`).

    Args:
        shape: ``(B, 1, H, W)``.
        fraction: in ``[0, 1]``.
        generator: source of randomness (its device is used when ``device`` is None); ``None``:
            torch's global generator.
        device: where to make the mask.

    Returns:
        bool ``[B, 1, H, W]`` with exactly ``fraction_count(fraction, H * W)`` True per image.
    """
    shape = tuple(shape)
    if len(shape) != 4 or shape[1] != 1:
        raise ValueError(f"shape must be (B, 1, H, W), got {shape}")
    if device is None and generator is not None:
        device = generator.device
    n = shape[2] * shape[3]
    k = fraction_count(fraction, n)
    order = torch.rand(shape[0], n, generator=generator, device=device).argsort(dim=1)
    return _scatter_first(order, k, shape)


def _blur(x: Tensor) -> Tensor:
    """Gaussian blur with kernel ~ side / 4 (odd, >= 3) and sigma ~ side / 8, per dimension."""
    h, w = x.shape[-2:]
    ks = tuple(max(3, (s // 4) | 1) for s in (h, w))
    sigma = tuple(max(s / 8.0, 0.5) for s in (h, w))
    return kornia.filters.gaussian_blur2d(x, ks, sigma, border_type="reflect")


def fill(x: Tensor, mask: Tensor, mode: FillMode = "mean", *,
         generator: torch.Generator | None = None) -> Tensor:
    """Replace the pixels where ``mask`` is True.

    Args:
        x: float ``[B, C, H, W]`` normalised.
        mask: bool ``[B, 1, H, W]`` (or broadcastable): True where to fill.
        mode: ``"mean"`` (0, the mean colour), ``"blur"`` (the blurred image), ``"noise"``
            (standard normal).
        generator: ``"noise"`` only: source of randomness; ``None``: torch's global generator.

    Returns:
        ``[B, C, H, W]``, same dtype and device as ``x``.
    """
    if mode == "mean":
        filler = torch.zeros((), dtype=x.dtype, device=x.device)
    elif mode == "blur":
        filler = _blur(x)
    elif mode == "noise":
        filler = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    else:
        raise ValueError(f"unknown fill mode {mode!r}; allowed: {', '.join(FILL_MODES)}")
    return torch.where(mask, filler, x)


_fill = fill  # the occlusion functions below take a ``fill`` mode argument that shadows it


def nonsalient_occlusion(x: Tensor, saliency: Tensor, keep_fraction: float,
                         fill: FillMode = "mean", *,
                         generator: torch.Generator | None = None) -> Tensor:
    """Keep the top ``keep_fraction`` most salient pixels, fill the rest (trained with the label).

    Args:
        x: float ``[B, C, H, W]`` normalised.
        saliency: ``[B, 1, H, W]``.
        keep_fraction: in ``[0, 1]``.
        fill: fill mode, see :func:`fill`.
        generator: for ``"noise"``.

    Returns:
        ``[B, C, H, W]``.
    """
    keep = top_fraction_mask(saliency, keep_fraction)
    return _fill(x, ~keep, fill, generator=generator)


def salient_occlusion(x: Tensor, saliency: Tensor, occlude_fraction: float,
                      fill: FillMode = "mean", *,
                      generator: torch.Generator | None = None) -> Tensor:
    """Fill the top ``occlude_fraction`` most salient pixels (trained toward a soft target).

    Args:
        x: float ``[B, C, H, W]`` normalised.
        saliency: ``[B, 1, H, W]``.
        occlude_fraction: in ``[0, 1]``.
        fill: fill mode, see :func:`fill`.
        generator: for ``"noise"``.

    Returns:
        ``[B, C, H, W]``.
    """
    return _fill(x, top_fraction_mask(saliency, occlude_fraction), fill, generator=generator)


def _mask_shape(x: Tensor) -> tuple[int, int, int, int]:
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got {tuple(x.shape)}")
    return (x.shape[0], 1, x.shape[2], x.shape[3])


def random_nonsalient_occlusion(x: Tensor, keep_fraction: float, fill: FillMode = "mean",
                                *, generator: torch.Generator | None = None) -> Tensor:
    """Baseline of :func:`nonsalient_occlusion`: keep the same area at random places.

    ``generator`` drives both the places and ``"noise"``; ``None``: torch's global generator.
    """
    keep = random_fraction_mask(_mask_shape(x), keep_fraction, generator=generator,
                                device=x.device)
    return _fill(x, ~keep, fill, generator=generator)


def random_salient_occlusion(x: Tensor, occlude_fraction: float, fill: FillMode = "mean",
                             *, generator: torch.Generator | None = None) -> Tensor:
    """Baseline of :func:`salient_occlusion`: fill the same area at random places.

    ``generator`` drives both the places and ``"noise"``; ``None``: torch's global generator.
    """
    occlude = random_fraction_mask(_mask_shape(x), occlude_fraction, generator=generator,
                                   device=x.device)
    return _fill(x, occlude, fill, generator=generator)


def soft_targets(labels: Tensor, num_classes: int, mode: Literal["uniform", "smooth"] = "uniform",
                 smoothing: float = 0.5) -> Tensor:
    """Lower-confidence targets for salient-occluded images.

    Args:
        labels: int64 ``[B]``.
        num_classes: ``C``.
        mode: ``"uniform"``: ``1 / C`` everywhere; ``"smooth"``: label smoothing as in
            ``torch.nn.CrossEntropyLoss(label_smoothing=smoothing)``,
            ``(1 - smoothing) * one_hot + smoothing / C``.
        smoothing: ``"smooth"`` only, in ``[0, 1]``.

    Returns:
        float32 ``[B, C]`` rows summing to 1, on ``labels.device``; usable as the probability
        target of ``torch.nn.functional.cross_entropy``.
    """
    if mode == "uniform":
        return torch.full((labels.shape[0], num_classes), 1.0 / num_classes,
                          dtype=torch.float32, device=labels.device)
    if mode == "smooth":
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
        one_hot = torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float32)
        return one_hot * (1.0 - smoothing) + smoothing / num_classes
    raise ValueError(f"unknown soft target mode {mode!r}; allowed: uniform, smooth")
