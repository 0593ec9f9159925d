"""ELECTRA's dynamic masking (pretrain_helpers.mask of the original), pure with noise passed in.

All randomness comes from :func:`draw_mask_noise`, so :func:`mask_batch` is a deterministic
function of (ids, noise) with fixed output shapes that compiles with ``fullgraph=True``.
"""

from __future__ import annotations

import torch

from electra_fn.config import CLS_ID, MASK_ID, PAD_ID, SEP_ID

# pretrain_helpers._get_candidates_mask: [SEP], [CLS], [MASK] and [PAD] are never masked.
DEFAULT_SPECIAL_IDS = (PAD_ID, CLS_ID, SEP_ID, MASK_ID)


def max_predictions_for(seq_len: int, mask_prob: float = 0.15) -> int:
    """Number of prediction slots per sequence: int((mask_prob + 0.005) * seq_len), 19 for 128.

    The rule of the original README / configure_pretraining.max_predictions_per_seq.
    """
    return int((mask_prob + 0.005) * seq_len)


def draw_mask_noise(generator: torch.Generator, batch: int, seq_len: int,
                    max_predictions: int, device: torch.device | str | None = None) -> dict:
    """Uniform [0, 1) float32 noise for :func:`mask_batch` (draw it outside compiled code)."""
    kw = dict(generator=generator, device=device, dtype=torch.float32)
    return {
        "position_u_BxL": torch.rand(batch, seq_len, **kw),
        "keep_u_BxP": torch.rand(batch, max_predictions, **kw),
    }


def mask_batch(input_ids_BxL: torch.Tensor, noise: dict, *, max_predictions: int,
               mask_prob: float = 0.15, mask_token_id: int = MASK_ID,
               special_ids: tuple[int, ...] = DEFAULT_SPECIAL_IDS,
               mask_fraction: float = 0.85) -> dict:
    """Choose round(mask_prob * #candidates) positions per row; 85% of them become [MASK].

    Returns ``masked_ids_BxL``, ``positions_BxP`` (long), ``labels_BxP`` (original ids, long)
    and ``weights_BxP`` (float32; 1 for real predictions, 0 for unused slots, whose position
    and label are 0 as in the original). Chosen positions are distinct and never special.

    Differences from the original, on purpose: the original counts every non-padding token
    (including [CLS]/[SEP]) when computing the number to mask and samples positions WITH
    replacement (tf.random.categorical); here the count uses the candidates and positions
    are drawn without replacement (top-k of uniform scores), like BERT's
    create_pretraining_data.
    """
    B, L = input_ids_BxL.shape
    P = max_predictions
    if not 0 < P <= L:
        raise ValueError(f"max_predictions={P} must be in [1, seq_len={L}]")
    position_u_BxL, keep_u_BxP = noise["position_u_BxL"], noise["keep_u_BxP"]
    if tuple(position_u_BxL.shape) != (B, L) or tuple(keep_u_BxP.shape) != (B, P):
        raise ValueError(f"noise shapes {tuple(position_u_BxL.shape)}, "
                         f"{tuple(keep_u_BxP.shape)} do not match batch ({B}, {L}) and P={P}")

    candidate_BxL = torch.ones_like(input_ids_BxL, dtype=torch.bool)
    for special in special_ids:
        candidate_BxL = candidate_BxL & (input_ids_BxL != special)

    # Per-row count in float32 with round-half-to-even, like tf.round(num_tokens * mask_prob).
    # The floor of 1 (tf.maximum(1, ...)) is from the original; a row without candidates
    # gets 0 predictions here (the original would sample from an all-zero distribution).
    n_candidates_B = candidate_BxL.sum(-1)
    count_B = torch.round(n_candidates_B.to(torch.float32) * mask_prob).to(torch.long)
    count_B = count_B.clamp(min=1, max=P)
    count_B = torch.where(n_candidates_B > 0, count_B, torch.zeros_like(count_B))

    # The top-`count` candidates by uniform score are a uniform draw without replacement.
    score_BxL = torch.where(candidate_BxL, position_u_BxL, torch.full_like(position_u_BxL, -1.0))
    top_positions_BxP = torch.topk(score_BxL, P, dim=-1).indices
    rank_P = torch.arange(P, device=input_ids_BxL.device)
    real_BxP = rank_P[None, :] < count_B[:, None]

    positions_BxP = torch.where(real_BxP, top_positions_BxP, torch.zeros_like(top_positions_BxP))
    labels_BxP = torch.where(real_BxP, torch.gather(input_ids_BxL, 1, positions_BxP),
                             torch.zeros_like(positions_BxP)).to(torch.long)
    weights_BxP = real_BxP.to(torch.float32)

    # 85% [MASK], 15% unchanged, no random tokens (pretrain_helpers.mask: uniform < 0.85).
    # scatter_add keeps duplicate index 0 of unused slots harmless and deterministic.
    to_mask_BxP = real_BxP & (keep_u_BxP < mask_fraction)
    to_mask_BxL = torch.zeros_like(input_ids_BxL, dtype=torch.long).scatter_add(
        1, positions_BxP, to_mask_BxP.to(torch.long)) > 0
    masked_ids_BxL = torch.where(to_mask_BxL, torch.full_like(input_ids_BxL, mask_token_id),
                                 input_ids_BxL)
    return {
        "masked_ids_BxL": masked_ids_BxL,
        "positions_BxP": positions_BxP.to(torch.long),
        "labels_BxP": labels_BxP,
        "weights_BxP": weights_BxP,
    }
