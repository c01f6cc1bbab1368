"""Checkpoints: written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from extune.errors import ExtuneError
from extune.files import atomic_writer

__all__ = ["CHECKPOINT_NAME", "CHECKPOINT_KEYS", "save_checkpoint", "load_checkpoint",
           "checkpoint_path"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_KEYS = ("epoch", "model", "config")
"""Entries every extune checkpoint holds (a file without them was not written by extune)."""


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or the ``checkpoint.pt`` inside a folder."""
    path = Path(path).expanduser()
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, then rename).

    ``state`` must hold only tensors and plain Python containers/scalars so that it loads with
    ``weights_only=True``.
    """
    with atomic_writer(path) as f:
        torch.save(state, f)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no arbitrary code is unpickled).

    Raises:
        ExtuneError: no such file, or (one line, in extune's words) a file that is truncated,
            not a torch file, holds Python objects, or lacks :data:`CHECKPOINT_KEYS`.
    """
    file = checkpoint_path(path)
    if not file.is_file():
        raise ExtuneError(f"checkpoint not found: {file}; pass a checkpoint.pt file or the run "
                          "folder that holds it")
    hint = "pass the checkpoint.pt of an extune run"
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # random bytes, a plain pickle
            raise ExtuneError(f"cannot read checkpoint {file}: it is not a torch file; "
                              f"{hint}") from None
        raise ExtuneError(f"{file} is not an extune checkpoint: it holds Python objects that "
                          f"extune does not load (they could run code); {hint}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile):
        raise ExtuneError(f"cannot read checkpoint {file}: it is truncated or not a torch "
                          f"file; {hint}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ExtuneError(f"{file} is not an extune checkpoint (no {', '.join(missing)} "
                          f"entries); {hint}")
    weights = state["model"]
    if not isinstance(weights, dict) or not weights or \
            not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ExtuneError(f"{file} is not an extune checkpoint: its model entry holds no "
                          f"weights; {hint}")
    if not isinstance(state["config"], dict):
        raise ExtuneError(f"{file} is not an extune checkpoint: its config entry is not a "
                          f"mapping of settings; {hint}")
    return state
