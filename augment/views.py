"""Batched view transforms: the standard view and SupCon's random views, made on the images' device.

The data set lives on the training device as one uint8 tensor; views are made from a whole batch
at once, with a different random draw for every image (kornia), never per image on the CPU.

Spaces: ``uint8`` images in ``[0, 255]`` -> :func:`to_unit` -> float in ``[0, 1]`` ->
:func:`normalize` -> normalised (the data set's mean colour is 0). :func:`denormalize` goes back
to ``[0, 1]``. ``mean`` and ``std`` are per-channel statistics in ``[0, 1]`` space.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SupConViews", "standard_view", "to_unit", "normalize", "denormalize", "shift_hue"]

Stats = Sequence[float] | Tensor


def _stat(values: Stats, like: Tensor) -> Tensor:
    """Per-channel statistics as a ``[1, C, 1, 1]`` float tensor on ``like``'s device."""
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)


def to_unit(images: Tensor) -> Tensor:
    """uint8 images to float32 in ``[0, 1]``.

    Args:
        images: uint8 ``[B, C, H, W]`` (or any shape) in ``[0, 255]``.

    Returns:
        float32 tensor of the same shape, ``images / 255``.

    Raises:
        TypeError: if ``images`` is not uint8.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images in [0, 255], got dtype {images.dtype}")
    return images.to(torch.float32).div_(255.0)


def normalize(x: Tensor, mean: Stats, std: Stats) -> Tensor:
    """``(x - mean) / std`` per channel.

    Args:
        x: float ``[B, C, H, W]`` in ``[0, 1]``.
        mean: ``C`` channel means in ``[0, 1]`` space.
        std: ``C`` channel standard deviations in ``[0, 1]`` space.

    Returns:
        float ``[B, C, H, W]`` in normalised space (the mean colour is 0).
    """
    return (x - _stat(mean, x)) / _stat(std, x)


def denormalize(x: Tensor, mean: Stats, std: Stats) -> Tensor:
    """Inverse of :func:`normalize`: ``x * std + mean`` per channel (back to ``[0, 1]`` space)."""
    return x * _stat(std, x) + _stat(mean, x)


def standard_view(images: Tensor, mean: Stats, std: Stats, image_size: int | None = None) -> Tensor:
    """The deterministic view: resize (only when needed) and normalise.

    Args:
        images: uint8 ``[B, 3, H, W]``.
        mean: channel means in ``[0, 1]`` space.
        std: channel standard deviations in ``[0, 1]`` space.
        image_size: output side ``S``; ``None`` or equal to the stored size: no resize.
            Otherwise bilinear (antialiased when shrinking) to ``S x S``.

    Returns:
        float32 ``[B, 3, S, S]`` normalised, on ``images.device``.
    """
    x = to_unit(images)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        shrink = image_size < min(x.shape[-2:])
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                          align_corners=False, antialias=shrink)
    return normalize(x, mean, std)


def shift_hue(images: Tensor, turns: Tensor) -> Tensor:
    """Rotate each image's hue in HSV space, keeping saturation and value.

    The same result as ``kornia.enhance.adjust_hue(images, 2 * pi * turns)`` (to float32
    rounding), in a fraction of the time on a CPU: kornia goes RGB -> HSV -> RGB through a
    chain of ``torch.where`` selections over the six hue sectors, the larger part of a SupCon
    view's cost. This computes only the hue (one selection of three cases) and goes back with
    the closed form ``min + C * clamp(a * |h - c| + b, 0, 1)`` per channel (``C`` the chroma,
    ``h`` the hue in sixths of a turn), all three channels in one broadcast.

    Args:
        images: float ``[B, 3, H, W]`` RGB in ``[0, 1]``.
        turns: ``[B]`` hue shifts in turns (1 = a full circle).

    Returns:
        float ``[B, 3, H, W]`` in ``[0, 1]``.
    """
    r, g, b = images.unbind(dim=-3)
    value, least = images.amax(dim=-3), images.amin(dim=-3)
    chroma = value - least
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # The hue in sixths of a turn (HSV's sectors): (g - b) / C where red is the largest,
    # (b - r) / C + 2 where green is, (r - g) / C + 4 where blue is; then shifted.
    sector = torch.where(value == r, g - b,
                         torch.where(value == g, b - r + 2 * safe, r - g + 4 * safe))
    hue = torch.remainder(sector / safe + 6 * turns.to(images.dtype).view(-1, 1, 1), 6.0)
    # Each channel's share of the chroma as a function of the hue (R, G, B): a trapezoid.
    centre, slope, offset = (torch.tensor(v, dtype=images.dtype, device=images.device)
                             .view(3, 1, 1) for v in ((3.0, 2.0, 4.0), (1.0, -1.0, -1.0),
                                                      (-1.0, 2.0, 2.0)))
    share = ((hue.unsqueeze(-3) - centre).abs_().mul_(slope).add_(offset)).clamp_(0.0, 1.0)
    return share.mul_(chroma.unsqueeze(-3)).add_(least.unsqueeze(-3))


class _ColorJitter(K.ColorJitter):
    """kornia's ColorJitter (random order of the four adjustments, per-image factors) with
    :func:`shift_hue` as its hue step; ``tests/augment`` checks it against kornia's own."""

    def _adjust_hue_turns(self, input: Tensor, factor: Tensor) -> Tensor:
        return shift_hue(input, factor)


class SupConViews(nn.Module):
    """SupCon's random view (Khosla et al. 2020 / ExCon reference code), batched on the device.

    Per image, independently: RandomResizedCrop to ``image_size`` (area ``scale``, aspect ratio
    3/4..4/3, bilinear), horizontal flip with probability ``flip_p``, ColorJitter(``jitter``)
    with probability ``jitter_p``, grayscale with probability ``gray_p``, then normalisation.
    Randomness comes from torch's global generator: ``torch.manual_seed`` makes it reproducible.

    Args:
        image_size: output side ``S``.
        mean: channel means in ``[0, 1]`` space.
        std: channel standard deviations in ``[0, 1]`` space.
        scale: RandomResizedCrop area range, as a fraction of the image.
        flip_p: horizontal flip probability.
        jitter: ColorJitter (brightness, contrast, saturation, hue).
        jitter_p: probability of applying ColorJitter.
        gray_p: probability of converting to grayscale.

    Example:
        >>> views = SupConViews(32, mean=(0.5,) * 3, std=(0.25,) * 3)
        >>> views(torch.zeros(4, 3, 32, 32, dtype=torch.uint8)).shape
        torch.Size([4, 3, 32, 32])
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = (0.2, 1.0),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
    ) -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32), persistent=False)
        # "resample" crops every image with one batched warp; "slice" reads boxes back to Python.
        self.augment = nn.Sequential(
            K.RandomResizedCrop((self.image_size, self.image_size), scale=tuple(scale),
                                cropping_mode="resample"),
            K.RandomHorizontalFlip(p=flip_p),
            _ColorJitter(*jitter, p=jitter_p),
            K.RandomGrayscale(p=gray_p),
        )

    def forward(self, images: Tensor) -> Tensor:
        """Make one random view of every image.

        Args:
            images: uint8 ``[B, 3, H, W]`` on any device.

        Returns:
            float32 ``[B, 3, S, S]`` normalised, on ``images.device``.
        """
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = self.augment(to_unit(images)).clamp_(0.0, 1.0)
            return normalize(x, self.mean.to(x.device), self.std.to(x.device))

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}"
