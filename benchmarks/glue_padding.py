"""Tokens a GLUE fine-tuning run computes on, random batches against length-bucketed ones.

    python -m benchmarks.glue_padding --tokenizer DIR --glue-dir DIR \\
        --tasks cola,sst2,mrpc,stsb,rte --max-train-examples 2000 --out runs/glue_padding.json

For each task and batch order, the batches ``finetune.train`` would draw (seed 0, the task's
epochs, batch 32, padding to each batch's longest row): real tokens, computed tokens (rows ×
padded width) and their ratio, and how alike consecutive epochs' batches are: the share of
example pairs sharing a batch that share one again the next epoch (random batches: about
(batch - 1) / rows; sorted batches keep neighbours in length together). No model is run: the figures are exact and do not depend on the machine's load.
"""

from __future__ import annotations

import argparse

import orjson

from electra_fn import finetune as FT
from electra_fn.config import FinetuneConfig
from electra_fn.data.glue import bucket_batches, get_task, load_task
from electra_fn.data.tokenizer import load_tokenizer


def count(split, epochs: int, batch_size: int, bucketed: bool, seed: int = 0) -> dict:
    """Real and computed tokens over ``epochs`` and the pairs batched together again."""
    real = computed = pairs = again = 0
    before: dict[int, int] = {}  # example -> its batch in the epoch before
    for epoch in range(epochs):
        now = {}
        for b, batch in enumerate(bucket_batches(split, batch_size, shuffle=True, seed=seed,
                                                 epoch=epoch, sort_by_length=bucketed)):
            rows, width = batch["input_ids"].shape
            real += int(batch["attention_mask"].sum())
            computed += rows * width
            members = batch["index"].tolist()
            now.update((i, b) for i in members)
            if epoch > 0:
                old = [before[i] for i in members]
                pairs += rows * (rows - 1) // 2
                again += sum(c * (c - 1) // 2 for c in map(old.count, set(old)))
        before = now
    return {"real_tokens": real, "computed_tokens": computed,
            "computed_per_real": round(computed / real, 3),
            "pairs_batched_again": round(again / pairs, 3) if pairs else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--glue-dir", required=True)
    p.add_argument("--tasks", default="cola,sst2,mrpc,stsb,rte")
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    tok = load_tokenizer(args.tokenizer)
    ft_cfg = FinetuneConfig()
    rows = []
    for name in args.tasks.split(","):
        spec = get_task(name)
        train = load_task(args.glue_dir, spec, tok, max_len=ft_cfg.max_len,
                          cache_dir=args.cache_dir, tokenizer_id=tok.fingerprint)["train"]
        train = FT.subsample(train, args.max_train_examples)
        epochs = ft_cfg.num_epochs(spec.num_epochs)
        for bucketed in (False, True):
            rows.append({"task": spec.name, "order": "bucketed" if bucketed else "random",
                         "train_rows": len(train), "epochs": epochs,
                         **count(train, epochs, ft_cfg.batch_size, bucketed)})
    print(f"{'task':6} {'order':9} {'rows':>6} {'ep':>3} {'real':>10} {'computed':>10} "
          f"{'ratio':>6} {'again':>6}")
    for r in rows:
        print(f"{r['task']:6} {r['order']:9} {r['train_rows']:6} {r['epochs']:3} "
              f"{r['real_tokens']:10,} {r['computed_tokens']:10,} {r['computed_per_real']:6} "
              f"{r['pairs_batched_again']!s:>6}")
    if args.out:
        with open(args.out, "wb") as f:
            f.write(orjson.dumps({"max_train_examples": args.max_train_examples,
                                  "batch_size": ft_cfg.batch_size, "rows": rows},
                                 option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
