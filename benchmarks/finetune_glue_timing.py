"""Seconds per 1000 GLUE examples (training and prediction) to budget fine-tuning runs.

    python -m benchmarks.finetune_glue_timing --tokenizer DIR --glue-dir DIR \\
        --tasks sst2,cola,mrpc,stsb,rte --preset small --train-rows 256 --threads 1

For each task: time training steps on a fixed random subset of the train split (real length
distribution, eager by default) and prediction on dev rows, then extrapolate one seed of the
full recipe (task epochs, MRPC/STS-B trained on both orders, dev + test predicted). Writes JSON
to ``--out``. Random weights: the speed does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import orjson
import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--glue-dir", required=True)
    p.add_argument("--tasks", default="sst2,cola,mrpc,stsb,rte")
    p.add_argument("--preset", default="small")
    p.add_argument("--train-rows", type=int, default=256)
    p.add_argument("--eval-rows", type=int, default=256)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--compile", default="eager", choices=("eager", "static", "dynamic"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bf16"),
                   help="bf16: autocast with float32 master weights")
    p.add_argument("--grad-route", default=None, choices=("func", "autograd"),
                   help="default: the library's for the compile mode (autograd when eager)")
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from electra_fn import finetune as FT
    from electra_fn.config import FinetuneConfig, ModelConfig
    from electra_fn.data.glue import bucket_batches, get_task, load_task
    from electra_fn.data.tokenizer import load_tokenizer

    amp = torch.bfloat16 if args.dtype == "bf16" else None
    route = args.grad_route or FT.default_grad_route(args.compile)
    tok = load_tokenizer(args.tokenizer)
    cfg = ModelConfig.from_name(args.preset, vocab_size=tok.vocab_size)
    ft_cfg = FinetuneConfig()
    rows = []
    for name in args.tasks.split(","):
        spec = get_task(name)
        splits = load_task(args.glue_dir, spec, tok, max_len=ft_cfg.max_len,
                           cache_dir=args.cache_dir, tokenizer_id=tok.fingerprint)
        train = splits["train"]
        sub = FT.subsample(train, args.train_rows // (2 if spec.double_unordered else 1))
        step = FT.compile_fn(FT.make_finetune_step(
            cfg, ft_cfg, spec.num_labels, spec.is_regression, 1000, amp_dtype=amp,
            grad_route=route), args.compile)
        params = FT.init_finetune(None, cfg, spec.num_labels, 0)
        state = FT.init_finetune_state(params)
        batches = bucket_batches(sub, ft_cfg.batch_size, shuffle=True,
                                 pad_to_multiple_of=FT.pad_multiple_for(args.compile))
        keep = ("input_ids", "token_type_ids", "attention_mask", "labels")
        warm = {k: batches[0][k] for k in keep}
        params, state, m = step(params, state, warm, FT.step_key(0, 0))  # warm-up
        t0 = time.perf_counter()
        for i, b in enumerate(batches):
            params, state, m = step(params, state, {k: b[k] for k in keep},
                                    FT.step_key(0, i + 1))
        m["loss"].item()
        train_s = time.perf_counter() - t0
        dev = FT.subsample(splits[spec.dev_splits[0]], args.eval_rows)
        predict = FT.cached_predict(cfg, args.compile, amp)
        FT.predict_split(predict, params, FT.subsample(dev, 8), is_regression=spec.is_regression)
        t0 = time.perf_counter()
        FT.predict_split(predict, params, dev, is_regression=spec.is_regression)
        eval_s = time.perf_counter() - t0
        train_per_1k = 1000 * train_s / len(sub)
        eval_per_1k = 1000 * eval_s / len(dev)
        n_eval = sum(len(splits[s]) for s in spec.dev_splits + spec.test_splits if s in splits)
        epochs = ft_cfg.num_epochs(spec.num_epochs)
        full_s = train_per_1k * len(train) * epochs / 1000 + eval_per_1k * n_eval / 1000
        mean_len = float(np.mean([len(r) for r in sub.columns["input_ids"]]))
        row = {"task": spec.name, "train_rows_timed": len(sub), "mean_tokens": mean_len,
               "s_per_1000_train_rows": train_per_1k, "s_per_1000_eval_rows": eval_per_1k,
               "full_train_rows_per_epoch": len(train), "epochs": epochs,
               "eval_rows_dev_test": n_eval, "est_full_seed_s": full_s}
        rows.append(row)
        print(f"{spec.name:5s} tokens/row {mean_len:5.1f} | train {train_per_1k:6.1f} s/1k rows"
              f" | eval {eval_per_1k:5.1f} s/1k | full seed ({len(train)} rows x {epochs} ep + "
              f"{n_eval} eval) ≈ {full_s / 3600:.2f} h", flush=True)
    meta = {"preset": args.preset, "threads": torch.get_num_threads(), "compile": args.compile,
            "dtype": args.dtype, "grad_route": route, "torch": torch.__version__,
            "batch_size": ft_cfg.batch_size, "max_len": ft_cfg.max_len}
    if args.out:
        with open(args.out, "wb") as f:
            f.write(orjson.dumps({"meta": meta, "rows": rows}, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
