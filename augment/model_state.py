"""Leave a model as you found it: the two context managers every explanation and evaluation
pass runs under (pytorch-grad-cam releases its hooks the same way; its ``model.eval()`` in a
constructor is the counter-example).

- :func:`eval_mode`: eval mode for the body, every module's ``training`` flag restored after
  (evaluation: no BatchNorm update, no dropout);
- :func:`preserved_model_state`: that, plus no parameter gradient touched and every hook the
  body added removed (explainers: they hook layers and back-propagate).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode", "preserved_model_state"]

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks",
               "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` (and every submodule) in eval mode; restore each module's flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[None]:
    """Run the body with ``model`` in eval mode and leave the model exactly as found.

    Restores every module's ``training`` flag; sets each parameter's ``.grad`` to ``None`` for
    the body (so nothing can accumulate into a gradient the caller holds) and puts back the very
    same tensors afterwards; removes every hook that was added to any module during the body.
    BatchNorm statistics are untouched because eval mode does not update them.
    """
    modules = list(model.modules())
    modes = [m.training for m in modules]
    params = list(model.parameters())
    grads = [p.grad for p in params]
    hook_keys = [{d: set(getattr(m, d, {})) for d in _HOOK_DICTS} for m in modules]
    full_backward = [getattr(m, "_is_full_backward_hook", None) for m in modules]
    for p in params:
        p.grad = None
    model.eval()
    try:
        yield
    finally:
        for m, mode, keys, full in zip(modules, modes, hook_keys, full_backward, strict=True):
            m.training = mode
            m._is_full_backward_hook = full
            for d, before in keys.items():
                hooks = getattr(m, d, None)
                if hooks is not None:
                    for k in [k for k in hooks if k not in before]:
                        del hooks[k]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
