"""Gumbel-max sampling from the generator and the discriminator's replaced-token batch."""

from __future__ import annotations

import torch

# Keeps -log(-log(u)) finite for u = 0 (torch.rand never returns 1.0).
_TINY = torch.finfo(torch.float32).tiny


def draw_gumbel_noise(generator: torch.Generator, shape: tuple[int, ...] | torch.Size,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Standard Gumbel noise -log(-log(u)), float32 (pretrain_helpers.sample_from_softmax)."""
    u = torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    return gumbel_from_uniform(u)


def gumbel_from_uniform(u: torch.Tensor) -> torch.Tensor:
    """-log(-log(u)) for u in [0, 1), finite at u = 0."""
    return -torch.log(-torch.log(u.clamp(min=_TINY)))


def gumbel_sample(logits_BxPxV: torch.Tensor, gumbel_BxPxV: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """Token ids ~ softmax(logits / temperature), float32 and with no gradient (Gumbel-max)."""
    scores_BxPxV = logits_BxPxV.detach().to(torch.float32) / temperature + gumbel_BxPxV
    return torch.argmax(scores_BxPxV, dim=-1)


def replace_tokens(masked_ids_BxL: torch.Tensor, positions_BxP: torch.Tensor,
                   sampled_BxP: torch.Tensor, labels_BxP: torch.Tensor,
                   weights_BxP: torch.Tensor) -> dict:
    """Write the generator's samples into the sequence and label what really changed.

    Returns ``disc_ids_BxL`` (the discriminator input) and ``is_replaced_BxL`` (bool). As in
    run_pretraining._get_fake_data, every chosen position (masked or kept) gets a sample,
    and a token equal to the original counts as original. Slots with weight 0 change
    nothing. A position drawn by several slots (the original masking draws with replacement)
    gets the floor of the mean of their samples, as the original's integer scatter_update
    (pretrain_helpers.scatter_update divides the summed ids by their count).
    """
    real_BxP = weights_BxP > 0
    positions_BxP = positions_BxP.to(torch.long)
    zeros_BxL = torch.zeros_like(masked_ids_BxL, dtype=torch.long)
    count_BxL = zeros_BxL.scatter_add(1, positions_BxP, real_BxP.to(torch.long))
    written_BxL = count_BxL > 0
    per = count_BxL.clamp(min=1)

    def scattered_mean(values_BxP: torch.Tensor) -> torch.Tensor:
        kept = torch.where(real_BxP, values_BxP.to(torch.long), torch.zeros_like(positions_BxP))
        return torch.div(zeros_BxL.scatter_add(1, positions_BxP, kept), per,
                         rounding_mode="floor")

    values_BxL = scattered_mean(sampled_BxP)
    originals_BxL = scattered_mean(labels_BxP)  # one label per position, so exact
    disc_ids_BxL = torch.where(written_BxL, values_BxL.to(masked_ids_BxL.dtype), masked_ids_BxL)
    is_replaced_BxL = written_BxL & (values_BxL != originals_BxL)
    return {"disc_ids_BxL": disc_ids_BxL, "is_replaced_BxL": is_replaced_BxL}
