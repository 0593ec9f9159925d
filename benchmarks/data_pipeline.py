"""Wall time of tokenizing and packing a pre-training corpus, by number of worker processes.

    python -m benchmarks.data_pipeline --corpus 'wiki/train/wiki_en_00[0-2].txt.xz' \\
        --num-proc 1,2 --json runs/data_pipeline.json

Trains (or reuses, from ``--cache-dir``) the tokenizer first, untimed; then, for each worker
count, builds the packed examples into a fresh temporary cache (nothing reused) and times it.
Every build must give the same arrays; the script checks that before it reports.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from electra_fn.data import pretrain_data as pdata
from electra_fn.data import tokenizer as toklib


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", nargs="+", required=True, help="files, directories or globs")
    p.add_argument("--num-proc", default="1,2", help="comma-separated worker counts")
    p.add_argument("--vocab-size", type=int, default=30522)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--cache-dir", default=os.environ.get(
        "ELECTRA_FN_CACHE", str(Path.home() / ".cache/electra_fn")),
        help="where the tokenizer is trained or reused")
    p.add_argument("--json", default=None, help="write the results here (orjson)")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.num_proc.split(",")]
    if any(n < 1 for n in counts):
        p.error(f"--num-proc {args.num_proc}: every count must be at least 1")

    tok = toklib.train_tokenizer(args.corpus, args.vocab_size, args.cache_dir,
                                 log=lambda m: print(m, file=sys.stderr))
    rows, first = [], None
    for n in counts:
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            data = pdata.build_pretraining_data(args.corpus, tok, seq_len=args.seq_len, seed=0,
                                                cache_dir=cache, valid_fraction=0.05,
                                                num_proc=n, log=lambda m: None)
            wall = time.perf_counter() - t
        if first is None:
            first = data
        elif not (np.array_equal(first.train_ids, data.train_ids)
                  and np.array_equal(first.valid_ids, data.valid_ids)):
            print(f"error: {n} workers built different data than {counts[0]}", file=sys.stderr)
            return 1
        st = data.stats
        rows.append({"num_proc": n, "wall_s": wall,
                     "tokens_per_s": (st["train_tokens"] + st["valid_tokens"]) / wall})
        print(f"{n:>3} worker(s): {wall:7.1f} s  "
              f"{rows[-1]['tokens_per_s'] / 1e6:6.2f}M tokens/s", flush=True)
    st = first.stats
    print(f"corpus: {st['train_documents'] + st['valid_documents']} documents, "
          f"{(st['train_tokens'] + st['valid_tokens']) / 1e6:.2f}M tokens, "
          f"{st['train_examples'] + st['valid_examples']} examples of {args.seq_len}; "
          f"{pdata.usable_cpus()} usable cores")
    if args.json:
        meta = {"corpus": args.corpus, "seq_len": args.seq_len, "stats": st,
                "usable_cpus": pdata.usable_cpus(), "machine": platform.processor() or
                platform.machine(), "date": time.strftime("%Y-%m-%d")}
        Path(args.json).write_bytes(orjson.dumps({"meta": meta, "rows": rows},
                                                 option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
