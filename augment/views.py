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

__all__ = ["SupConViews", "standard_view", "to_unit", "normalize", "denormalize"]

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
            K.ColorJitter(*jitter, p=jitter_p),
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
