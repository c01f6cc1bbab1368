"""extune.augment: batched views, explainers, ExCon saliency masks and EDDA occlusions.

Everything takes and returns tensors on the caller's device; nothing here imports ray, optuna
or mlflow.

- views: :class:`SupConViews`, :func:`standard_view`, :func:`to_unit`, :func:`normalize`,
  :func:`denormalize`, :func:`shift_hue`;
- explainers: :func:`create_explainer`, :func:`list_explainers`, :func:`register_explainer`,
  :class:`Explainer`, :func:`grad_cam`;
- ExCon masks: :func:`mask_salient`, :func:`keep_mask`;
- EDDA occlusions: :func:`top_fraction_mask`, :func:`random_fraction_mask`, :func:`fill`,
  :func:`nonsalient_occlusion`, :func:`salient_occlusion`, their ``random_*`` baselines,
  :func:`soft_targets`.
"""

from __future__ import annotations

from extune.augment.explainers import (
    Explainer,
    create_explainer,
    grad_cam,
    list_explainers,
    minmax_normalize,
    register_explainer,
    resolve_layer,
)
from extune.augment.masks import keep_mask, mask_salient
from extune.augment.model_state import eval_mode, preserved_model_state
from extune.augment.occlusion import (
    fill,
    fraction_count,
    nonsalient_occlusion,
    random_fraction_mask,
    random_nonsalient_occlusion,
    random_salient_occlusion,
    salient_occlusion,
    soft_targets,
    top_fraction_mask,
)
from extune.augment.views import (
    SupConViews,
    denormalize,
    normalize,
    shift_hue,
    standard_view,
    to_unit,
)

__all__ = [
    # views
    "SupConViews",
    "standard_view",
    "to_unit",
    "normalize",
    "denormalize",
    "shift_hue",
    # explainers
    "Explainer",
    "register_explainer",
    "list_explainers",
    "create_explainer",
    "grad_cam",
    "resolve_layer",
    "minmax_normalize",
    "preserved_model_state",
    "eval_mode",
    # ExCon masks
    "mask_salient",
    "keep_mask",
    # EDDA occlusions
    "fraction_count",
    "top_fraction_mask",
    "random_fraction_mask",
    "fill",
    "nonsalient_occlusion",
    "salient_occlusion",
    "random_nonsalient_occlusion",
    "random_salient_occlusion",
    "soft_targets",
]
