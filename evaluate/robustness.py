"""Adversarial robustness: accuracy under FGSM in [0, 1] pixel space (captum)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extune.augment.model_state import eval_mode
from extune.augment.views import to_unit
from extune.evaluate.batching import batches, model_device, stats

__all__ = ["PixelSpaceModel", "fgsm_attack", "fgsm_accuracy", "fgsm_correct"]


class PixelSpaceModel(nn.Module):
    """Wrap a classifier that takes normalised input so that it takes [0, 1] pixels.

    ``forward(x) = model((x - mean) / std)`` for ``x`` float ``[B, 3, H, W]`` in [0, 1].
    The statistics are non-persistent buffers created on the model's device, so the wrapper
    follows ``.to(device)`` and adds nothing to a state dict.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        device = model_device(model, torch.device("cpu"))
        self.register_buffer("mean", stats(mean, device), persistent=False)
        self.register_buffer("std", stats(std, device), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def _summed_ce(logits: Tensor, labels: Tensor) -> Tensor:
    # Shape [1]: captum differentiates each output element; one summed loss gives every
    # image its own gradient (images do not interact in eval mode) with a single backward.
    return F.cross_entropy(logits.float(), labels, reduction="sum").reshape(1)


def _attack(pixel_model: PixelSpaceModel, x: Tensor, labels: Tensor, eps: float) -> Tensor:
    if eps == 0:
        return x.detach().clone()
    from captum.robust import FGSM  # imported on use: keeps `import extune.evaluate` light

    attack = FGSM(pixel_model, loss_func=_summed_ce, lower_bound=0.0, upper_bound=1.0)
    # captum leaves input components whose |gradient| <= 1e-6 unperturbed; canonical FGSM
    # (Goodfellow et al. 2015) moves every component with a non-zero gradient.
    attack.zero_thresh = 0.0
    inputs = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        adv = attack.perturb(inputs, epsilon=float(eps), target=labels)
    return adv.detach()


def fgsm_attack(model: nn.Module, x: Tensor, labels: Tensor, *, mean: Sequence[float],
                std: Sequence[float], eps: float) -> Tensor:
    """Untargeted FGSM of one batch in pixel space: ``clip(x + eps * sign(grad_x CE), 0, 1)``.

    Uses ``captum.robust.FGSM`` on :class:`PixelSpaceModel` with bounds [0, 1] and the
    cross-entropy against the true labels. Every input component with a non-zero
    gradient moves by ``eps`` (captum's 1e-6 gradient threshold is set to 0). Only the input
    gradient is computed (``torch.autograd.grad``), so parameter ``.grad`` is left untouched.
    The caller chooses the model's mode (use eval mode for evaluation).

    Args:
        model: Classifier on normalised input, ``[B,3,H,W] -> [B,C]``.
        x: Float images ``[B, 3, H, W]`` in [0, 1].
        labels: int64 ``[B]``.
        mean: Per-channel mean in [0, 1].
        std: Per-channel standard deviation in [0, 1].
        eps: L-infinity step in [0, 1] pixel units (4/255 is 4 grey levels).

    Returns:
        Adversarial images ``[B, 3, H, W]`` in [0, 1], detached.
    """
    return _attack(PixelSpaceModel(model, mean, std), x, labels, eps)


def fgsm_correct(model: nn.Module, images: Tensor, labels: Tensor, *, mean: Sequence[float],
                 std: Sequence[float], eps: float, batch_size: int = 256) -> Tensor:
    """Whether each FGSM-perturbed image is still classified right (model in eval mode,
    training flag restored).

    Args:
        model: Classifier on normalised input.
        images: ``uint8 [N, 3, H, W]``.
        labels: int64 ``[N]``.
        mean: Per-channel mean in [0, 1].
        std: Per-channel standard deviation in [0, 1].
        eps: Perturbation size in [0, 1] pixel space.
        batch_size: Images per attack.

    Returns:
        bool ``[N]`` on the model's device.
    """
    device = model_device(model, images.device)
    pixel_model = PixelSpaceModel(model, mean, std)
    correct = []
    with eval_mode(model):
        for sl in batches(len(images), batch_size):
            x = to_unit(images[sl].to(device, non_blocking=True))
            y = labels[sl].to(device, non_blocking=True)
            adv = _attack(pixel_model, x, y, eps)
            with torch.no_grad():
                correct.append(pixel_model(adv).argmax(dim=1) == y)
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool, device=device)


def fgsm_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, mean: Sequence[float],
                  std: Sequence[float], eps: float, batch_size: int = 256) -> float:
    """Top-1 accuracy on FGSM-perturbed images: the mean of :func:`fgsm_correct` (higher is
    more robust; arguments as there)."""
    correct = fgsm_correct(model, images, labels, mean=mean, std=std, eps=eps,
                           batch_size=batch_size)
    return float(correct.sum()) / max(len(images), 1)
