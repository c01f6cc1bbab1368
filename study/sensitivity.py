"""Re-score the final runs' saved checkpoints under other evaluation protocols (no retraining).

A verdict about explanations depends on how they are scored: the explainer, and for Grad-CAM
the layer. The sensitivity section of a study's report takes each final run's checkpoint, scores
its explanation metrics on the same test images under every protocol of ``protocols``
(:data:`~extune.study.settings.DEFAULT_PROTOCOLS`) and says, per claim, whether the verdict
is the same under all of them. Scores are kept in ``final/sensitivity.json`` by checkpoint and
protocol, and their per-image values in ``final/sensitivity/`` (the report resamples the test
images under every protocol alike), so a resumed study or a rewritten report scores nothing
twice.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from extune.files import atomic_write_text
from extune.study.protocols import Protocol, main_protocol, parse_protocol

__all__ = ["rescore_stage", "SENSITIVITY_FILE"]

SENSITIVITY_FILE = "sensitivity.json"


def rescore_stage(sdir: Any, runs: list[dict], console: Any = None) -> dict[str, Any]:
    """Score every complete final run under every protocol; returns what the report needs.

    Returns:
        ``{"main": protocol, "protocols": [protocol, ...], "scores": {protocol text: {label:
        {metric: value}}}, "per_image": {protocol text: {label: npz path}}}``; a protocol is
        ``{"text", "explainer", "layer", "steps", "description"}``. The main protocol's scores
        are the final runs' own test metrics (their per-image outputs, their own file).
    """
    from extune.train.config import Config
    from extune.train.methods import config_model

    settings = sdir.settings
    base = settings.final_config(Config.load(sdir.base_file), settings.final_seeds()[0])
    last_stage = config_model(base, 2).default_layer
    steps = base.eval.steps
    main = main_protocol(settings.eval_explainer, settings.eval_layer)
    others = [p for p in map(parse_protocol, settings.protocols)
              if _resolved(p, last_stage) != _resolved(main, last_stage)]
    cache_file = sdir.final_dir / SENSITIVITY_FILE
    cache = _read(cache_file)
    complete = [r for r in runs if r["state"] == "complete" and r.get("checkpoint")]
    todo = [(r, p) for p in others for r in complete
            if p.text not in cache.get(r["checkpoint"], {})
            or not _per_image_file(sdir, r, p).is_file()]
    if todo and console is not None:
        console.print(f"study {sdir.name}: scoring {len(complete)} checkpoints under "
                      f"{len(others)} more protocol(s): {', '.join(p.text for p in others)}",
                      highlight=False, markup=False)
    scorer = _Scorer(base)
    if todo:
        for run, protocol in todo:
            layer = _resolved(protocol, last_stage)[1]
            cache.setdefault(run["checkpoint"], {})[protocol.text] = scorer.score(
                run["checkpoint"], protocol.explainer, layer, _per_image_file(sdir, run, protocol))
            atomic_write_text(cache_file, json.dumps(cache, indent=2))
    scores = {main.text: {r["label"]: _explanation_metrics(r["metrics"]) for r in complete}}
    per_image = {main.text: {r["label"]: r.get("per_image") for r in complete}}
    for protocol in others:
        scores[protocol.text] = {r["label"]: cache[r["checkpoint"]][protocol.text]
                                 for r in complete}
        per_image[protocol.text] = {r["label"]: str(_per_image_file(sdir, r, protocol))
                                    for r in complete}
    return {"main": _describe(main, last_stage, steps),
            "protocols": [_describe(p, last_stage, steps) for p in (main, *others)],
            "scores": scores, "per_image": per_image, "num_classes": scorer.splits.num_classes,
            "test_images": len(scorer.splits.test) if scorer.splits.test is not None else None,
            "explain_samples": min(base.eval.explain_samples, len(scorer.splits.test))
            if scorer.splits.test is not None else base.eval.explain_samples}


def _per_image_file(sdir: Any, run: dict, protocol: Protocol) -> Path:
    """``final/sensitivity/<label>-<hash>.npz``: a checkpoint's per-image scores under a
    protocol (the hash of both: a resumed study with new runs scores those anew)."""
    digest = hashlib.sha256(f"{run['checkpoint']}|{protocol.text}".encode()).hexdigest()[:10]
    return sdir.final_dir / "sensitivity" / f"{run['label']}-{digest}.npz"


def _resolved(protocol: Protocol, last_stage: str) -> tuple[str, str | None]:
    return protocol.explainer, protocol.resolved_layer(last_stage)


def _describe(protocol: Protocol, last_stage: str, steps: int) -> dict[str, Any]:
    explainer, layer = _resolved(protocol, last_stage)
    return {"text": protocol.text, "explainer": explainer, "layer": layer,
            "steps": steps if explainer == "integrated_gradients" else None,
            "description": protocol.describe(last_stage, steps)}


def _explanation_metrics(metrics: dict[str, float]) -> dict[str, float]:
    from extune.evaluate.explanations import EXPLANATION_METRICS, LOCALISATION_METRICS

    names = {f"test/{m}" for m in (*EXPLANATION_METRICS, *LOCALISATION_METRICS)}
    return {k: v for k, v in metrics.items() if k in names}


def _read(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class _Scorer:
    """Scores checkpoints on the test split of the final runs' data (loaded once)."""

    def __init__(self, base: Any) -> None:
        from extune.train.data import load_data

        self.base = base
        self.splits = load_data(base.data)

    def score(self, checkpoint: str, explainer: str, layer: str | None, per_image_file: Path
              ) -> dict[str, float]:
        """The explanation metrics (``test/...``) of one checkpoint under one protocol; their
        per-image values go to ``per_image_file``."""
        import numpy as np

        from extune.evaluate import evaluate_split
        from extune.files import atomic_writer
        from extune.train.methods import evaluation_explainer
        from extune.train.saved_model import load_model

        with _local_folder(checkpoint) as folder:
            model, cfg = load_model(Path(folder) / "checkpoint.pt")
        cfg = cfg.with_overrides({"eval.explainer": explainer, "eval.layer": layer})
        per_image: dict[str, Any] = {}
        metrics = evaluate_split(
            model.eval(), self.splits.test, mean=self.splits.mean, std=self.splits.std,
            num_classes=self.splits.num_classes, cfg=cfg.eval,
            explainer=evaluation_explainer(cfg), prefix="test", full=False,
            metrics=["test/alignment"], per_image=per_image)
        with atomic_writer(per_image_file) as f:
            np.savez_compressed(f, **{k: v.numpy() for k, v in per_image.items()})
        return _explanation_metrics(metrics)


class _local_folder:
    """A checkpoint folder on this machine: the path itself, or a download of a URI."""

    def __init__(self, path: str) -> None:
        self.path, self._tmp = path, None

    def __enter__(self) -> str:
        if "://" not in self.path:
            return self.path
        from ray.tune import Checkpoint

        self._tmp = tempfile.TemporaryDirectory(prefix="extune-rescore-")
        return Checkpoint(self.path).to_directory(self._tmp.name)

    def __exit__(self, *exc: Any) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
