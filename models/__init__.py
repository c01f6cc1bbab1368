"""extune.models: backbones (registry), the ``Network`` (encoder + heads) and the SupCon loss.

Knows nothing of Ray, Optuna or MLflow.
"""

from __future__ import annotations

from extune.models.backbones import create_backbone, list_backbones, register_backbone
from extune.models.heads import ProjectionHead
from extune.models.losses import SupConLoss
from extune.models.network import Network, create_model

__all__ = [
    "Network",
    "ProjectionHead",
    "SupConLoss",
    "create_backbone",
    "create_model",
    "list_backbones",
    "register_backbone",
]
