"""``curves.png`` of a pre-training run: training losses and accuracies, held-out metrics,
the fixed-proposal AUCs and the context diagnostics. matplotlib is an optional dependency.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .heldout import CONTEXT_GROUPS, PROPOSALS

PLOT_MISSING = ("matplotlib is not installed, so curves.png is not drawn (pip install "
                "'electra-fn[plot]' to get it; the metrics are in metrics.jsonl and eval.jsonl)")


def available() -> bool:
    """Whether matplotlib can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(out: Path, rows: list[dict], evals: list[dict], log=print) -> Path | None:
    """Draw curves.png from the training and held-out rows; None (and a logged note) when
    matplotlib, an optional dependency, is not installed or there is nothing to draw."""
    plt = pyplot()
    if plt is None:
        log(f"note: {PLOT_MISSING}")
        return None
    if not rows:
        return None
    fixed = [n for n in PROPOSALS if evals and all(f"{n}/disc_auc" in e for e in evals)]
    groups = [(g, lab) for g, lab in CONTEXT_GROUPS
              if evals and all(f"{g}/disc_auc" in e for e in evals)
              and any(e.get(f"{g}/replaced_fraction", 1.0) > 0 for e in evals)]
    n_axes = 3 + bool(fixed) + bool(groups)
    fig, axes = plt.subplots(1, n_axes, figsize=(5 * n_axes, 4))
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r["gen_loss"] for r in rows], label="generator MLM loss")
    axes[0].plot(steps, [r["disc_loss"] * 50 for r in rows], label="50 × discriminator loss")
    axes[0].set_xlabel("step"), axes[0].set_title("training loss"), axes[0].legend()
    axes[1].plot(steps, [r["gen_accuracy"] for r in rows], label="generator accuracy")
    axes[1].plot(steps, [r["disc_replaced_accuracy"] for r in rows], label="disc. on replaced")
    axes[1].plot(steps, [r["disc_original_accuracy"] for r in rows], label="disc. on original")
    axes[1].set_xlabel("step"), axes[1].set_title("training accuracy"), axes[1].legend()
    if evals:
        es = [e["step"] for e in evals]
        for k, lab in (("gen_accuracy", "generator accuracy"),
                       ("disc_replaced_accuracy", "disc. on replaced"),
                       ("disc_original_accuracy", "disc. on original"),
                       ("disc_accuracy", "disc. overall"),
                       ("disc_auc", "disc. ROC AUC")):
            if all(k in e for e in evals):
                axes[2].plot(es, [e[k] for e in evals], marker="o", label=lab)
        axes[2].set_xlabel("step"), axes[2].set_title("held-out accuracy"), axes[2].legend()
    if fixed:
        es = [e["step"] for e in evals]
        axes[3].plot(es, [e["disc_auc"] for e in evals], marker="o", color="0.5",
                     label="AUC, generator's samples")
        for n in fixed:
            line, = axes[3].plot(es, [e[f"{n}/disc_auc"] for e in evals], marker="o",
                                 label=f"AUC, {n} replacements")
            axes[3].plot(es, [e[f"{n}/disc_replaced_accuracy"] for e in evals], marker="x",
                         linestyle="--", color=line.get_color(), label=f"on replaced, {n}")
        axes[3].set_xlabel("step"), axes[3].set_title("held-out discriminator, fixed proposals")
        axes[3].legend()
    if groups:
        ax = axes[-1]
        es = [e["step"] for e in evals]
        for g, lab in groups:
            ax.plot(es, [e[f"{g}/disc_auc"] for e in evals], marker="o", label=f"AUC, {lab}")
        if all("shuffle/logit_shift" in e for e in evals):
            ax.plot(es, [e["shuffle/logit_shift"] for e in evals], marker="s", color="k",
                    linestyle="--", label="shuffled-context logit shift")
            ax.plot(es, [e["shuffle/logit_spread"] for e in evals], marker="s", color="k",
                    linestyle=":", label="logit spread (its scale)")
        if all("state/token_spread" in e for e in evals):
            ax.plot(es, [e["state/token_spread"] for e in evals], marker="^", color="0.4",
                    linestyle=":", label="final-state spread across tokens")
        ax.set_xlabel("step"), ax.set_ylabel("AUC; logits")
        ax.set_title("does the discriminator use context?")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
