"""Probe for the discriminator collapse seen in short CPU pre-training runs.

    python -m experiments.collapse_probe --warmup 10 --steps 75 --total 605 --lr 5e-4

Trains ELECTRA-Small on the built-in corpus (batch 16 x 128) and prints, every 25 steps, the
training metrics and the standard deviation of the discriminator's final hidden states across
the batch's tokens (about 0.8 at initialisation; 0 means every token has the same state).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from electra_fn import model as M
from electra_fn import pretrain as P
from electra_fn.config import ModelConfig, PretrainConfig
from electra_fn.data import pretrain_data as pdata
from electra_fn.data.tokenizer import train_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=75)
    ap.add_argument("--total", type=int, default=605, help="schedule length")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache/electra_fn"))
    args = ap.parse_args()
    corpus = [pdata.default_corpus_path()]
    tok = train_tokenizer(corpus, 30522, args.cache_dir, log=lambda m: None)
    data = pdata.build_pretraining_data(corpus, tok, seq_len=128, seed=0,
                                        cache_dir=args.cache_dir, valid_fraction=0.05,
                                        log=lambda m: None)
    cfg = PretrainConfig(model=ModelConfig.from_name("small", vocab_size=tok.vocab_size),
                         seq_len=128, batch_size=16, total_steps=args.total,
                         warmup_steps=args.warmup, learning_rate=args.lr)
    params = M.init_params(cfg.model, 0)
    opt = P.init_opt_state(params)
    step = P.make_train_step(cfg)
    it = pdata.batches(data.train_ids, data.train_token_types, cfg.batch_size, cfg.seed)
    t0 = time.time()
    for i in range(args.steps):
        _, b = next(it)
        params, opt, m = step(params, opt, b, P.step_key(cfg.seed, i))
        if (i + 1) % 25 == 0:
            with torch.no_grad():
                h = M.discriminator_hidden(params, b["input_ids"], b["token_type_ids"],
                                           b["attention_mask"], cfg.model)
            spread = h[b["attention_mask"].bool()].std(0).mean()
            shown = {k: round(float(m[k]), 4) for k in
                     ("gen_accuracy", "disc_loss", "disc_replaced_accuracy", "lr")}
            print(f"step {i + 1}: {shown} token-state std {float(spread):.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
