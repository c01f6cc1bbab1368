"""``benchmarks/run.py --quick`` produces every row with a finite figure (timing goals live in
the benchmark, not here: this only checks that each row runs and measures something)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # starts Ray and runs small searches
def test_quick_benchmark_prints_every_row(tmp_path):
    out = tmp_path / "quick.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    names = " | ".join(r["name"] for r in rows)
    for part in ("views", "excon / supcon", "edda / ce", "gradcam", "search overhead",
                 "ray start-up", "data start-up", "data fetch", "data: streamed",
                 "time to val acc", "eval:", "cuda:", "peer: wall time",
                 "peer: overhead per trial"):
        assert part in names, part
    for row in rows:
        if row["value"] is None:  # CUDA rows without a GPU: skipped with the reason
            assert row["verdict"] == "skipped" and row["detail"], row
        else:
            assert math.isfinite(row["value"]) and row["value"] > 0, row
            assert row["name"] in done.stdout
