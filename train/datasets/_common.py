"""Helpers shared by the file-based loaders: decoding with PIL, resizing, listing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from extune.errors import DataError, one_line

__all__ = ["one_line", "resize_uint8", "decode_file", "decode_files", "decode_file_set",
           "decode_readable", "image_files", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def resize_uint8(images: Tensor, size: int, chunk: int = 1024) -> Tensor:
    """Antialiased bilinear resize.

    Args:
        images: uint8 ``[N, 3, H, W]``.
        size: output side.
        chunk: images converted to float at a time.

    Returns:
        uint8 ``[N, 3, size, size]`` (``images`` itself when already that size).
    """
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8)
    for i in range(0, images.shape[0], chunk):
        x = F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        out[i:i + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def decode_files(paths: Sequence[Path], size: int) -> tuple[Tensor, Tensor]:
    """Decode image files with PIL (greyscale, palette, RGBA -> RGB), resized to ``size``.

    Files are decoded by a thread pool (PIL releases the GIL while decoding).

    Args:
        paths: image files.
        size: output side; images are resized (antialiased bilinear) without keeping the
            aspect ratio.

    Returns:
        images uint8 ``[N, 3, size, size]`` and the original sizes int64 ``[N, 2]`` (w, h).

    Raises:
        DataError: a file cannot be decoded (the message names the first one).
    """
    images, sizes, failed = _decode(paths, size)
    if failed:
        i = min(failed)
        raise DataError(f"cannot decode image {paths[i]} ({failed[i]}); remove or replace the "
                        "file")
    return images, sizes


def decode_readable(paths: Sequence[Path], size: int
                    ) -> tuple[Tensor, Tensor, dict[Path, str]]:
    """:func:`decode_files` that skips the files it cannot decode (empty, truncated, not an
    image) instead of raising.

    Returns:
        images uint8 ``[K, 3, size, size]`` of the readable files, their positions in
        ``paths`` int64 ``[K]``, and ``{unreadable file: reason}`` in ``paths`` order.
    """
    images, _, failed = _decode(paths, size)
    kept = torch.tensor([i for i in range(len(paths)) if i not in failed], dtype=torch.int64)
    return images[kept], kept, {paths[i]: failed[i] for i in sorted(failed)}


def _decode(paths: Sequence[Path], size: int) -> tuple[Tensor, Tensor, dict[int, str]]:
    """Decode every file; the ones that fail are left black and returned by position."""
    from PIL import Image, UnidentifiedImageError

    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    sizes = np.zeros((len(paths), 2), dtype=np.int64)
    failed: dict[int, str] = {}

    def work(start: int, stop: int) -> None:
        for i in range(start, stop):
            try:
                out[i], sizes[i] = decode_file(paths[i], size)
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError
                    ) as e:  # a bomb: more pixels than PIL's limit, refused before decoding
                failed[i] = one_line(e)

    step = 256
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(work, i, min(i + step, len(paths)))
                   for i in range(0, len(paths), step)]
        for f in futures:
            f.result()
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(sizes), failed


def decode_file_set(paths: Sequence[str], labels: Tensor, size: int, *, strict: bool
                    ) -> tuple[Tensor, Tensor, dict[Path, str]]:
    """Image files and their labels decoded: images uint8 ``[K, 3, size, size]``, the labels
    of the files kept int64 ``[K]``, and the unreadable files skipped (``strict``: none, a
    file that cannot be decoded raises :class:`DataError`)."""
    files = [Path(p) for p in paths]
    if strict:
        images, _ = decode_files(files, size)
        return images, labels, {}
    images, kept, skipped = decode_readable(files, size)
    return images, labels[kept], skipped


def decode_file(path: str | Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One image file as uint8 ``[size, size, 3]`` RGB (greyscale, palette, RGBA converted;
    resized antialiased bilinear without keeping the aspect ratio) and its original (w, h):
    the one decoding of every file-based path, in memory or per batch.

    Raises:
        OSError, PIL.UnidentifiedImageError, ValueError, PIL.Image.DecompressionBombError:
            the file cannot be decoded.
    """
    from PIL import Image

    with Image.open(path) as im:
        original = im.size
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale >= size
        rgb = im.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)  # antialiased
    return np.asarray(rgb), original


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (by extension, any case), sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
