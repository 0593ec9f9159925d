"""Do pre-trained features carry more task information than random ones? A linear probe:
frozen discriminator states (mean over tokens, and [CLS]) -> logistic regression, on SST-2
and CoLA dev, for each checkpoint given and for the same model at random initialisation.

    python records/2026-11-30_cpu-tiny-reproduction/linear_probe.py GLUE_DIR OUT.json \\
        NAME=CHECKPOINT [NAME=CHECKPOINT ...]

CHECKPOINT is anything ``finetune_glue --checkpoint`` takes (a run directory, a step_N.pt).
Training examples: a fixed 20,000 of SST-2 (seed 0), all of CoLA. Needs scikit-learn.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, matthews_corrcoef

from electra_fn import finetune as FT
from electra_fn import model as M
from electra_fn.data.glue import load_task


def features(params, split, cfg, pad_id, batch=256):
    """[N, 2H]: the mean of the final states over real tokens, then the [CLS] state."""
    ids_all = split.columns["input_ids"]
    types_all = split.columns["token_type_ids"]
    out = []
    with torch.no_grad():
        for i in range(0, len(ids_all), batch):
            rows, trows = ids_all[i:i + batch], types_all[i:i + batch]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            types = torch.zeros_like(ids)
            for j, (r, t) in enumerate(zip(rows, trows)):
                ids[j, :len(r)], types[j, :len(t)] = torch.tensor(r), torch.tensor(t)
            mask = (ids != pad_id).long()
            h = M.discriminator_hidden(params, ids, types, mask, cfg)
            mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            out.append(torch.cat([mean, h[:, 0]], -1))
    return torch.cat(out).float().numpy()


def probe(params, cfg, tokenizer, glue_dir, cache):
    result = {}
    for task, limit, score in (("sst2", 20000, accuracy_score), ("cola", None, matthews_corrcoef)):
        splits = load_task(glue_dir, task, tokenizer, max_len=128, cache_dir=cache,
                           tokenizer_id=tokenizer.fingerprint)
        train, dev = FT.subsample(splits["train"], limit, seed=0), splits["dev"]
        xt, xd = (features(params, s, cfg, tokenizer.pad_id) for s in (train, dev))
        mu, sd = xt.mean(0), xt.std(0) + 1e-6
        clf = LogisticRegression(max_iter=2000, C=1.0).fit((xt - mu) / sd,
                                                            train.columns["labels"])
        pred = clf.predict((xd - mu) / sd)
        result[task] = round(100 * float(score(dev.columns["labels"], pred)), 2)
    return result


glue_dir, out = sys.argv[1], Path(sys.argv[2])
rows = {}
for arg in sys.argv[3:]:
    name, path = arg.split("=", 1)
    params, cfg, tokenizer, info = FT.load_finetune_inputs(path)
    cache = out.parent / "glue_cache"
    if "random init" not in rows:
        rows["random init"] = probe(M.init_params(cfg, 0), cfg, tokenizer, glue_dir, cache)
        print("random init", rows["random init"], flush=True)
    rows[name] = probe(params, cfg, tokenizer, glue_dir, cache) | {"checkpoint": info["checkpoint"]}
    print(name, rows[name], flush=True)
out.write_text(json.dumps(rows, indent=1) + "\n")
