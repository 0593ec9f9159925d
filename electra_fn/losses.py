"""ELECTRA's losses and metrics (run_pretraining.py), plus the GLUE fine-tuning losses.

Everything is computed in float32 whatever the logits' dtype, and returns 0-d tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# run_pretraining.py adds 1e-6 to every denominator so empty batches give 0, not NaN.
EPS = 1e-6


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor,
                   denominator: torch.Tensor | None = None) -> torch.Tensor:
    total = weights.sum() if denominator is None else denominator
    return (values * weights).sum() / (total + EPS)


def mlm_loss(logits_BxPxV: torch.Tensor, labels_BxP: torch.Tensor, weights_BxP: torch.Tensor,
             denominator: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generator cross entropy and accuracy averaged over the real prediction slots: divided
    by their count, or by ``denominator`` (all data-parallel ranks' slots: each rank's share
    of the global mean, summed over the ranks)."""
    V = logits_BxPxV.shape[-1]
    logits_NxV = logits_BxPxV.to(torch.float32).reshape(-1, V)
    labels_N = labels_BxP.reshape(-1).to(torch.long)
    weights_N = weights_BxP.reshape(-1).to(torch.float32)
    ce_N = F.cross_entropy(logits_NxV, labels_N, reduction="none")
    correct_N = (logits_NxV.argmax(-1) == labels_N).to(torch.float32)
    return (_weighted_mean(ce_N, weights_N, denominator),
            _weighted_mean(correct_N, weights_N, denominator))


def rtd_loss(logits_BxL: torch.Tensor, is_replaced_BxL: torch.Tensor,
             attention_mask_BxL: torch.Tensor, denominator: torch.Tensor | None = None) -> dict:
    """Discriminator sigmoid cross entropy and accuracies over the non-padding tokens.

    Returns ``loss``, ``accuracy``, ``replaced_accuracy`` (recall on replaced tokens) and
    ``original_accuracy``; a token is predicted replaced when its logit is > 0. Given
    ``denominator`` (as :func:`mlm_loss`), ``loss`` and ``accuracy`` are divided by it.
    """
    logits_BxL = logits_BxL.to(torch.float32)
    labels_BxL = is_replaced_BxL.to(torch.float32)
    weights_BxL = attention_mask_BxL.to(torch.float32)
    bce_BxL = F.binary_cross_entropy_with_logits(logits_BxL, labels_BxL, reduction="none")
    correct_BxL = ((logits_BxL > 0) == (labels_BxL > 0.5)).to(torch.float32)
    return {
        "loss": _weighted_mean(bce_BxL, weights_BxL, denominator),
        "accuracy": _weighted_mean(correct_BxL, weights_BxL, denominator),
        "replaced_accuracy": _weighted_mean(correct_BxL, weights_BxL * labels_BxL),
        "original_accuracy": _weighted_mean(correct_BxL, weights_BxL * (1.0 - labels_BxL)),
    }


def rtd_auc(logits_BxL: torch.Tensor, is_replaced_BxL: torch.Tensor,
            attention_mask_BxL: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of the discriminator over the non-padding tokens (0-d).

    P(a replaced token scores above an original one), ties counting one half: the
    Mann-Whitney statistic, from one sort of the original tokens' logits. Threshold-free, so
    it shows a discriminator learning to rank before its replaced-token accuracy (which needs
    p > 0.5) moves. 0.5 when either class is empty.
    """
    logits_N = logits_BxL.detach().to(torch.float32).reshape(-1)
    real_N = attention_mask_BxL.reshape(-1).to(torch.bool)
    pos_N = is_replaced_BxL.reshape(-1).to(torch.bool) & real_N
    neg_N = ~is_replaced_BxL.reshape(-1).to(torch.bool) & real_N
    inf = torch.full_like(logits_N, float("inf"))
    neg_sorted_N = torch.sort(torch.where(neg_N, logits_N, inf)).values
    below = torch.searchsorted(neg_sorted_N, logits_N, side="left").to(torch.float32)
    at_or_below = torch.searchsorted(neg_sorted_N, logits_N, side="right").to(torch.float32)
    wins_N = below + 0.5 * (at_or_below - below)
    n_pos = pos_N.to(torch.float32).sum()
    n_neg = neg_N.to(torch.float32).sum()
    u = torch.where(pos_N, wins_N, torch.zeros_like(wins_N)).sum()
    return torch.where(n_pos * n_neg > 0, u / (n_pos * n_neg).clamp(min=1.0),
                       torch.full_like(u, 0.5))


def electra_loss(mlm: torch.Tensor, rtd: torch.Tensor, disc_weight: float = 50.0,
                 gen_weight: float = 1.0) -> torch.Tensor:
    """gen_weight * MLM + disc_weight * RTD (paper section 3: lambda = 50; original disc_weight)."""
    return gen_weight * mlm + disc_weight * rtd


def classification_loss(logits_BxC: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross entropy of a classification task."""
    return F.cross_entropy(logits_BxC.to(torch.float32), labels_B.to(torch.long))


def regression_loss(pred_B: torch.Tensor, targets_B: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a regression task (STS-B)."""
    return F.mse_loss(pred_B.to(torch.float32), targets_B.to(torch.float32))
