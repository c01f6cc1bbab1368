"""The warm-up ablation of docs/results.md: paired differences (extune.search.stats) of runs
trained with ``<method>.warmup_epochs=0`` against the study's final runs of the same seeds.

    python docs/results/ablation/compare_warmup.py STUDY_DIR ABLATION_DIR

``ABLATION_DIR/<method>-w0-s<seed>/metrics.json`` come from
``extune train --config STUDY_DIR/final/configs/<method>.yaml --set <method>.warmup_epochs=0
--set runtime.seed=<seed> --out ABLATION_DIR/<method>-w0-s<seed>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from extune.search.stats import paired_difference, verdict

METRICS = [("test/accuracy", True), ("test/alignment", True), ("test/pointing_game", True),
           ("test/saliency_in_mask", True), ("test/avg_drop", False),
           ("test/increase_confidence", True), ("test/adv/fgsm_accuracy", True),
           ("test/insertion_auc", True)]
PAIRS = (("excon", "supcon"), ("edda", "ce"), ("edda", "random_occlusion"))


def main(study_dir: Path, ablation_dir: Path) -> None:
    study: dict[str, dict[int, dict]] = {}
    for r in json.loads((study_dir / "final" / "runs.json").read_text()):
        study.setdefault(r["method"], {})[r["seed"]] = r["metrics"]
    for method, baseline in PAIRS:
        runs = {int(p.name.rsplit("-s", 1)[1]): json.loads((p / "metrics.json").read_text())
                ["final"] for p in sorted(ablation_dir.glob(f"{method}-w0-s*"))
                if (p / "metrics.json").is_file()}
        if not runs:
            continue
        print(f"\n{method} with warm-up 0 ({len(runs)} seeds): vs the searched warm-up, "
              f"vs {baseline}")
        for key, higher in METRICS:
            a = {s: m[key] for s, m in runs.items()}
            cells = []
            for other in (study[method], study[baseline]):
                d = paired_difference(a, {s: other[s][key] for s in a})
                cells.append(f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] "
                             f"{verdict(d, higher):9s}")
            print(f"  {key:26s} mean {sum(a.values()) / len(a):.3f}   " + "   ".join(cells))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
