"""ExCon's saliency masking (docs/methods.md, ExCon steps 2-3) as pure tensor functions.

No Python loop over samples and no host synchronisation: the results stay on the device and
feed ``torch.where`` selections in the training step.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mask_salient", "keep_mask"]


def mask_salient(x: Tensor, saliency: Tensor, threshold: float | Tensor) -> Tensor:
    """Keep the salient pixels of each image; set the others to 0 (the mean colour).

    A pixel is kept where ``saliency > threshold``; pixels with ``saliency <= threshold`` become 0
    in normalised space, i.e. the data set's mean colour.

    Args:
        x: float ``[B, C, H, W]`` normalised images.
        saliency: ``[B, 1, H, W]`` in ``[0, 1]``.
        threshold: a float, or a tensor broadcastable to ``[B, 1, H, W]`` (e.g. ``[B, 1, 1, 1]``).

    Returns:
        ``[B, C, H, W]``, same dtype and device as ``x``.

    Raises:
        ValueError: if the shapes do not match.
    """
    if x.dim() != 4 or saliency.shape != (x.shape[0], 1, *x.shape[2:]):
        raise ValueError(f"saliency must be [B, 1, H, W] matching x {tuple(x.shape)}, "
                         f"got {tuple(saliency.shape)}")
    return torch.where(saliency > threshold, x, torch.zeros((), dtype=x.dtype, device=x.device))


def keep_mask(logits_on_masked: Tensor, labels: Tensor) -> Tensor:
    """Which masked images the classifier still gets right (they become ExCon's view 0).

    Args:
        logits_on_masked: ``[B, C]`` classifier logits on the masked images.
        labels: int64 ``[B]`` true labels.

    Returns:
        bool ``[B]``: ``argmax(logits) == label``.

    Raises:
        ValueError: if the shapes do not match.
    """
    if logits_on_masked.dim() != 2 or labels.shape != logits_on_masked.shape[:1]:
        raise ValueError(f"expected logits [B, C] and labels [B], got "
                         f"{tuple(logits_on_masked.shape)} and {tuple(labels.shape)}")
    return logits_on_masked.argmax(dim=1) == labels
