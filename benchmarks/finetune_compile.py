"""Eager vs torch.compile (static / dynamic shapes) for the GLUE fine-tuning step.

    python -m benchmarks.finetune_compile --preset small --widths 64,48 --steps 8 [--cold]
        [--layers 2] [--threads 1]

Each mode runs in a fresh process (``--cold``: with an empty inductor cache, which is what a
fresh machine pays). Prints one row per mode and writes JSON to ``--out``: first-call time per
batch width (compile included) and the steady-state step time. A GLUE epoch with dynamic
padding sees up to max_len / 8 widths (static mode pads to multiples of 8) times 2 batch sizes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import orjson


def _one_mode(args) -> dict:
    import torch

    from electra_fn import finetune as FT
    from electra_fn.config import FinetuneConfig, ModelConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig.from_name(args.preset, vocab_size=args.vocab)
    if args.layers:  # fewer layers: same per-layer work, a fraction of the compile time
        cfg = cfg.replace(num_layers=args.layers)
    ft_cfg = FinetuneConfig()
    step = FT.compile_fn(FT.make_finetune_step(cfg, ft_cfg, 2, False, 1000), args.mode)
    params = FT.init_finetune(None, cfg, 2, 0)
    state = FT.init_finetune_state(params)
    state["step"] = torch.tensor(200)  # past warmup: a real update
    gen = torch.Generator().manual_seed(0)

    def batch(width: int) -> dict:
        B = args.batch_size
        return {"input_ids": torch.randint(5, cfg.vocab_size, (B, width), generator=gen),
                "token_type_ids": torch.zeros(B, width, dtype=torch.long),
                "attention_mask": torch.ones(B, width, dtype=torch.long),
                "labels": torch.randint(0, 2, (B,), generator=gen)}

    first, steady = {}, {}
    for width in (int(w) for w in args.widths.split(",")):
        b = batch(width)
        t0 = time.perf_counter()
        params, state, m = step(params, state, b, FT.step_key(0, 0))
        m["loss"].item()
        first[str(width)] = time.perf_counter() - t0
        times = []
        for i in range(args.steps):
            t0 = time.perf_counter()
            params, state, m = step(params, state, b, FT.step_key(0, i + 1))
            m["loss"].item()
            times.append(time.perf_counter() - t0)
        times.sort()
        steady[str(width)] = times[len(times) // 2]  # median: the CPU is shared
    return {"mode": args.mode, "first_call_s": first, "median_step_s": steady,
            "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="small")
    p.add_argument("--vocab", type=int, default=28005)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--widths", default="64,48")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--modes", default="eager,dynamic,static")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--layers", type=int, default=0, help="override num_layers (0: preset's)")
    p.add_argument("--cold", action="store_true", help="empty inductor cache per mode")
    p.add_argument("--inductor-cache", default=None, help="TORCHINDUCTOR_CACHE_DIR to reuse")
    p.add_argument("--out", default=None)
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # child process
    args = p.parse_args()
    if args.mode:
        print(orjson.dumps(_one_mode(args)).decode())
        return
    rows = []
    for mode in args.modes.split(","):
        env = dict(os.environ)
        tmp = tempfile.mkdtemp(prefix="inductor-") if args.cold else None
        if tmp or args.inductor_cache:
            env["TORCHINDUCTOR_CACHE_DIR"] = tmp or args.inductor_cache
        cmd = [sys.executable, "-m", "benchmarks.finetune_compile", "--mode", mode,
               "--preset", args.preset, "--vocab", str(args.vocab), "--batch-size",
               str(args.batch_size), "--widths", args.widths, "--steps", str(args.steps),
               "--threads", str(args.threads), "--layers", str(args.layers)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{mode} failed")
        row = orjson.loads(res.stdout.strip().splitlines()[-1])
        row["cold_cache"] = bool(tmp)
        rows.append(row)
        firsts = " ".join(f"L{w}:{s:.1f}s" for w, s in row["first_call_s"].items())
        steps = " ".join(f"L{w}:{1000 * s:.0f}ms" for w, s in row["median_step_s"].items())
        print(f"{mode:8s} threads {row['threads']} first call {firsts} | median step {steps}",
              flush=True)
    if args.out:
        with open(args.out, "wb") as f:
            f.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
