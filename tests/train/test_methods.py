"""Method steps: ExCon's fixed-shape background trick equals the naive variable-size batch."""

from __future__ import annotations

import pytest
import torch

from extune.errors import RegistryError
from extune.models import SupConLoss
from extune.train.config import Config
from extune.train.methods import ExCon, config_model, create_method

NUM_CLASSES = 4


def _excon(tiny_config, **overrides) -> ExCon:
    cfg = tiny_config.with_overrides({"method": "excon", "excon.warmup_fraction": 0.0, **overrides})
    torch.manual_seed(0)
    model = config_model(cfg, NUM_CLASSES)
    method = create_method(cfg, model, NUM_CLASSES, (0.5,) * 3, (0.25,) * 3)
    assert isinstance(method, ExCon)
    return method


def _batch(n: int = 8, size: int = 16):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % NUM_CLASSES
    return images, labels


@pytest.mark.parametrize("background_anchor", [False, True])
def test_background_loss_equals_naive_reference(tiny_config, background_anchor):
    """Masked rows switched off by `valid` == appending only the rejected masked images."""
    method = _excon(tiny_config, **{"excon.negative_pair": True,
                                    "excon.background_anchor": background_anchor})
    model = method.model.train()
    with torch.no_grad():  # the filter predicts class 0 always: kept exactly where label == 0
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    g = torch.Generator().manual_seed(2)
    masked, view2, view1 = (torch.randn(8, 3, 16, 16, generator=g) for _ in range(3))
    labels = torch.arange(8) % NUM_CLASSES

    torch.manual_seed(3)
    out = method.step_with_background(masked, view2, view1, labels)

    # naive reference: same forward, then variable-size concatenation of rejected samples only
    feats = model.features(torch.cat([masked, view2, view1]))
    f_m, f_2, f_1 = feats.split(8)
    keep = model.classifier(f_m).argmax(1) == labels
    assert keep.tolist() == [True, False, False, False] * 2
    z_m, z_2, z_1 = (model.project(f) for f in (f_m, f_2, f_1))
    view0 = torch.where(keep[:, None], z_m, z_2)
    rejected = ~keep
    features = torch.cat([torch.stack([view0, z_1], 1),
                          torch.stack([z_m[rejected], z_m[rejected]], 1)])
    all_labels = torch.cat([labels, torch.full((int(rejected.sum()),), NUM_CLASSES)])
    anchor = torch.cat([torch.ones(8, dtype=torch.bool),
                        torch.full((int(rejected.sum()),), background_anchor)])
    criterion = SupConLoss(method.cfg.supcon.temperature, method.cfg.supcon.base_temperature)
    expected = criterion(features, all_labels, anchor=anchor)
    probe = torch.nn.functional.cross_entropy(
        model.classifier(torch.cat([torch.where(keep[:, None], f_m, f_2), f_1]).detach()),
        labels.repeat(2))
    assert torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx((expected + probe).item(), rel=1e-5, abs=1e-6)
    assert out.stats["train/mask_keep_rate"].item() == pytest.approx(keep.float().mean().item())
    assert out.stats["train/background_samples"].item() == rejected.sum().item()


def test_kept_masked_views_replace_the_second_random_view(tiny_config, monkeypatch):
    """negative_pair=false: view 0 is the masked image where kept, random view 2 elsewhere."""
    method = _excon(tiny_config)
    images, labels = _batch()
    # saliency: left half salient -> masked image keeps the left half only
    saliency = torch.zeros(8, 1, 16, 16)
    saliency[..., :8] = 1.0
    monkeypatch.setattr(method, "explainer", lambda model, x, target: saliency)
    keep = torch.tensor([True, False] * 4)
    stub_logits = torch.nn.functional.one_hot(torch.where(keep, labels, (labels + 1) % 4), 4)
    monkeypatch.setattr(method.model, "forward", lambda x: stub_logits.float())
    seen = {}

    def capture(view0, view1, labels):
        seen["view0"] = view0
        return type("Out", (), {"stats": {}, "loss": torch.zeros(())})()

    monkeypatch.setattr(method, "contrast", capture)
    torch.manual_seed(0)
    out = method.step(images, labels, step=1)
    standard = method.standard(images)
    masked = standard * (saliency > method.cfg.excon.mask_threshold)
    view0 = seen["view0"]
    assert torch.equal(view0[keep], masked[keep])
    assert (view0[keep][..., 8:] == 0).all()  # non-salient half set to the mean colour
    assert not torch.equal(view0[~keep], masked[~keep])  # a random view instead
    assert out.stats["train/mask_keep_rate"].item() == pytest.approx(0.5)


