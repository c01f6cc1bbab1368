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
import statistics
import time

import torch

from extune.train.config import Config
from extune.train.methods import config_model, create_method
from extune.train.runtime import autocast


def make_step(cfg: Config, device: torch.device, num_classes: int):
    """A closure running one full optimiser step of ``cfg.method``; returns its stats."""
    torch.manual_seed(0)
    model = config_model(cfg, num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    method = create_method(cfg, model, num_classes, mean, std)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    size, batch = cfg.data.image_size, cfg.optim.batch_size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)

    def step() -> dict[str, torch.Tensor]:
        with autocast(device, cfg.runtime.amp):
            out = method.step(images, labels, epoch=10)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return out.stats

    return step


def time_step(step, device: torch.device) -> tuple[float, dict[str, torch.Tensor]]:
    """Seconds taken by one step, and its stats."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    stats = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, stats


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
        "excon.warmup_epochs": 0, "runtime.progress": False,
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
    results: dict[str, list[float]] = {name: [] for name in steps}
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for _ in range(args.warmup):  # warm up everything first (allocator, kernels)
        for step in steps.values():
            time_step(step, device)
    for _ in range(args.steps):  # interleave so that drift hits all variants alike
        for name, step in steps.items():
            seconds, stats[name] = time_step(step, device)
            results[name].append(seconds)
    base_ms = statistics.median(results["supcon"]) * 1e3
    for name, times in results.items():
        ms = statistics.median(times) * 1e3
        keep = stats[name].get("train/mask_keep_rate")
        extra = f"  keep rate {float(keep):.2f}" if keep is not None else ""
        print(f"{name:30s} {ms:8.1f} ms/step  ratio {ms / base_ms:4.2f}x{extra}")


if __name__ == "__main__":
    main()
