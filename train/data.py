"""Data sets: decoded once into uint8 tensors, cached on disk, split reproducibly.

Every data set is a registered loader, ``(cfg: DataConfig) -> DecodedData``, that decodes the
full training split (and the test split where the data set has one) into uint8 tensors at
``cfg.image_size``. :func:`load_data` wraps the loader with

1. an on-disk cache (one ``.npz`` per data set and image size under ``data.cache_dir``; the key
   hashes the name, the resolved root, the image size and, for ``synthetic``, its parameters;
   written atomically; an unwritable cache only warns; ``cache_dir=""`` disables it);
2. a seeded, class-stratified validation split taken from the training images
   (``data.val_fraction``, ``data.split_seed``: the same for every trial of a search);
3. ``data.limit``: a seeded, stratified cap on the number of training images after the split;
4. the per-channel mean/std of the training split in [0, 1].

Registered data sets (:func:`list_datasets`): ``synthetic`` (procedural, no files; the
default), ``cifar10``, ``cifar100``, ``tiny-imagenet`` and ``imagefolder``; their loaders
live in ``extune.train.datasets``. Add one with :func:`register_dataset`.

>>> splits = load_data(DataConfig(train_size=200, test_size=50))  # doctest: +SKIP
>>> splits.train.images.shape, splits.num_classes                 # doctest: +SKIP
(torch.Size([180, 3, 32, 32]), 10)
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from extune.errors import DataError
from extune.files import atomic_writer
from extune.train.config import DataConfig
from extune.train.datasets import (
    DATASETS,
    DatasetEntry,
    DecodedData,
    ImageSet,
    list_datasets,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "ImageSet",
    "DataSplits",
    "DecodedData",
    "list_datasets",
    "register_dataset",
    "load_data",
    "channel_stats",
]

_CACHE_VERSION = 2  # bump when a loader's output changes for the same key


@dataclass
class DataSplits:
    """Train / validation / test splits of one data set, plus what normalisation needs.

    Attributes:
        train: training images (after the validation split and ``data.limit``).
        val: validation images, taken from the training set (the search objective).
        test: the data set's test split, or None where it has none.
        classes: class names; label ``k`` is ``classes[k]``.
        mean: per-channel mean of ``train.images`` in [0, 1].
        std: per-channel standard deviation of ``train.images`` in [0, 1].
    """

    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DataSplits:
        """The same splits with every tensor on ``device``."""
        test = None if self.test is None else self.test.to(device, non_blocking)
        return DataSplits(self.train.to(device, non_blocking), self.val.to(device, non_blocking),
                          test, list(self.classes), self.mean, self.std)


# ============================================================================ load_data
def load_data(cfg: DataConfig) -> DataSplits:
    """Decode (or read from the cache) the data set named by ``cfg.name`` and split it.

    Args:
        cfg: the ``data`` section of the config.

    Returns:
        CPU :class:`DataSplits`: seeded stratified ``val`` split of ``val_fraction`` of the
        training images, ``train`` capped at ``limit`` images, mean/std of ``train``.

    Raises:
        RegistryError: ``cfg.name`` is not a registered data set.
        DataError: the data set's files are missing or unreadable.
    """
    entry = DATASETS.get(cfg.name)
    decoded = _load_cached(cfg, entry)
    full = decoded.train
    n = len(full)
    if n < 2:
        raise DataError(f"{cfg.name}: {n} training image(s) found; at least 2 are needed")
    if int(full.labels.min()) < 0 or int(full.labels.max()) >= len(decoded.classes):
        raise ValueError(f"data set '{cfg.name}' returned labels outside [0, "
                         f"{len(decoded.classes)}) (a loader bug)")
    n_val = min(max(1, int(n * cfg.val_fraction + 0.5)), n - 1)
    order = _stratified_order(full.labels, cfg.split_seed)
    val = full.subset(order[:n_val].sort().values)
    train = full.subset(order[n_val:].sort().values)
    _warn_one_class(val, len(decoded.classes), cfg)
    if cfg.limit is not None and cfg.limit < len(train):
        keep = _stratified_order(train.labels, cfg.split_seed + 1)[: cfg.limit]
        train = train.subset(keep.sort().values)
    mean, std = channel_stats(train.images)
    return DataSplits(train, val, decoded.test, list(decoded.classes), mean, std)


def _warn_one_class(val: ImageSet, num_classes: int, cfg: DataConfig) -> None:
    """One warning when the validation split holds a single class: any model scores accuracy
    1.0 or 0.0 on it, so it cannot tell trials apart (a set with one image per class)."""
    seen = int(torch.unique(val.labels).numel())
    if seen < 2 <= num_classes:
        warnings.warn(f"{cfg.name}: the validation split holds {len(val)} image(s) of 1 of the "
                      f"{num_classes} classes (data.val_fraction={cfg.val_fraction:g} of the "
                      "training images), so its accuracy cannot tell models apart (1.0 or 0.0 "
                      "for any model); add images to each class or raise data.val_fraction",
                      stacklevel=3)


def _stratified_order(labels: Tensor, seed: int) -> Tensor:
    """A seeded permutation of ``range(N)`` whose every prefix is a class-stratified sample.

    Args:
        labels: int64 ``[N]``.
        seed: generator seed.

    Returns:
        int64 ``[N]``; each class is spread evenly along it, in random order within the class.
    """
    n = labels.numel()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    lab = labels.cpu()[perm]
    grouped = torch.argsort(lab, stable=True)  # positions in perm, class by class
    counts = torch.bincount(lab)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[grouped] = torch.arange(n) - starts[lab[grouped]]
    key = (rank.double() + 0.5) / counts[lab].double()  # position of the sample in its class
    return perm[torch.argsort(key, stable=True)]  # ties keep the random order of perm


def channel_stats(images: Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Exact per-channel mean and standard deviation of uint8 images, in [0, 1].

    Args:
        images: uint8 ``[N, 3, H, W]``.

    Returns:
        ``(mean, std)``, each a 3-tuple; std is at least 1/255 (constant images).
    """
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(3):  # a histogram is exact and needs no float copy of the images
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).double().cpu()
        m = (hist * levels).sum() / hist.sum()
        v = (hist * (levels - m) ** 2).sum() / hist.sum()
        mean.append(float(m))
        std.append(max(float(v.sqrt()), 1 / 255))
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


