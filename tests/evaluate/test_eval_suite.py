"""evaluate_split: documented keys, plain floats, determinism, model left as found."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import MEAN, STD, QuadrantModel, Split, TinyNet, noise_images, quadrant_mask
from PIL import Image

from extune.evaluate import evaluate_split, metric_names, saliency_grid
from extune.train.config import EvalConfig


def _cfg(**kw: object) -> EvalConfig:
    base = {"batch_size": 16, "explain_samples": 12, "deletion_steps": 4}
    return EvalConfig(**{**base, **kw})


def _split(n: int = 40, masks: bool = True) -> Split:
    labels = torch.arange(n) % 3
    return Split(noise_images(n, 16), labels, quadrant_mask(n, 16) if masks else None)


def _grad_explainer(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|d logit_target / d x| summed over channels, min-max normalised per image."""
    x = x.detach().requires_grad_(True)
    score = model(x).gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(score, x)
    sal = grad.abs().sum(1, keepdim=True)
    lo = sal.amin((2, 3), keepdim=True)
    hi = sal.amax((2, 3), keepdim=True)
    return (sal - lo) / (hi - lo).clamp(min=1e-12)


def test_full_evaluation_returns_documented_keys_and_restores_model() -> None:
    torch.manual_seed(0)
    net = TinyNet().train()
    state = copy.deepcopy(net.state_dict())
    cfg = _cfg()
    out = evaluate_split(net, _split(), mean=MEAN, std=STD, num_classes=3, cfg=cfg,
                         explainer=_grad_explainer, prefix="test")
    assert list(out) == metric_names("test", corruptions=cfg.corruptions, explain=True,
                                     masks=True)
    assert {"test/accuracy", "test/top5", "test/loss", "test/ece", "test/shift/accuracy",
            "test/shift/ece", "test/shift/gaussian_blur/ece", "test/adv/fgsm_accuracy",
            "test/avg_drop", "test/increase_confidence", "test/alignment",
            "test/deletion_auc", "test/insertion_auc", "test/pointing_game",
            "test/saliency_in_mask"} <= set(out)
    assert all(type(v) is float for v in out.values())
    assert net.training and all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k  # no BatchNorm update, no parameter change
    again = evaluate_split(net, _split(), mean=MEAN, std=STD, num_classes=3, cfg=cfg,
                           explainer=_grad_explainer, prefix="test")
    assert again == pytest.approx(out, nan_ok=True)


def test_cheap_and_partial_evaluations() -> None:
    net = TinyNet()
    cheap = evaluate_split(net, _split(), mean=MEAN, std=STD, num_classes=3, cfg=_cfg(),
                           explainer=_grad_explainer, full=False)
    assert list(cheap) == ["val/accuracy", "val/top5", "val/loss", "val/ece"]
    cfg = _cfg(corruptions=["contrast"])
    no_masks = evaluate_split(net, _split(masks=False), mean=MEAN, std=STD, num_classes=3,
                              cfg=cfg, explainer=_grad_explainer)
    assert list(no_masks) == metric_names("val", corruptions=["contrast"], explain=True)
    assert no_masks["shift/accuracy"] == no_masks["shift/contrast/accuracy"]
    no_explainer = evaluate_split(net, _split(), mean=MEAN, std=STD, num_classes=3, cfg=cfg)
    assert list(no_explainer) == metric_names("val", corruptions=["contrast"])


def test_known_model_scores_through_the_suite() -> None:
    """QuadrantModel + a map of the quadrant: perfect localisation, good faithfulness."""

    def right(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return quadrant_mask(x.shape[0], x.shape[-1]).float()

    split = Split(noise_images(20, 32), torch.zeros(20, dtype=torch.long), quadrant_mask(20))
    out = evaluate_split(QuadrantModel(), split, mean=MEAN, std=STD, num_classes=2,
                         cfg=_cfg(explain_samples=20, corruptions=[]), explainer=right)
    assert out["val/accuracy"] == 1.0 and out["val/top5"] == 1.0
    assert out["val/pointing_game"] == 1.0 and out["val/saliency_in_mask"] == 1.0
    assert out["val/alignment"] > 0.3
    assert out["val/deletion_auc"] < 0.4 < 0.6 < out["val/insertion_auc"]


def test_saliency_grid_writes_labelled_png(tmp_path: Path) -> None:
    images = noise_images(4, 32)
    sal = torch.rand(4, 1, 32, 32)
    views = {"masked view": images.float() / 255 * 0.5}
    out = saliency_grid(images, sal, views, tmp_path / "a" / "grid.png",
                        titles=["a", "b", "c", "d"], correct=[True, False, True, True],
                        heading="excon")
    assert out == tmp_path / "a" / "grid.png"
    with Image.open(out) as im:
        three = im.size
    two = saliency_grid(images, sal, None, tmp_path / "b.png")
    with Image.open(two) as im:
        assert im.size[1] < three[1]  # one row less
    assert saliency_grid(images, sal, None, None) is None
    with pytest.raises(ValueError, match="masked view"):
        saliency_grid(images, sal, {"masked view": images[:2].float()}, tmp_path / "c.png")


@pytest.mark.parametrize("correct", [[True, False, True, True], None])
def test_saliency_grid_colours_captions_by_correctness(tmp_path: Path, correct) -> None:
    gray = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)  # red or green: captions only
    out = saliency_grid(gray, torch.zeros(4, 1, 32, 32), None, tmp_path / "g.png",
                        titles=["a", "b", "c", "d"], correct=correct)
    with Image.open(out) as im:
        r, g, b = torch.as_tensor(np.array(im.convert("RGB")), dtype=torch.int32).unbind(-1)
    green = bool(((g > 90) & (r < 60) & (b < 60)).any())
    red = bool(((r > 200) & (g < 60) & (b < 60)).any())
    assert (green, red) == ((True, True) if correct else (False, False))


