"""One command, one table: every performance figure of extune as a ratio against its goal.

    python benchmarks/run.py                 # the full table (about 7 minutes on a 2-core CPU)
    python benchmarks/run.py --quick         # CI size: checks that every row gives a finite figure
    python benchmarks/run.py --only views,gradcam --device cuda

Each row compares two things in the same process, interleaved (A, B, A, B, ...), and prints the
ratio of their medians, so that drift on a shared machine hits both alike. Rows that need CUDA
are printed as skipped, with the reason, where no GPU is present. The table is also written to
``benchmarks/results/<date>.json`` (``--json`` elsewhere) so that runs can be compared over time.
The rows and how to read them: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from extune.train.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rows_audit import audit_rows  # noqa: E402  (benchmarks/ is not a package)
from rows_peer import peer_rows  # noqa: E402
from rows_search import ray_rows  # noqa: E402
from rows_steps import (  # noqa: E402
    cuda_rows,
    data_rows,
    edda_row,
    eval_row,
    excon_rows,
    gradcam_row,
    streamed_row,
    views_row,
)
from timing import Row  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

GROUPS: dict[str, Callable[[argparse.Namespace, torch.device], list[Row]]] = {
    "views": lambda a, d: [views_row(a.quick, d)],
    "excon": lambda a, d: excon_rows(a.quick, d),
    "edda": lambda a, d: [edda_row(a.quick, d)],
    "gradcam": lambda a, d: [gradcam_row(a.quick, d)],
    "eval": lambda a, d: [eval_row(a.quick)],
    "data": lambda a, d: [*data_rows(a.quick), streamed_row(a.quick)],
    "search": lambda a, d: ray_rows(a.quick, time_to_quality=not a.no_ttq, command=a.command,
                                    keep_ray="peer" in a.only.split(",")),
    "peer": lambda a, d: peer_rows(a.quick),
    "cuda": lambda a, d: cuda_rows(a.quick),
    "audit": lambda a, d: audit_rows(a.quick, d),
}
"""Row groups in table order; ``--only`` picks some."""


def print_row(row: Row) -> None:
    """One table line: name, figure, goal, verdict, detail."""
    value = "skipped" if row.value is None else f"{row.value:.3g} {row.unit}"
    print(f"{row.name:44s} {value:>14s}  {row.goal or '':12s} {row.verdict():8s} {row.detail}",
          flush=True)


def environment(device: torch.device) -> dict[str, object]:
    """What the figures were taken on (and the machine's load at the end of the run)."""
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "cpus": torch.get_num_threads(), "device": str(device),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "machine": platform.machine(), "load_average": os.getloadavg()}


def default_json() -> Path:
    """``results/<date>.json``, or ``results/<date>-<HHMM>.json`` where a run of the same day
    is there already (never overwritten)."""
    now = datetime.datetime.now()
    path = RESULTS / f"{now.date().isoformat()}.json"
    return path if not path.exists() else RESULTS / f"{now:%Y-%m-%d-%H%M}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI size (finite figures only)")
    parser.add_argument("--only", default=",".join(GROUPS), help="row groups: " + ",".join(GROUPS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="device of the step rows (the search rows run on the CPU)")
    parser.add_argument("--no-ttq", action="store_true", help="skip the time-to-quality row")
    parser.add_argument("--command", action="store_true", help="also time `extune search` end to "
                        "end as a user runs it (a subprocess: about 45 s more)")
    parser.add_argument("--json", default=None, help="output file (default benchmarks/results/"
                        "<date>.json, <date>-<HHMM>.json if taken; --quick writes none unless "
                        "given)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    Config()  # fail early on a broken install
    start = time.perf_counter()
    print(f"{'row':44s} {'figure':>14s}  {'goal':12s} {'verdict':8s} detail")
    rows: list[Row] = []
    group_seconds: dict[str, float] = {}
    for name in args.only.split(","):
        group_start = time.perf_counter()
        for row in GROUPS[name](args, device):
            print_row(row)
            rows.append(row)
        group_seconds[name] = time.perf_counter() - group_start
        print(f"  {name} rows: {group_seconds[name]:.0f} s", file=sys.stderr, flush=True)
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():  # kept for a later group
        sys.modules["ray"].shutdown()
    wall = time.perf_counter() - start
    print(f"total {wall:.0f} s", flush=True)
    out = args.json or (None if args.quick else str(default_json()))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        payload = {"environment": environment(device), "quick": args.quick, "wall_s": wall,
                   "group_seconds": group_seconds,
                   "rows": [asdict(r) | {"verdict": r.verdict()} for r in rows]}
        Path(out).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {out}")
    finite = all(r.value is None or math.isfinite(r.value) for r in rows)
    return 0 if finite else 1


if __name__ == "__main__":
    code = main()
    gc.freeze()  # skip the exit's collection of every torch/Ray object (2-3 s), as `extune` does
    sys.exit(code)