def test_excon_step_leaves_batchnorm_statistics_to_the_contrastive_forward(tiny_config):
    """Explanation and filter passes must not update BatchNorm running statistics."""
    method = _excon(tiny_config)
    images, labels = _batch()
    model = method.model.train()
    calls = []
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.register_forward_pre_hook(lambda m, i: calls.append(m.training))
    method.step(images, labels, step=1)
    # one training-mode BN pass (the contrastive forward); explanation/filter run in eval mode
    assert calls.count(True) == 1 and model.training


def test_config_model_default_config():
    cfg = Config()
    model = config_model(cfg, num_classes=10)
    assert cfg.model.backbone == "resnet_mini"
    assert model.default_layer == "layer4" and model.feature_dim == 128
    assert model.classifier.out_features == 10
    assert model.head.mlp[0].out_features == 128 and model.head.mlp[2].out_features == 128
    assert model.encoder.conv1.kernel_size == (3, 3)  # image_size 32 <= 64: CIFAR stem
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_config_model_honours_model_config():
    cfg = Config().with_overrides({"model.backbone": "resnet18", "model.projection_dim": 16,
                                   "model.projection_hidden": 24, "data.image_size": 96})
    model = config_model(cfg, num_classes=3)
    assert model.encoder.conv1.kernel_size == (7, 7)  # image_size 96 > 64: ImageNet stem
    assert model.feature_dim == 512
    assert (model.head.mlp[0].out_features, model.head.mlp[2].out_features) == (24, 16)
    forced = config_model(cfg.with_overrides({"model.cifar_stem": True}), num_classes=3)
    assert forced.encoder.conv1.kernel_size == (3, 3)


def test_config_model_unknown_backbone():
    with pytest.raises(RegistryError, match="resnet_mini"):
        config_model(Config().with_overrides({"model.backbone": "vgg"}), num_classes=3)


@pytest.mark.parametrize("method, rows", [("ce", []), ("supcon", []), ("excon", ["masked view"]),
                                          ("edda", ["salient kept", "salient filled"]),
                                          ("random_occlusion", ["random kept", "random filled"])])
def test_grid_views_are_the_views_each_method_trains_on(tiny_config, method, rows):
    cfg = tiny_config.with_overrides({"method": method})
    model = config_model(cfg, 4)
    m = create_method(cfg, model, 4, (0.5,) * 3, (0.25,) * 3)
    x = torch.randn(3, 3, 16, 16)
    saliency = torch.rand(3, 1, 16, 16)
    views = m.grid_views(x, saliency, torch.tensor([0, 1, 2]))
    assert len(views) == len(rows)
    for label, expected in zip(views, rows, strict=True):
        assert expected in label.replace("\n", " ")
        assert views[label].shape == x.shape
    if method == "excon":  # exactly what ExCon trains on: pixels above the threshold kept
        kept = saliency > cfg.excon.mask_threshold
        assert torch.equal(next(iter(views.values())), torch.where(kept, x, torch.zeros(())))


def test_warm_up_is_a_share_of_the_run_counted_in_steps_and_never_the_whole_run():
    from extune.train.methods import warmup_steps

    assert warmup_steps(0.0, 10) == 0 and warmup_steps(0.3, 10) == 3  # not 2 (float error)
    assert warmup_steps(0.5, 4) == 2 and warmup_steps(0.5, 12) == 6
    assert all(warmup_steps(share, steps) < steps  # any share < 1 leaves a step
               for share in (0.0, 0.5, 0.9, 0.999) for steps in (1, 2, 3, 7, 200))
    # the issue that moved warm-ups to steps: 0.443 of a 4-epoch trial was 1 epoch (25%) and
    # of a 12-epoch run 5 epochs (41.7%); in steps it is 44.3% of both (46 steps an epoch)
    for epochs in (4, 12):
        assert warmup_steps(0.443, epochs * 46) / (epochs * 46) == pytest.approx(0.443, abs=0.01)


