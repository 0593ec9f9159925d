"""Replaced-token detection alone, ours against transformers' ELECTRA, on a synthetic corpus.

    python benchmarks/rtd_reference.py --task chain --steps 2000
    python benchmarks/rtd_reference.py --task topic --steps 600 --json out.json

Both discriminators (same sizes; ours initialised from the Hugging Face module's weights) are
trained with ``torch.optim.AdamW`` on the same batches: 12% of the ordinary tokens replaced by
uniform draws (no generator). Every token of these corpora is equally frequent, so held-out
ROC AUC above 0.5 is context (:mod:`electra_fn.data.synthetic`). It tells a bug in our
networks from the learning dynamics of the task: equal curves mean the same model.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from electra_fn import hf, losses, model
from electra_fn.config import ModelConfig
from electra_fn.data import synthetic
from electra_fn.tree import tree_flatten, tree_unflatten


def replace_uniform(ids_BxL: torch.Tensor, num_tokens: int, gen: torch.Generator,
                    rate: float = 0.12) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, is_replaced): ``rate`` of the ordinary tokens redrawn uniformly."""
    ordinary = ids_BxL >= synthetic.FIRST_ORDINARY_ID
    pick = (torch.rand(ids_BxL.shape, generator=gen) < rate) & ordinary
    new = torch.randint(synthetic.FIRST_ORDINARY_ID, synthetic.FIRST_ORDINARY_ID + num_tokens,
                        ids_BxL.shape, generator=gen)
    x = torch.where(pick, new, ids_BxL)
    return x, x != ids_BxL


def main(argv: list[str] | None = None) -> int:
    from transformers import ElectraConfig, ElectraForPreTraining

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=synthetic.TASKS, default="chain")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-tokens", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the curves here")
    args = p.parse_args(argv)
    K, L, B = args.num_tokens, args.seq_len, args.batch_size
    cfg = ModelConfig(vocab_size=synthetic.vocab_size(K), embedding_size=32, hidden_size=64,
                      num_layers=2, num_heads=2, intermediate_size=128,
                      max_position_embeddings=L, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(args.seed)
    ref = ElectraForPreTraining(ElectraConfig(
        vocab_size=cfg.vocab_size, embedding_size=32, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=128, max_position_embeddings=L,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    params = hf.from_hf_state_dict(ref.state_dict(), cfg, "discriminator")
    leaves, spec = tree_flatten(params)
    leaves = [x.detach().clone().requires_grad_(True) for x in leaves]
    opts = {"transformers": torch.optim.AdamW(ref.parameters(), lr=args.lr, weight_decay=0.0),
            "electra_fn": torch.optim.AdamW(leaves, lr=args.lr, weight_decay=0.0)}

    def logits(name, x):
        if name == "transformers":
            return ref(input_ids=x, attention_mask=torch.ones_like(x)).logits
        return model.discriminator_logits(tree_unflatten(leaves, spec), x, None,
                                          torch.ones_like(x), cfg)

    held = synthetic.corpus(args.task, 512, L, K, seed=2**40 + args.seed)
    hx, hy = replace_uniform(held, K, torch.Generator().manual_seed(1))
    curves = {name: [] for name in opts}
    data_gen = torch.Generator().manual_seed(2)
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        if step % max(1, args.steps // 10) == 0:
            with torch.no_grad():
                ref.eval()
                for name in opts:
                    auc = float(losses.rtd_auc(logits(name, hx), hy, torch.ones_like(hx)))
                    curves[name].append({"step": step, "auc": auc})
                ref.train()
            print(f"step {step:5d}  " + "  ".join(f"{n} AUC {c[-1]['auc']:.3f}"
                                                 for n, c in curves.items())
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        if step == args.steps:
            break
        ids = synthetic.corpus(args.task, B, L, K, seed=step)
        x, y = replace_uniform(ids, K, data_gen)
        for name, opt in opts.items():
            loss = losses.rtd_loss(logits(name, x), y, torch.ones_like(x))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "curves": curves}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
