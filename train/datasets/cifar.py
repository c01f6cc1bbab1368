"""``cifar10`` and ``cifar100``: torchvision's on-disk format under ``data.root``.

``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` and
``<root>/cifar-100-python/{train,test,meta}``, read by ``torchvision.datasets.CIFAR10/100``
(which also downloads them with ``data.download=true``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from extune.errors import DataError
from extune.train.config import DataConfig
from extune.train.datasets._common import one_line, resize_uint8
from extune.train.datasets.base import DecodedData, ImageSet, register_dataset

__all__: list[str] = []

_LAYOUT = {  # name -> (torchvision class, folder, files)
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch", "batches.meta")),
    "cifar100": ("CIFAR100", "cifar-100-python", ("train", "test", "meta")),
}


def _load_cifar(cfg: DataConfig, name: str) -> DecodedData:
    cls_name, folder, files = _LAYOUT[name]
    root = Path(cfg.root).expanduser()
    missing = [f for f in files if not (root / folder / f).is_file()]
    if missing and not cfg.download:
        raise DataError(f"{name}: missing {', '.join(missing)} in {root / folder}; run with "
                        f"--set data.download=true to fetch them, or set data.root to the "
                        f"folder that holds {folder}/")
    import torchvision.datasets

    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=False)
    except (RuntimeError, OSError, EOFError, KeyError, ValueError,
            pickle.UnpicklingError) as e:
        raise DataError(f"{name}: cannot read {root / folder} ({one_line(e)}); delete the "
                        "folder and run with --set data.download=true") from None

    def split(ds: object) -> ImageSet:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # [N, 3, 32, 32]
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
        return ImageSet(resize_uint8(images, cfg.image_size), labels)

    return DecodedData(split(train), split(test), [str(c) for c in train.classes])


@register_dataset("cifar10")
def _load_cifar10(cfg: DataConfig) -> DecodedData:
    return _load_cifar(cfg, "cifar10")


@register_dataset("cifar100")
def _load_cifar100(cfg: DataConfig) -> DecodedData:
    return _load_cifar(cfg, "cifar100")
