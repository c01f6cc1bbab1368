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

A file-based data set (``imagefolder``) is counted before it is decoded: where its decoded
images exceed the memory budget (``data.memory_gb``; ``data.in_memory``), its training images
stay in their files and are decoded per batch by DataLoader workers
(:mod:`extune.train.datasets.streamed`), with the same split, pixels and statistics.

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
from typing import Any

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
from extune.train.datasets.streamed import (
    FileImages,
    FileSplits,
    StreamedSet,
    decoded_bytes,
    loader_workers,
    not_read_per_batch,
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
        train: training images (after the validation split and ``data.limit``), decoded or
            read per batch from their files (``data.in_memory``).
        val: validation images, taken from the training set (the search objective).
        test: the data set's test split, or None where it has none.
        classes: class names; label ``k`` is ``classes[k]``.
        mean: per-channel mean of ``train.images`` in [0, 1].
        std: per-channel standard deviation of ``train.images`` in [0, 1].
    """

    train: ImageSet | StreamedSet
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
        training images, ``train`` capped at ``limit`` images, mean/std of ``train``. The
        training images are a :class:`StreamedSet` read per batch from their files where
        :func:`in_memory` says they do not fit (the same positions, pixels and statistics).

    Raises:
        RegistryError: ``cfg.name`` is not a registered data set.
        DataError: the data set's files are missing or unreadable, or its images fit neither
            way (:func:`in_memory`, :func:`_streamed_splits`).
    """
    entry = DATASETS.get(cfg.name)
    listed = entry.files(cfg) if entry.files is not None else None
    if not in_memory(cfg, listed):
        return _streamed_splits(cfg, entry, listed)
    decoded = _load_cached(cfg, entry)
    train, val = _split(cfg, decoded.train, len(decoded.classes))
    _warn_one_class(val, len(decoded.classes), cfg)
    mean, std = channel_stats(train.images)
    return DataSplits(train, val, decoded.test, list(decoded.classes), mean, std)


def _split(cfg: DataConfig, full: Any, num_classes: int) -> tuple[Any, Any]:
    """The seeded stratified (train, val) of ``full`` (an :class:`ImageSet` or a
    :class:`StreamedSet`: the same positions either way), train capped at ``data.limit``."""
    n = len(full)
    if n < 2:
        raise DataError(f"{cfg.name}: {n} training image(s) found; at least 2 are needed")
    if int(full.labels.min()) < 0 or int(full.labels.max()) >= num_classes:
        raise ValueError(f"data set '{cfg.name}' returned labels outside [0, "
                         f"{num_classes}) (a loader bug)")
    n_val = min(max(1, int(n * cfg.val_fraction + 0.5)), n - 1)
    order = _stratified_order(full.labels, cfg.split_seed)
    val = full.subset(order[:n_val].sort().values)
    train = full.subset(order[n_val:].sort().values)
    if cfg.limit is not None and cfg.limit < len(train):
        keep = _stratified_order(train.labels, cfg.split_seed + 1)[: cfg.limit]
        train = train.subset(keep.sort().values)
    return train, val


# ============================================================================ memory
def memory_budget(cfg: DataConfig) -> int | None:
    """Bytes the decoded images may take: ``data.memory_gb``, else half the memory available
    now (Linux: ``MemAvailable``, within the cgroup's limit); ``None`` where unknown."""
    if cfg.memory_gb is not None:
        return int(cfg.memory_gb * 2**30)
    available = available_memory()
    return None if available is None else available // 2


def available_memory() -> int | None:
    """Bytes of memory this process can still get (``None`` where the system does not say):
    the kernel's ``MemAvailable``, lowered to what a cgroup (a container) leaves."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, available)


def in_memory(cfg: DataConfig, listed: FileSplits | None) -> bool:
    """Whether the training images are decoded into memory (else read per batch).

    ``data.in_memory=true``: in memory; ``false``: per batch (a file-based data set only);
    ``auto``: in memory unless a file-based data set's decoded images (training and test,
    counted from its files before decoding) exceed :func:`memory_budget`, said in a warning.

    Raises:
        DataError: ``false`` for a data set that is decoded whole (not file-based).
    """
    if cfg.in_memory is True:
        _check_fits(cfg, listed)
        return True
    if listed is None:
        if cfg.in_memory is False:
            raise DataError(not_read_per_batch(cfg.name))
        return True
    if cfg.in_memory is False:
        return False
    images = listed.images()
    needed, budget = decoded_bytes(images, cfg.image_size), memory_budget(cfg)
    if budget is None or needed <= budget:
        return True
    warnings.warn(f"{cfg.name}: {images} images decoded at {cfg.image_size} px take "
                  f"{needed / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} GiB of "
                  f"{_budget_source(cfg)}: the training images are read per batch from their "
                  "files (data.in_memory=true decodes them anyway)", stacklevel=3)
    return False


def _check_fits(cfg: DataConfig, listed: FileSplits | None) -> None:
    """``data.in_memory=true`` for files whose decoded images exceed the free memory: fail
    before decoding (the machine would run out of memory half way).

    Raises:
        DataError: naming the sizes and what to set.
    """
    if listed is None:
        return
    images = listed.images()
    needed, free = decoded_bytes(images, cfg.image_size), available_memory()
    if free is not None and needed > free:
        raise DataError(f"data.in_memory=true: {cfg.name}'s {images} images take "
                        f"{needed / 2**30:.1f} GiB decoded at {cfg.image_size} px, more than "
                        f"the {free / 2**30:.1f} GiB of free memory; set data.in_memory=auto "
                        "(read per batch) or lower data.image_size")


def _budget_source(cfg: DataConfig) -> str:
    return "data.memory_gb" if cfg.memory_gb is not None else "half the free memory"


def _streamed_splits(cfg: DataConfig, entry: DatasetEntry, listed: FileSplits | None
                     ) -> DataSplits:
    """Splits whose training images stay in their files (:class:`StreamedSet`); validation and
    test images are decoded into memory.

    Raises:
        DataError: the validation and test images alone exceed the budget (what to lower).
    """
    assert listed is not None
    full = StreamedSet(listed.train.paths, listed.train.labels, cfg.image_size)
    train, val_files = _split(cfg, full, len(listed.classes))
    kept = len(val_files) + (len(listed.test) if listed.test is not None else 0)
    needed, budget = decoded_bytes(kept, cfg.image_size), memory_budget(cfg)
    if budget is not None and needed > budget:
        raise DataError(f"{cfg.name}: even read per batch, its {kept} validation and test "
                        f"images take {needed / 2**30:.1f} GiB decoded, more than the "
                        f"{budget / 2**30:.1f} GiB of {_budget_source(cfg)}; lower "
                        "data.val_fraction or data.image_size, or raise data.memory_gb")
    val = _decode_set(cfg, val_files.paths, val_files.labels)
    test = None
    if listed.test is not None:
        test = _decode_set(cfg, listed.test.paths, listed.test.labels)
    _warn_one_class(val, len(listed.classes), cfg)
    mean, std = _streamed_stats(cfg, entry, train)
    return DataSplits(train, val, test, list(listed.classes), mean, std)


def _decode_set(cfg: DataConfig, paths: list[str], labels: Tensor) -> ImageSet:
    """Files decoded into memory (as the in-memory path: unreadable ones skipped, warned)."""
    from extune.train.datasets._common import decode_file_set

    images, labels, skipped = decode_file_set(paths, labels, cfg.image_size, strict=cfg.strict)
    if skipped:
        first = next(iter(skipped.items()))
        warnings.warn(f"{cfg.name}: skipped {len(skipped)} file(s) that cannot be decoded, "
                      f"first {first[0]} ({first[1]})", stacklevel=4)
    return ImageSet(images, labels)


def _streamed_stats(cfg: DataConfig, entry: DatasetEntry, train: StreamedSet
                    ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """:func:`channel_stats` of a streamed training split, over every image (one pass of
    DataLoader workers; kept beside the data cache, keyed by the files, so that each trial
    of a search does not read them again)."""
    path = _cache_path(cfg, entry, "stats.json", stats="train", val_fraction=cfg.val_fraction,
                       split_seed=cfg.split_seed, limit=cfg.limit)  # the split's statistics
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
            return tuple(saved["mean"]), tuple(saved["std"])  # type: ignore[return-value]
        except (OSError, ValueError, KeyError):
            pass
    loader = torch.utils.data.DataLoader(
        FileImages(train.paths, train.image_size), batch_size=256,
        num_workers=loader_workers(), generator=torch.Generator())  # leaves the global RNG
    histograms = torch.zeros(3, 256, dtype=torch.int64)
    for images in loader:
        histograms += channel_histograms(images)
    stats = _stats_of(histograms)  # exactly what the in-memory path computes
    if path is not None:
        try:
            with atomic_writer(path) as f:
                f.write(json.dumps({"mean": stats[0], "std": stats[1]}).encode())
        except OSError:
            pass  # recomputed next time
    return stats  # type: ignore[return-value]


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
    return _stats_of(channel_histograms(images))


def channel_histograms(images: Tensor) -> Tensor:
    """Per-channel counts of each level of uint8 ``[N, 3, H, W]`` images: int64 ``[3, 256]``
    (exact, no float copy of the images; batches add up)."""
    return torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256).cpu()
                        for c in range(3)])


def _stats_of(histograms: Tensor
              ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """:func:`channel_stats` from :func:`channel_histograms`."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(3):
        hist = histograms[c].double()
        m = (hist * levels).sum() / hist.sum()
        v = (hist * (levels - m) ** 2).sum() / hist.sum()
        mean.append(float(m))
        std.append(max(float(v.sqrt()), 1 / 255))
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


# ============================================================================ disk cache
def _cache_path(cfg: DataConfig, entry: DatasetEntry, suffix: str = "npz",
                **more: Any) -> Path | None:
    """The cache file of the data set's decoded arrays (``suffix`` ``npz``), or of something
    else computed from them (``more``: what it also depends on); ``None``: no cache."""
    if not cfg.cache_dir:
        return None
    fields = {"version": _CACHE_VERSION, "name": cfg.name, "image_size": cfg.image_size,
              **entry.key(cfg), **more}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir).expanduser() / f"{cfg.name}-{cfg.image_size}px-{digest}.{suffix}"


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


