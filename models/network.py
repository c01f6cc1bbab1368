"""``Network``: encoder + projection head + linear classifier, and ``create_model``."""

from __future__ import annotations

from torch import Tensor, nn

from extune.errors import RegistryError
from extune.models.backbones import create_backbone
from extune.models.heads import ProjectionHead

__all__ = ["Network", "create_model"]


class Network(nn.Module):
    """A backbone with a projection head (contrastive loss) and a linear classifier.

    ``forward`` gives the classifier's logits: it is what explainers explain. Which of the
    heads are trained, and whether the classifier sees detached features (online probe), is
    decided by the training step, not here.

    Args:
        encoder: a backbone (see :func:`extune.models.create_backbone`) with ``feature_dim``
            and ``default_layer``.
        num_classes: outputs of the classifier.
        projection_dim: output width of the projection head.
        projection_hidden: hidden width of the projection head; ``None``: ``feature_dim``.

    Attributes:
        encoder: the backbone, ``[B, 3, H, W] -> [B, D]``.
        head: :class:`ProjectionHead`, ``[B, D] -> [B, projection_dim]`` (L2-normalised).
        classifier: ``nn.Linear(D, num_classes)``.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, projection_dim: int = 128,
                 projection_hidden: int | None = None) -> None:
        super().__init__()
        feature_dim = getattr(encoder, "feature_dim", None)
        if not isinstance(feature_dim, int) or not isinstance(
                getattr(encoder, "default_layer", None), str):
            raise TypeError("Network: the encoder needs int 'feature_dim' and str "
                            "'default_layer' attributes (see extune.models.create_backbone)")
        if num_classes < 1:
            raise ValueError(f"Network: num_classes must be >= 1, got {num_classes}")
        self.encoder = encoder
        hidden = feature_dim if projection_hidden is None else projection_hidden
        self.head = ProjectionHead(feature_dim, hidden, projection_dim)
        self.classifier = nn.Linear(feature_dim, num_classes)

    @property
    def feature_dim(self) -> int:
        """Width ``D`` of the encoder features."""
        return self.encoder.feature_dim

    @property
    def default_layer(self) -> str:
        """The encoder's default layer to explain (its last stage, e.g. ``"layer4"``)."""
        return self.encoder.default_layer

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of images ``x [B, 3, H, W]``."""
        return self.classifier(self.encoder(x))

    def features(self, x: Tensor) -> Tensor:
        """Encoder features ``[B, D]`` of images ``x [B, 3, H, W]``."""
        return self.encoder(x)

    def project(self, features: Tensor) -> Tensor:
        """L2-normalised projections ``[B, projection_dim]`` of ``features [B, D]``."""
        return self.head(features)

    def get_layer(self, name: str | None = None) -> nn.Module:
        """A layer by name, e.g. to hook for Grad-CAM.

        Args:
            name: ``None`` for :attr:`default_layer`; a path inside the encoder (``"layer3"``,
                ``"layer4.1.conv2"``); or a dotted path of the Network (``"encoder.layer3"``,
                ``"head.mlp.0"``).

        Raises:
            RegistryError: no such layer (the message lists the encoder's top-level children).
        """
        name = self.default_layer if name is None else name
        if name:
            for root in (self.encoder, self):
                try:
                    return root.get_submodule(name)
                except AttributeError:
                    pass
        children = ", ".join(n for n, _ in self.encoder.named_children())
        raise RegistryError(f"unknown layer '{name}'; the encoder's layers are: {children} "
                            "(or a dotted path such as 'encoder.layer4.0')")


def create_model(*, backbone: str, num_classes: int, cifar_stem: bool = True,
                 projection_dim: int = 128, projection_hidden: int | None = None) -> Network:
    """Build a :class:`Network` on a registered backbone (fresh weights).

    Args:
        backbone: a name from :func:`extune.models.list_backbones`.
        num_classes: outputs of the classifier.
        cifar_stem: the backbone's small-image stem (see :func:`create_backbone`).
        projection_dim: output width of the projection head.
        projection_hidden: hidden width of the projection head; ``None``: the feature width.

    Raises:
        RegistryError: ``backbone`` is not registered.
    """
    encoder = create_backbone(backbone, cifar_stem=cifar_stem)
    return Network(encoder, num_classes, projection_dim=projection_dim,
                   projection_hidden=projection_hidden)
