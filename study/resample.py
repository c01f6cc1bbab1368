"""Test-set sampling: how much an estimate would move on another draw of test images.

Every final run keeps its per-image test outputs (``test_outputs.npz``,
:data:`extune.evaluate.suite.PerImage`). A study's test images are a sample too: with 1,000 of
them one model's accuracy has a sampling standard error near 0.016, the size of the differences
a study reports. :class:`TestSetBootstrap` resamples the test images with replacement
(``resamples`` times, seeded) and recomputes each arm's estimate on every resample from the
per-image outputs; the variance of those estimates is the test-set term
:func:`extune.study.stats.compare` adds to an interval.

- Every run of every arm is scored on the same images, so one resample of image indices is
  applied to all of them: a difference keeps its pairing by image.
- An arm's estimate is the mean of its searches' means (each the mean of its runs), as in
  :mod:`extune.study.stats`; metrics that are means over images (accuracies, explanation
  scores) are averaged per image first, ECE is recomputed per run on each resample (15 equal
  bins of the top-1 confidence, as torchmetrics' ``multiclass_calibration_error``).
- The explanation metrics are measured on a fixed subset of the test images
  (``test/explain_index``): those images are resampled among themselves.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TestSetBootstrap", "RESAMPLES", "ece", "load_outputs", "run_weights", "outputs_of"]

RESAMPLES = 2000
"""Bootstrap resamples of the test images (the Monte Carlo error of a standard error is then
about 1.6%)."""

_BINS = np.linspace(0.0, 1.0, 16)  # torchmetrics' 15-bin boundaries (a confidence of 1: bin 16)

_MEAN_KEYS = {
    "accuracy": ("test/correct",),
    "fgsm_accuracy": ("test/adv/fgsm_correct",),
}
_ECE_KEYS = {"ece": ("test/confidence", "test/correct")}


def ece(confidence: np.ndarray, correct: np.ndarray, rows: np.ndarray | None = None
        ) -> np.ndarray:
    """Expected calibration error (L1, 15 equal-width bins of the top-1 confidence) of the
    images ``rows`` (``[B, n]`` resampled indices; ``None``: all images once).

    ``ECE = sum_b |sum_{i in b} (correct_i - confidence_i)| / n``, the same number as
    ``multiclass_calibration_error(norm="l1", n_bins=15)``.

    Returns:
        ``[B]`` (``[1]`` for ``rows=None``).
    """
    if rows is None:
        rows = np.arange(len(confidence))[None, :]
    bins = np.searchsorted(_BINS, confidence.astype(np.float64), side="right") - 1  # 0..15
    gap = correct.astype(np.float64) - confidence.astype(np.float64)
    b, n = rows.shape
    flat = (np.arange(b)[:, None] * 16 + bins[rows]).ravel()
    sums = np.bincount(flat, weights=gap[rows].ravel(), minlength=b * 16).reshape(b, 16)
    return np.abs(sums).sum(axis=1) / n


def load_outputs(path: str) -> dict[str, np.ndarray] | None:
    """A run's per-image outputs (``test_outputs.npz``), from a path or a storage URI;
    ``None`` when the run kept none."""
    try:
        if "://" not in path:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        with fs.open_input_file(inner) as f, tempfile.TemporaryFile() as tmp:
            tmp.write(f.read())
            tmp.seek(0)
            with np.load(tmp) as data:
                return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError):
        return None


def run_weights(indices: Sequence[int], clusters: Mapping[int, int] | None) -> np.ndarray:
    """Weights of an arm's runs (by seed index) such that the weighted sum of their values is
    the mean of the searches' means: ``1 / (S * K_s)`` for a run of search ``s``."""
    groups = [clusters.get(i, 0) if clusters else 0 for i in indices]
    counts = {g: groups.count(g) for g in set(groups)}
    return np.array([1.0 / (len(counts) * counts[g]) for g in groups])


