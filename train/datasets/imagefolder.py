"""``imagefolder``: any ``root/train/<class>/<image>`` tree, optional ``root/test/<class>/*``.

Classes are the sorted sub-folders of ``train`` (as in ``torchvision.datasets.ImageFolder``);
test folders are mapped to them by name, and test folders of unknown classes are skipped with
a warning. Images are decoded with PIL and resized to ``data.image_size``; the files are listed
first (:func:`_files`), so that a tree larger than memory can be read per batch instead
(``data.in_memory``, :mod:`extune.train.datasets.streamed`).

Bad data is refused before anything trains: fewer than two class folders, or a class folder
with no (readable) image is an error. Files that cannot be decoded (empty, truncated, not an
image) are skipped with one warning that counts and names them, or are an error with
``data.strict=true``. The cache key includes the name, size and modification time of every
image file, so adding, removing or editing an image decodes the tree again.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import torch

from extune.errors import DataError
from extune.train.config import DataConfig
from extune.train.datasets._common import decode_file_set, image_files
from extune.train.datasets.base import DecodedData, ImageSet, register_dataset
from extune.train.datasets.streamed import FileSet, FileSplits

__all__: list[str] = []

_NAMED = 5  # unreadable files named in the warning (the rest are counted)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _key(cfg: DataConfig) -> dict[str, Any]:
    """Root, ``data.strict`` and a digest of every image file's path, size and mtime."""
    root = Path(cfg.root).expanduser().resolve()
    digest = hashlib.sha256()
    for split in ("train", "test"):
        if (root / split).is_dir():
            for d in _class_dirs(root / split):
                for p in image_files(d):
                    st = p.stat()
                    digest.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n"
                                  .encode())
    return {"root": str(root), "strict": cfg.strict, "files": digest.hexdigest()}


def _files(cfg: DataConfig) -> FileSplits:
    """The tree's image files and labels, classes from ``train/``'s folders, not decoded.

    Raises:
        DataError: no ``train/`` folder, fewer than two class folders, or a training class
            folder with no image file.
    """
    root = Path(cfg.root).expanduser().absolute()  # paths a trial finds from any folder
    train_dir = root / "train"
    hint = (f"expected {train_dir}/<class>/<image> (and optionally {root}/test/<class>/<image>); "
            "set data.root to the folder that holds train/")
    if not train_dir.is_dir():
        raise DataError(f"imagefolder: no folder {train_dir}; {hint}")
    classes = [d.name for d in _class_dirs(train_dir)]
    if not classes:
        raise DataError(f"imagefolder: no class folders in {train_dir}; {hint}")
    if len(classes) == 1:
        raise DataError(f"imagefolder: {train_dir} has one class folder ({classes[0]}); a "
                        "classifier needs at least 2 classes (one sub-folder of train/ each)")
    index = {c: i for i, c in enumerate(classes)}
    train = _listed(train_dir, index, train=True)
    test = _listed(root / "test", index, train=False) if (root / "test").is_dir() else None
    return FileSplits(train, test if test is not None and len(test) else None, classes)


@register_dataset("imagefolder", key=_key, files=_files)
def _load(cfg: DataConfig) -> DecodedData:
    listed = _files(cfg)
    train, skipped = _decoded(listed.train, cfg)
    root = Path(cfg.root).expanduser().absolute()
    _require_every_class(train, listed.classes, root / "train")
    test = None
    if listed.test is not None:
        test, skipped_test = _decoded(listed.test, cfg)
        skipped.update(skipped_test)
    _warn_skipped(skipped, root)
    return DecodedData(train, test if test is not None and len(test) else None, listed.classes)


def _listed(folder: Path, index: dict[str, int], *, train: bool) -> FileSet:
    """The image files of ``folder/<class>/*`` and their labels.

    Raises:
        DataError: a class folder of the training split holds no image file.
    """
    paths: list[str] = []
    labels: list[int] = []
    unknown, empty = [], []
    for d in _class_dirs(folder):
        if d.name not in index:
            unknown.append(d.name)
            continue
        files = image_files(d)
        if not files:
            empty.append(d.name)
        paths += [str(p) for p in files]
        labels += [index[d.name]] * len(files)
    if unknown:
        warnings.warn(f"imagefolder: skipping {folder}/{{{','.join(unknown)}}}: not a class of "
                      "the train folder", stacklevel=4)
    if empty and train:
        raise DataError(f"imagefolder: class folder(s) {', '.join(empty)} of {folder} hold no "
                        "image file; add images or remove the folder(s)")
    return FileSet(paths, torch.tensor(labels, dtype=torch.int64))


def _decoded(files: FileSet, cfg: DataConfig) -> tuple[ImageSet, dict[Path, str]]:
    """``files`` decoded, and the unreadable files skipped (none if ``data.strict``).

    Raises:
        DataError: with ``data.strict``, a file cannot be decoded.
    """
    images, labels, skipped = decode_file_set(files.paths, files.labels, cfg.image_size,
                                              strict=cfg.strict)
    return ImageSet(images, labels), skipped


def _require_every_class(train: ImageSet, classes: list[str], folder: Path) -> None:
    """Every class must keep a readable training image (else it is an output never trained).

    Raises:
        DataError: naming the classes whose images were all unreadable.
    """
    counts = torch.bincount(train.labels, minlength=len(classes))
    lost = [c for c, n in zip(classes, counts.tolist(), strict=True) if n == 0]
    if lost:
        raise DataError(f"imagefolder: no readable image in class folder(s) {', '.join(lost)} "
                        f"of {folder}; replace the files that cannot be decoded")


def _warn_skipped(skipped: dict[Path, str], root: Path) -> None:
    """One warning that counts the unreadable files and names the first few."""
    if not skipped:
        return
    items = list(skipped.items())
    named = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in items[:_NAMED])
    more = f"; and {len(items) - _NAMED} more" if len(items) > _NAMED else ""
    warnings.warn(f"imagefolder: skipped {len(items)} file(s) that cannot be decoded: "
                  f"{named}{more}; set data.strict=true to make this an error", stacklevel=3)
