"""Checkpoints: written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from extune.errors import ExtuneError

__all__ = ["CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint", "checkpoint_path"]

CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or the ``checkpoint.pt`` inside a folder."""
    path = Path(path).expanduser()
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, then rename).

    ``state`` must hold only tensors and plain Python containers/scalars so that it loads with
    ``weights_only=True``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no arbitrary code is unpickled)."""
    file = checkpoint_path(path)
    if not file.is_file():
        raise ExtuneError(f"checkpoint not found: {file}; pass a checkpoint.pt file or the run "
                          "folder that holds it")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt or foreign file: say which, not a pickle traceback
        reason = " ".join(str(e).split())[:200]
        raise ExtuneError(f"cannot read checkpoint {file}: {reason}") from None
