"""Rows of ``run.py`` that need no Ray: views, method steps, Grad-CAM, data start-up, CUDA."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from excon_step import make_step
from timing import Row, interleaved, skipped

from extune.train.config import Config, DataConfig

__all__ = ["views_row", "excon_rows", "edda_row", "gradcam_row", "eval_row", "data_rows",
           "cuda_rows"]

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def step_config(quick: bool, **overrides: object) -> Config:
    """The step rows' setting: ResNet-18 (CIFAR stem), batch 64, 32 px; ``quick``: resnet_mini,
    batch 16."""
    base = {"model.backbone": "resnet_mini" if quick else "resnet18",
            "optim.batch_size": 16 if quick else 64, "data.image_size": 32,
            "excon.warmup_fraction": 0.0, "edda.warmup_fraction": 0.0, "runtime.progress": False}
    return Config().with_overrides({**base, **overrides})


def _reps(quick: bool, full: int) -> dict[str, int]:
    return {"reps": 1, "warmup": 1} if quick else {"reps": full, "warmup": 1}


def views_row(quick: bool, device: torch.device) -> Row:
    """Row 1: extune's batched SupCon view vs torchvision's per-image pipeline of the recipe.

    Both take uint8 ``[B, 3, 32, 32]`` on ``device`` and return a float ``[B, 3, 32, 32]``
    normalised view (RandomResizedCrop (0.2, 1), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8,
    grayscale p 0.2, normalise).
    """
    from torchvision.transforms import v2

    from extune.augment.views import SupConViews

    batch, size = (32 if quick else 256), 32
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    ours = SupConViews(size, MEAN, STD).to(device)
    recipe = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomHorizontalFlip(), v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    t = interleaved({"torchvision": lambda: torch.stack([recipe(im) for im in images]),
                     "extune": lambda: ours(images)}, device=device, **_reps(quick, 7))
    return Row("views: torchvision per image / extune batched", t["torchvision"] / t["extune"],
               goal=">= 5", detail=f"batch {batch}: {t['torchvision'] * 1e3:.1f} vs "
               f"{t['extune'] * 1e3:.1f} ms")


def step_medians(cfgs: dict[str, Config], device: torch.device, *, reps: int,
                 warmup: int, forward: Config | None = None) -> dict[str, float]:
    """Median seconds of one full optimiser step (:func:`excon_step.make_step`: views,
    method, backward, SGD) of each config, interleaved; with ``forward``, also of one
    inference forward (eval mode, no graph) of a batch of that config (key ``"forward"``)."""
    steps = {k: make_step(c, device, 10) for k, c in cfgs.items()}
    if forward is not None:
        steps["forward"] = make_inference_forward(forward, device, 10)
    return interleaved(steps, device=device, reps=reps, warmup=warmup)


def make_inference_forward(cfg: Config, device: torch.device, num_classes: int):
    """A closure running one eval-mode, no-graph forward of ``cfg``'s model on a fixed batch
    ``[optim.batch_size, 3, S, S]``: what ExCon's explanation and filter cost at least."""
    from extune.augment.model_state import eval_mode
    from extune.train.methods import config_model

    model = config_model(cfg, num_classes).to(device)
    size = cfg.data.image_size
    x = torch.randn(cfg.optim.batch_size, 3, size, size, device=device)

    def forward() -> torch.Tensor:
        with torch.no_grad(), eval_mode(model):
            return model(x)

    return forward


