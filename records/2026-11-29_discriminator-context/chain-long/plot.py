"""Plot the chain probe's long runs: AUC on uniform (order-only) replacements by step.

    python records/2026-11-29_discriminator-context/chain-long/plot.py [DIR]

Reads every ``*.jsonl`` in DIR (default: beside this file; one context_probe run each) and
writes ``DIR/<DIR's name>.png``.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
fig, (ax_u, ax_g) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
for path in sorted(here.glob("*.jsonl")):
    rows = [json.loads(line) for line in path.open()]
    steps = [r["step"] for r in rows]
    style = dict(lw=1.2, ls="--" if "no-context" in path.stem else "-")
    ax_u.plot(steps, [r["uniform/disc_auc"] for r in rows], label=path.stem, **style)
    ax_g.plot(steps, [r["disc_auc"] for r in rows], label=path.stem, **style)
ax_u.set(title="AUC, uniform replacements (order only)", xlabel="step", ylabel="ROC AUC")
ax_g.set(title="AUC, the generator's replacements", xlabel="step")
for ax in (ax_u, ax_g):
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.grid(alpha=0.3)
ax_u.legend(fontsize=7)
fig.tight_layout()
out = here / f"{here.resolve().name}.png"
fig.savefig(out, dpi=110)
print(out)
