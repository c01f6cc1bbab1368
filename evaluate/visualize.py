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

from extune.files import atomic_writer

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
    """Lay the rows out as one mosaic image on one matplotlib axes, with the labels as text,
    and save the PNG.

    One image and a few text artists instead of an axes per tile: a search trial draws its
    grid every epoch, and 32 axes cost 0.62 s a grid of 8 x 4 tiles on a CPU (this: 0.10 s).
    """
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure  # no pyplot: no global figure state
    from matplotlib.patches import Rectangle

    batches = list(rows.values())
    n_rows, n_cols = len(batches), batches[0].shape[0]
    h, w = batches[0].shape[-2:]
    inch = _TILE / w  # inches per pixel of the images
    caption = max((len(line) for t in titles or () for line in t.split("\n")), default=0)
    gap_x = max(_GAP, 0.056 * caption + 0.1 - _TILE)  # 7 pt captions must not run together
    gx, gy = max(1, round(gap_x / inch)), max(1, round(_GAP / inch))  # gaps in pixels
    mosaic = torch.ones(n_rows * (h + gy) - gy, n_cols * (w + gx) - gx, 3)
    for r, batch in enumerate(batches):
        for c in range(n_cols):
            y, x = r * (h + gy), c * (w + gx)
            mosaic[y:y + h, x:x + w] = batch[c].permute(1, 2, 0)
    step_x, step_y = (w + gx) * inch, (h + gy) * inch  # inches from one tile to the next
    width, height = mosaic.shape[1] * inch, mosaic.shape[0] * inch
    label_lines = [line for label in rows for line in label.split("\n")]
    left = 0.2 + 0.065 * max(len(line) for line in label_lines)  # 8 pt text, right-aligned
    title_lines = max((t.count("\n") + 1 for t in titles or ()), default=0)
    top = 0.1 + 0.13 * title_lines + (0.3 if heading else 0.0)
    fig_w, fig_h = left + width + max(0.15, (gap_x + 0.1) / 2), top + height + 0.1
    fig = Figure(figsize=(fig_w, fig_h), dpi=110)
    ax = fig.add_axes((left / fig_w, 0.1 / fig_h, width / fig_w, height / fig_h))
    ax.imshow(mosaic.numpy(), extent=(0, width, height, 0), interpolation="nearest")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    ax.add_collection(PatchCollection(
        [Rectangle((c * step_x, r * step_y), w * inch, h * inch)
         for r in range(n_rows) for c in range(n_cols)],
        facecolor="none", edgecolor="black", linewidth=0.6, clip_on=False))
    for r, label in enumerate(rows):
        ax.text(-0.08, r * step_y + h * inch / 2, label, fontsize=8, ha="right",
                va="center", multialignment="center")
    for c, title in enumerate(titles or ()):
        color = "black" if correct is None else ("green" if correct[c] else "red")
        ax.text(c * step_x + w * inch / 2, -0.05, title, fontsize=7, color=color, ha="center",
                va="bottom", multialignment="center")
    if heading:
        fig.suptitle(heading, fontsize=9, y=1 - 0.08 / fig_h, va="top")
    with atomic_writer(path) as f:  # whole or not at all (a full disk leaves no empty file)
        fig.savefig(f, format=path.suffix.lstrip(".").lower() or "png")
    return path


_TILE, _GAP = 1.0, 0.15
"""Inches per image in the grid, and between images."""
