"""A labelled PNG grid: images, their saliency heat maps and the views a method trains on.

Drawn with matplotlib (not ``torchvision.utils.make_grid``) because a grid a user reads needs
words: which row is the image, the saliency, the masked or occluded view; which class each
column is and what the model predicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["saliency_grid", "overlay"]


def _heat(saliency: Tensor, colormap: str) -> Tensor:
    """``[N,1,H,W]`` in [0, 1] -> RGB ``[N,3,H,W]`` in [0, 1] through a matplotlib colormap."""
    import matplotlib  # only here: importing extune.evaluate stays light

    lut = torch.as_tensor(matplotlib.colormaps[colormap](torch.linspace(0, 1, 256).numpy())[:, :3],
                          dtype=torch.float32, device=saliency.device)  # [256, 3]
    idx = (saliency.float().clamp(0, 1) * 255).round().long().squeeze(1)  # [N, H, W]
    return lut[idx].permute(0, 3, 1, 2)


def _unit(images: Tensor) -> Tensor:
    """uint8 or float images ``[N,3,H,W]`` -> float in [0, 1] on the CPU."""
    img = images.detach().cpu()
    return img.float() / 255.0 if img.dtype == torch.uint8 else img.float().clamp(0, 1)


def overlay(images: Tensor, saliency: Tensor, *, alpha: float = 0.5,
            colormap: str = "jet") -> Tensor:
    """Heat map over the images: ``(1 - alpha) * image + alpha * heat``.

    Args:
        images: ``uint8 [N, 3, H, W]`` (or float in [0, 1]).
        saliency: ``[N, 1, H, W]`` in [0, 1].

    Returns:
        float ``[N, 3, H, W]`` in [0, 1] on the CPU.
    """
    return ((1 - alpha) * _unit(images) + alpha * _heat(saliency.detach().cpu(), colormap)
            ).clamp(0, 1)


def saliency_grid(images: Tensor, saliency: Tensor,
                  views: Mapping[str, Tensor] | None, path: str | Path | None, *,
                  titles: Sequence[str] | None = None, correct: Sequence[bool] | None = None,
                  heading: str | None = None, saliency_label: str = "saliency",
                  alpha: float = 0.5, colormap: str = "jet") -> Path | None:
    """Write a labelled PNG grid, one column per image.

    Rows: the image, the saliency overlaid, then one row per entry of ``views`` (e.g. ExCon's
    masked view, EDDA's occlusions), each with its name on the left.

    Args:
        images: ``uint8 [N, 3, H, W]`` (or float in [0, 1]).
        saliency: ``[N, 1, H, W]`` in [0, 1].
        views: row label -> float ``[N, 3, H, W]`` in [0, 1] (pixel space); ``None`` or empty:
            two rows only.
        path: PNG file to write (parent folders are created); ``None`` writes nothing.
        titles: one caption per column (e.g. ``"cat\\npred dog 0.71"``).
        correct: per column, whether the prediction is right (caption green, else red).
        heading: the figure's title (method, explainer, epoch).
        saliency_label: the saliency row's label (e.g. ``"Grad-CAM (true class)"``).
        alpha: weight of the heat map in the overlay.
        colormap: a matplotlib colormap name.

    Returns:
        ``path`` as a :class:`~pathlib.Path`, or ``None`` when nothing was written.

    Raises:
        ValueError: no images, or shapes that do not match.
    """
    views = dict(views or {})
    if images.ndim != 4 or saliency.shape != (images.shape[0], 1, *images.shape[-2:]):
        raise ValueError(f"expected images [N,3,H,W] and saliency [N,1,H,W], got "
                         f"{tuple(images.shape)} and {tuple(saliency.shape)}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("saliency_grid needs at least one image")
    for label, view in views.items():
        if view.shape != images.shape:
            raise ValueError(f"view '{label}' must be [N,3,H,W] like images, "
                             f"got {tuple(view.shape)}")
    rows = {"image": _unit(images),
            saliency_label: overlay(images, saliency, alpha=alpha, colormap=colormap),
            **{label: _unit(view) for label, view in views.items()}}
    if path is None:
        return None
    return _draw(rows, Path(path), titles=titles, correct=correct, heading=heading)


def _draw(rows: dict[str, Tensor], path: Path, *, titles: Sequence[str] | None,
          correct: Sequence[bool] | None, heading: str | None) -> Path:
    """Lay the rows out with matplotlib and save the PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = next(iter(rows.values())).shape[0]
    tile = 1.15  # inches per image
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 + tile * n, 0.7 + tile * len(rows)),
                             squeeze=False, dpi=110)
    try:
        for r, (label, batch) in enumerate(rows.items()):
            for c in range(n):
                ax = axes[r][c]
                ax.imshow(batch[c].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
                if r == 0 and titles is not None:
                    color = "black" if correct is None else ("green" if correct[c] else "red")
                    ax.set_title(titles[c], fontsize=7, color=color)
        if heading:
            fig.suptitle(heading, fontsize=9)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
