"""Bit-for-bit comparison of two pre-training run directories (final checkpoint, eval.jsonl)."""
import sys
from pathlib import Path

import torch

from electra_fn import checkpoint as ckpt
from electra_fn.tree import flat_dict

a_dir, b_dir = map(Path, sys.argv[1:3])
a = ckpt.load_checkpoint(ckpt.latest_checkpoint(a_dir / "checkpoints"))
b = ckpt.load_checkpoint(ckpt.latest_checkpoint(b_dir / "checkpoints"))
ok = True
for part in ("params", "opt_state"):
    fa, fb = flat_dict(a[part]), flat_dict(b[part])
    same = fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    print(f"{part}: {len(fa)} tensors, step {a['step']} vs {b['step']}, "
          f"{'bit-identical' if same else 'DIFFERENT'}")
    ok &= same
same_eval = (a_dir / "eval.jsonl").read_bytes() == (b_dir / "eval.jsonl").read_bytes()
print(f"eval.jsonl: {'byte-identical' if same_eval else 'DIFFERENT'}")
sys.exit(0 if ok and same_eval else 1)
