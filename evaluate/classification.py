"""Accuracy (top-1, top-k), cross-entropy and expected calibration error.

All functions work on whole tensors on the model's device; the only host
synchronisation is the final conversion of each metric to a Python float.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extune.augment.model_state import eval_mode
from extune.augment.views import normalize, to_unit
from extune.evaluate.batching import batches, model_device

__all__ = [
    "ECE_BINS",
    "predict_logits",
    "expected_calibration_error",
    "classification_metrics",
]

ECE_BINS = 15
"""Number of equal-width confidence bins of the expected calibration error."""


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Logits of ``model`` on every image, batched, in eval mode (training flag restored).

    Args:
        model: Classifier taking normalised float input ``[B, 3, H, W]`` -> logits ``[B, C]``.
        images: ``uint8 [N, 3, H, W]`` (0..255).
        mean: Per-channel mean in [0, 1] used for normalisation.
        std: Per-channel standard deviation in [0, 1].
        batch_size: Images per forward pass.
        transform: Optional function applied to each batch in [0, 1] pixel space before
            normalisation (e.g. a corruption); ``[B, 3, H, W] -> [B, 3, H, W]``.

    Returns:
        float32 logits ``[N, C]`` on the model's device.
    """
    device = model_device(model, images.device)
    out = []
    with eval_mode(model):
        for sl in batches(len(images), batch_size):
            x = to_unit(images[sl].to(device, non_blocking=True))
            if transform is not None:
                x = transform(x)
            out.append(model(normalize(x, mean, std)).float())
    if not out:
        raise ValueError("predict_logits needs at least one image")
    return torch.cat(out)


def expected_calibration_error(
    logits: Tensor, labels: Tensor, num_classes: int, n_bins: int = ECE_BINS
) -> Tensor:
    """Top-label expected calibration error (L1), via torchmetrics.

    ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal-width bins of the
    top-1 softmax confidence (``MulticlassCalibrationError(n_bins=15, norm="l1")``).

    Args:
        logits: ``[N, C]`` logits (softmax is applied here).
        labels: int64 ``[N]``.
        num_classes: ``C``.
        n_bins: Number of confidence bins.

    Returns:
        Scalar tensor in [0, 1]; 0 is perfectly calibrated.
    """
    # torchmetrics takes ~3 s to import: only when a calibration error is computed.
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = logits.float().softmax(dim=1)
    return multiclass_calibration_error(
        probs, labels, num_classes=num_classes, n_bins=n_bins, norm="l1", validate_args=False
    )


def _classification_tensors(logits: Tensor, labels: Tensor, num_classes: int) -> dict[str, Tensor]:
    logits = logits.float()
    k = min(5, num_classes)
    topk = logits.topk(k, dim=1).indices  # [N, k]
    hits = topk == labels[:, None]
    return {
        "accuracy": hits[:, 0].float().mean(),
        "top5": hits.any(dim=1).float().mean(),
        "loss": F.cross_entropy(logits, labels),
        "ece": expected_calibration_error(logits, labels, num_classes),
    }


def classification_metrics(logits: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Top-1 accuracy, top-min(5, C) accuracy, mean cross-entropy and 15-bin ECE.

    Args:
        logits: ``[N, C]``.
        labels: int64 ``[N]`` on the same device.
        num_classes: ``C``.

    Returns:
        ``{"accuracy", "top5", "loss", "ece"}`` as floats (unprefixed names).
    """
    if logits.ndim != 2 or logits.shape[1] != num_classes or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, {num_classes}] and labels [N], got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    values = _classification_tensors(logits, labels.to(logits.device), num_classes)
    return {k: float(v) for k, v in values.items()}
