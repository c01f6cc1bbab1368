"""Projection head of the contrastive methods."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """MLP ``Linear -> ReLU -> Linear`` whose output is L2-normalised (SupCon's head).

    Args:
        in_dim: width of the encoder features.
        hidden_dim: width of the hidden layer.
        out_dim: width of the projection.

    Shapes:
        ``forward(features [B, in_dim]) -> [B, out_dim]``, each row of unit L2 norm.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"ProjectionHead: {name} must be >= 1, got {value}")
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.mlp(features), dim=1)
