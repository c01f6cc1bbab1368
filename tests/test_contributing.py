"""CONTRIBUTING.md's extension examples run as written, and what they register works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "CONTRIBUTING.md").read_text(), re.S)


def test_each_extension_example_registers_a_working_name(tiny_config):
    from extune.augment.explainers import EXPLAINERS
    from extune.spaces.registry import SPACES
    from extune.train.datasets.base import DATASETS
    from extune.train.methods import METHODS, config_model, create_method

    examples = _examples()
    assert len(examples) == 4  # method, explainer, data set, space
    added = [("method", METHODS, "label_noise"), ("explainer", EXPLAINERS, "gradient_sign"),
             ("data set", DATASETS, "noise"), ("space", SPACES, "ce_small")]
    try:
        for code in examples:
            exec(compile(code, "CONTRIBUTING.md", "exec"), {})  # noqa: S102 (our own docs)
        for _, registry, name in added:
            assert name in registry
        cfg = tiny_config.with_overrides({"method": "label_noise"})
        method = create_method(cfg, config_model(cfg, 4), 4, (0.5,) * 3, (0.25,) * 3)
        images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
        assert method.step(images, torch.arange(8) % 4, 0).loss.isfinite()
        explainer = EXPLAINERS.get("gradient_sign")()
        model = config_model(cfg, 4).eval()
        maps = explainer(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
        assert maps.shape == (2, 1, 16, 16)
        data = DATASETS.get("noise").loader(cfg.data)
        assert len(data.train.images) == 100
    finally:
        for _, registry, name in added:
            registry.remove(name)
    with pytest.raises(Exception, match="label_noise"):
        METHODS.get("label_noise")
