"""Step time of a study's variants, timed round-robin in one process so that a machine shared
with other work slows every variant alike: ms per training step, relative to the baseline,
and the variant's FLOPs per step (:mod:`electra_fn.study`).

    python -m benchmarks.variant_steps --study cpu_ablate --json runs/variant_steps.json
    python -m benchmarks.variant_steps --study smoke --rounds 2 --steps 2     # seconds

Each round times ``--steps`` consecutive steps of every variant, in an order rotated from
round to round, after one untimed warm-up step each; the table shows the median over rounds.
The batch is synthetic (``benchmarks/workload.py``) with the study's shape and vocabulary.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import orjson
import torch

from benchmarks.workload import synthetic_batch
from electra_fn import flops, model, pretrain, runtime, study
from electra_fn.config import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from electra_fn.tree import tree_map
from experiments import configs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.variant_steps",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="cpu_ablate")
    p.add_argument("--variants", help="comma-separated subset (default: all)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the study's runs: 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bf16"))
    p.add_argument("--json", help="write the rows here")
    return p.parse_args(argv)


def step_runner(cfg, device: torch.device, amp) -> callable:
    """A closure that runs one training step of ``cfg`` on a fixed synthetic batch."""
    step_fn = pretrain.make_train_step(cfg, amp_dtype=amp, device_type=device.type)
    params = tree_map(lambda x: x.to(device), model.init_params(cfg.model, 0))
    state = {"params": params, "opt": pretrain.init_opt_state(params, cfg), "i": 0}
    batch = synthetic_batch(cfg, device)

    def run() -> None:
        state["params"], state["opt"], m = step_fn(state["params"], state["opt"], batch,
                                                   pretrain.step_key(0, state["i"]))
        float(m["loss"])  # the step has finished
        state["i"] += 1

    return run


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> list[dict]:
    device = runtime.resolve_device(args.device)
    amp = runtime.resolve_amp(args.dtype, device)
    flags, spec = configs.load(args.study), configs.part(args.study, "STUDY")
    if not spec:
        print(f"--study {args.study}: the configuration has no STUDY", file=sys.stderr)
        return []
    ids = {"pad_id": PAD_ID, "cls_id": CLS_ID, "sep_id": SEP_ID, "mask_id": MASK_ID}
    base = study.base_recipe(flags, spec.get("model", {}), flags.get("vocab_size", 30522), ids)
    wanted = args.variants.split(",") if args.variants else None
    variants = [v for v in spec["variants"] if wanted is None or v.name in wanted]
    runners, cfgs = {}, {}
    for v in variants:
        cfgs[v.name] = study.variant_config(base, v, 0)
        runners[v.name] = step_runner(cfgs[v.name], device, amp)
        runners[v.name]()  # warm-up
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    names = list(runners)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            for _ in range(args.steps):
                runners[name]()
            times[name].append((time.perf_counter() - t) / args.steps)
    base_ms = 1e3 * statistics.median(times[names[0]])
    rows = []
    for name in names:
        ms = 1e3 * statistics.median(times[name])
        cfg = cfgs[name]
        rows.append({"variant": name, "ms_per_step": ms, "relative": ms / base_ms,
                     "flops_per_step": flops.electra_step_flops(cfg)["total"],
                     "steps_at_equal_flops": cfg.total_steps,
                     "wall_at_equal_flops_s": ms / 1e3 * cfg.total_steps,
                     "spread_ms": 1e3 * (max(times[name]) - min(times[name]))})
    print(f"{args.study}: batch {base.batch_size} x {base.seq_len}, {args.threads} thread(s), "
          f"{'bf16 autocast' if amp else 'float32'}, {args.rounds} rounds x {args.steps} steps")
    print("| variant | ms/step | vs baseline | GFLOPs/step | steps at equal FLOPs | "
          "min at equal FLOPs |\n|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['ms_per_step']:.0f} | {row['relative']:.2f}× | "
              f"{row['flops_per_step'] / 1e9:.1f} | {row['steps_at_equal_flops']:,} | "
              f"{row['wall_at_equal_flops_s'] / 60:.1f} |")
    if args.json:
        out = {"rows": rows, "args": vars(args), "provenance": runtime.provenance()}
        with open(args.json, "wb") as f:
            f.write(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    return rows


if __name__ == "__main__":
    main()