@pytest.mark.parametrize("method", ["excon", "edda"])
def test_a_method_warms_up_for_its_share_of_the_runs_steps(tiny_config, method):
    """Steps before the share train the baseline (nothing driven), the steps after it do not."""
    cfg = tiny_config.with_overrides({"method": method, f"{method}.warmup_fraction": 0.25,
                                      "edda.ratio": 0.5})
    torch.manual_seed(0)
    model = config_model(cfg, NUM_CLASSES)
    m = create_method(cfg, model, NUM_CLASSES, (0.5,) * 3, (0.25,) * 3, total_steps=40)
    images, labels = _batch()
    driven = {step: float(m.step(images, labels, step).stats["train/driven_share"])
              for step in (0, 9, 10, 39)}
    assert driven[0] == driven[9] == 0.0  # floor(0.25 * 40) = 10 warm-up steps
    if method == "edda":
        assert driven[10] == driven[39] == 0.5
    assert not m.warming_up(10) and m.warming_up(9)
    outside = create_method(cfg, model, NUM_CLASSES, (0.5,) * 3, (0.25,) * 3)  # no run: no warm-up
    assert not outside.warming_up(0)


@pytest.mark.parametrize("method", ["ce", "supcon", "excon", "edda", "random_occlusion"])
def test_label_smoothing_applies_to_every_loss_on_true_labels(tiny_config, method, monkeypatch):
    """optim.label_smoothing is one setting of every method: a study holds it for all."""
    import torch.nn.functional as F

    cfg = tiny_config.with_overrides({"method": method, "optim.label_smoothing": 0.1,
                                      "excon.warmup_fraction": 0.0, "edda.warmup_fraction": 0.0})
    m = create_method(cfg, config_model(cfg, NUM_CLASSES), NUM_CLASSES, (0.5,) * 3, (0.25,) * 3,
                      total_steps=10)
    smoothing = []
    real = F.cross_entropy

    def spy(*args, **kwargs):
        if args[1].dtype == torch.int64:  # a loss on true labels (EDDA's soft target is float)
            smoothing.append(kwargs.get("label_smoothing", 0.0))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    images, labels = _batch()
    m.step(images, labels, 5)
    assert smoothing and set(smoothing) == {0.1}


def test_every_method_says_what_it_reads_and_its_controls():
    from extune.train.methods import controls_of, method_reads

    assert all(method_reads(m, "optim.label_smoothing") for m in
               ("ce", "supcon", "excon", "edda", "random_occlusion"))
    assert method_reads("excon", "supcon.temperature") and not method_reads("ce", "supcon.temperature")
    assert method_reads("edda", "explain.layer") and not method_reads("random_occlusion", "explain.layer")
    assert [(c.suffix, c.trains) for c in controls_of("excon")] == [("off", "supcon")]
    assert [(c.suffix, c.trains) for c in controls_of("edda")] == [("off", "ce"),
                                                                  ("random", "random_occlusion")]
    assert controls_of("ce") == () and controls_of("random_occlusion") == ()


def test_a_config_that_never_switches_its_method_on_is_named(tiny_config):
    from extune.train.methods import inactive_reason

    edda = tiny_config.with_overrides({"method": "edda", "optim.batch_size": 32})
    assert inactive_reason(edda) is None
    assert "rounds to 0 images" in inactive_reason(edda.with_overrides({"edda.ratio": 0.01}))
    assert "both 0" in inactive_reason(edda.with_overrides({"edda.nonsalient_weight": 0.0,
                                                            "edda.salient_weight": 0.0}))
    assert inactive_reason(tiny_config.with_overrides({"method": "ce"})) is None
