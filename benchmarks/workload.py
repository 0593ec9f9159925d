"""The synthetic workload of the pre-training benchmarks and device checks.

:func:`synthetic_batch` is the batch that ``benchmarks/throughput.py``,
``benchmarks/gpu_checks.py`` and ``benchmarks/compile_time.py`` time and check the step on.
"""

from __future__ import annotations

import torch

from electra_fn.config import CLS_ID, PAD_ID, SEP_ID, PretrainConfig
from electra_fn.masking import DEFAULT_SPECIAL_IDS


def synthetic_batch(cfg: PretrainConfig, device: torch.device, seed: int = 0) -> dict:
    """A batch shaped like the pre-training pipeline's: [CLS] A [SEP] B [SEP], types 0/1.

    Every 20th row (at least one) is shorter and padded, like the 5% of examples the original
    data pipeline gives a random target length.
    """
    B, L, V = cfg.batch_size, cfg.seq_len, cfg.model.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(DEFAULT_SPECIAL_IDS) + 1, V, (B, L), generator=g)
    lengths = torch.full((B,), L)
    n_short = max(1, B // 20)
    lengths[-n_short:] = torch.randint(5, L, (n_short,), generator=g)
    split = (lengths // 2).clamp(min=2)
    pos = torch.arange(L)[None, :]
    mask = pos < lengths[:, None]
    ids[:, 0] = CLS_ID
    ids = torch.where(pos == split[:, None], SEP_ID, ids)
    ids = torch.where(pos == (lengths[:, None] - 1), SEP_ID, ids)
    ids = torch.where(mask, ids, PAD_ID)
    types = ((pos > split[:, None]) & mask).long()
    return {"input_ids": ids.to(device), "token_type_ids": types.to(device),
            "attention_mask": mask.long().to(device)}