def test_every_metric_name_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    names = [n.replace("{p}/shift", "{s}").replace("{p}/adv", "{a}")
             for n in metric_names("{p}", corruptions=["{c}"], explain=True, masks=True,
                                   audit=True)]
    missing = [n for n in names if f"| `{n}` |" not in doc]
    assert not missing


def test_works_when_called_under_no_grad() -> None:
    """FGSM and the explainer turn gradients on themselves."""
    with torch.no_grad():
        out = evaluate_split(TinyNet(), _split(16), mean=MEAN, std=STD, num_classes=3,
                             cfg=_cfg(corruptions=[], explain_samples=4),
                             explainer=_grad_explainer)
    assert 0.0 <= out["adv/fgsm_accuracy"] <= 1.0 and "val/alignment" in out
    with pytest.raises(ValueError, match="num_classes"):
        evaluate_split(TinyNet(), _split(16), mean=MEAN, std=STD, num_classes=5, cfg=_cfg())


def test_cheap_evaluation_computes_the_groups_of_asked_metrics() -> None:
    from extune.evaluate.suite import metric_groups

    assert metric_groups("val", ["val/accuracy"]) == set()
    assert metric_groups("val", ["shift/ece", "adv/fgsm_accuracy", "val/pointing_game"]) == {
        "shift", "adv", "explain"}
    assert metric_groups("test", ["shift/ece", "test/shift/ece"]) == {"shift"}
    net = TinyNet()
    out = evaluate_split(net, _split(), mean=MEAN, std=STD, num_classes=3, cfg=_cfg(),
                         explainer=_grad_explainer, full=False, metrics=["adv/fgsm_accuracy"])
    assert list(out) == ["val/accuracy", "val/top5", "val/loss", "val/ece", "adv/fgsm_accuracy"]


def test_the_audit_group_runs_when_asked_on_the_explanation_images() -> None:
    """``audit=True`` (or an audit key among ``metrics``) adds the audit, on the images and
    explainer of the explanation metrics; its per-image scores average to its metrics."""
    from extune.evaluate.audit import AuditSettings, audit_scores
    from extune.evaluate.explanations import explanation_subset
    from extune.evaluate.suite import metric_groups

    torch.manual_seed(0)
    net, split, cfg = TinyNet().eval(), _split(masks=False), _cfg(corruptions=[])
    per_image: dict[str, torch.Tensor] = {}
    out = evaluate_split(net, split, mean=MEAN, std=STD, num_classes=3, cfg=cfg,
                         explainer=_grad_explainer, prefix="test", audit=True,
                         per_image=per_image)
    assert list(out) == metric_names("test", explain=True, audit=True)
    index = explanation_subset(len(split.images), cfg.explain_samples, seed=0)
    alone = audit_scores(net, _grad_explainer, split.images[index], mean=MEAN, std=STD,
                         settings=AuditSettings(cascade=True))  # the cascade's last row
    for m, v in alone.summary().items():
        assert out[f"test/{m}"] == pytest.approx(v, abs=1e-6), m
    for m in alone.scores:
        assert per_image[f"test/{m}"].shape == index.shape
        assert float(per_image[f"test/{m}"].nanmean()) == pytest.approx(out[f"test/{m}"])
    assert metric_groups("val", ["val/randomisation_pass"]) == {"audit"}
    cheap = evaluate_split(net, split, mean=MEAN, std=STD, num_classes=3, cfg=cfg,
                           explainer=_grad_explainer, full=False,
                           metrics=["val/sparseness"])
    assert list(cheap) == metric_names("val", full=False) + [
        f"val/{m}" for m in alone.summary()]  # the audit alone, no other group
    full = evaluate_split(net, split, mean=MEAN, std=STD, num_classes=3, cfg=cfg,
                          explainer=_grad_explainer)
    assert "val/sparseness" not in full  # full alone leaves the audit out
    no_explainer = evaluate_split(net, split, mean=MEAN, std=STD, num_classes=3, cfg=cfg,
                                  audit=True)
    assert "val/sparseness" not in no_explainer


