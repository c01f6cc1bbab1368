"""``imagefolder``: any ``root/train/<class>/<image>`` tree, optional ``root/test/<class>/*``.

Classes are the sorted sub-folders of ``train`` (as in ``torchvision.datasets.ImageFolder``);
test folders are mapped to them by name, and test folders of unknown classes are skipped with
a warning. Images are decoded with PIL and resized to ``data.image_size``. The cache key
includes the modification times of the class folders, so adding or removing files decodes
the tree again.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from extune.errors import DataError
from extune.train.config import DataConfig
from extune.train.datasets._common import decode_files, image_files
from extune.train.datasets.base import DecodedData, ImageSet, register_dataset

__all__: list[str] = []


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _key(cfg: DataConfig) -> dict[str, Any]:
    root = Path(cfg.root).expanduser().resolve()
    stamps = {}
    for split in ("train", "test"):
        if (root / split).is_dir():
            for d in [root / split, *_class_dirs(root / split)]:
                stamps[str(d.relative_to(root))] = d.stat().st_mtime_ns
    return {"root": str(root), "mtimes": stamps}


@register_dataset("imagefolder", key=_key)
def _load(cfg: DataConfig) -> DecodedData:
    root = Path(cfg.root).expanduser()
    train_dir = root / "train"
    hint = (f"expected {train_dir}/<class>/<image> (and optionally {root}/test/<class>/<image>); "
            "set data.root to the folder that holds train/")
    if not train_dir.is_dir():
        raise DataError(f"imagefolder: no folder {train_dir}; {hint}")
    classes = [d.name for d in _class_dirs(train_dir)]
    if not classes:
        raise DataError(f"imagefolder: no class folders in {train_dir}; {hint}")
    train = _split(train_dir, {c: i for i, c in enumerate(classes)}, cfg.image_size)
    if len(train) == 0:
        raise DataError(f"imagefolder: no image files in the class folders of {train_dir}; {hint}")
    test = None
    if (root / "test").is_dir():
        test = _split(root / "test", {c: i for i, c in enumerate(classes)}, cfg.image_size)
    return DecodedData(train, test if test is not None and len(test) else None, classes)


def _split(folder: Path, index: dict[str, int], size: int) -> ImageSet:
    paths: list[Path] = []
    labels: list[int] = []
    unknown = []
    for d in _class_dirs(folder):
        if d.name not in index:
            unknown.append(d.name)
            continue
        files = image_files(d)
        paths += files
        labels += [index[d.name]] * len(files)
    if unknown:
        warnings.warn(f"imagefolder: skipping {folder}/{{{','.join(unknown)}}}: not a class of "
                      "the train folder", stacklevel=2)
    images, _ = decode_files(paths, size)
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64))
