"""``synthetic``: procedural objects defined by a shape AND a colour, among distractors.

Class ``k`` is shape ``k % 8`` in colour ``(k % 8 + k // 8) % 8`` (distinct for up to 56
classes), e.g. ``red_circle``. Each image holds ``data.distractors`` other objects whose
(shape, colour) pair belongs to no class, drawn first, and the class object on top, on a
textured background (low-frequency colour noise + stripes). Neither the shape nor the colour
alone tells the class: a model has to find the object. Shapes have equal areas and the layout
keeps objects mostly apart, so global colour statistics do poorly (a classifier on 512-bin
colour histograms reaches ~43% on 10 classes, where a small CNN reaches ~88% in 3 epochs).
The ground-truth mask is the object's (visible) pixels. Classes are balanced.

Rendering is vectorised over images (chunks of ~4M pixels at 2x) with object edges
supersampled at 2x and box-downsampled (antialiased); the output is a deterministic function
of ``data.synthetic_seed`` and the other ``data`` fields of the cache key.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from extune.threads import one_torch_thread
from extune.train.config import DataConfig
from extune.train.datasets.base import DecodedData, ImageSet, register_dataset

__all__ = ["SHAPES", "COLOURS", "synthetic_class_pairs", "render_synthetic"]

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "bar", "plus")
COLOURS = {  # name -> RGB in [0, 1]; distinct hues at full saturation (backgrounds are muted)
    "red": (0.92, 0.10, 0.10),
    "green": (0.10, 0.72, 0.12),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.96, 0.90, 0.08),
    "cyan": (0.05, 0.85, 0.92),
    "magenta": (0.85, 0.10, 0.85),
    "orange": (1.00, 0.50, 0.00),
    "white": (0.98, 0.98, 0.98),
}
_CHUNK_PIXELS = 2**22  # pixels (at 2x) rendered per vectorised step; the output depends on it
_RADIUS = (0.18, 0.32)  # object radius, as a fraction of the image side
_DISTRACTOR_SCALE = 1.06  # distractors lose ~10% of their pixels under the object on top


def synthetic_class_pairs(num_classes: int) -> list[tuple[int, int]]:
    """``(shape index, colour index)`` of each synthetic class (distinct up to 56 classes).

    Class ``k`` is shape ``k % 8`` in colour ``(k % 8 + k // 8) % 8``; colour offset 7 is never
    used by a class, so every shape also appears in colours that belong to no class of it.
    """
    return [(k % 8, (k % 8 + k // 8) % 8) for k in range(num_classes)]


def _key(cfg: DataConfig) -> dict[str, Any]:
    return {"num_classes": cfg.num_classes, "train_size": cfg.train_size,
            "test_size": cfg.test_size, "seed": cfg.synthetic_seed,
            "distractors": cfg.distractors}


@register_dataset("synthetic", key=_key)
def _load(cfg: DataConfig) -> DecodedData:
    """Procedural shapes-and-colours objects on textured backgrounds (no files, deterministic).

    Each class is the conjunction of a shape and a colour; ``cfg.distractors`` other objects
    per image have (shape, colour) pairs of no class, so neither shape nor colour alone
    classifies: the model has to find the object. Masks are the object's visible pixels.
    """
    colours = list(COLOURS)
    classes = [f"{colours[c]}_{SHAPES[s]}" for s, c in synthetic_class_pairs(cfg.num_classes)]
    splits = []
    with one_torch_thread():  # many small memory-bound ops
        for split, n in ((0, cfg.train_size), (1, cfg.test_size)):
            gen = torch.Generator().manual_seed(2 * cfg.synthetic_seed + split)
            labels = (torch.arange(n) % cfg.num_classes)[torch.randperm(n, generator=gen)]
            images, masks = render_synthetic(labels, cfg.num_classes, cfg.image_size,
                                             cfg.distractors, gen)
            splits.append(ImageSet(images, labels, masks))
    return DecodedData(splits[0], splits[1], classes)


def render_synthetic(labels: Tensor, num_classes: int, size: int, distractors: int,
                     gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Render synthetic images of the given classes.

    Object edges are antialiased by supersampling: each object's coverage is computed at 2x
    and box-downsampled, and its (smooth) colour is blended in by that coverage, which equals
    rendering everything at 2x and downsampling, at a quarter of the cost.

    Args:
        labels: int64 ``[N]`` class indices in ``[0, num_classes)``.
        num_classes: number of classes (defines which (shape, colour) pairs are classes).
        size: output side in pixels.
        distractors: non-class objects drawn under the class object in each image.
        gen: CPU generator; the output is a deterministic function of its state.

    Returns:
        images uint8 ``[N, 3, size, size]`` and masks bool ``[N, 1, size, size]`` (the class
        object's pixels: coverage >= 0.5).
    """
    pairs = torch.tensor(synthetic_class_pairs(num_classes))
    is_class = torch.zeros(8, 8, dtype=torch.bool)
    is_class[pairs[:, 0], pairs[:, 1]] = True
    free = (~is_class).nonzero()  # [M, 2] (shape, colour) pairs of no class
    palette = torch.tensor(list(COLOURS.values()))
    images = torch.empty((labels.numel(), 3, size, size), dtype=torch.uint8)
    masks = torch.empty((labels.numel(), 1, size, size), dtype=torch.bool)
    chunk = max(1, _CHUNK_PIXELS // (4 * size * size))  # few large ops; bounded memory
    for i in range(0, labels.numel(), chunk):
        lab = labels[i:i + chunk]
        b = lab.numel()
        img = _background(b, size, gen)
        place = _layout(b, 1 + distractors, gen)  # [3, B, 1 + distractors]; 0: the object
        for j in range(1, 1 + distractors):
            pick = free[torch.randint(len(free), (b,), generator=gen)]
            colour, alpha = _object(pick[:, 0], palette[pick[:, 1]], place[:, :, j], size, gen)
            img = torch.lerp(img, colour, alpha)
        colour, alpha = _object(pairs[lab, 0], palette[pairs[lab, 1]], place[:, :, 0], size,
                                gen)
        img = torch.lerp(img, colour, alpha)  # on top: its coverage is the visible object
        img += 0.06 * (torch.rand(b, 3, size, size, generator=gen) - 0.5)  # pixel noise
        images[i:i + b] = (img.clamp_(0, 1) * 255).round_().to(torch.uint8)
        masks[i:i + b] = alpha >= 0.5
    return images, masks


def _coords(r: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in [0, 1]: x ``[1, 1, 1, r]`` and y ``[1, 1, r, 1]``."""
    c = (torch.arange(r) + 0.5) / r
    return c.view(1, 1, 1, r), c.view(1, 1, r, 1)


def _lowfreq(b: int, c: int, r: int, cells: int, gen: torch.Generator) -> Tensor:
    """Smooth noise in [-0.5, 0.5]: ``[b, c, r, r]``, a bilinearly upsampled coarse grid."""
    coarse = torch.rand(b, c, cells, cells, generator=gen) - 0.5
    # Bilinear upsampling is separable: two small matmuls are much faster than interpolate.
    up = F.interpolate(torch.eye(cells).view(cells, 1, cells), size=r, mode="linear",
                       align_corners=False).view(cells, r)  # [cells, r]
    return up.T @ coarse @ up


def _background(b: int, s: int, gen: torch.Generator) -> Tensor:
    """Muted random colour + low-frequency colour noise + stripes: ``[b, 3, s, s]``."""
    x, y = _coords(s)
    base = 0.2 + 0.5 * torch.rand(b, 3, 1, 1, generator=gen)
    base = 0.5 * base + 0.5 * base.mean(1, keepdim=True)  # desaturate
    angle = torch.rand(b, 1, 1, 1, generator=gen) * math.pi
    freq = 2 + 5 * torch.rand(b, 1, 1, 1, generator=gen)
    phase = torch.rand(b, 1, 1, 1, generator=gen) * 2 * math.pi
    k = 2 * math.pi * freq
    wave = torch.sin(x * (k * angle.cos()) + (y * (k * angle.sin()) + phase))
    stripe_colour = 0.2 * (torch.rand(b, 3, 1, 1, generator=gen) - 0.5)
    return base + 0.4 * _lowfreq(b, 3, s, 4, gen) + wave * stripe_colour


def _layout(b: int, n: int, gen: torch.Generator, tries: int = 16) -> Tensor:
    """Random centres and radii of ``n`` objects per image, kept mostly apart.

    Object 0 is placed uniformly; each later one takes the first of ``tries`` random
    candidates that overlaps no earlier object much (else the least overlapping), so that
    the object on top is not systematically the one with the most visible pixels.

    Returns:
        float ``[3, b, n]``: centre x, centre y and radius, in units of the image side.
    """
    lo, hi = _RADIUS
    rad = lo + (hi - lo) * torch.rand(b, n, generator=gen)  # not resampled: sizes stay uniform
    rad[:, 1:] *= _DISTRACTOR_SCALE
    cen = rad[..., None, None] + (1 - 2 * rad[..., None, None]) * torch.rand(b, n, tries, 2,
                                                                             generator=gen)
    out = torch.empty(3, b, n)
    out[2] = rad
    rows = torch.arange(b)
    for j in range(n):
        if j == 0:
            pick = torch.zeros(b, dtype=torch.long)
        else:  # gap: centre distance / sum of radii to the nearest placed object
            dist = (cen[:, j, :, None, :] - out[:2, :, None, :j].permute(1, 2, 3, 0)).norm(dim=-1)
            gap = (dist / (rad[:, j, None, None] + rad[:, None, :j])).amin(-1)  # [b, tries]
            pick = torch.where(gap >= 1.0, 2.0, gap).argmax(1)  # first fit, else the best
        out[:2, :, j] = cen[rows, j, pick].T
    return out


def _object(shape: Tensor, colour: Tensor, place: Tensor, s: int,
            gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """One object per image at a given place and scale, with a small random rotation.

    Args:
        shape: int64 ``[B]`` indices into :data:`SHAPES`.
        colour: float ``[B, 3]`` RGB.
        place: float ``[3, B]`` centre x, centre y, radius (fractions of the image side).
        s: image side.
        gen: generator.

    Returns:
        textured colour ``[B, 3, s, s]`` and coverage in [0, 1] ``[B, 1, s, s]`` (from a 2x
        supersampled mask).
    """
    b, r = shape.numel(), 2 * s
    x, y = _coords(r)
    cx, cy, rad = place.view(3, b, 1, 1, 1).unbind(0)
    theta = (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.6  # +-17 degrees
    cos, sin = theta.cos() / rad, theta.sin() / rad
    u = (x - cx) * cos + (y - cy) * sin  # separable: one full-size add each
    v = (y - cy) * cos - (x - cx) * sin
    mask = torch.empty((b, 1, r, r), dtype=torch.bool)
    for k in range(len(SHAPES)):  # each shape computed for its own images only
        sel = (shape == k).nonzero()[:, 0]
        if sel.numel():
            mask[sel] = _shape_mask(k, u[sel], v[sel])
    alpha = F.avg_pool2d(mask.float(), 2)
    bright = 0.85 + 0.25 * torch.rand(b, 1, 1, 1, generator=gen)
    texture = 0.25 * _lowfreq(b, 1, s, 4, gen)  # shading; pixel noise comes after compositing
    return colour.view(b, 3, 1, 1) * bright + texture, alpha


def _shape_mask(k: int, u: Tensor, v: Tensor) -> Tensor:
    """Mask of ``SHAPES[k]`` in local coordinates: ``u``, ``v`` ``[B, 1, R, R]``.

    Every shape has an area of about 2.2 (radius units squared), so that the number of pixels
    of a colour says nothing about the shape it belongs to.
    """
    au, av = u.abs(), v.abs()
    if k in (0, 5):  # circle, ring
        d = torch.sqrt(u * u + v * v)
        return (d <= 0.84) if k == 0 else (d <= 1.0) & (d >= 0.55)
    if k == 1:  # square
        return torch.maximum(au, av) <= 0.74
    if k == 2:  # triangle, apex up
        return (v <= 0.82) & (au <= (v + 1.12) * 0.58)
    if k == 3:  # diamond
        return au + av <= 1.05
    if k == 4:  # cross (an X)
        return ((torch.minimum((u - v).abs(), (u + v).abs()) <= 0.46)
                & (torch.maximum(au, av) <= 0.82))
    if k == 6:  # bar
        return (au <= 1.1) & (av <= 0.5)
    return ((au <= 0.33) & (av <= 1.0)) | ((av <= 0.33) & (au <= 1.0))  # plus
