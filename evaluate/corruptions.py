"""Generated image corruptions for calibration under distribution shift.

Every corruption acts on a float batch ``[B, 3, H, W]`` in [0, 1] pixel space, returns the
same shape clamped to [0, 1], and is batched on the input's device. Severities 1-5 follow
the CIFAR-10-C parameter tables of Hendrycks & Dietterich (2019):

==============  ===============================================  ==============================
corruption      operation                                         parameter by severity 1..5
==============  ===============================================  ==============================
gaussian_noise  ``x + N(0, s^2)`` i.i.d. per pixel and channel    s = 0.04, 0.06, 0.08, 0.09, 0.10
gaussian_blur   Gaussian filter (kornia), reflect border,         s = 0.4, 0.6, 0.7, 0.8, 1.0
                sigma = ``s * H / 32`` pixels, kernel
                ``2 * ceil(3 sigma) + 1``
contrast        ``(x - m) * c + m``, m = per-image channel mean   c = 0.75, 0.5, 0.4, 0.3, 0.15
brightness      HSV value ``v + b`` clipped to [0, 1]             b = 0.05, 0.1, 0.15, 0.2, 0.3
==============  ===============================================  ==============================

The blur sigma is given for 32 px images and scales with the image height so that a
severity means the same relative blur at every resolution. Noise is drawn from a
``torch.Generator`` so that a fixed seed gives the same corrupted set every evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["CORRUPTION_SEVERITIES", "list_corruptions", "corrupt", "make_corruption"]

CORRUPTION_SEVERITIES: dict[str, tuple[float, float, float, float, float]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
}
"""Parameter of each corruption at severities 1..5 (see the module docstring)."""


def list_corruptions() -> list[str]:
    """Names of the available corruptions."""
    return list(CORRUPTION_SEVERITIES)


def _gaussian_noise(x: Tensor, s: float, generator: torch.Generator | None) -> Tensor:
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + s * noise


def _gaussian_blur(x: Tensor, s: float, generator: torch.Generator | None) -> Tensor:
    from kornia.filters import gaussian_blur2d

    sigma = s * x.shape[-2] / 32.0
    size = 2 * math.ceil(3.0 * sigma) + 1
    return gaussian_blur2d(x, (size, size), (sigma, sigma), border_type="reflect")


def _contrast(x: Tensor, c: float, generator: torch.Generator | None) -> Tensor:
    m = x.mean(dim=(-2, -1), keepdim=True)
    return (x - m) * c + m


def _brightness(x: Tensor, b: float, generator: torch.Generator | None) -> Tensor:
    # HSV value shift v' = min(v + b, 1) with hue and saturation fixed, in closed form
    # (equal to kornia's rgb_to_hsv -> v + b -> hsv_to_rgb up to 1e-6, ~20x faster):
    # with v = max(r, g, b), rgb' = rgb * v' / v; a black pixel (v = 0) becomes grey v'.
    v = x.amax(dim=1, keepdim=True)
    shifted = (v + b).clamp(0.0, 1.0)
    return torch.where(v > 0, x * (shifted / v.clamp(min=1e-12)), shifted)


_OPS: dict[str, Callable[[Tensor, float, torch.Generator | None], Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
}


def corrupt(x: Tensor, name: str, severity: int, *,
            generator: torch.Generator | None = None) -> Tensor:
    """Apply one corruption at one severity.

    Args:
        x: Float images ``[B, 3, H, W]`` in [0, 1].
        name: One of :func:`list_corruptions`.
        severity: 1 (mild) .. 5 (strong).
        generator: Random generator on ``x.device`` (only ``gaussian_noise`` draws numbers);
            ``None`` uses torch's global generator.

    Returns:
        Corrupted float images ``[B, 3, H, W]`` in [0, 1], same device and dtype.

    Raises:
        ValueError: Unknown name or severity outside 1..5.
    """
    if name not in _OPS:
        raise ValueError(f"unknown corruption '{name}'; available: {', '.join(_OPS)}")
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"corruption severity must be in 1..5, got {severity}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(x.shape)}")
    param = CORRUPTION_SEVERITIES[name][int(severity) - 1]
    return _OPS[name](x.float(), param, generator).clamp_(0.0, 1.0)


def make_corruption(name: str, severity: int, *, seed: int = 0,
                    device: torch.device | str = "cpu") -> Callable[[Tensor], Tensor]:
    """A seeded corruption function ``[B,3,H,W] -> [B,3,H,W]`` for a sequence of batches.

    The returned function owns a generator on ``device`` seeded with ``seed``: evaluating the
    same images in the same batches gives the same corrupted images every time.
    """
    if name not in _OPS:
        raise ValueError(f"unknown corruption '{name}'; available: {', '.join(_OPS)}")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    def apply(x: Tensor) -> Tensor:
        return corrupt(x, name, severity, generator=generator)

    return apply
