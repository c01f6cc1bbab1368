"""``tiny-imagenet``: the standard ``tiny-imagenet-200`` folder, parsed here with PIL.

torchvision has no Tiny ImageNet data set, hence this parser. Layout::

    tiny-imagenet-200/wnids.txt                      one wnid per line: the classes
    tiny-imagenet-200/words.txt                      optional: "wnid<TAB>name, synonym, ..."
    tiny-imagenet-200/train/<wnid>/images/*.JPEG
    tiny-imagenet-200/train/<wnid>/<wnid>_boxes.txt  optional: "file x0 y0 x1 y1"
    tiny-imagenet-200/val/images/*.JPEG
    tiny-imagenet-200/val/val_annotations.txt        "file wnid x0 y0 x1 y1"

The official validation set (labelled) becomes our ``test`` split, with its boxes as masks;
our ``val`` split is taken from train like for every data set. Train boxes become masks when
every training image has one. Folders not listed in ``wnids.txt`` are ignored. ``data.root``
may name the ``tiny-imagenet-200`` folder or its parent.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from extune.errors import DataError
from extune.train.config import DataConfig
from extune.train.datasets._common import decode_files, image_files
from extune.train.datasets.base import DecodedData, ImageSet, register_dataset

__all__: list[str] = []

_FOLDER = "tiny-imagenet-200"


def _root(cfg: DataConfig) -> Path:
    root = Path(cfg.root).expanduser()
    for candidate in (root, root / _FOLDER):
        if (candidate / "wnids.txt").is_file():
            return candidate.resolve()
    raise DataError(f"tiny-imagenet: no wnids.txt in {root} or {root / _FOLDER}; unzip "
                    f"tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) "
                    f"there or set data.root to the folder that holds {_FOLDER}/")


@register_dataset("tiny-imagenet")  # the cache key: the resolved root (the default)
def _load(cfg: DataConfig) -> DecodedData:
    root = _root(cfg)
    wnids = sorted(set((root / "wnids.txt").read_text().split()))
    if not wnids:
        raise DataError(f"tiny-imagenet: {root / 'wnids.txt'} lists no classes")
    index = {w: i for i, w in enumerate(wnids)}
    return DecodedData(_train(root, wnids, cfg.image_size), _test(root, index, cfg.image_size),
                       _class_names(root, wnids))


def _train(root: Path, wnids: list[str], size: int) -> ImageSet:
    paths: list[Path] = []
    labels: list[int] = []
    boxes: list[list[float] | None] = []
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise DataError(f"tiny-imagenet: missing {folder} (class {wnid} of wnids.txt); "
                            "re-extract the archive")
        files = image_files(folder)
        known = _read_boxes(root / "train" / wnid / f"{wnid}_boxes.txt")
        paths += files
        labels += [label] * len(files)
        boxes += [known.get(f.name) for f in files]
    images, sizes = decode_files(paths, size)
    masks = None
    if paths and all(b is not None for b in boxes):
        masks = _box_masks(torch.tensor(boxes), sizes, size)
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64), masks)


def _test(root: Path, index: dict[str, int], size: int) -> ImageSet | None:
    notes = root / "val" / "val_annotations.txt"
    if not notes.is_file():
        return None
    paths, labels, boxes = [], [], []
    for line in notes.read_text().splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[1] not in index:
            continue  # classes not in wnids.txt are ignored
        paths.append(root / "val" / "images" / parts[0])
        labels.append(index[parts[1]])
        boxes.append([float(x) for x in parts[2:6]] if len(parts) >= 6 else None)
    if not paths:
        return None
    images, sizes = decode_files(paths, size)
    masks = None
    if all(b is not None for b in boxes):
        masks = _box_masks(torch.tensor(boxes), sizes, size)
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64), masks)


def _read_boxes(path: Path) -> dict[str, list[float]]:
    """``file -> [x0, y0, x1, y1]`` from a ``*_boxes.txt`` file (empty when missing)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5:
            out[parts[0]] = [float(x) for x in parts[1:5]]
    return out


def _box_masks(boxes: Tensor, sizes: Tensor, size: int) -> Tensor:
    """Rasterise boxes given in original pixels (inclusive corners) at ``size``.

    Args:
        boxes: float ``[N, 4]`` x0, y0, x1, y1 in the original image's pixels.
        sizes: int64 ``[N, 2]`` original (w, h).
        size: output side.

    Returns:
        bool ``[N, 1, size, size]``: output pixels whose centre falls in the box.
    """
    centre = (torch.arange(size, dtype=torch.float64) + 0.5) / size  # [S] in [0, 1]
    xs = centre[None] * sizes[:, :1].double()  # [N, S] in original pixels
    ys = centre[None] * sizes[:, 1:].double()
    b = boxes.double()
    in_x = (xs >= b[:, :1]) & (xs < b[:, 2:3] + 1)
    in_y = (ys >= b[:, 1:2]) & (ys < b[:, 3:4] + 1)
    return (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)


def _class_names(root: Path, wnids: list[str]) -> list[str]:
    """First name of each wnid in ``words.txt`` (the wnid where absent or ambiguous)."""
    words = {}
    path = root / "words.txt"
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]
    counts = Counter(names)
    return [n if counts[n] == 1 else f"{n} ({w})" for n, w in zip(names, wnids, strict=True)]