def test_evaluation_names_each_part_as_it_starts() -> None:
    parts: list[str] = []
    evaluate_split(TinyNet(), _split(), mean=MEAN, std=STD, num_classes=3,
                   cfg=_cfg(corruptions=["contrast", "brightness"]), explainer=_grad_explainer,
                   part=parts.append)
    assert parts == ["classification", "corruptions 1/2 (contrast)",
                     "corruptions 2/2 (brightness)", "FGSM", "explanation metrics"]
    parts.clear()
    evaluate_split(TinyNet(), _split(), mean=MEAN, std=STD, num_classes=3,
                   cfg=_cfg(corruptions=[]), explainer=_grad_explainer, part=parts.append,
                   audit=True)
    assert parts[-2:] == ["explanation metrics", "explanation audit"]


def test_summary_rows_put_test_accuracy_first_and_group_by_kind() -> None:
    from extune.evaluate.metric_info import KINDS, summary_rows

    evaluation = [*metric_names("val", corruptions=["contrast", "brightness"], explain=True,
                                masks=True, audit=True),
                  *metric_names("test", corruptions=["contrast", "brightness"], explain=True,
                                masks=True, audit=True)]
    keys = ["epoch", "train/loss", "train/lr", "train/images_per_s", "train/driven_share",
            *sorted(evaluation)]  # alphabetical, as the table used to be
    rows = summary_rows(keys)
    assert (rows[0].section, rows[0].name) == ("classification", "accuracy")
    assert list(rows[0].cells) == ["test", "val"]  # the test split is the result
    sections = [r.section for r in rows]
    assert list(dict.fromkeys(sections)) == [*KINDS, "per corruption", "training"]
    assert [r.name for r in rows if r.section == "robustness"] == [
        "shift/accuracy", "shift/ece", "adv/fgsm_accuracy"]
    assert [r.name for r in rows if r.section == "audit"][:2] == [
        "randomisation_similarity", "randomisation_pass"]  # after the explanations
    assert [(r.name, r.cells["test"]) for r in rows if r.section == "per corruption"] == [
        ("brightness", ("test/shift/brightness/accuracy", "test/shift/brightness/ece")),
        ("contrast", ("test/shift/contrast/accuracy", "test/shift/contrast/ece"))]
    assert [r.name for r in rows if r.section == "training"] == ["loss", "driven_share"]
    shown = [k for r in rows for cell in r.cells.values() for k in cell]
    assert sorted(shown) == sorted(k for k in keys if k not in (
        "epoch", "train/lr", "train/images_per_s"))  # each once, bookkeeping left out


def test_per_image_outputs_average_to_the_reported_metrics() -> None:
    """What a study resamples: each per-image output averages back to its metric."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    cfg = _cfg()
    split = _split()
    per_image: dict[str, torch.Tensor] = {}
    out = evaluate_split(net, split, mean=MEAN, std=STD, num_classes=3, cfg=cfg,
                         explainer=_grad_explainer, prefix="test", per_image=per_image)
    n = len(split.labels)
    assert torch.equal(per_image["test/label"], split.labels)
    assert per_image["test/correct"].shape == (n,) and per_image["test/confidence"].shape == (n,)
    assert float(per_image["test/correct"].float().mean()) == pytest.approx(out["test/accuracy"])
    assert float(per_image["test/adv/fgsm_correct"].float().mean()) == pytest.approx(
        out["test/adv/fgsm_accuracy"])
    for c in cfg.corruptions:
        assert float(per_image[f"test/shift/{c}/correct"].float().mean()) == pytest.approx(
            out[f"test/shift/{c}/accuracy"])
    index = per_image["test/explain_index"]
    assert len(index) == cfg.explain_samples and index.max() < n
    for m in ("avg_drop", "increase_confidence", "alignment", "deletion_auc", "insertion_auc",
              "pointing_game", "saliency_in_mask"):
        assert per_image[f"test/{m}"].shape == index.shape
        assert float(per_image[f"test/{m}"].nanmean()) == pytest.approx(out[f"test/{m}"])
    assert all(v.device.type == "cpu" for v in per_image.values())
