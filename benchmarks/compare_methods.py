"""Compare methods after the same short training on the same data (several seeds).

    python benchmarks/compare_methods.py                              # ce, random_occlusion, edda
    python benchmarks/compare_methods.py --methods ce,excon --seeds 0,1,2 --set optim.epochs=5

Prints mean +- std over seeds of validation accuracy, alignment, pointing game and ECE (the
synthetic data set's object masks give the pointing game), and writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from extune.train import fit
from extune.train.config import Config, parse_assignments

METRICS = ("val/accuracy", "val/alignment", "val/pointing_game", "val/ece", "val/avg_drop",
           "adv/fgsm_accuracy", "shift/accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="ce,random_occlusion,edda")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="overrides", action="append", default=["optim.epochs=3"])
    parser.add_argument("--json", default="compare_methods.json")
    args = parser.parse_args()
    base = Config().with_overrides(parse_assignments(args.overrides))
    base = base.with_overrides({"runtime.progress": False})
    results: dict[str, list[dict[str, float]]] = {}
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = base.with_overrides({"method": method, "runtime.seed": seed})
            with tempfile.TemporaryDirectory() as out:
                metrics = fit(cfg, out_dir=out).metrics
            results.setdefault(method, []).append({k: metrics[k] for k in METRICS})
            print(method, seed, {k: round(metrics[k], 4) for k in METRICS}, flush=True)
    print(f"\n{'method':18s}" + "".join(f"{m:>22s}" for m in METRICS))
    for method, runs in results.items():
        cells = []
        for m in METRICS:
            values = [r[m] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} +- {spread:.3f}")
        print(f"{method:18s}" + "".join(f"{c:>22s}" for c in cells))
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
