"""Time one ExCon training step against one SupCon step (same backbone, batch and image size).

    python benchmarks/excon_step.py                       # ResNet-18 CIFAR stem, batch 64, 32 px
    python benchmarks/excon_step.py --device cuda --steps 50
    python benchmarks/excon_step.py --backbone resnet_mini --batch 128

A step is the whole optimiser step: views, (explanation, masking, filter,) forward, SupCon loss,
backward, SGD update. Goals (issue 3): ExCon with ``excon.negative_pair=false`` <= 1.5x the
SupCon step; with negative pairs on <= 2.0x. The model is untrained, so nearly every masked view
is rejected (the worst case for negative pairs: every rejected masked image is a background
sample); the printed keep rate says how many were kept. ExCon's step has fixed shapes whatever
the keep rate, so its cost does not depend on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from extune.train.config import Config
from extune.train.methods import config_model, create_method
from extune.train.runtime import autocast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved  # noqa: E402  (benchmarks/ is not a package)


def make_step(cfg: Config, device: torch.device, num_classes: int):
    """A closure running one full optimiser step of ``cfg.method`` on a fixed random batch
    (uint8 ``[optim.batch_size, 3, S, S]``); returns its stats. Channels-last on CUDA and
    ``torch.compile`` follow ``cfg.runtime`` as in training."""
    torch.manual_seed(0)
    model = config_model(cfg, num_classes).to(device)
    if device.type == "cuda" and cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.runtime.compile:
        model.compile()
    model.train()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    method = create_method(cfg, model, num_classes, mean, std)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    size, batch = cfg.data.image_size, cfg.optim.batch_size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)

    def step() -> dict[str, torch.Tensor]:
        with autocast(device, cfg.runtime.amp):
            out = method.step(images, labels, step=10)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return out.stats

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--explainer", default="gradcam")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    base = Config().with_overrides({
        "model.backbone": args.backbone, "optim.batch_size": args.batch,
        "data.image_size": args.size, "explain.explainer": args.explainer,
        "excon.warmup_fraction": 0.0, "runtime.progress": False,
    })
    variants = {
        "supcon": base.with_overrides({"method": "supcon"}),
        "excon (negative_pair=false)": base.with_overrides({"method": "excon"}),
        "excon (negative_pair=true)": base.with_overrides({"method": "excon",
                                                           "excon.negative_pair": True}),
    }
    print(f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
          f"backbone={args.backbone}, batch={args.batch}, {args.size}px, "
          f"explainer={args.explainer}, threads={torch.get_num_threads()}")
    steps = {name: make_step(cfg, device, args.classes) for name, cfg in variants.items()}
    stats: dict[str, dict[str, torch.Tensor]] = {}

    def timed(name: str):
        return lambda: stats.__setitem__(name, steps[name]())

    medians = interleaved({name: timed(name) for name in steps}, reps=args.steps,
                          warmup=args.warmup, device=device)
    for name, seconds in medians.items():
        keep = stats[name].get("train/mask_keep_rate")
        extra = f"  keep rate {float(keep):.2f}" if keep is not None else ""
        print(f"{name:30s} {seconds * 1e3:8.1f} ms/step  ratio "
              f"{seconds / medians['supcon']:4.2f}x{extra}")

if __name__ == "__main__":
    main()
