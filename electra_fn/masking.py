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


POSITION_RULES = ("original", "distinct")


def candidates(input_ids_BxL: torch.Tensor,
               special_ids: tuple[int, ...] = DEFAULT_SPECIAL_IDS) -> torch.Tensor:
    """Positions that may be masked (bool [B, L]): every token but the special ones."""
    keep_BxL = torch.ones_like(input_ids_BxL, dtype=torch.bool)
    for special in special_ids:
        keep_BxL = keep_BxL & (input_ids_BxL != special)
    return keep_BxL


def draw_mask_noise(generator: torch.Generator, batch: int, seq_len: int,
                    max_predictions: int, device: torch.device | str | None = None) -> dict:
    """Uniform [0, 1) float32 noise for :func:`mask_batch` under either position rule (draw
    it outside compiled code)."""
    kw = dict(generator=generator, device=device, dtype=torch.float32)
    return {
        "position_u_BxL": torch.rand(batch, seq_len, **kw),
        "position_u_BxP": torch.rand(batch, max_predictions, **kw),
        "keep_u_BxP": torch.rand(batch, max_predictions, **kw),
    }


def mask_batch(input_ids_BxL: torch.Tensor, noise: dict, *, max_predictions: int,
               mask_prob: float = 0.15, mask_token_id: int = MASK_ID,
               special_ids: tuple[int, ...] = DEFAULT_SPECIAL_IDS,
               mask_fraction: float = 0.85, positions: str = "original",
               pad_token_id: int = PAD_ID) -> dict:
    """Choose the prediction slots of each row; 85% of the chosen tokens become [MASK].

    Returns ``masked_ids_BxL``, ``positions_BxP`` (long), ``labels_BxP`` (original ids, long)
    and ``weights_BxP`` (float32; 1 for real predictions, 0 for unused slots, whose position
    and label are 0 as in the original). Chosen positions are never special tokens.

    ``positions="original"`` (pretrain_helpers.mask): round(mask_prob * non-padding tokens,
    [CLS]/[SEP] included) slots, at least 1, at most ``max_predictions``, each a uniform draw
    WITH replacement among the candidates (noise ``position_u_BxP``), so a row may predict a
    position twice (about 17.7 distinct of 19 in a full row of 128). ``"distinct"``:
    round(mask_prob * candidates) distinct positions (top-k of ``position_u_BxL``), like
    BERT's create_pretraining_data. A row without candidates gets 0 slots under both rules
    (the original would sample from an all-zero distribution).
    """
    B, L = input_ids_BxL.shape
    P = max_predictions
    if not 0 < P <= L:
        raise ValueError(f"max_predictions={P} must be in [1, seq_len={L}]")
    if positions not in POSITION_RULES:
        raise ValueError(f"positions={positions!r}: expected one of {POSITION_RULES}")
    u_key = "position_u_BxP" if positions == "original" else "position_u_BxL"
    if u_key not in noise or "keep_u_BxP" not in noise:
        raise ValueError(f"noise needs {u_key!r} and 'keep_u_BxP' for positions={positions!r}")
    position_u, keep_u_BxP = noise[u_key], noise["keep_u_BxP"]
    want = (B, P) if positions == "original" else (B, L)
    if tuple(position_u.shape) != want or tuple(keep_u_BxP.shape) != (B, P):
        raise ValueError(f"noise shapes {tuple(position_u.shape)}, "
                         f"{tuple(keep_u_BxP.shape)} do not match batch ({B}, {L}) and P={P}")

    candidate_BxL = candidates(input_ids_BxL, special_ids)
    n_candidates_B = candidate_BxL.sum(-1)
    counted_B = (n_candidates_B if positions == "distinct"
                 else (input_ids_BxL != pad_token_id).sum(-1))

    # Per-row count in float32 with round-half-to-even, like tf.round(num_tokens * mask_prob);
    # the floor of 1 is tf.maximum(1, ...).
    count_B = torch.round(counted_B.to(torch.float32) * mask_prob).to(torch.long)
    count_B = count_B.clamp(min=1, max=P)
    count_B = torch.where(n_candidates_B > 0, count_B, torch.zeros_like(count_B))
    rank_P = torch.arange(P, device=input_ids_BxL.device)
    real_BxP = rank_P[None, :] < count_B[:, None]

    if positions == "original":
        # tf.random.categorical over the candidates: the k-th candidate (k uniform in
        # [0, n)) is the first position whose running candidate count exceeds k.
        k_BxP = (position_u * n_candidates_B[:, None].to(torch.float32)).to(torch.long)
        k_BxP = torch.minimum(k_BxP, (n_candidates_B[:, None] - 1).clamp(min=0))
        running_BxL = torch.cumsum(candidate_BxL.to(torch.long), dim=-1)
        drawn_BxP = torch.searchsorted(running_BxL, k_BxP, right=True).clamp(max=L - 1)
    else:
        # The top-`count` candidates by uniform score are a uniform draw without replacement.
        score_BxL = torch.where(candidate_BxL, position_u, torch.full_like(position_u, -1.0))
        drawn_BxP = torch.topk(score_BxL, P, dim=-1).indices

    positions_BxP = torch.where(real_BxP, drawn_BxP, torch.zeros_like(drawn_BxP))
    labels_BxP = torch.where(real_BxP, torch.gather(input_ids_BxL, 1, positions_BxP),
                             torch.zeros_like(positions_BxP)).to(torch.long)
    weights_BxP = real_BxP.to(torch.float32)

    # 85% [MASK], 15% unchanged, no random tokens (pretrain_helpers.mask: uniform < 0.85). A
    # position drawn twice is masked if either draw says so, as the original's scatter.
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