class TestSetBootstrap:
    """The test-set sampling variance of arms' estimates and their differences.

    Args:
        outputs: arm -> {seed index: per-image outputs} (runs without outputs left out; an
            arm missing a complete run's outputs gets no test-set term).
        clusters: seed index -> search index (the arms' estimates weight searches equally).
        resamples, seed: the bootstrap's size and seed (the same seed, the same report).
    """

    def __init__(self, outputs: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]],
                 clusters: Mapping[int, int] | None = None, *, resamples: int = RESAMPLES,
                 seed: int = 0) -> None:
        self.outputs = outputs
        self.clusters = clusters
        self.resamples = resamples
        self.seed = seed
        self._cache: dict[tuple[str, str], np.ndarray | None] = {}
        self._rows: dict[tuple[str, int], np.ndarray] = {}

    def variance(self, a: str, b: str | None, metric: str) -> float | None:
        """Variance over resamples of ``estimate(a) - estimate(b)`` (of ``estimate(a)`` when
        ``b`` is ``None``); ``None`` where an arm has no per-image outputs for ``metric``."""
        ea = self.estimates(a, metric)
        if ea is None:
            return None
        if b is None:
            return float(np.var(ea))
        eb = self.estimates(b, metric)
        return None if eb is None else float(np.var(ea - eb))

    def estimates(self, arm: str, metric: str) -> np.ndarray | None:
        """``[resamples]``: the arm's estimate of ``metric`` on each resample of the images."""
        key = (arm, metric)
        if key not in self._cache:
            self._cache[key] = self._estimates(arm, metric)
        return self._cache[key]

    def _estimates(self, arm: str, metric: str) -> np.ndarray | None:
        runs = self.outputs.get(arm) or {}
        if not runs:
            return None
        indices = sorted(runs)
        weights = run_weights(indices, self.clusters)
        per_run = [self._run(runs[i], metric) for i in indices]
        if any(v is None for v in per_run):
            return None
        return np.sum([w * v for w, v in zip(weights, per_run, strict=True)], axis=0)

    def _run(self, out: Mapping[str, np.ndarray], metric: str) -> np.ndarray | None:
        """One run's ``metric`` on every resample (``[resamples]``), or ``None``."""
        from extune.study.claims import EXPLANATION_METRIC_NAMES

        if metric in EXPLANATION_METRIC_NAMES:
            values = out.get(f"test/{metric}")
            if values is None:
                return None
            resampled = values[self.rows("explain", len(values))]
            with np.errstate(invalid="ignore"):
                return np.nanmean(resampled, axis=1)
        rows = self.rows("test", len(out["test/correct"])) if "test/correct" in out else None
        if rows is None:
            return None
        if metric in _MEAN_KEYS:
            values = out.get(_MEAN_KEYS[metric][0])
            return None if values is None else values[rows].mean(axis=1)
        if metric in _ECE_KEYS:
            return ece(out["test/confidence"], out["test/correct"], rows)
        corruptions = sorted({k.split("/")[2] for k in out if k.startswith("test/shift/")})
        if metric == "shift_accuracy" and corruptions:
            return np.mean([out[f"test/shift/{c}/correct"][rows].mean(axis=1)
                            for c in corruptions], axis=0)
        if metric == "shift_ece" and corruptions:
            return np.mean([ece(out[f"test/shift/{c}/confidence"],
                                out[f"test/shift/{c}/correct"], rows) for c in corruptions],
                           axis=0)
        return None

    def rows(self, which: str, n: int) -> np.ndarray:
        """``[resamples, n]`` image indices drawn with replacement, the same for every run
        (per set of images: ``test``, ``explain``)."""
        key = (which, n)
        if key not in self._rows:
            rng = np.random.default_rng([self.seed, n, 0 if which == "test" else 1])
            self._rows[key] = rng.integers(0, n, size=(self.resamples, n))
        return self._rows[key]


def outputs_of(runs: Sequence[Mapping[str, Any]], key: str = "per_image"
               ) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """Arm -> {seed index: per-image outputs} of the complete runs that kept them."""
    found: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for run in runs:
        path = run.get(key)
        if run.get("state") != "complete" or not path:
            continue
        data = load_outputs(path)
        if data is not None:
            found.setdefault(run["method"], {})[int(run["seed_index"])] = data
    return found