# ============================================================================ disk cache
def _cache_path(cfg: DataConfig, entry: DatasetEntry) -> Path | None:
    if not cfg.cache_dir:
        return None
    fields = {"version": _CACHE_VERSION, "name": cfg.name, "image_size": cfg.image_size,
              **entry.key(cfg)}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir).expanduser() / f"{cfg.name}-{cfg.image_size}px-{digest}.npz"


def _load_cached(cfg: DataConfig, entry: DatasetEntry) -> DecodedData:
    path = _cache_path(cfg, entry)
    if path is not None and path.is_file():
        try:
            return _read_cache(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            warnings.warn(f"ignoring unreadable data cache {path} ({e}); decoding again",
                          stacklevel=3)
    decoded = entry.loader(cfg)
    if path is not None:
        _write_cache(path, decoded)
    return decoded


def _write_cache(path: Path, decoded: DecodedData) -> None:
    arrays: dict[str, np.ndarray] = {"classes": np.array(decoded.classes, dtype=str)}
    for split, s in (("train", decoded.train), ("test", decoded.test)):
        if s is None:
            continue
        arrays[f"{split}_images"] = s.images.cpu().numpy()
        arrays[f"{split}_labels"] = s.labels.cpu().numpy()
        if s.masks is not None:
            arrays[f"{split}_masks"] = np.packbits(s.masks.cpu().numpy(), axis=-1)
    try:
        with atomic_writer(path) as f:  # readers never see a half-written file
            np.savez(f, **arrays)
    except OSError as e:
        warnings.warn(f"cannot write the data cache {path} ({e.strerror or e}); continuing "
                      "without it (set data.cache_dir to a writable folder to decode once)",
                      stacklevel=4)


def _read_cache(path: Path) -> DecodedData:
    with np.load(path, allow_pickle=False) as z:
        classes = [str(c) for c in z["classes"]]

        def split(name: str) -> ImageSet | None:
            if f"{name}_images" not in z.files:
                return None
            images = torch.from_numpy(z[f"{name}_images"])
            masks = None
            if f"{name}_masks" in z.files:
                bits = np.unpackbits(z[f"{name}_masks"], axis=-1, count=images.shape[-1])
                masks = torch.from_numpy(bits.astype(bool))
            return ImageSet(images, torch.from_numpy(z[f"{name}_labels"]), masks)

        train = split("train")
        if train is None:
            raise KeyError("train_images")
        return DecodedData(train, split("test"), classes)


