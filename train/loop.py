"""``fit``: the one training loop, used by ``extune train`` and by every search trial."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from extune.augment import Explainer
from extune.errors import DiskFullError, ExtuneError, one_line
from extune.evaluate import evaluate_split
from extune.evaluate.metric_info import metrics_json
from extune.evaluate.suite import Part
from extune.files import (
    atomic_write_text,
    atomic_writer,
    check_free_space,
    check_writable,
    is_disk_full,
)
from extune.models import Network
from extune.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from extune.train.config import Config
from extune.train.data import DataSplits, ImageSet, load_data
from extune.train.datasets.streamed import Batches
from extune.train.grid import GRID_NAME, explanation_grid
from extune.train.methods import (
    Method,
    check_explain_layer,
    config_model,
    create_method,
    evaluation_explainer,
)
from extune.train.progress import EpochProgress
from extune.train.runtime import (
    autocast,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    torch_threads,
)
from extune.train.validate import validate_config

__all__ = ["fit", "FitResult", "TrainingDiverged", "Report", "PER_IMAGE_NAME"]

PER_IMAGE_NAME = "test_outputs.npz"
"""The test split's per-image outputs (:data:`extune.evaluate.suite.PerImage`), written beside
the checkpoint when ``eval.per_image`` is set (a study's final runs)."""

log = logging.getLogger(__name__)

Report = Callable[[dict[str, float], Path], None]
"""``report(metrics, checkpoint_dir)``: called after every epoch, after the checkpoint is saved."""



class TrainingDiverged(ExtuneError, RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        config: the config that was trained.
        metrics: the last epoch's metrics (``val/...``, ``train/...``) plus ``test/...`` if asked.
        history: one metrics dict per epoch.
        model: the trained network (on the training device, eval mode).
        out_dir: folder holding ``config.yaml``, ``metrics.json``, ``checkpoint.pt`` and the
            saliency grid.
    """

    config: Config
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    model: Network | None = None
    out_dir: Path | None = None


@dataclass
class _State:
    """Everything a training epoch touches."""

    cfg: Config
    device: torch.device
    splits: DataSplits
    model: Network
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batch_size: int
    out_dir: Path
    eval_explainer: Explainer
    objectives: Sequence[str] = ()
    full_epochs: Collection[int] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    grid_each_epoch: bool = False
    test: bool = False  # the test split is evaluated after the last epoch (it gets the audit)
    batches: Batches | None = None  # the training split's batches (decoded per batch if streamed)


def fit(config: Config, *, report: Report | None = None, out_dir: str | Path | None = None,
        resume: str | Path | None = None, data: DataSplits | None = None,
        test: bool = False, objectives: Sequence[str] = (),
        full_epochs: Collection[int] | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None) -> FitResult:
    """Train ``config.method`` on ``config.data`` and evaluate after every epoch.

    Args:
        config: what to train.
        report: called as ``report(metrics, out_dir)`` after every epoch, once the epoch's
            checkpoint is in ``out_dir / "checkpoint.pt"``. May raise to stop training.
        out_dir: where ``config.yaml``, ``metrics.json``, the checkpoint and the saliency grid
            go; a temporary folder when ``None``.
        resume: a checkpoint file (or a folder holding ``checkpoint.pt``) to continue from.
        data: already loaded data (a search puts it in Ray's object store once); loaded from
            ``config.data`` when ``None``.
        test: also evaluate on the test split after the last epoch (final runs only: a search
            objective must never see the test set); ``eval.test`` asks for it too. The
            ``test/...`` metrics join the last epoch's metrics before it is reported, so a
            final run inside Ray Tune reports them.
        objectives: metric names evaluated after every epoch even when the full suite does
            not run (a search's objectives; their whole group runs, see
            :func:`extune.evaluate.suite.metric_groups`).
        full_epochs: epochs (1-based) after which the full evaluation suite runs, besides the
            last epoch; ``None``: every ``eval.every`` epochs. A search passes its scheduler's
            milestones, or nothing (the full suite at the trial's end only).
        on_epoch: called with every epoch's metrics once its checkpoint is saved (``extune
            train`` records them in MLflow); unlike ``report`` it asks for no saliency grid
            each epoch. Resumed, it is first called with each restored epoch's metrics: a
            training stopped between a checkpoint and this call would lose that epoch's
            record otherwise, so the callback must skip epochs it has (MLflow's journal
            writes each step once).

    Raises:
        ExtuneError: bad config, missing data, unknown names, non-finite loss.
    """
    validate_config(config)  # unknown names fail here, before any data is loaded
    if out_dir is not None:
        check_writable(out_dir, "the output folder (--out)")
        check_free_space(out_dir, "the output folder (--out)")
    with torch_threads(config.runtime.threads):
        state = _setup(config, out_dir, resume, data)
        state.grid_each_epoch = report is not None  # a stopped trial still has its grid
        state.objectives, state.full_epochs = tuple(objectives), full_epochs
        progress = EpochProgress(enabled=config.runtime.progress)
        test = (test or config.eval.test) and state.splits.test is not None
        state.test = test
        if on_epoch is not None:
            for restored in state.history:  # resumed: what the last run may not have recorded
                on_epoch(restored)
        try:
            for epoch in range(state.start_epoch, config.optim.epochs):
                metrics = _run_epoch(state, epoch, progress)
                if test and epoch == config.optim.epochs - 1:
                    metrics.update(_evaluate_test(state, progress))
                state.history.append(metrics)
                _save_or_rescue(state, epoch)
                if report is not None:
                    report(metrics, state.out_dir)
                if on_epoch is not None:
                    on_epoch(metrics)
        finally:
            state.batches.close()
        final = dict(state.history[-1]) if state.history else {}
        if test and not any(k.startswith("test/") for k in final):  # resumed after the end
            final.update(_evaluate_test(state, progress))
        if resume is not None and not (state.out_dir / CHECKPOINT_NAME).is_file():
            _save_or_rescue(state, state.start_epoch - 1)  # resumed after its end, elsewhere
        _write_metrics_or_say(state, final)
        state.model.eval()
        return FitResult(config, final, state.history, state.model, state.out_dir)


def _setup(cfg: Config, out_dir: str | Path | None, resume: str | Path | None,
           data: DataSplits | None) -> _State:
    device = resolve_device(cfg.runtime)
    seed_everything(cfg.runtime.seed)
    splits = (data if data is not None else load_data(cfg.data)).to(device)
    model = config_model(cfg, splits.num_classes).to(device)
    check_explain_layer(cfg, model)  # before anything is written
    if device.type == "cuda" and cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.runtime.compile:
        model.compile()
    batch_size = min(cfg.optim.batch_size, len(splits.train))
    steps = len(splits.train) // batch_size
    optimizer = _optimizer(cfg, model)
    scheduler = _cosine_schedule(optimizer, cfg, steps)
    method = create_method(cfg, model, splits.num_classes, splits.mean, splits.std,
                           total_steps=cfg.optim.epochs * steps)
    ckpt = _resumed_model(model, resume, device) if resume is not None else None
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="extune-"))
    out.mkdir(parents=True, exist_ok=True)  # only once the checkpoint fits: nothing left behind
    cfg.save(out / "config.yaml")
    state = _State(cfg, device, splits, model, method, optimizer, scheduler, batch_size, out,
                   evaluation_explainer(cfg))
    state.batches = Batches(splits.train, batch_size, steps, device)
    if ckpt is not None:
        _restore(state, ckpt, resume)
    return state


def _optimizer(cfg: Config, model: Network) -> torch.optim.Optimizer:
    """SGD; the online linear probe of contrastive methods may have its own learning rate."""
    o = cfg.optim
    probe_lr = o.probe_lr if (o.probe_lr is not None and cfg.method != "ce") else o.lr
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    groups = [{"params": body, "lr": o.lr},
              {"params": list(model.classifier.parameters()), "lr": probe_lr}]
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def _cosine_schedule(optimizer: torch.optim.Optimizer, cfg: Config,
                     steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warm-up then cosine decay to 0 over ``optim.epochs``."""
    total = max(1, cfg.optim.epochs * steps_per_epoch)
    warmup = min(cfg.optim.warmup_epochs * steps_per_epoch, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _run_epoch(state: _State, epoch: int, progress: EpochProgress) -> dict[str, float]:
    """Train one epoch and evaluate it; ``train/seconds`` is the run's time so far (training
    and evaluation, counted over resumes: the compute a study's budget and report count).
    The explanation audit (``eval.audit``) runs once, on the run's result: the test split when
    the run evaluates it, else the validation split after the last epoch."""
    cfg = state.cfg
    start = time.perf_counter()
    train_metrics = _train_epoch(state, epoch, progress)
    last = epoch == cfg.optim.epochs - 1
    full = last or (epoch + 1 in state.full_epochs if state.full_epochs is not None
                    else (epoch + 1) % cfg.eval.every == 0)
    with progress.phase(f"epoch {epoch + 1}/{cfg.optim.epochs}: validating") as part:
        metrics = {"epoch": float(epoch + 1), **train_metrics,
                   **_evaluate(state, state.splits.val, prefix="val", full=full,
                               metrics=state.objectives, part=part,
                               audit=last and cfg.eval.audit and not state.test)}
        if not full and state.history:  # carry the last full values: every report has every key
            metrics = {**state.history[-1], **metrics}
        if last or state.grid_each_epoch:  # a search trial's checkpoint carries its latest grid
            part("saliency grid")
            _write_grid(state, epoch, GRID_NAME)
        if full and cfg.eval.grid_every and not last:
            part("saliency grid")
            _write_grid(state, epoch, f"grids/epoch_{epoch + 1:03d}.png")
    before = state.history[-1].get("train/seconds", 0.0) if state.history else 0.0
    metrics["train/seconds"] = before + time.perf_counter() - start
    progress.summary(epoch, cfg.optim.epochs, metrics)
    return metrics


def _train_epoch(state: _State, epoch: int, progress: EpochProgress) -> dict[str, float]:
    """One pass over the training split; returns ``train/...`` means (one host sync)."""
    cfg, train, model = state.cfg, state.splits.train, state.model
    model.train()
    steps = len(train) // state.batch_size
    order = torch.randperm(len(train), device=state.device)
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    finite = torch.ones((), dtype=torch.bool, device=state.device)
    start = time.perf_counter()
    for i, (images, labels) in zip(progress.steps(epoch, cfg.optim.epochs, steps),
                                   state.batches.epoch(order), strict=False):
        with autocast(state.device, cfg.runtime.amp):
            out = state.method.step(images, labels, epoch * steps + i)
        state.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        finite &= torch.isfinite(out.loss.detach())
        for key, value in {"train/loss": out.loss, **out.stats}.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
            counts[key] = counts.get(key, 0) + 1
    if not bool(finite):
        raise TrainingDiverged(
            f"training loss became non-finite in epoch {epoch + 1} (method={cfg.method}, "
            f"optim.lr={cfg.optim.lr:g}); lower optim.lr or check the data")
    seconds = time.perf_counter() - start
    means = {k: float(v) / counts[k] for k, v in sums.items()}
    means["train/images_per_s"] = steps * state.batch_size / max(seconds, 1e-9)
    means["train/lr"] = state.scheduler.get_last_lr()[0]
    return means


def _evaluate(state: _State, split: ImageSet, prefix: str, full: bool,
              metrics: Sequence[str] = (), part: Part | None = None,
              per_image: dict[str, Tensor] | None = None, audit: bool = False
              ) -> dict[str, float]:
    """:func:`evaluate_split` of the state's model; ``part`` is told each part as it starts;
    ``audit``: the explanation audit too (the end-of-run suite, with ``eval.audit``)."""
    return evaluate_split(
        state.model, split, mean=state.splits.mean, std=state.splits.std,
        num_classes=state.splits.num_classes, cfg=state.cfg.eval,
        explainer=state.eval_explainer, prefix=prefix, full=full, metrics=metrics, part=part,
        per_image=per_image, audit=audit)


def _evaluate_test(state: _State, progress: EpochProgress) -> dict[str, float]:
    """The full suite on the test split (the explanation audit with ``eval.audit``), with a
    sign on the console while it runs; with ``eval.per_image`` its per-image outputs go to
    :data:`PER_IMAGE_NAME` in the run folder (written before the epoch's checkpoint is
    reported, so they travel with it)."""
    per_image = {} if state.cfg.eval.per_image else None
    with progress.phase("evaluating on the test split") as part:
        metrics = _evaluate(state, state.splits.test, prefix="test", full=True, part=part,
                            per_image=per_image, audit=state.cfg.eval.audit)
    if per_image is not None:
        import numpy as np

        with atomic_writer(state.out_dir / PER_IMAGE_NAME) as f:
            np.savez_compressed(f, **{k: v.numpy() for k, v in per_image.items()})
    return metrics


def _write_grid(state: _State, epoch: int, name: str) -> None:
    """The labelled grid of a fixed set of validation images (:func:`explanation_grid`); on a
    full disk it is skipped with a warning (the checkpoint, saved next, matters more)."""
    try:
        _draw_grid(state, epoch, name)
    except OSError as e:
        if not is_disk_full(e):
            raise
        log.warning("the disk of %s is full: %s not written", state.out_dir, name)


def _draw_grid(state: _State, epoch: int, name: str) -> None:
    n = min(state.cfg.eval.grid_images, len(state.splits.val))
    if n == 0:
        return
    cfg = state.cfg
    explanation_grid(state.model, state.method, state.splits.val.images[:n],
                     state.splits.val.labels[:n], state.splits.classes, state.out_dir / name,
                     heading=f"{cfg.method} · {cfg.explain.explainer} · epoch {epoch + 1}"
                             f"/{cfg.optim.epochs} · validation images")


def _save(state: _State, epoch: int, path: Path | None = None) -> None:
    if path is not None:  # a rescue folder holds the config too, for --config on resume
        state.cfg.save(path.parent / "config.yaml")
    save_checkpoint({
        "epoch": epoch,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "config": state.cfg.to_dict(),
        "history": state.history,
        "classes": list(state.splits.classes),
        "mean": list(state.splits.mean),
        "std": list(state.splits.std),
        "rng": rng_state(),
    }, path or state.out_dir / CHECKPOINT_NAME)


def _resumed_model(model: Network, resume: str | Path, device: torch.device) -> dict:
    """Load the checkpoint ``resume`` into ``model``, before anything is written.

    Raises:
        ExtuneError: not a checkpoint, or one of another model (backbone, classes).
    """
    ckpt = load_checkpoint(resume, map_location=device)
    try:
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError, ValueError) as e:
        trained = Config.from_dict(ckpt.get("config", {})).model.backbone \
            if isinstance(ckpt.get("config"), dict) else "?"
        raise ExtuneError(f"checkpoint {resume} holds another model (model.backbone={trained}, "
                          f"its classes or heads differ: {one_line(e, 120)}); "
                          "resume with the config it was trained with") from None
    return ckpt


def _save_or_rescue(state: _State, epoch: int) -> None:
    """Save the epoch's checkpoint; on a full disk, save it to a rescue folder instead and stop
    with the way on (training cannot go on without a place for its checkpoints).

    Raises:
        DiskFullError: where the checkpoint went (or that it could be saved nowhere).
    """
    try:
        _save(state, epoch)
        return
    except OSError as e:
        if not is_disk_full(e):
            raise
    target = state.out_dir / CHECKPOINT_NAME
    done = f"epoch {epoch + 1}/{state.cfg.optim.epochs}"
    try:
        rescue = Path(tempfile.mkdtemp(prefix="extune-rescue-"))
        _save(state, epoch, rescue / CHECKPOINT_NAME)
    except OSError as e:
        raise DiskFullError(f"the disk of {state.out_dir} is full: the checkpoint of {done} "
                            f"could not be written to {target} nor to a rescue folder "
                            f"({e.strerror or e}); the model is lost: free some space and "
                            "train again") from None
    raise DiskFullError(f"the disk of {state.out_dir} is full: the checkpoint of {done} could "
                        f"not be written to {target}, so it was saved to {rescue} instead; free "
                        f"some space, then continue with: extune train --config "
                        f"{rescue / 'config.yaml'} --resume {rescue} --out {state.out_dir}")


def _write_metrics_or_say(state: _State, final: dict[str, float]) -> None:
    """``metrics.json``; on a full disk the run is over and its checkpoint saved: say where."""
    try:
        _write_metrics(state, final)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise DiskFullError(f"the disk of {state.out_dir} is full: training finished and its "
                            f"checkpoint is in {state.out_dir / CHECKPOINT_NAME}, but "
                            "metrics.json could not be written; free some space, then: extune "
                            f"evaluate --checkpoint {state.out_dir} --split test") from None


def _restore(state: _State, ckpt: dict, resume: str | Path) -> None:
    try:
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.scheduler.load_state_dict(ckpt["scheduler"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise ExtuneError(f"checkpoint {resume} does not match this config (optimiser "
                          f"differs): {one_line(e, 160)}") from None
    state.history = list(ckpt.get("history", []))
    state.start_epoch = int(ckpt["epoch"]) + 1
    if "rng" in ckpt:
        set_rng_state({k: v.cpu() for k, v in ckpt["rng"].items()})


def _write_metrics(state: _State, final: dict[str, float]) -> None:
    payload = {"final": final, "history": state.history}
    atomic_write_text(state.out_dir / "metrics.json", metrics_json(payload))  # NaN: null
