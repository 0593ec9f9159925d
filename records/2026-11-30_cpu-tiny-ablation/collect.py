"""Copy the study's report and each run's small files into this record (run from the
repository root after `python -m experiments.ablate --study cpu_tiny_ablate --report-only`).

    python records/2026-11-30_cpu-tiny-ablation/collect.py [runs/ablate-cpu_tiny_ablate]
"""

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STUDY = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ablate-cpu_tiny_ablate")

for name in ("report.json", "results.md", "study.png", "curves.png"):
    if (STUDY / name).is_file():
        shutil.copy2(STUDY / name, HERE / name)
for pre in sorted(STUDY.glob("**/seed*/pretrain")):  # gen-1/4/seed0 too
    run = pre.parent
    dest = HERE / "runs" / run.relative_to(STUDY)
    for name in ("config.json", "eval.jsonl", "metrics.jsonl", "summary.json"):
        if (pre / name).is_file():
            (dest / "pretrain").mkdir(parents=True, exist_ok=True)
            shutil.copy2(pre / name, dest / "pretrain" / name)
    for task in sorted((run / "glue").glob("*.json")):
        (dest / "glue").mkdir(parents=True, exist_ok=True)
        shutil.copy2(task, dest / "glue" / task.name)
print(f"copied {STUDY} into {HERE}")
