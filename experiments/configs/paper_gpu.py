"""The paper's ELECTRA-Small recipe on one GPU: batch 128 x 128, 1M steps, lr 5e-4, 10k warmup,
Adam without bias correction, bf16 autocast.

    python -m experiments.pretrain_small --config paper_gpu --corpus DATA --out runs/paper

Expected: days on one GPU (the paper: 4 days on a V100). Not yet run to completion here: the
longest GPU run so far is 5,265 steps of the short-run recipe on one H200
(records/2026-11-27_readme-measurements); stop and continue with --resume at any time.
"""

FLAGS = {
    "preset": "small",
    "device": "cuda",
    "batch_size": 128,
    "seq_len": 128,
    "steps": 1_000_000,
    "lr": 5e-4,
    "warmup": 10_000,
    "bias_correction": False,
}
