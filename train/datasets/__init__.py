"""Data set loaders: the registry (:mod:`~extune.train.datasets.base`) and the built-in ones.

Importing this package registers the built-in loaders, one family per module: ``synthetic``,
``cifar10``/``cifar100``, ``tiny-imagenet`` and ``imagefolder``. Users go through
:mod:`extune.train.data` (``load_data``, ``register_dataset``, ``list_datasets``); the loader
modules import :mod:`~extune.train.datasets.base` only.
"""

from __future__ import annotations

from extune.train.datasets import cifar, imagefolder, synthetic, tiny_imagenet  # noqa: F401
from extune.train.datasets.base import (
    DATASETS,
    DatasetEntry,
    DecodedData,
    ImageSet,
    list_datasets,
    register_dataset,
)

__all__ = ["DATASETS", "DatasetEntry", "DecodedData", "ImageSet", "list_datasets",
           "register_dataset"]