def excon_rows(quick: bool, device: torch.device) -> list[Row]:
    """Row 2: ExCon step / SupCon step, without and with negative pairs (one interleaved run).

    The floors: without negative pairs ExCon adds two forwards of the batch to SupCon's step
    (the explanation and the filter of the masked images), so a SupCon step plus two inference
    forwards; with them its contrastive forward and backward cover 3B images (masked, two
    random views), so a SupCon step on 1.5 B images (3B views) plus one inference forward.
    """
    base = step_config(quick)
    b = base.optim.batch_size
    cfgs = {"supcon": base.with_overrides({"method": "supcon"}),
            "excon": base.with_overrides({"method": "excon"}),
            "excon+neg": base.with_overrides({"method": "excon", "excon.negative_pair": True}),
            "supcon 3B": base.with_overrides({"method": "supcon",
                                              "optim.batch_size": 3 * b // 2})}
    t = step_medians(cfgs, device, forward=base, **_reps(quick, 2))
    floor = (t["supcon"] + 2 * t["forward"]) / t["supcon"]
    floor_neg = (t["supcon 3B"] + t["forward"]) / t["supcon"]
    return [
        Row("step: excon / supcon (negative_pair=false)", t["excon"] / t["supcon"], goal="<= 1.3",
            detail=f"{t['excon'] * 1e3:.0f} vs {t['supcon'] * 1e3:.0f} ms/step, "
            f"{base.model.backbone} batch {b}; floor {floor:.2f}x (supcon + 2 inference "
            f"forwards of {t['forward'] * 1e3:.0f} ms: explanation, filter)"),
        Row("step: excon / supcon (negative_pair=true)", t["excon+neg"] / t["supcon"],
            goal="<= 1.8", detail=f"{t['excon+neg'] * 1e3:.0f} ms/step; floor {floor_neg:.2f}x "
            f"(supcon on {3 * b} views + 1 inference forward); untrained model: every rejected "
            "masked image is a background sample"),
    ]


def edda_row(quick: bool, device: torch.device) -> Row:
    """Row 3: EDDA step / CE step; the floor is a CE step on the ``B + 2n`` images EDDA trains
    on (clean + non-salient + salient occlusions, ``n = edda.ratio * B``), before explaining."""
    base = step_config(quick)
    b = base.optim.batch_size
    n = round(base.edda.ratio * b)
    cfgs = {"ce": base.with_overrides({"method": "ce"}),
            "edda": base.with_overrides({"method": "edda"}),
            "floor": base.with_overrides({"method": "ce", "optim.batch_size": b + 2 * n})}
    t = step_medians(cfgs, device, **_reps(quick, 3))
    return Row("step: edda / ce", t["edda"] / t["ce"], goal="<= 2.0",
               detail=f"{t['edda'] * 1e3:.0f} vs {t['ce'] * 1e3:.0f} ms/step; floor "
               f"{t['floor'] / t['ce']:.2f}x (a ce step on the {b + 2 * n} images EDDA trains "
               "on, before its explanation)")


def gradcam_row(quick: bool, device: torch.device) -> Row:
    """Row 4: the training path's Grad-CAM vs captum's LayerGradCam (+ the same bilinear
    upsampling and per-image min-max), same model, layer and batch ``[B, 3, 32, 32]``."""
    from captum.attr import LayerAttribution, LayerGradCam

    from extune.augment.explainers import create_explainer, minmax_normalize, resolve_layer
    from extune.train.methods import config_model

    cfg = step_config(quick)
    model = config_model(cfg, 10).to(device).eval()
    b = cfg.optim.batch_size
    x = torch.randn(b, 3, 32, 32, device=device)
    target = torch.randint(0, 10, (b,), device=device)
    ours = create_explainer("gradcam")
    layer = resolve_layer(model, None)
    captum = LayerGradCam(model, layer)

    def reference() -> torch.Tensor:
        raw = captum.attribute(x, target=target, relu_attributions=True)
        return minmax_normalize(LayerAttribution.interpolate(raw, (32, 32), "bilinear"))

    t = interleaved({"captum": reference, "extune": lambda: ours(model, x, target)},
                    device=device, **_reps(quick, 15))
    return Row("gradcam: extune / captum LayerGradCam", t["extune"] / t["captum"], goal="<= 1.0",
               detail=f"{t['extune'] * 1e3:.1f} vs {t['captum'] * 1e3:.1f} ms, "
               f"{cfg.model.backbone} batch {b}")


def eval_row(quick: bool) -> Row:
    """A search trial's evaluation: the full suite after every epoch (before) vs the
    objective every epoch and the full suite after the last (now); whole ``fit`` calls of a
    4-epoch CE trial (tiny_cnn, 1500 synthetic images, one thread), data loaded once."""
    from extune.train import fit
    from extune.train.data import load_data

    epochs, size = (2, 300) if quick else (4, 1500)
    cfg = Config().with_overrides({"method": "ce", "model.backbone": "tiny_cnn",
                                   "data.train_size": size, "optim.epochs": epochs,
                                   "eval.explain_samples": 64, "runtime.progress": False,
                                   "runtime.threads": 1})
    data = load_data(cfg.data)

    def trial(full_epochs: tuple[int, ...] | None) -> None:
        with tempfile.TemporaryDirectory() as out:
            fit(cfg, out_dir=out, data=data, objectives=("val/accuracy",),
                full_epochs=full_epochs)

    t = interleaved({"every": lambda: trial(None), "end": lambda: trial(())},
                    reps=1 if quick else 2, warmup=0 if quick else 1)  # 1st fits: imports
    return Row("eval: full suite every epoch / at the end", t["every"] / t["end"], goal=None,
               detail=f"{epochs}-epoch trial {t['every']:.1f} vs {t['end']:.1f} s: "
               f"{t['every'] - t['end']:.1f} s saved per trial")


def data_rows(quick: bool) -> list[Row]:
    """Row 6: ``load_data`` decoding (empty cache) vs reading the on-disk cache."""
    from extune.train.data import load_data

    size = 600 if quick else 6000
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DataConfig(train_size=size, cache_dir=tmp)

        def decode() -> None:
            for f in Path(tmp).glob("*.npz"):
                f.unlink()
            load_data(cfg)

        t = interleaved({"decode": decode, "cached": lambda: load_data(cfg)},
                        **_reps(quick, 3))
    return [Row("data start-up: decode / cached load", t["decode"] / t["cached"],
                detail=f"synthetic {size}+1000 images: {t['decode']:.2f} vs {t['cached']:.3f} s")]


def streamed_row(quick: bool) -> Row:
    """Training throughput (``train/images_per_s`` of one CE epoch, tiny_cnn) with an
    ImageFolder of JPEG files decoded into memory vs read per batch from the files by
    DataLoader workers (``data.in_memory``), interleaved."""
    import numpy as np
    from PIL import Image

    from extune.train import fit

    per_class, side, size = (40, 48, 32) if quick else (500, 128, 64)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for k in range(4):
            folder = Path(tmp, "tree", "train", f"class{k}")
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
                pixels[..., k % 3] = 60 * k
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
        base = {"method": "ce", "data.name": "imagefolder", "data.root": f"{tmp}/tree",
                "data.image_size": size, "data.cache_dir": f"{tmp}/cache",
                "model.backbone": "tiny_cnn", "optim.epochs": 1, "optim.batch_size": 64,
                "eval.explain_samples": 8, "eval.corruptions": ["contrast"],
                "eval.grid_images": 2, "eval.audit": False, "runtime.progress": False}
        rates: dict[str, list[float]] = {"memory": [], "streamed": []}
        for _ in range(1 if quick else 3):
            for name, mode in (("memory", True), ("streamed", False)):
                cfg = Config().with_overrides({**base, "data.in_memory": mode})
                rates[name].append(fit(cfg).metrics["train/images_per_s"])
    med = {k: statistics.median(v) for k, v in rates.items()}
    return Row("data: streamed / in-memory training images/s", med["streamed"] / med["memory"],
               detail=f"{4 * per_class} JPEGs of {side} px at {size} px, one CE epoch of "
               f"tiny_cnn: {med['streamed']:.0f} vs {med['memory']:.0f} images/s "
               f"({torch.get_num_threads()} threads; DataLoader workers decode the batches)")


def cuda_rows(quick: bool) -> list[Row]:
    """CUDA rows: channels-last, bf16 autocast and ``torch.compile`` vs plain fp32 NCHW, for a
    CE step (ResNet-18, batch 256, 32 px). Measured where a GPU is present, skipped elsewhere."""
    names = ("cuda: channels-last / NCHW step", "cuda: bf16 / fp32 step",
             "cuda: compiled / eager step")
    if not torch.cuda.is_available():
        return [skipped(n, "no CUDA device here (torch.cuda.is_available() is False)")
                for n in names]
    device = torch.device("cuda")
    plain = {"method": "ce", "optim.batch_size": 256, "runtime.amp": False,
             "runtime.channels_last": False}
    cfgs = {"plain": step_config(quick, **plain),
            "channels_last": step_config(quick, **{**plain, "runtime.channels_last": True}),
            "bf16": step_config(quick, **{**plain, "runtime.amp": True}),
            "compile": step_config(quick, **{**plain, "runtime.compile": True})}
    t = step_medians(cfgs, device, reps=3 if quick else 30, warmup=3)
    return [Row(n, t[k] / t["plain"], detail=f"{t[k] * 1e3:.1f} vs {t['plain'] * 1e3:.1f} ms")
            for n, k in zip(names, ("channels_last", "bf16", "compile"), strict=True)]
