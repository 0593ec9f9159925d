"""Reading a reproduction: pre-trained against from-scratch fine-tuning, per task and averaged,
placed on the paper's compute axis, as a JSON report, ``results.md`` and a plot.

Reference points (GLUE dev; ELECTRA paper and google-research/electra): ELECTRA-Small at a
fraction of its 1M-step pre-training, ELECTRA-Small-OWT per task, BERT-Small at equal compute,
and a BERT-Base fine-tuned without pre-training.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import orjson

from .finetune import PUBLISHED_SMALL_OWT
from .metrics import main_metric
from .plotting import pyplot

# ELECTRA-Small's GLUE score after a fraction of its pre-training (paper, Table 1 and Fig. 3).
PAPER_SMALL_CURVE = {0.0625: 74.1, 0.125: 76.0, 0.25: 77.7, 0.5: 79.0, 1.0: 79.9}
PAPER_BERT_SMALL = 75.1
# A BERT-Base fine-tuned from random initialisation (no pre-training).
NO_PRETRAINING_BERT_BASE = {"sst2": 79.9, "cola": 0.0, "mrpc": 77.9, "stsb": 17.8, "rte": 47.3}


def task_results(glue_dir: str | Path) -> dict[str, dict]:
    """Per task in ``glue_dir`` (``<task>.json`` of :mod:`electra_fn.glue_run`): the main
    metric's seed values ×100, median, mean, std and the training examples used."""
    out = {}
    for path in sorted(Path(glue_dir).glob("*.json")):
        try:
            r = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            continue
        if not isinstance(r, dict) or r.get("task") != path.stem or "summary" not in r:
            continue
        values = [100 * v for v in r["summary"][r["main_metric"]]["values"]]
        out[r["task"]] = {"metric": r["main_metric"], "values": values,
                          "median": statistics.median(values),
                          "mean": statistics.fmean(values),
                          "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                          "train_examples": (r.get("data") or {}).get("train_examples_used")}
    return out


def compare(pretrain_summary: dict, pretrained: dict[str, dict], scratch: dict[str, dict],
            tasks: list[str] | None = None) -> dict:
    """The reproduction's report: per task both medians (and spreads), their difference and
    the references; averages over the tasks both have (WNLI reported apart, never averaged);
    the pre-training compute and its fraction of the paper's."""
    names = [t for t in (tasks or sorted(pretrained)) if t in pretrained and t in scratch]
    rows = {}
    for t in names:
        p, s = pretrained[t], scratch[t]
        rows[t] = {"metric": main_metric(t), "pretrained": p, "scratch": s,
                   "gain": p["median"] - s["median"],
                   "electra_small_owt": PUBLISHED_SMALL_OWT.get(t),
                   "no_pretraining_bert_base": NO_PRETRAINING_BERT_BASE.get(t)}
    averaged = [t for t in names if t != "wnli"]
    avg = {k: statistics.fmean(rows[t][k]["median"] for t in averaged) if averaged else None
           for k in ("pretrained", "scratch")}
    owt = [PUBLISHED_SMALL_OWT[t] for t in averaged if t in PUBLISHED_SMALL_OWT]
    compute = pretrain_summary.get("compute", {})
    return {"tasks": rows, "averaged_over": averaged, "average": {
                **avg, "gain": (avg["pretrained"] - avg["scratch"]) if averaged else None,
                "electra_small_owt": statistics.fmean(owt) if len(owt) == len(averaged) and owt
                else None},
            "pretraining": {"steps": pretrain_summary.get("steps"),
                            "tokens": pretrain_summary.get("tokens_seen"),
                            "wall_time_s": pretrain_summary.get("wall_time_s"), **compute},
            "paper_small_curve": [[f, v] for f, v in PAPER_SMALL_CURVE.items()],
            "paper_bert_small": PAPER_BERT_SMALL}


def markdown(report: dict, title: str = "Reproduction: pre-trained vs from scratch") -> str:
    """``results.md`` of a :func:`compare` report."""
    pre = report["pretraining"]
    lines = [f"# {title}", ""]
    if pre.get("flops"):
        lines += [f"Pre-training: {pre['steps']:,} steps, {pre['tokens']:,} tokens, "
                  f"{pre['flops']:.3g} FLOPs = {100 * pre['paper_fraction']:.4g}% of the "
                  f"paper's ELECTRA-Small (1M steps of 128 × 128, counted the same way), "
                  f"{pre['wall_time_s'] / 3600:.2f} h.", ""]
    lines += ["GLUE dev, median over seeds (± std); gain = pre-trained − from scratch.", "",
              "| task | metric | seeds | train examples | pre-trained | from scratch | gain | "
              "ELECTRA-Small-OWT | BERT-Base, no pre-training |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def ref(x):
        return "–" if x is None else f"{x:.1f}"

    for t, r in report["tasks"].items():
        p, s = r["pretrained"], r["scratch"]
        lines.append(f"| {t} | {r['metric']} | {len(p['values'])} / {len(s['values'])} | "
                     f"{p['train_examples'] or '–'} | {p['median']:.1f} ± {p['std']:.1f} | "
                     f"{s['median']:.1f} ± {s['std']:.1f} | {r['gain']:+.1f} | "
                     f"{ref(r['electra_small_owt'])} | {ref(r['no_pretraining_bert_base'])} |")
    a = report["average"]
    if report["averaged_over"]:
        lines += ["", f"Average over {', '.join(report['averaged_over'])} (the tasks run; not "
                  f"the paper's eight-task GLUE score): pre-trained {a['pretrained']:.1f}, from "
                  f"scratch {a['scratch']:.1f}, gain {a['gain']:+.1f}"
                  + (f"; ELECTRA-Small-OWT on the same tasks {a['electra_small_owt']:.1f}."
                     if a["electra_small_owt"] is not None else ".")]
    curve = ", ".join(f"{100 * k:g}%: {v}" for k, v in report["paper_small_curve"])
    lines += ["", f"The paper's ELECTRA-Small GLUE score by share of its pre-training: {curve} "
              f"(BERT-Small at equal compute {report['paper_bert_small']})."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path | None:
    """The run's average against the paper's compute curve (log compute axis); None without
    matplotlib or compute figures."""
    plt = pyplot()
    frac = report["pretraining"].get("paper_fraction")
    if plt is None or not frac or report["average"]["pretrained"] is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = zip(*sorted(report["paper_small_curve"]))
    ax.plot(xs, ys, marker="o", label="paper: ELECTRA-Small, GLUE (8 tasks)")
    a = report["average"]
    ax.scatter([frac], [a["pretrained"]], color="C1", zorder=3,
               label=f"this run, pre-trained ({len(report['averaged_over'])} tasks)")
    ax.scatter([frac], [a["scratch"]], color="C2", marker="x", zorder=3,
               label="this run's model, from scratch")
    ax.set_xscale("log"), ax.set_xlabel("pre-training compute, fraction of the paper's")
    ax.set_ylabel("GLUE dev average"), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
