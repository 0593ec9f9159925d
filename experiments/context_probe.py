"""Does the discriminator learn context? Train tiny ELECTRAs on a synthetic corpus.

    python -m experiments.context_probe --task topic --steps 300            # bag-of-words context
    python -m experiments.context_probe --task chain --steps 1500 \\
        --variants short-run,original,gen-1/4,gen-weight-0.1 --seeds 0,1 --out runs/probe

Each variant is a recipe change against the probe's short-run recipe
(:func:`electra_fn.diagnostics.probe_config`); every variant sees the same data, noise and
seeds. Rows go to ``--out/probe.jsonl`` (one per evaluation), the last-evaluation table to
``--out/summary.json`` and stdout. Re-running skips (variant, seed) pairs already in the
JSONL, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path

import orjson

from electra_fn import diagnostics
from electra_fn.data import synthetic

# name -> PretrainConfig overrides ("model": ModelConfig fields); the step counts
# (warmup_steps, total_steps, gen_delay_steps) are given as multiples of the run's length.
# "original": Adam without bias correction, warmup twice the run and decay over 200 runs,
# so the run ends halfway up the warmup, as the original's step 5,000 of 10,000.
VARIANTS: dict[str, dict] = {
    "short-run": {},
    "init-normal": {"model": {"init": "normal"}},
    "original": {"adam_bias_correction": False, "warmup_steps": 2.0, "total_steps": 200.0},
    "original-corrected": {"warmup_steps": 2.0, "total_steps": 200.0},  # its schedule only
    "lr-x0.25": {"learning_rate": 5e-4},
    "no-context": {"model": {"disc_context": "self"}},
    "heads-1": {"model": {"num_heads": 1}},
    "heads-4": {"model": {"num_heads": 4}},
    "gen-1/4": {"model": {"generator_multiplier": 0.25}},
    "gen-1/1": {"model": {"generator_multiplier": 1.0}},
    "gen-weight-0.1": {"gen_weight": 0.1},
    "gen-weight-0": {"gen_weight": 0.0},
    "disc-weight-200": {"disc_weight": 200.0},
    "no-dropout": {"model": {"hidden_dropout": 0.0, "attention_dropout": 0.0}},
    "lr-x2.5": {"learning_rate": 5e-3},
    "warmup-50%": {"warmup_steps": 0.5},
    "temperature-2": {"temperature": 2.0},
    "mix-0.25": {"mix_fraction": 0.25},
    "mix-0.5": {"mix_fraction": 0.5},
    "gen-delay-20%": {"gen_delay_steps": 0.2},
    "gen-delay-40%": {"gen_delay_steps": 0.4},
}


def variant_config(name: str, steps: int, num_tokens: int, seq_len: int):
    """The probe's PretrainConfig for variant ``name`` of a ``steps``-step run."""
    if name not in VARIANTS:
        raise SystemExit(f"--variants: unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    over = dict(VARIANTS[name])
    for k in ("warmup_steps", "total_steps", "gen_delay_steps"):
        if k in over:
            over[k] = max(1, int(over[k] * steps))
    return diagnostics.probe_config(num_tokens=num_tokens, seq_len=seq_len, steps=steps, **over)


def summarize(rows: list[dict]) -> list[dict]:
    """Per variant: mean and std over seeds of the last evaluation, and of the best AUC on the
    generator's samples over the run."""
    keys = ("gen_accuracy", "disc_auc", "uniform/disc_auc", "disc_loss",
            "shuffle/logit_shift", "shuffle/logit_spread", "state/token_spread")
    by: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        by.setdefault(r["variant"], {}).setdefault(r["seed"], []).append(r)
    out = []
    for variant, seeds in by.items():
        last = [max(rs, key=lambda r: r["step"]) for rs in seeds.values()]
        best = [max(r["disc_auc"] for r in rs) for rs in seeds.values()]
        row = {"variant": variant, "seeds": len(last), "step": last[0]["step"]}
        for k in keys:
            vals = [r.get(k, math.nan) for r in last]  # nan: rows from before a metric
            if any(math.isnan(v) for v in vals):
                row[k], row[k + "_std"] = math.nan, math.nan
                continue
            row[k] = statistics.fmean(vals)
            row[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        row["best_disc_auc"] = statistics.fmean(best)
        out.append(row)
    return out


def _num(x) -> str:
    """A table cell: 3 decimals, or a dash for a metric the rows lack (nan; null in JSON)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def table(summary: list[dict]) -> str:
    head = ("| variant | seeds | step | gen acc | disc AUC, generator (best) | "
            "disc AUC, uniform | disc loss | shuffle shift / spread | state spread |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in summary:
        pm = lambda k: f"{_num(r[k])} ± {_num(r[k + '_std'])}"  # noqa: E731
        lines.append(f"| {r['variant']} | {r['seeds']} | {r['step']} | {pm('gen_accuracy')} | "
                     f"{pm('disc_auc')} ({_num(r['best_disc_auc'])}) | "
                     f"{pm('uniform/disc_auc')} | {pm('disc_loss')} | "
                     f"{_num(r['shuffle/logit_shift'])} / {_num(r['shuffle/logit_spread'])} | "
                     f"{_num(r['state/token_spread'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=synthetic.TASKS, default="topic")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--variants", default="short-run,no-context")
    p.add_argument("--seeds", default="0")
    p.add_argument("--num-tokens", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--out", default="runs/context_probe")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    for v in variants:
        variant_config(v, args.steps, args.num_tokens, args.seq_len)  # fail early on a bad name
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "probe.jsonl"
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()] \
        if path.exists() else []
    done = {(r["variant"], r["seed"]) for r in rows if r["step"] == args.steps
            and r["task"] == args.task}
    eval_every = args.eval_every or max(1, args.steps // 10)
    for v in variants:
        for seed in seeds:
            if (v, seed) in done:
                continue
            print(f"== {args.task} / {v} / seed {seed}", flush=True)
            cfg = variant_config(v, args.steps, args.num_tokens, args.seq_len)
            got = diagnostics.context_probe(args.task, cfg, steps=args.steps,
                                            eval_every=eval_every, seed=seed,
                                            log=lambda s: print(s, flush=True))
            new = [{"task": args.task, "variant": v, "seed": seed, **r} for r in got]
            with path.open("ab") as f:  # one variant's rows at once: a partial one is redone
                f.write(b"".join(orjson.dumps(r) + b"\n" for r in new))
            rows.extend(new)
    mine = [r for r in rows if r["task"] == args.task and r["variant"] in variants
            and r["seed"] in seeds]
    summary = summarize(mine)
    tmp = out / "summary.json.tmp"
    tmp.write_bytes(orjson.dumps(
        {"task": args.task, "steps": args.steps, "argv": sys.argv[1:] if argv is None else argv,
         "rows": summary}, option=orjson.OPT_INDENT_2))
    os.replace(tmp, out / "summary.json")
    print(table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
