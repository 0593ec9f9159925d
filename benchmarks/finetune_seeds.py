"""Fine-tuning several seeds one by one against all at once (one vmapped step).

    python -m benchmarks.finetune_seeds --seeds 3 --examples 192 --json runs/finetune_seeds.json

Random ELECTRA-Small weights (or ``--preset``), a synthetic SST-2-like split (lengths 10-60),
batch 32, one epoch: the wall time of ``finetune.train`` for each seed in turn (the default
eager step, and inside ``rng.counter_based()``, the dropout the batched step draws) and of
``finetune.train_seeds`` for all of them, after one warm-up of each.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from electra_fn import finetune as FT
from electra_fn import model, rng, runtime
from electra_fn.config import FinetuneConfig, ModelConfig
from electra_fn.data.glue import EncodedSplit
from electra_fn.rundir import write_json


def synthetic_split(n: int, vocab: int, seed: int = 0) -> EncodedSplit:
    rng = np.random.default_rng(seed)
    ids = [[2] + list(rng.integers(5, vocab, int(rng.integers(10, 61)))) + [3] for _ in range(n)]
    cols = {"input_ids": ids, "token_type_ids": [[0] * len(r) for r in ids],
            "labels": [int(x) for x in rng.integers(0, 2, n)], "guid": [str(i) for i in range(n)]}
    return EncodedSplit("sst2", "train", Path("synthetic"), cols)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--examples", type=int, default=192)
    p.add_argument("--dtype", choices=("float32", "bf16"), default="float32",
                   help="bf16 times the one-by-one runs only (batched seeds train in float32)")
    p.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cfg = ModelConfig.from_name(args.preset).replace(vocab_size=8000)
    if args.dropout is not None:
        cfg = cfg.replace(hidden_dropout=args.dropout, attention_dropout=args.dropout)
    split = synthetic_split(args.examples, cfg.vocab_size)
    ft_cfg = FinetuneConfig(epochs=1)
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    pretrained = model.init_params(cfg, 0)
    seeds = list(range(args.seeds))

    def one_by_one():
        for s in seeds:
            FT.train(FT.init_finetune(pretrained, cfg, 2, s), split, cfg, ft_cfg, "sst2",
                     seed=s, amp_dtype=amp)

    def one_by_one_counter():
        with rng.counter_based():
            one_by_one()

    def together():
        FT.train_seeds([FT.init_finetune(pretrained, cfg, 2, s) for s in seeds], split, cfg,
                       ft_cfg, "sst2", seeds=seeds, amp_dtype=amp)

    times = {}
    runs = [("one_by_one", one_by_one), ("one_by_one_counter", one_by_one_counter)]
    runs += [("together", together)] if amp is None else []
    for name, fn in runs:
        fn()  # warm-up
        t = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t
    together_s = times.get("together", float("nan"))
    result = {"seconds": times, "speedup": times["one_by_one"] / together_s,
              "args": vars(args) | {"json": str(args.json)},
              "environment": {"torch": torch.__version__, "platform": platform.platform(),
                              "threads": torch.get_num_threads(),
                              "commit": runtime.git_describe()}}
    print(f"{args.seeds} seeds × {args.examples} examples, {args.preset}, {args.dtype}, dropout "
          f"{cfg.hidden_dropout}: one by one {times['one_by_one']:.1f} s (counter-based dropout "
          f"{times['one_by_one_counter']:.1f} s), together {together_s:.1f} s, speed-up "
          f"{result['speedup']:.2f}×")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
