"""A PNG grid of images, their saliency heat maps and (optionally) the masked images."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["saliency_grid"]


def _heat(saliency: Tensor, colormap: str) -> Tensor:
    """``[N,1,H,W]`` in [0, 1] -> RGB ``[N,3,H,W]`` in [0, 1] through a matplotlib colormap."""
    import matplotlib  # only here: importing extune.evaluate stays light

    lut = torch.as_tensor(matplotlib.colormaps[colormap](torch.linspace(0, 1, 256).numpy())[:, :3],
                          dtype=torch.float32, device=saliency.device)  # [256, 3]
    idx = (saliency.float().clamp(0, 1) * 255).round().long().squeeze(1)  # [N, H, W]
    return lut[idx].permute(0, 3, 1, 2)


def saliency_grid(images: Tensor, saliency: Tensor, masked: Tensor | None,
                  path: str | Path | None, *, alpha: float = 0.5, colormap: str = "jet",
                  min_size: int = 64) -> Tensor:
    """Write a PNG grid: row 1 the images, row 2 the saliency overlaid, row 3 the masked images.

    Args:
        images: ``uint8 [N, 3, H, W]`` (or float in [0, 1]).
        saliency: ``[N, 1, H, W]`` in [0, 1].
        masked: Optional float ``[N, 3, H, W]`` in [0, 1] (e.g. ExCon's masked view, shown in
            pixel space); ``None`` leaves the third row out.
        path: PNG file to write (parent folders are created); ``None`` writes nothing.
        alpha: Weight of the heat map in the overlay ``(1 - alpha) * image + alpha * heat``.
        colormap: A matplotlib colormap name.
        min_size: Tiles are upscaled (nearest) by an integer factor to at least this height.

    Returns:
        The grid as float ``[3, H', W']`` in [0, 1] on the CPU (e.g. for ``mlflow.log_image``).
    """
    from torchvision.utils import make_grid, save_image

    if images.ndim != 4 or saliency.shape != (images.shape[0], 1, *images.shape[-2:]):
        raise ValueError(f"expected images [N,3,H,W] and saliency [N,1,H,W], got "
                         f"{tuple(images.shape)} and {tuple(saliency.shape)}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("saliency_grid needs at least one image")
    img = images.detach().cpu()
    img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    heat = _heat(saliency.detach().cpu(), colormap)
    rows = [img, ((1 - alpha) * img + alpha * heat).clamp(0, 1)]
    if masked is not None:
        if masked.shape != images.shape:
            raise ValueError(f"masked must be [N,3,H,W] like images, got {tuple(masked.shape)}")
        rows.append(masked.detach().cpu().float().clamp(0, 1))
    tiles = torch.cat(rows)
    scale = max(1, math.ceil(min_size / images.shape[-2]))
    if scale > 1:
        tiles = F.interpolate(tiles, scale_factor=scale, mode="nearest")
    grid = make_grid(tiles, nrow=max(n, 1), padding=2, pad_value=1.0)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
    return grid
