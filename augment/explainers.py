"""Explainers: a registry of saliency methods with one contract.

Every explainer is called as ``explainer(model, x, target)`` with

- ``model``: an ``nn.Module`` whose ``forward(x)`` returns logits ``[B, C]``;
- ``x``: float ``[B, 3, H, W]`` in normalised space;
- ``target``: int64 ``[B]``, the class explained for each image;

and returns saliency float32 ``[B, 1, H, W]`` in ``[0, 1]`` on ``x.device`` (never numpy).

The :class:`Explainer` base class is a template method (pytorch-grad-cam's ``BaseCAM``): a
subclass only computes a raw attribution in :meth:`Explainer.attribute`; the base class

1. preserves the model: it runs in eval mode and restores every module's ``training`` flag,
   never touches BatchNorm statistics (eval mode), leaves each parameter's ``.grad`` as it was
   (the same tensor object, or ``None``), and removes any hook added during the call;
2. runs with gradients enabled (also inside ``torch.no_grad()``) and with autocast disabled, in
   float32, on a detached copy of ``x`` (``x`` itself is never modified);
3. post-processes the raw attribution ``[B, K, h, w]`` explicitly, in this order:
   a. channel reduction (``reduction``): ``"abs_sum"`` sums absolute values over channels
      (pixel attributions), ``"none"`` expects one channel already (layer methods);
   b. ReLU when ``relu`` is true (Grad-CAM keeps positive evidence only);
   c. bilinear upsampling to ``H x W`` (``align_corners=False``) when ``h x w`` differs;
   d. per-image min-max normalisation to ``[0, 1]`` (:func:`minmax_normalize`): a constant map
      (range within float32 rounding of its magnitude) becomes all zeros, never NaN;
      non-finite values are zeroed first.

Registered, in this order (the order the built-in search spaces offer them in): ``gradcam``
(fast own implementation, :func:`grad_cam`), and, backed by captum, ``saliency``,
``input_x_gradient``, ``guided_backprop``, ``integrated_gradients``, ``deeplift``.
DeepLift and guided backprop need distinct, non-inplace ``nn.ReLU`` modules in the model.
"""

from __future__ import annotations

import contextlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extune.augment.model_state import preserved_model_state
from extune.errors import RegistryError
from extune.registry import Registry

__all__ = [
    "EXPLAINERS",
    "Explainer",
    "register_explainer",
    "list_explainers",
    "create_explainer",
    "grad_cam",
    "resolve_layer",
    "minmax_normalize",
]

EXPLAINERS: Registry[type[Explainer]] = Registry("explainer")
"""Explainer classes by name (``explain.explainer``), iterated in registration order."""

_E = TypeVar("_E", bound="Explainer")


