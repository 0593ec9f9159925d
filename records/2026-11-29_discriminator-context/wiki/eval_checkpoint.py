"""The held-out evaluation of a pre-training run (the same batches, noise and proposals as
its own eval.jsonl) for one of its checkpoints, as one JSON line.

    python records/2026-11-29_discriminator-context/wiki/eval_checkpoint.py RUN_DIR [STEP_FILE]

STEP_FILE defaults to the run's newest checkpoint. Check: on a checkpoint at a step that the
run evaluated itself, the line equals that step's row of RUN_DIR/eval.jsonl.
"""
import json
import os
import sys
from pathlib import Path

import torch

from electra_fn import checkpoint as ckpt
from electra_fn import heldout, train
from electra_fn.config import PretrainConfig
from electra_fn.data.tokenizer import load_tokenizer

run = Path(sys.argv[1])
path = Path(sys.argv[2]) if len(sys.argv) > 2 else ckpt.latest_checkpoint(run / "checkpoints")
state = ckpt.load_checkpoint(path)
cfg = PretrainConfig.from_dict(state["config"]["pretrain"])
info = state["config"]["run"]
cache = os.environ.get("ELECTRA_FN_CACHE", str(Path.home() / ".cache/electra_fn"))
data = train.load_data(info["corpus"], load_tokenizer(str(run / "tokenizer")),
                       seq_len=cfg.seq_len, seed=cfg.seed, cache_dir=cache,
                       valid=info["valid"], num_proc=None, log=lambda _m: None)
amp = torch.bfloat16 if "bfloat16" in str(info.get("amp")) else None
evaluate = heldout.make_evaluator(cfg, data, torch.device("cpu"), amp_dtype=amp)
row = evaluate(state["params"])
print(json.dumps({"step": state["step"], "checkpoint": str(path), **row}))
