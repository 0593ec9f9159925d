"""Plot §10's Wikipedia runs: held-out AUCs by step, one line per recipe.

    python records/2026-11-29_discriminator-context/wiki/plot_20k.py [DIR]

Reads ``DIR/*-20k/eval.jsonl`` (default: beside this file), with each run's checkpoints evaluated
afterwards (``eval_step_*.json``, ``eval_checkpoint.py``) as dots, and writes ``DIR/wiki-20k.png``.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
panels = (("unigram/disc_auc", "AUC, unigram replacements"),
          ("freq0/disc_auc", "AUC, generator's replacements by frequent tokens"),
          ("uniform/disc_auc", "AUC, uniform replacements"),
          ("disc_auc", "AUC, generator's replacements"))
fig, axes = plt.subplots(1, len(panels), figsize=(16, 3.8), sharex=True)
for path in sorted(here.glob("*-20k/eval.jsonl")):
    rows = [json.loads(line) for line in path.open()]
    extra = [json.loads(p.read_text()) for p in sorted(path.parent.glob("eval_step_*.json"))]
    for ax, (key, _) in zip(axes, panels):
        line, = ax.plot([r["step"] for r in rows], [r[key] for r in rows], lw=1.2,
                        label=path.parent.name)
        ax.plot([r["step"] for r in extra], [r[key] for r in extra], "o", ms=4,
                color=line.get_color())  # checkpoints evaluated afterwards
for ax, (_, title) in zip(axes, panels):
    ax.set(title=title, xlabel="step (32 x 128 tokens)")
    ax.title.set_fontsize(9)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("ROC AUC")
axes[0].legend(fontsize=8)
fig.tight_layout()
out = here / "wiki-20k.png"
fig.savefig(out, dpi=110)
print(out)
