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
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from extune.train.config import DataConfig
from extune.train.errors import DataError, RegistryError

__all__ = [
    "ImageSet",
    "DataSplits",
    "DecodedData",
    "list_datasets",
    "register_dataset",
    "load_data",
    "channel_stats",
]

_CACHE_VERSION = 2  # bump when a loader's output changes for the same key


# ============================================================================ containers
@dataclass
class ImageSet:
    """One split; all tensors on one device.

    Attributes:
        images: uint8 ``[N, 3, H, W]``.
        labels: int64 ``[N]``.
        masks: bool ``[N, 1, H, W]`` ground-truth object masks or boxes, or None.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor | None = None

    def __post_init__(self) -> None:
        im, lab, m = self.images, self.labels, self.masks
        if im.dtype != torch.uint8 or im.ndim != 4 or im.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {im.dtype} {list(im.shape)}")
        if lab.dtype != torch.int64 or lab.shape != im.shape[:1]:
            raise ValueError(f"labels must be int64 [{im.shape[0]}], got {lab.dtype} "
                             f"{list(lab.shape)}")
        if m is not None and (m.dtype != torch.bool or m.shape != (im.shape[0], 1, *im.shape[2:])):
            raise ValueError(f"masks must be bool [N, 1, H, W] matching images, got {m.dtype} "
                             f"{list(m.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageSet:
        """The same split on ``device``."""
        masks = None if self.masks is None else self.masks.to(device, non_blocking=non_blocking)
        return ImageSet(self.images.to(device, non_blocking=non_blocking),
                        self.labels.to(device, non_blocking=non_blocking), masks)

    def subset(self, index: Tensor) -> ImageSet:
        """The samples selected by ``index`` (int64 ``[K]`` positions or bool ``[N]``)."""
        index = index.to(self.images.device)
        masks = None if self.masks is None else self.masks[index]
        return ImageSet(self.images[index], self.labels[index], masks)


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


@dataclass
class DecodedData:
    """What a registered loader returns: the full decoded data set before any split.

    Attributes:
        train: every training image at ``image_size`` (the validation split comes out of it).
        test: the test split, or None.
        classes: class names, indexed by label.
    """

    train: ImageSet
    test: ImageSet | None
    classes: list[str]


# ============================================================================ registry
Loader = Callable[[DataConfig], DecodedData]
KeyFn = Callable[[DataConfig], dict[str, Any]]


@dataclass(frozen=True)
class _Entry:
    loader: Loader
    key: KeyFn


_REGISTRY: dict[str, _Entry] = {}


def _root_key(cfg: DataConfig) -> dict[str, Any]:
    return {"root": str(Path(cfg.root).expanduser().resolve())}


def register_dataset(name: str, *, key: KeyFn | None = None) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(cfg: DataConfig) -> DecodedData`` under ``name``.

    Args:
        name: the ``data.name`` that selects it.
        key: ``cfg -> dict`` (JSON-serialisable) of what, besides the name and image size,
            determines the decoded arrays; it keys the disk cache. Default: the resolved root.
    """

    def decorator(loader: Loader) -> Loader:
        _REGISTRY[name] = _Entry(loader, key or _root_key)
        return loader

    return decorator


def list_datasets() -> list[str]:
    """Names of the registered data sets, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise RegistryError(f"unknown data set '{name}' (data.name); registered: "
                            f"{', '.join(list_datasets())}")
    return _REGISTRY[name]


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
    entry = _entry(cfg.name)
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
    if cfg.limit is not None and cfg.limit < len(train):
        keep = _stratified_order(train.labels, cfg.split_seed + 1)[: cfg.limit]
        train = train.subset(keep.sort().values)
    mean, std = channel_stats(train.images)
    return DataSplits(train, val, decoded.test, list(decoded.classes), mean, std)


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
def _cache_path(cfg: DataConfig, entry: _Entry) -> Path | None:
    if not cfg.cache_dir:
        return None
    fields = {"version": _CACHE_VERSION, "name": cfg.name, "image_size": cfg.image_size,
              **entry.key(cfg)}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir).expanduser() / f"{cfg.name}-{cfg.image_size}px-{digest}.npz"


def _load_cached(cfg: DataConfig, entry: _Entry) -> DecodedData:
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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
        os.replace(tmp, path)  # atomic: readers never see a half-written file
        tmp = None
    except OSError as e:
        warnings.warn(f"cannot write the data cache {path} ({e.strerror or e}); continuing "
                      "without it (set data.cache_dir to a writable folder to decode once)",
                      stacklevel=4)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


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


# The built-in loaders register themselves on import (they import this module's names).
from extune.train.datasets import cifar, imagefolder, synthetic, tiny_imagenet  # noqa: E402,F401
