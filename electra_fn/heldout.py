"""Held-out evaluation of a pre-training run: fixed batches, fixed noise, token-weighted
metrics, and the one-line and final reports.

Besides the generator's replacements, the discriminator is scored on replacements drawn from
two fixed distributions (uniform, and the training data's token frequencies) and broken down
by :mod:`electra_fn.diagnostics` (does it use context?).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import diagnostics, masking, pretrain
from .config import PretrainConfig
from .rng import step_key
from .runtime import to_device

EVAL_BATCHES = 8
EVAL_SEED_OFFSET = 1_000_003  # held-out noise keys: step_key(seed + offset, batch index)


# Fixed replacement distributions the held-out evaluation also scores the discriminator on.
PROPOSALS = ("uniform", "unigram")
# The AUC breakdown of electra_fn.diagnostics.breakdown_metrics, with labels.
CONTEXT_GROUPS = (("top1", "generator's top-1 samples"), ("not_top1", "other samples"),
                  ("freq0", "replacing token rank < 100"), ("freq1", "rank 100-999"),
                  ("freq2", "rank 1,000-9,999"), ("freq3", "rank >= 10,000"))


def token_counts(data, vocab_size: int) -> torch.Tensor:
    """How often each token id occurs in the training split [V]."""
    counts = np.bincount(np.asarray(data.train_ids).reshape(-1).astype(np.int64),
                         minlength=vocab_size)[:vocab_size]
    return torch.from_numpy(counts)


def make_proposals(counts_V: torch.Tensor,
                   special_ids: tuple[int, ...] = masking.DEFAULT_SPECIAL_IDS
                   ) -> dict[str, torch.Tensor]:
    """``uniform`` and ``unigram`` (from ``counts_V``, the training split's
    :func:`token_counts`) log-weights, ``special_ids`` never proposed."""
    V = counts_V.shape[0]
    return {"uniform": pretrain.proposal_logits("uniform", V, special_ids=special_ids),
            "unigram": pretrain.proposal_logits("unigram", V, counts_V, special_ids)}


def make_valid_batches(data, batch_size: int, n_batches: int = EVAL_BATCHES,
                       pad_id: int = 0) -> list[dict]:
    """The first ``n_batches`` held-out batches of ``data`` (a ``PretrainData``); attention
    on every token but ``pad_id``."""
    ids, types = data.valid_ids, data.valid_token_types
    n = min(len(ids), n_batches * batch_size)
    out = []
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        x = torch.from_numpy(ids[rows].astype("int64"))
        types_BxL = torch.from_numpy(types[rows].astype("int64"))
        out.append({"input_ids": x, "token_type_ids": types_BxL,
                    "attention_mask": (x != pad_id).long()})
    return out


def evaluate(eval_step, params, valid_batches, seed: int, device,
             cfg: PretrainConfig | None = None) -> dict:
    """Token-weighted held-out metrics over fixed batches with fixed noise (comparable over time).

    Keys ``"{name}/..."`` (the fixed-proposal metrics, the AUC breakdown) are weighted by
    their own replaced fraction, the others by the generator's; metrics of groups without a
    replaced fraction (the shuffled-context check) by tokens."""
    sums: dict[str, float] = {}
    totals: dict[str, float] = {}
    for i, batch in enumerate(valid_batches):
        m = eval_step(params, to_device(batch, device), step_key(seed + EVAL_SEED_OFFSET, i))
        m = {k: float(v) for k, v in m.items()}
        tokens = m["tokens"]
        for k, v in m.items():
            prefix, _, name = k.rpartition("/")
            if name in ("masked_tokens", "tokens"):
                continue
            fraction = m.get(f"{prefix}/replaced_fraction" if prefix else "replaced_fraction")
            replaced = tokens * fraction if fraction is not None else None
            if name in ("gen_loss", "gen_accuracy"):
                w = m["masked_tokens"]
            elif name in ("disc_replaced_accuracy", "disc_auc"):
                w = replaced
            elif name == "disc_original_accuracy":
                w = tokens - replaced
            else:
                w = tokens
            sums[k] = sums.get(k, 0.0) + v * w
            totals[k] = totals.get(k, 0.0) + w
    # A group that never occurred (e.g. a frequency bucket beyond the vocabulary) is left out.
    out = {k: sums[k] / totals[k] for k in sums if totals[k] > 0}
    gen_w, disc_w = (cfg.gen_weight, cfg.disc_weight) if cfg else (1.0, 50.0)
    out["loss"] = gen_w * out["gen_loss"] + disc_w * out["disc_loss"]
    return out


def eval_line(step: int, e: dict) -> str:
    """The one-line held-out report printed at each evaluation."""
    line = (f"held-out at step {step}: gen acc {e['gen_accuracy']:.3f}, disc acc "
            f"{e['disc_accuracy']:.3f} (replaced {e['disc_replaced_accuracy']:.3f}, original "
            f"{e['disc_original_accuracy']:.3f}), disc AUC {e['disc_auc']:.3f}")
    fixed = [f"{name} {e[f'{name}/disc_replaced_accuracy']:.3f}/"
             f"{e[f'{name}/disc_original_accuracy']:.3f}"
             for name in PROPOSALS if f"{name}/disc_replaced_accuracy" in e]
    if fixed:
        line += "; fixed replacements (replaced/original acc): " + ", ".join(fixed)
    if "shuffle/logit_shift" in e:
        line += (f"; shuffled-context logit shift {e['shuffle/logit_shift']:.3f} "
                 f"(spread {e['shuffle/logit_spread']:.3f}); state spread "
                 f"{e['state/token_spread']:.3f}")
    return line




def make_eval_fn(cfg: PretrainConfig, counts_V: torch.Tensor, *, amp_dtype=None,
                 device_type: str = "cpu") -> Callable:
    """The held-out step: the generator's replacements, the fixed proposals and the context
    diagnostics, for a run whose training split has token counts ``counts_V``."""
    return pretrain.make_eval_step(cfg, amp_dtype=amp_dtype, device_type=device_type,
                                   proposals=make_proposals(counts_V, cfg.special_ids),
                                   extra_metrics=diagnostics.context_metrics(
                                       cfg, diagnostics.frequency_rank_V(counts_V)))


FINAL_ROWS = [("gen_accuracy", "generator MLM accuracy"),
              ("disc_accuracy", "discriminator accuracy"),
              ("disc_replaced_accuracy", "  on replaced tokens"),
              ("disc_original_accuracy", "  on original tokens"),
              ("disc_auc", "discriminator ROC AUC"),
              ("gen_loss", "generator loss"), ("disc_loss", "discriminator loss")]
for _n in PROPOSALS:
    FINAL_ROWS += [(f"{_n}/disc_auc", f"{_n} replacements: ROC AUC"),
                   (f"{_n}/disc_replaced_accuracy", f"{_n} replacements: replaced"),
                   (f"{_n}/disc_original_accuracy", f"{_n} replacements: original")]
FINAL_ROWS += [(f"{g}/disc_auc", f"AUC, {lab}") for g, lab in CONTEXT_GROUPS]
FINAL_ROWS += [("shuffle/logit_shift", "shuffled-context logit shift"),
               ("shuffle/logit_spread", "  logit spread (scale)"),
               ("state/token_spread", "final-state spread across tokens")]


def make_evaluator(cfg: PretrainConfig, data, device, *, amp_dtype=None) -> Callable:
    """``params -> metrics``: a run's held-out evaluation (its fixed batches, noise and
    proposals), the same for every call and every process that builds it from ``data``."""
    eval_fn = make_eval_fn(cfg, token_counts(data, cfg.model.vocab_size), amp_dtype=amp_dtype,
                           device_type=torch.device(device).type)
    valid_batches = make_valid_batches(data, cfg.batch_size, pad_id=cfg.pad_id)
    return lambda params: evaluate(eval_fn, params, valid_batches, cfg.seed, device, cfg)


def final_table(first: dict, final: dict) -> list[str]:
    """The lines of the first-vs-final held-out table printed at the end of a run (metrics
    missing from either, as in a run resumed from an older release, are left out)."""
    first_step, final_step = f"step {first['step']}", f"step {final['step']}"
    lines = [f"{'held-out':<34}{first_step:>12}{final_step:>12}"]
    lines += [f"{lab:<34}{first[k]:>12.4f}{final[k]:>12.4f}"
              for k, lab in FINAL_ROWS if k in first and k in final]
    return lines