# ------------------------------------------------------------------------------------ registry
def register_explainer(name: str) -> Callable[[type[_E]], type[_E]]:
    """Class decorator: register an :class:`Explainer` subclass under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def deco(cls: type[_E]) -> type[_E]:
        EXPLAINERS.register(name, cls)
        cls.name = name
        return cls

    return deco


def list_explainers() -> list[str]:
    """Names of the registered explainers, sorted."""
    return EXPLAINERS.names()


def create_explainer(name: str, *, layer: str | None = None, steps: int = 16) -> Explainer:
    """Build a registered explainer.

    Args:
        name: a name from :func:`list_explainers`.
        layer: layer methods (``gradcam``): the explained layer, resolved by
            :func:`resolve_layer`; ``None`` is the model's default layer. Ignored by the others.
        steps: ``integrated_gradients``: interpolation steps (>= 1). Ignored by the others.

    Raises:
        RegistryError: unknown ``name``; the message lists the registered names.
        ValueError: ``steps < 1``.
    """
    return EXPLAINERS.get(name)(layer=layer, steps=steps)


# ------------------------------------------------------------------------------ model handling
def resolve_layer(model: nn.Module, layer: str | None) -> nn.Module:
    """The module named ``layer`` in ``model``.

    Uses ``model.get_layer(layer)`` when the model has that method (``extune.models.Network``:
    ``None`` is the backbone's default layer), else ``model.get_submodule(layer)`` (dotted path).

    Raises:
        RegistryError: the layer does not exist, or ``layer`` is ``None`` and the model has no
            ``get_layer`` (the message lists the model's top-level children).
    """
    get_layer = getattr(model, "get_layer", None)
    if callable(get_layer):
        return get_layer(layer)
    children = ", ".join(n for n, _ in model.named_children())
    if layer is None:
        raise RegistryError(f"{type(model).__name__} has no default layer to explain (no "
                            f"get_layer method); set explain.layer to one of: {children}")
    try:
        return model.get_submodule(layer)
    except AttributeError:
        raise RegistryError(f"unknown layer '{layer}' in {type(model).__name__}; its layers are: "
                            f"{children} (or a dotted path such as 'layer1.0')") from None




# ------------------------------------------------------------------------------ postprocessing
def minmax_normalize(saliency: Tensor) -> Tensor:
    """Per-image min-max normalisation to ``[0, 1]``.

    Non-finite values are set to 0 first. A map whose range is within float32 rounding of its
    magnitude (a constant map) becomes all zeros.

    Args:
        saliency: float ``[B, 1, H, W]``.

    Returns:
        float ``[B, 1, H, W]`` in ``[0, 1]``.
    """
    s = torch.nan_to_num(saliency, nan=0.0, posinf=0.0, neginf=0.0)
    lo = s.amin(dim=(1, 2, 3), keepdim=True)
    hi = s.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    scale = torch.maximum(hi.abs(), lo.abs())
    varies = span > 4 * torch.finfo(s.dtype).eps * scale
    out = (s - lo) / torch.where(varies, span, torch.ones_like(span))
    return torch.where(varies, out, torch.zeros_like(out)).clamp_(0.0, 1.0)


def _postprocess(raw: Tensor, size: tuple[int, int], *, reduction: str, relu: bool) -> Tensor:
    """Steps 3a-3d of the module docstring: ``[B, K, h, w]`` -> ``[B, 1, H, W]`` in ``[0, 1]``."""
    if reduction == "abs_sum":
        raw = raw.abs().sum(dim=1, keepdim=True)
    elif raw.shape[1] != 1:
        raise ValueError(f"expected a one-channel attribution, got shape {tuple(raw.shape)}")
    if relu:
        raw = F.relu(raw)
    if tuple(raw.shape[-2:]) != tuple(size):
        raw = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)
    return minmax_normalize(raw)


def _check_inputs(x: Tensor, target: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    if target.shape != (x.shape[0],):
        raise ValueError(f"target must be [B] = [{x.shape[0]}], got shape {tuple(target.shape)}")
    if target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target must be an integer tensor, got {target.dtype}")


def _explain(model: nn.Module, x: Tensor, target: Tensor,
             attribute: Callable[[Tensor, Tensor], Tensor], *, reduction: str,
             relu: bool) -> Tensor:
    """Shared frame of every explainer: checks, state preservation, float32 grad mode, postproc."""
    _check_inputs(x, target)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autocast(device_type=x.device.type, enabled=False))
        stack.enter_context(preserved_model_state(model))
        stack.enter_context(warnings.catch_warnings())
        # captum announces the temporary hooks of deeplift/guided_backprop on every call.
        warnings.filterwarnings("ignore", message="Setting .*hooks", category=UserWarning)
        xf = x.detach().to(torch.float32).clone().requires_grad_(True)
        raw = attribute(xf, target.detach().long()).detach().to(torch.float32)
        return _postprocess(raw, tuple(x.shape[-2:]), reduction=reduction, relu=relu)


# --------------------------------------------------------------------------------- base class
class Explainer(ABC):
    """Base class (template method): subclasses implement :meth:`attribute` only.

    Class attributes configure the documented post-processing (module docstring, step 3):

    Attributes:
        name: the registered name (set by :func:`register_explainer`).
        reduction: ``"abs_sum"`` for pixel attributions ``[B, 3, H, W]``, ``"none"`` for
            one-channel layer maps ``[B, 1, h, w]``.
        relu: keep only positive evidence before normalising.
        uses_layer: whether the ``layer`` argument matters.
        uses_steps: whether the ``steps`` argument matters.
    """

    name: ClassVar[str] = ""
    reduction: ClassVar[Literal["abs_sum", "none"]] = "abs_sum"
    relu: ClassVar[bool] = False
    uses_layer: ClassVar[bool] = False
    uses_steps: ClassVar[bool] = False

    def __init__(self, *, layer: str | None = None, steps: int = 16) -> None:
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.layer = layer
        self.steps = int(steps)

    def __call__(self, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        """Explain ``model``'s logit ``target`` at ``x``.

        Args:
            model: ``forward(x) -> logits [B, C]``.
            x: float ``[B, 3, H, W]`` normalised.
            target: int64 ``[B]``.

        Returns:
            float32 ``[B, 1, H, W]`` in ``[0, 1]`` on ``x.device``.
        """
        return _explain(model, x, target, lambda xf, t: self.attribute(model, xf, t),
                        reduction=self.reduction, relu=self.relu)

    @abstractmethod
    def attribute(self, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        """Raw attribution (called in eval mode, with grad, float32, ``x`` a fresh leaf).

        Args:
            model: the model, in eval mode.
            x: float32 ``[B, 3, H, W]`` leaf tensor that requires grad.
            target: int64 ``[B]``.

        Returns:
            ``[B, 3, H, W]`` (``reduction="abs_sum"``) or ``[B, 1, h, w]`` (``"none"``).
        """

    def __repr__(self) -> str:
        cls = type(self).__name__
        return f"{cls}(name={self.name!r}, layer={self.layer!r}, steps={self.steps})"


# ------------------------------------------------------------------------------------ Grad-CAM
def _grad_cam_raw(model: nn.Module, layer: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Grad-CAM before ReLU: ``sum_k w_k A_k`` with ``w_k`` the spatial mean of ``dy_t / dA_k``.

    One forward, recorded for autograd only after ``layer``: everything up to it runs without
    a graph, and the layer's output continues as a fresh leaf ``A`` (a clone of it, so that
    in-place operations after the layer are allowed). The gradient goes to ``A`` only
    (``torch.autograd.grad``), so no parameter gradient is computed. The forward of the
    stages before the layer costs what an inference forward does (6-11% less than a recorded
    one, measured on a ResNet-18 on CPU).

    Returns:
        ``[B, 1, h, w]`` at the layer's resolution.
    """
    captured: list[Tensor] = []

    def continue_with_leaf(_m: nn.Module, _i: object, out: object) -> object:
        if not isinstance(out, Tensor):
            return None
        torch.set_grad_enabled(True)  # record the rest (the no_grad block restores the mode)
        leaf = out.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()

    handle = layer.register_forward_hook(continue_with_leaf)
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    if not captured or captured[-1].dim() != 4:
        raise ValueError(f"Grad-CAM layer {type(layer).__name__} must output [B, K, h, w] during "
                         "the forward")
    activation = captured[-1]
    score = logits.gather(1, target.view(-1, 1)).sum()
    if not score.requires_grad:
        raise ValueError(f"the logits do not depend on the output of Grad-CAM layer "
                         f"{type(layer).__name__}")
    (grads,) = torch.autograd.grad(score, activation)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return (weights * activation).sum(dim=1, keepdim=True)


def grad_cam(model: nn.Module, layer: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Fast Grad-CAM (Selvaraju et al. 2017) on a given layer module.

    ``ReLU(sum_k w_k A_k)`` upsampled bilinearly to ``H x W`` and min-max normalised per image;
    equal to captum's ``LayerGradCam(..., relu_attributions=True)`` + bilinear
    ``LayerAttribution.interpolate`` + :func:`minmax_normalize`, with less work. Leaves the model
    as found (see :func:`preserved_model_state`).

    Args:
        model: ``forward(x) -> logits [B, C]``.
        layer: a submodule of ``model`` whose output is ``[B, K, h, w]``.
        x: float ``[B, 3, H, W]`` normalised.
        target: int64 ``[B]``.

    Returns:
        float32 ``[B, 1, H, W]`` in ``[0, 1]`` on ``x.device``.
    """
    return _explain(model, x, target, lambda xf, t: _grad_cam_raw(model, layer, xf, t),
                    reduction="none", relu=True)


@register_explainer("gradcam")
class GradCAM(Explainer):
    """Grad-CAM on ``layer`` (fast own implementation, see :func:`grad_cam`)."""

    reduction = "none"
    relu = True
    uses_layer = True

    def attribute(self, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        return _grad_cam_raw(model, resolve_layer(model, self.layer), x, target)


# ----------------------------------------------------------------------- captum pixel methods
@register_explainer("saliency")
class Saliency(Explainer):
    """Vanilla gradient ``|dy_t / dx|`` (Simonyan et al. 2014), abs-summed over channels."""

    def attribute(self, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        from captum.attr import Saliency as _Saliency

        return _Saliency(model).attribute(x, target=target, abs=True)


@register_explainer("input_x_gradient")
class InputXGradient(Explainer):
    """Input times gradient (Shrikumar et al. 2016), in normalised space."""

    def attribute(self, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        from captum.attr import InputXGradient as _InputXGradient

        return _InputXGradient(model).attribute(x, target=target)


@register_explainer("guided_backprop")
class GuidedBackprop(Explainer):
    """Guided backpropagation (Springenberg et al. 2015)."""

    def attribute(self, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        from captum.attr import GuidedBackprop as _GuidedBackprop

        return _GuidedBackprop(model).attribute(x, target=target)


@register_explainer("integrated_gradients")
class IntegratedGradients(Explainer):
    """Integrated gradients (Sundararajan et al. 2017), ``steps`` Gauss-Legendre steps.

    Baseline: 0 in normalised space, i.e. the data set's mean colour. The interpolated images
    are evaluated ``B`` at a time (``steps`` forwards of the batch size).
    """

    uses_steps = True

    def attribute(self, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        from captum.attr import IntegratedGradients as _IG

        return _IG(model).attribute(x, baselines=torch.zeros_like(x), target=target,
                                    n_steps=self.steps, internal_batch_size=x.shape[0])


@register_explainer("deeplift")
class DeepLift(Explainer):
    """DeepLIFT rescale rule (Shrikumar et al. 2017), baseline 0 (the mean colour)."""

    def attribute(self, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        from captum.attr import DeepLift as _DeepLift

        return _DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=target)
