"""Probe for the discriminator collapse seen in short CPU pre-training runs.

    python -m experiments.collapse_probe --warmup 10 --steps 200 --total 600 --lr 5e-4

Trains ELECTRA-Small on the built-in corpus (batch 16 x 128) and prints, every ``--every``
steps, held-out metrics (the same fixed batches and noise as ``pretrain_small``'s evaluation)
and the standard deviation of the discriminator's final hidden states across the held-out
tokens (about 0.9 at initialisation; 0 means every token has the same state). ``--jsonl``
appends one row per evaluation, tagged with ``--tag``.

    python -m experiments.collapse_probe --analyze runs/pretrain_small [more run dirs]

instead evaluates finished runs: for each, the initial parameters (from the run's seed) and
its latest checkpoint, on the same held-out batches: discriminator ROC AUC, loss, replaced-
token accuracy and the token-state spread (``--jsonl`` saves the rows).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from electra_fn import checkpoint as C
from electra_fn import diagnostics as D
from electra_fn import model as M
from electra_fn import pretrain as P
from electra_fn.config import ModelConfig, PretrainConfig
from electra_fn.data import pretrain_data as pdata
from electra_fn.data.tokenizer import train_tokenizer
from electra_fn.hf import from_hf_state_dict
from electra_fn.heldout import evaluate, make_valid_batches
from electra_fn.rundir import append_jsonl


def token_state_spread(params, batches, cfg) -> float:
    with torch.no_grad():
        hs = [M.discriminator_hidden(params, b["input_ids"], b["token_type_ids"],
                                     b["attention_mask"], cfg.model)[b["attention_mask"].bool()]
              for b in batches]
    return float(D.token_spread(torch.cat(hs)))


def analyze(run_dirs: list[str], data, jsonl: Path | None) -> None:
    for run in run_dirs:
        path = C.latest_checkpoint(Path(run) / "checkpoints")
        if path is None:
            raise SystemExit(f"{run}: no checkpoint under {Path(run) / 'checkpoints'}")
        ck = C.load_checkpoint(path)
        cfg = PretrainConfig.from_dict(ck["config"]["pretrain"])
        eval_step = P.make_eval_step(cfg)
        valid = make_valid_batches(data, cfg.batch_size)
        for tag, params in (("init", M.init_params(cfg.model, cfg.seed)),
                            (f"step {ck['step']}", ck["params"])):
            e = evaluate(eval_step, params, valid, cfg.seed, "cpu")
            row = {"run": str(run), "params": tag,
                   "disc_auc": round(e["disc_auc"], 4), "disc_loss": round(e["disc_loss"], 4),
                   "disc_replaced_accuracy": round(e["disc_replaced_accuracy"], 4),
                   "disc_original_accuracy": round(e["disc_original_accuracy"], 4),
                   "spread": round(token_state_spread(params, valid[:2], cfg), 4)}
            print(row, flush=True)
            if jsonl:
                append_jsonl(jsonl, row)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--analyze", nargs="+", default=None, metavar="RUN_DIR",
                    help="evaluate finished pretrain_small runs (init vs latest checkpoint)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--total", type=int, default=600, help="schedule length")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--disc-bias-init", type=float, default=0.0,
                    help="initial bias of the discriminator's output unit")
    ap.add_argument("--bias-correction", action="store_true",
                    help="bias-corrected Adam (torch.optim.AdamW's step) instead of the original's")
    ap.add_argument("--hf", action="store_true",
                    help="train the transformers peer of benchmarks/throughput.py instead "
                         "(same init, data, masking and Gumbel noise; torch.optim.AdamW)")
    ap.add_argument("--mask-prob", type=float, default=0.15)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tag", default="")
    ap.add_argument("--jsonl", type=Path, default=None)
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache/electra_fn"))
    args = ap.parse_args()
    corpus = [pdata.default_corpus_path()]
    tok = train_tokenizer(corpus, 30522, args.cache_dir, log=lambda m: None)
    data = pdata.build_pretraining_data(corpus, tok, seq_len=128, seed=0,
                                        cache_dir=args.cache_dir, valid_fraction=0.05,
                                        log=lambda m: None)
    if args.analyze:
        analyze(args.analyze, data, args.jsonl)
        return
    cfg = PretrainConfig(model=ModelConfig.from_name("small", vocab_size=tok.vocab_size),
                         seq_len=128, batch_size=args.batch_size, total_steps=args.total,
                         warmup_steps=args.warmup, learning_rate=args.lr,
                         mask_prob=args.mask_prob, adam_bias_correction=args.bias_correction)
    params = M.init_params(cfg.model, 0)
    params["discriminator"]["head"]["out"]["bias"].fill_(args.disc_bias_init)
    opt = P.init_opt_state(params)
    step = P.make_train_step(cfg)
    peer = None
    if args.hf:  # the benchmark's transformers peer, evaluated through our eval_step
        from benchmarks.hf_peer import HFPeer  # the benchmarks' peer (test/bench extra)
        peer = HFPeer(cfg, params, torch.device("cpu"))
    eval_step = P.make_eval_step(cfg)
    valid = make_valid_batches(data, cfg.batch_size)
    it = pdata.batches(data.train_ids, data.train_token_types, cfg.batch_size, cfg.seed)
    t0 = time.time()

    def report(i: int, m: dict | None) -> None:
        nonlocal params
        if peer is not None:
            sd_d = {k: v.detach().clone() for k, v in peer.discriminator.state_dict().items()}
            sd_g = {k: v.detach().clone() for k, v in peer.generator.state_dict().items()}
            params = {**from_hf_state_dict(sd_g, cfg.model, "generator"),
                      **from_hf_state_dict(sd_d, cfg.model, "discriminator")}
        e = evaluate(eval_step, params, valid, cfg.seed, "cpu")
        row = {"tag": args.tag, "step": i, "spread": token_state_spread(params, valid[:2], cfg),
               **{f"eval_{k}": round(e[k], 4) for k in
                  ("gen_accuracy", "disc_loss", "disc_auc", "disc_replaced_accuracy",
                   "disc_original_accuracy")}}
        if m is not None:
            row.update({k: round(float(m[k]), 4) for k in ("disc_loss", "lr")})
        row["elapsed_s"] = round(time.time() - t0)
        print(row, flush=True)
        if args.jsonl:
            append_jsonl(args.jsonl, row)

    report(0, None)
    for i in range(args.steps):
        _, b = next(it)
        if peer is not None:
            m = peer.step(b, P.step_key(cfg.seed, i))
            m["lr"] = torch.tensor(peer.scheduler.get_last_lr()[0])
        else:
            params, opt, m = step(params, opt, b, P.step_key(cfg.seed, i))
        if (i + 1) % args.every == 0:
            report(i + 1, m)


if __name__ == "__main__":
    main()
