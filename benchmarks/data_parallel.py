#!/usr/bin/env python
"""Throughput of data-parallel pre-training steps: per-rank and total tokens/s, and the time
of the gradient all-reduce per step (:mod:`electra_fn.distributed`).

    python -m benchmarks.data_parallel --nproc 2 --preset tiny       # spawns 2 CPU ranks (gloo)
    torchrun --nproc_per_node 8 -m benchmarks.data_parallel --device cuda   # 8 GPUs (NCCL)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m benchmarks.data_parallel --device cuda                   # two machines

Every rank runs the eager data-parallel step (:func:`electra_fn.pretrain.make_train_step` with
a world) on its rows of one synthetic global batch (``--batch-size``). The all-reduce is timed
alone, on buffers the size of the gradients, the same number of times: the step does not
overlap it with the backward, so the step's time includes it. Rank 0 prints one table and
writes ``--json``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import orjson
import torch
import torch.multiprocessing as mp

from benchmarks.workload import synthetic_batch
from electra_fn import distributed, runtime
from electra_fn.config import ModelConfig, PretrainConfig
from electra_fn.model import init_params
from electra_fn.pretrain import init_opt_state, make_train_step, step_key
from electra_fn.tree import tree_leaves, tree_map


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=None,
                    help="spawn this many ranks on this machine (without torchrun)")
    ap.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU a rank)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch-size", type=int, default=32, help="the global batch")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bf16"])
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per rank (CPU)")
    ap.add_argument("--json", type=Path, default=None)
    return ap.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, world: distributed.World | None,
            device: torch.device) -> dict:
    """This rank's seconds per step and per gradient all-reduce (medians over the steps)."""
    cfg = PretrainConfig(model=ModelConfig.from_name(args.preset), seq_len=args.seq_len,
                         batch_size=args.batch_size)
    params = tree_map(lambda x: x.to(device), init_params(cfg.model, 0))
    opt = init_opt_state(params, cfg)
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    step = make_train_step(cfg, amp_dtype=amp, device_type=device.type, grad_route="autograd",
                           world=world)
    batch = distributed.batch_slice(synthetic_batch(cfg, device), world)
    grads_like = [torch.zeros_like(p) for p in tree_leaves(params)]
    step_s, reduce_s = [], []
    for i in range(args.steps + 1):
        _sync(device)
        t = time.perf_counter()
        params, opt, m = step(params, opt, batch, step_key(0, i))
        float(m["loss"])
        step_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        distributed.all_reduce_sum(grads_like, world)
        _sync(device)
        reduce_s.append(time.perf_counter() - t)
    rows = batch["input_ids"].shape[0]
    return {"rows": rows, "step_s": statistics.median(step_s[1:]),
            "allreduce_s": statistics.median(reduce_s[1:]),
            "grad_bytes": sum(g.numel() * g.element_size() for g in grads_like)}


def report(args: argparse.Namespace, per_rank: list[dict], device: torch.device) -> dict:
    """The table rank 0 prints, and the JSON it writes."""
    size = len(per_rank)
    step_s = max(r["step_s"] for r in per_rank)  # the slowest rank paces the job
    tokens = args.batch_size * args.seq_len
    out = {"preset": args.preset, "batch_size": args.batch_size, "seq_len": args.seq_len,
           "dtype": args.dtype, "device": device.type, "world_size": size,
           "threads_per_rank": torch.get_num_threads(), "grad_bytes": per_rank[0]["grad_bytes"],
           "total_tokens_per_s": tokens / step_s, "step_s": step_s,
           "ranks": [{"rank": i, **r, "tokens_per_s": r["rows"] * args.seq_len / r["step_s"]}
                     for i, r in enumerate(per_rank)],
           "provenance": runtime.provenance()}
    print(f"ELECTRA {args.preset}, global batch {args.batch_size} x {args.seq_len}, "
          f"{args.dtype}, {size} rank(s) on {device.type}, "
          f"{out['grad_bytes'] / 2**20:.1f} MiB of gradients")
    print(f"{'rank':>4} {'rows':>5} {'s/step':>8} {'tokens/s':>10} {'all-reduce ms':>14}")
    for r in out["ranks"]:
        print(f"{r['rank']:>4} {r['rows']:>5} {r['step_s']:>8.3f} {r['tokens_per_s']:>10,.0f} "
              f"{r['allreduce_s'] * 1e3:>14.2f}")
    print(f"total {out['total_tokens_per_s']:,.0f} tokens/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    return out


def run_rank(args: argparse.Namespace) -> dict | None:
    """One rank's measurement (a lone process without torchrun: world size 1); rank 0
    gathers every rank's and reports."""
    if args.threads:
        torch.set_num_threads(args.threads)
    with distributed.session(runtime.resolve_device(args.device), print) as (world, device, _):
        mine = measure(args, world, device)
        if world is None:
            return report(args, [mine], device)
        every = [None] * world.size
        torch.distributed.all_gather_object(every, mine, group=world.setup)
        return report(args, every, device) if world.lead else None


def _spawned(rank: int, size: int, port: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    run_rank(parse_args(argv))


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.nproc is None:
        run_rank(args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_spawned, args=(args.nproc, port, argv), nprocs=args.nproc)


if __name__ == "__main__":
    main()
