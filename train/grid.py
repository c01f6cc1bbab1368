"""The labelled saliency grid of a model on chosen images: what training writes every epoch and
``extune explain`` draws for a checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from extune.augment import Explainer, denormalize
from extune.augment.model_state import eval_mode
from extune.evaluate import saliency_grid
from extune.models import Network
from extune.train.methods import Method

__all__ = ["GRID_NAME", "explanation_grid"]

GRID_NAME = "saliency_grid.png"
"""File name of a run's (and a search trial's) latest grid."""


def explanation_grid(model: Network, method: Method, images: Tensor, labels: Tensor | None,
                     classes: Sequence[str], path: str | Path, *,
                     explainer: Explainer | None = None, heading: str | None = None) -> Path:
    """Write the labelled grid of ``model`` on ``images``.

    Rows: the image; the saliency for the true class; the views ``method`` trains on (ExCon's
    masked view, EDDA's occlusions). Column captions: the true class and the model's
    prediction with its probability, green where right and red where wrong.

    Args:
        model: the network (its mode is restored afterwards).
        method: the training method (normalisation statistics, explainer, extra views).
        images: ``uint8 [N, 3, H, W]`` on the model's device.
        labels: int64 ``[N]`` true classes; ``None`` (images of unknown class): each image is
            explained for the class the model predicts.
        classes: class names by label.
        path: PNG to write.
        explainer: explain with this instead of the method's explainer.
        heading: the figure title.

    Returns:
        ``path``.
    """
    explainer = explainer or method.explainer
    x = method.standard(images)
    with eval_mode(model), torch.no_grad():
        probs = model(x).float().softmax(1)
    confidence, predicted = probs.max(1)
    target = predicted if labels is None else labels
    saliency = explainer(model, x, target)  # [N, 1, H, W]
    views = {label: denormalize(view, method.mean, method.std)
             for label, view in method.grid_views(x, saliency, target).items()}
    predictions = [f"pred {_name(classes, int(p))} {float(c):.2f}"
                   for p, c in zip(predicted, confidence, strict=True)]
    if labels is None:
        titles, correct, explained = predictions, None, "predicted class"
    else:
        titles = [f"true {_name(classes, int(y))}\n{pred}"
                  for y, pred in zip(labels, predictions, strict=True)]
        correct, explained = (predicted == labels).tolist(), "true class"
    written = saliency_grid(images, saliency, views, path, titles=titles, correct=correct,
                            heading=heading, saliency_label=f"{explainer.name}\n({explained})")
    assert written is not None
    return written


def _name(classes: Sequence[str], label: int) -> str:
    return str(classes[label]) if 0 <= label < len(classes) else str(label)
