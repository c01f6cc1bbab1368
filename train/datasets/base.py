"""What a data set loader works with: the uint8 image containers and the data set registry.

Every data set is a registered loader, ``(cfg: DataConfig) -> DecodedData``, that decodes the
full training split (and the test split where the data set has one) into uint8 tensors at
``cfg.image_size``; :func:`extune.train.data.load_data` adds the cache and the splits. The
built-in loaders (the other modules of this package) import this module, never
:mod:`extune.train.data`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from extune.registry import Registry
from extune.train.config import DataConfig

__all__ = ["ImageSet", "DecodedData", "DATASETS", "DatasetEntry", "register_dataset",
           "list_datasets"]


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

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle CPU tensors as numpy arrays, which Ray's object store hands to every trial
        without a copy (pickle protocol 5 buffers); it copies torch tensors on every fetch.

        The tensors of an unpickled set share that memory: read them, never write in place
        (training and evaluation index or convert, which copies).
        """
        if self.images.device.type != "cpu":
            return ImageSet, (self.images, self.labels, self.masks)
        masks = None if self.masks is None else self.masks.numpy()
        return _image_set_from_arrays, (self.images.numpy(), self.labels.numpy(), masks)

    def subset(self, index: Tensor) -> ImageSet:
        """The samples selected by ``index`` (int64 ``[K]`` positions or bool ``[N]``)."""
        index = index.to(self.images.device)
        masks = None if self.masks is None else self.masks[index]
        return ImageSet(self.images[index], self.labels[index], masks)


def _image_set_from_arrays(images: Any, labels: Any, masks: Any) -> ImageSet:
    """An :class:`ImageSet` on numpy arrays (``uint8 [N,3,H,W]``, ``int64 [N]``, ``bool
    [N,1,H,W]`` or ``None``) without copying them, read-only ones (Ray's) included."""
    with warnings.catch_warnings():  # read-only arrays: the tensors are only read
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return ImageSet(torch.from_numpy(images), torch.from_numpy(labels),
                        None if masks is None else torch.from_numpy(masks))


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


Loader = Callable[[DataConfig], DecodedData]
KeyFn = Callable[[DataConfig], dict[str, Any]]
FilesFn = Callable[[DataConfig], Any]
"""``cfg -> FileSplits`` (:mod:`~extune.train.datasets.streamed`): a file-based data set's files
and labels, listed without decoding (its size is known before decoding; its training images can
be read per batch)."""


@dataclass(frozen=True)
class DatasetEntry:
    """A registered data set: its loader, the function that keys its disk cache, and for a
    file-based one the function that lists its files (``None``: decoded whole only)."""

    loader: Loader
    key: KeyFn
    files: FilesFn | None = None


DATASETS: Registry[DatasetEntry] = Registry("data set")
"""Data sets by name (``data.name``)."""


def _root_key(cfg: DataConfig) -> dict[str, Any]:
    return {"root": str(Path(cfg.root).expanduser().resolve())}


def register_dataset(name: str, *, key: KeyFn | None = None, files: FilesFn | None = None
                     ) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(cfg: DataConfig) -> DecodedData`` under ``name``.

    Args:
        name: the ``data.name`` that selects it.
        key: ``cfg -> dict`` (JSON-serialisable) of what, besides the name and image size,
            determines the decoded arrays; it keys the disk cache. Default: the resolved root.
        files: ``cfg -> FileSplits``: the data set's image files and labels, listed without
            decoding, in the order the loader decodes them (a data set larger than memory is
            then read per batch, ``data.in_memory``); ``None``: it is decoded whole.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(loader: Loader) -> Loader:
        DATASETS.register(name, DatasetEntry(loader, key or _root_key, files))
        return loader

    return decorator


def list_datasets() -> list[str]:
    """Names of the registered data sets, sorted."""
    return DATASETS.names()
