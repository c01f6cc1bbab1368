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

__all__ = ["saliency_grid", "overlay", "cascade_figure"]


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
          correct: Sequence[bool | None] | None, heading: str | None,
          heading_color: str = "black", wrap_heading: bool = False) -> Path:
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
    fig_w = left + width + max(0.15, (gap_x + 0.1) / 2)
    first, rest = _heading_lines(heading, fig_w if wrap_heading else None)
    top = 0.1 + 0.13 * title_lines + 0.15 * (len(first) + len(rest)) + (0.15 if heading else 0.0)
    fig_h = top + height + 0.1
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
        color = "black" if correct is None or correct[c] is None else (
            "green" if correct[c] else "red")
        ax.text(c * step_x + w * inch / 2, -0.05, title, fontsize=7, color=color, ha="center",
                va="bottom", multialignment="center")
    if first:  # the heading's first line in heading_color (bold unless black), the rest black
        fig.suptitle("\n".join(first), fontsize=9, y=1 - 0.08 / fig_h, va="top",
                     color=heading_color,
                     fontweight="normal" if heading_color == "black" else "bold")
    if rest:
        fig.text(0.5, 1 - (0.08 + 0.18 * len(first)) / fig_h, "\n".join(rest), fontsize=8,
                 ha="center", va="top", multialignment="center")
    with atomic_writer(path) as f:  # whole or not at all (a full disk leaves no empty file)
        fig.savefig(f, format=path.suffix.lstrip(".").lower() or "png")
    return path


_TILE, _GAP = 1.0, 0.15
"""Inches per image in the grid, and between images."""


def _heading_lines(heading: str | None, width: float | None) -> tuple[list[str], list[str]]:
    """The heading's first line and its other lines, each cut to fit ``width`` inches (9 pt
    bold and 8 pt text; ``None``: as given)."""
    import textwrap

    if not heading:
        return [], []
    first, *rest = heading.split("\n")
    if width is None:
        return [first], rest
    cut_first = textwrap.wrap(first, max(20, int(width / 0.08))) or [first]
    cut_rest = [part for line in rest for part in textwrap.wrap(line, max(20, int(width / 0.062)))]
    return cut_first, cut_rest


def cascade_figure(images: Tensor, original: Tensor, maps: Tensor, layers: Sequence[str],
                   similarity: Sequence[float], path: str | Path, *, threshold: float,
                   passed: bool, row_labels: Sequence[str] | None = None,
                   heading: str | None = None, colormap: str = "jet") -> Path:
    """The randomisation test's cascade as a PNG a reader takes in at a glance.

    One row per image; columns: the image, its map, then its map after each randomised layer,
    top down (row ``l`` of ``maps`` after re-initialising ``layers[:l + 1]``). Each map column
    is titled with its layer and the mean rank correlation with the original map over every
    audited image (green below ``threshold``: the map changed; red at or above it); the
    figure's title gives the verdict, green (passed) or red (failed).

    Args:
        images: uint8 ``[n, 3, H, W]`` (or float in [0, 1]).
        original: The maps of the trained model ``[n, 1, H, W]`` in [0, 1].
        maps: ``[L, n, 1, H, W]`` in [0, 1] (:func:`extune.evaluate.audit.cascade_maps`).
        layers: ``L`` layer names, top first.
        similarity: ``L`` mean rank correlations (the audit's cascade, averaged over images).
        path: PNG file to write.
        threshold: The randomisation test's threshold.
        passed: The verdict.
        row_labels: One label per image (class, prediction).
        heading: A second title line (explainer, layer, images, model).
        colormap: A matplotlib colormap name.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    n = images.shape[0]
    if original.shape != (n, 1, *images.shape[-2:]) or maps.shape[1:] != original.shape \
            or len(maps) != len(layers) or len(layers) != len(similarity):
        raise ValueError(f"expected images [n,3,H,W], original [n,1,H,W], maps [L,n,1,H,W], "
                         f"L layers and similarities, got {tuple(images.shape)}, "
                         f"{tuple(original.shape)}, {tuple(maps.shape)}, {len(layers)}, "
                         f"{len(similarity)}")
    columns = [_unit(images), _heat(original.cpu(), colormap),
               *(_heat(m.cpu(), colormap) for m in maps)]  # each [n, 3, H, W]
    labels = list(row_labels) if row_labels is not None else [f"image {i + 1}" for i in range(n)]
    rows = {label: torch.stack([c[i] for c in columns]) for i, label in
            enumerate(_unique(labels))}
    titles = ["image", "trained\nmodel's map", *(f"{_wrap(name)}\nρ̄ {rho:.2f}"
                                                for name, rho in zip(layers, similarity,
                                                                     strict=True))]
    below = [None, None, *(rho < threshold for rho in similarity)]
    mean = similarity[-1] if len(similarity) else float("nan")
    verdict = (f"randomisation test {'PASSED' if passed else 'FAILED'}: mean similarity after "
               f"randomising every layer {mean:.2f} {'<' if passed else '>='} {threshold:.3f}")
    legend = ("columns: the map after re-initialising the layers from the top down to the one "
              f"named\nρ̄: mean rank correlation with the trained model's map (green below "
              f"{threshold:.3f}: the map changed)")
    title = "\n".join(line for line in (verdict, heading, legend) if line)
    return _draw(rows, Path(path), titles=titles, correct=below, heading=title,
                 heading_color="green" if passed else "red", wrap_heading=True)


def _wrap(name: str, width: int = 14) -> str:
    """A layer name in lines of about ``width`` characters, cut at its dots (``encoder.`` of
    every backbone layer left out)."""
    parts = name.removeprefix("encoder.").split(".")
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 1 + len(part) <= width:
            lines[-1] += "." + part
        else:
            lines.append("." + part)
    return "\n".join(lines)


def _unique(labels: Sequence[str]) -> list[str]:
    """Row labels made unique (a dict keys the rows): repeats get `` (2)``, `` (3)``..."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out
