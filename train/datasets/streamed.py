"""Training images read per batch from their files, for a data set larger than memory.

A file-based data set (``imagefolder``) lists its files (:class:`FileSplits`) without decoding
them. When the decoded images would not fit the memory extune may use
(:func:`extune.train.data.load_data`, ``data.in_memory``, ``data.memory_gb``), the training
split stays a :class:`StreamedSet` of paths and labels, and :class:`Batches` decodes each batch
in ``torch.utils.data.DataLoader`` workers with the same decoding as the in-memory path
(:func:`~extune.train.datasets._common.decode_file`, PIL), in the same order: a training
reads the same pixels either way. Validation and test images are decoded into memory (the
evaluation suite indexes them freely; they are a fraction of the training images).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["FileSet", "FileSplits", "FileImages", "StreamedSet", "Batches", "decoded_bytes",
           "loader_workers", "not_read_per_batch"]


@dataclass
class FileSet:
    """Image files and their labels (int64 ``[N]``), in the data set's order."""

    paths: list[str]
    labels: Tensor

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class FileSplits:
    """A file-based data set before decoding: its training and test files, its classes."""

    train: FileSet
    test: FileSet | None
    classes: list[str]

    def images(self) -> int:
        """Training and test images."""
        return len(self.train) + (len(self.test) if self.test is not None else 0)


def not_read_per_batch(name: str) -> str:
    """Why ``data.in_memory=false`` cannot work for the data set ``name`` (it has no files to
    read per batch), and what to set."""
    return (f"data.in_memory=false reads training images per batch from their files, which "
            f"{name} does not have (imagefolder does); set data.in_memory=auto")


def decoded_bytes(images: int, image_size: int) -> int:
    """Bytes of ``images`` decoded as uint8 ``[3, image_size, image_size]``."""
    return images * 3 * image_size * image_size


@dataclass
class StreamedSet:
    """A training split whose images stay in their files until a batch needs them.

    Attributes:
        paths: the image files, one per sample.
        labels: int64 ``[N]``.
        image_size: the side every image is decoded to.
    """

    paths: list[str]
    labels: Tensor
    image_size: int
    masks: None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: Tensor) -> StreamedSet:
        """The samples at ``index`` (int64 ``[K]`` positions)."""
        chosen = index.tolist()
        return StreamedSet([self.paths[i] for i in chosen], self.labels[index], self.image_size)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StreamedSet:
        """Itself: its batches go to the device as they are decoded (:func:`batches`)."""
        return self


class FileImages(torch.utils.data.Dataset):
    """Sample ``i``: the decoded uint8 ``[3, S, S]`` image of ``paths[i]``."""

    def __init__(self, paths: list[str], image_size: int) -> None:
        self.paths, self.image_size = paths, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        from extune.errors import DataError, one_line
        from extune.train.datasets._common import decode_file

        try:
            pixels, _ = decode_file(self.paths[i], self.image_size)
        except (OSError, ValueError) as e:  # PIL's errors are OSError and ValueError kinds
            raise DataError(f"cannot decode image {self.paths[i]} ({one_line(e)}); remove or "
                            "replace the file, or set data.in_memory=true (unreadable files "
                            "are then skipped)") from None
        return torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # PIL's array is read-only


class _EpochBatches(torch.utils.data.Sampler):
    """The batches of one epoch's ``order`` (set before each epoch; read in the main process,
    so that persistent workers serve every epoch)."""

    def __init__(self, batch_size: int, steps: int) -> None:
        self.batch_size, self.steps = batch_size, steps
        self.order: list[int] = []

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(self.steps):
            yield self.order[i * self.batch_size:(i + 1) * self.batch_size]


def loader_workers() -> int:
    """DataLoader workers of a streamed training: the torch threads this process may use (a
    search trial's CPUs), at least 1, at most 4."""
    return max(1, min(4, torch.get_num_threads()))


class Batches:
    """The training batches of a split for one training: :meth:`epoch` gives an epoch's
    ``(images uint8 [B, 3, S, S], labels int64 [B])`` on ``device`` in ``order``'s batches.

    An :class:`~extune.train.datasets.base.ImageSet` is indexed directly; a
    :class:`StreamedSet` is decoded by DataLoader workers kept for the whole training, two
    batches ahead of the step.
    """

    def __init__(self, split: Any, batch_size: int, steps: int, device: torch.device) -> None:
        self.split, self.batch_size, self.steps, self.device = split, batch_size, steps, device
        self._sampler: _EpochBatches | None = None
        self._loader: Any = None
        if isinstance(split, StreamedSet):
            self._sampler = _EpochBatches(batch_size, steps)
            workers = loader_workers()
            self._loader = torch.utils.data.DataLoader(
                FileImages(split.paths, split.image_size), batch_sampler=self._sampler,
                num_workers=workers, persistent_workers=True, prefetch_factor=2,
                pin_memory=device.type == "cuda",
                generator=torch.Generator())  # its seed draw leaves the global RNG alone

    def epoch(self, order: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's batches: ``order`` int64 ``[N]`` (a permutation of the split)."""
        if not isinstance(self.split, StreamedSet):
            for i in range(self.steps):
                index = order[i * self.batch_size:(i + 1) * self.batch_size]
                yield self.split.images[index], self.split.labels[index]
            return
        if self._loader is None or self._sampler is None:
            raise RuntimeError("the batches of this training were closed")
        self._sampler.order = order.cpu().tolist()
        labels = self.split.labels
        for i, images in enumerate(self._loader):
            index = self._sampler.order[i * self.batch_size:(i + 1) * self.batch_size]
            yield (images.to(self.device, non_blocking=True),
                   labels[torch.tensor(index)].to(self.device, non_blocking=True))

    def close(self) -> None:
        """Let the DataLoader workers go (a streamed split): its iterator stops them when the
        last reference to the loader goes."""
        self._loader = None
