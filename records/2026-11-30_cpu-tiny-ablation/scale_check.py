"""Does the study's 10,000-step scale rank the baseline and lr-x2 as the reproduction's 20,000
steps do? Copies the two 20,000-step runs' small files into scale/, prints their held-out
metrics side by side and draws scale.png beside the study's own 10,000-step runs (run from the
repository root).

    python records/2026-11-30_cpu-tiny-ablation/scale_check.py \
        [runs/wiki/tiny-20k runs/wiki/tiny-20k-lr5e-4]
"""

import shutil
import sys
from pathlib import Path

import orjson

from electra_fn.plotting import pyplot

HERE = Path(__file__).resolve().parent
LONG = dict(zip(("baseline", "lr-x2"),
                map(Path, sys.argv[1:3] or ("runs/wiki/tiny-20k", "runs/wiki/tiny-20k-lr5e-4"))))
METRICS = (("unigram/disc_auc", "AUC, unigram"), ("disc_auc", "AUC, generator"),
           ("gen_accuracy", "gen acc"))


def rows(path: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(orjson.loads, path.read_bytes().splitlines())}


long_runs = {}
for name, src in LONG.items():
    dest = HERE / "scale" / f"{name}-20k"
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "eval.jsonl", "summary.json"):
        if (src / f).is_file():
            shutil.copy2(src / f, dest / f)
    long_runs[name] = rows(dest / "eval.jsonl")

steps = sorted(set(long_runs["baseline"]) & set(long_runs["lr-x2"]))
print("| step | tokens (M) | " + " | ".join(f"{label}, {n}" for _, label in METRICS
                                            for n in LONG) + " |")
print("|---:|---:|" + "---:|" * (len(METRICS) * len(LONG)))
for s in steps:
    cells = [f"{long_runs[n][s][k]:.3f}" for k, _ in METRICS for n in LONG]
    print(f"| {s:,} | {s * 32 * 128 / 1e6:.0f} | " + " | ".join(cells) + " |")

plt = pyplot()
if plt is not None:
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {"baseline": "tab:blue", "lr-x2": "tab:red"}
    for name, run in long_runs.items():
        x = sorted(run)
        ax.plot([s * 4096 / 1e6 for s in x], [run[s]["unigram/disc_auc"] for s in x],
                color=colours[name], label=f"{name}, 20,000-step schedule")
    for name in LONG:
        for seed_dir in sorted((HERE / "runs" / name).glob("seed*")):
            run = rows(seed_dir / "pretrain" / "eval.jsonl")
            x = sorted(run)
            ax.plot([s * 4096 / 1e6 for s in x], [run[s]["unigram/disc_auc"] for s in x],
                    color=colours[name], linestyle="--", alpha=0.7,
                    label=f"{name}, 10,000-step schedule, {seed_dir.name}")
    ax.set_xlabel("pre-training tokens (M)")
    ax.set_ylabel("held-out AUC, unigram replacements")
    ax.set_title("Tiny ELECTRA on Wikipedia: the study's scale against the reproduction's")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "scale.png", dpi=120)
    print(f"wrote {HERE / 'scale.png'}")
