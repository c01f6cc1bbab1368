"""Supervised contrastive loss (Khosla et al. 2020), with masks for fixed-shape batches."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

__all__ = ["SupConLoss"]


class SupConLoss(nn.Module):
    """SupCon loss with ``contrast_mode='all'`` (every view of every sample is an anchor).

    For the ``N = B * V`` views ``z`` (L2-normalised) and an anchor view ``i`` with positives
    ``P(i)`` (other views of samples that are positives of ``i``'s sample) and contrast set
    ``A(i)`` (every other valid view)::

        l_i = -(T / T_base) / |P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / T)
                                                            / sum_{a in A(i)} exp(z_i.z_a / T) )

    The loss is the mean of ``l_i`` over the anchors that have at least one positive; it is
    0 (still attached to the graph) when none has. Unlike SupContrast's reference, anchors
    without positives are left out instead of producing NaN.

    ``valid`` and ``anchor`` let a caller keep fixed shapes without host synchronisation:

    - ``valid[b] = False`` removes sample ``b`` entirely (not an anchor, not a positive, not in
      any denominator), as if it were not in the batch;
    - ``anchor[b] = False`` makes sample ``b`` a negative only: its views are not anchors and
      never positives, but they are in the denominators of the anchors (ExCon's background
      samples with ``background_anchor=False``).

    The computation runs in float32 (float64 for float64 features) with autocast disabled, on
    ``features.device``, with no host synchronisation (no ``.item()``, no boolean indexing).

    Args:
        temperature: ``T``, divides the cosine similarities.
        base_temperature: ``T_base``; the loss is scaled by ``T / T_base``.
    """

    def __init__(self, temperature: float = 0.1, base_temperature: float = 0.07) -> None:
        super().__init__()
        if not temperature > 0 or not base_temperature > 0:
            raise ValueError(f"SupConLoss: temperatures must be > 0, got temperature="
                             f"{temperature}, base_temperature={base_temperature}")
        self.temperature = float(temperature)
        self.base_temperature = float(base_temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, base_temperature={self.base_temperature}"

    def forward(self, features: Tensor, labels: Tensor | None = None, mask: Tensor | None = None,
                valid: Tensor | None = None, anchor: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            features: ``[B, V, D]`` L2-normalised projections of ``V`` views of ``B`` samples.
            labels: ``[B]`` integer classes; samples with equal labels are positives.
            mask: ``[B, B]`` with ``mask[i, j] = 1`` when sample ``j`` is a positive of sample
                ``i`` (may be asymmetric; ``mask[i, i]`` should be 1 so that the other views
                of ``i`` are positives). Not together with ``labels``. With neither, the
                positives are the other views of the same sample (SimCLR).
            valid: ``[B]`` bool; ``False`` removes the sample entirely. ``None``: all valid.
            anchor: ``[B]`` bool; ``False`` makes the sample a negative only. ``None``: all.

        Returns:
            Scalar loss (float32, or float64 for float64 features).

        Raises:
            ValueError: bad shapes or dtypes, or both ``labels`` and ``mask``.
        """
        pos = self._sample_mask(features, labels, mask)
        batch, views = features.shape[:2]
        device = features.device
        valid = self._flag(valid, "valid", batch, device)
        anchor = self._flag(anchor, "anchor", batch, device)
        # Zeroing removed samples keeps NaN/inf placeholders out of the gradients.
        features = torch.where(valid[:, None, None], features, 0.0)
        with _no_autocast(device):
            features = features.to(torch.promote_types(features.dtype, torch.float32))
            return self._loss(features, pos, valid, valid & anchor, views)

    def _loss(self, features: Tensor, pos: Tensor, valid: Tensor, anchor: Tensor,
              views: int) -> Tensor:
        """Masked SupCon on ``features [B, V, D]``, ``pos [B, B]`` float, ``valid``/``anchor``
        ``[B]`` bool (``anchor`` already implies ``valid``)."""
        n = features.shape[0] * views
        z = torch.cat(torch.unbind(features, dim=1), dim=0)  # [N, D], view-major
        logits = z @ z.T / self.temperature  # [N, N]
        not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
        contrast = not_self & valid.repeat(views)[None, :]  # denominators: valid, not self
        # log-softmax over the contrast set; logsumexp subtracts the row maximum.
        log_denom = torch.logsumexp(logits.masked_fill(~contrast, float("-inf")), dim=1)
        log_prob = logits - log_denom[:, None]
        anchor_n = anchor.repeat(views)
        weight = pos.repeat(views, views) * (contrast & anchor_n[:, None] & anchor_n[None, :])
        is_pos = weight > 0
        # torch.where, not a product: rows without contrast set have log_prob = +inf.
        pos_sum = torch.where(is_pos, weight * log_prob, 0.0).sum(dim=1)
        pos_count = weight.sum(dim=1)
        has_pos = is_pos.any(dim=1)
        mean_log_prob_pos = pos_sum / torch.where(has_pos, pos_count, 1.0)
        row_loss = -(self.temperature / self.base_temperature) * mean_log_prob_pos
        total = torch.where(has_pos, row_loss, 0.0).sum()
        return total / has_pos.sum().clamp_min(1)

    @staticmethod
    def _sample_mask(features: Tensor, labels: Tensor | None, mask: Tensor | None) -> Tensor:
        """Validate ``features`` and return the positive mask ``[B, B]`` (float32)."""
        if features.dim() != 3:
            raise ValueError(f"SupConLoss: features must be [B, V, D], got shape "
                             f"{tuple(features.shape)}")
        batch, views, dim = features.shape
        if batch < 1 or views < 1 or dim < 1:
            raise ValueError(f"SupConLoss: features [B, V, D] must not be empty, got shape "
                             f"{tuple(features.shape)}")
        if not features.is_floating_point():
            raise ValueError(f"SupConLoss: features must be floating point, got {features.dtype}")
        device = features.device
        if labels is not None and mask is not None:
            raise ValueError("SupConLoss: pass labels or mask, not both")
        if labels is not None:
            if labels.shape != (batch,):
                raise ValueError(f"SupConLoss: labels must have shape [B] = ({batch},), got "
                                 f"{tuple(labels.shape)}")
            labels = labels.to(device)
            return (labels[:, None] == labels[None, :]).float()
        if mask is not None:
            if mask.shape != (batch, batch):
                raise ValueError(f"SupConLoss: mask must have shape [B, B] = ({batch}, {batch}),"
                                 f" got {tuple(mask.shape)}")
            return mask.to(device=device, dtype=torch.float32)
        return torch.eye(batch, dtype=torch.float32, device=device)

    @staticmethod
    def _flag(flag: Tensor | None, name: str, batch: int, device: torch.device) -> Tensor:
        """A ``[B]`` bool tensor on ``device`` (all True when ``flag`` is None)."""
        if flag is None:
            return torch.ones(batch, dtype=torch.bool, device=device)
        if flag.shape != (batch,) or flag.dtype != torch.bool:
            raise ValueError(f"SupConLoss: {name} must be a bool tensor of shape [B] = "
                             f"({batch},), got {flag.dtype} of shape {tuple(flag.shape)}")
        return flag.to(device)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast on ``device`` (the loss needs float32 logits at T = 0.1)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
