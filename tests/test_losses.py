"""Tests of electra_fn.losses against hand-computed values and torch.nn.functional."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from electra_fn.losses import (classification_loss, electra_loss, mlm_loss, regression_loss,
                               rtd_auc,
                               rtd_loss)


def approx(a, b, tol=1e-5) -> bool:
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


def log_softmax_py(row: list[float], i: int) -> float:
    return row[i] - math.log(sum(math.exp(x) for x in row))


def test_mlm_loss_by_hand():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[0, 2, 1]])
    weights = torch.tensor([[1.0, 1.0, 0.0]])  # the third slot is padding
    loss, acc = mlm_loss(logits, labels, weights)
    ce = [-log_softmax_py([2.0, 0.0, -1.0], 0), -log_softmax_py([0.0, 1.0, 0.0], 2)]
    assert approx(loss, sum(ce) / (2 + 1e-6))
    assert approx(acc, 1 / (2 + 1e-6))  # slot 0 right, slot 1 wrong
    assert loss.dtype == torch.float32 and loss.shape == ()


def test_mlm_loss_matches_functional_and_ignores_padding_slots():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 9, generator=gen)
    labels = torch.randint(0, 9, (3, 4), generator=gen)
    weights = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    loss, _ = mlm_loss(logits, labels, weights)
    keep = weights.bool()
    ref = F.cross_entropy(logits[keep], labels[keep], reduction="sum") / (keep.sum() + 1e-6)
    assert approx(loss, ref)
    # Changing logits or labels in weight-0 slots changes nothing.
    logits2 = torch.where(keep[..., None], logits, 100 * torch.randn(3, 4, 9, generator=gen))
    labels2 = torch.where(keep, labels, 0)
    loss2, _ = mlm_loss(logits2, labels2, weights)
    assert torch.equal(loss, loss2)
    # bf16 logits are upcast.
    loss_bf16, _ = mlm_loss(logits.bfloat16(), labels, weights)
    assert loss_bf16.dtype == torch.float32
    # No real slot: 0, not NaN.
    zero, acc0 = mlm_loss(logits, labels, torch.zeros(3, 4))
    assert float(zero) == 0.0 and float(acc0) == 0.0


def test_rtd_loss_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 7.0]])
    replaced = torch.tensor([[True, False, False, True, True]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # last token is padding
    out = rtd_loss(logits, replaced, mask)

    def bce(x, y):
        prob = 1 / (1 + math.exp(-x))
        return -(y * math.log(prob) + (1 - y) * math.log(1 - prob))

    terms = [bce(2.0, 1), bce(-1.0, 0), bce(0.5, 0), bce(-3.0, 1)]
    assert approx(out["loss"], sum(terms) / (4 + 1e-6))
    # predictions (logit > 0): 1 0 1 0 ; labels 1 0 0 1 -> right, right, wrong, wrong
    assert approx(out["accuracy"], 2 / (4 + 1e-6))
    assert approx(out["replaced_accuracy"], 1 / (2 + 1e-6))
    assert approx(out["original_accuracy"], 1 / (2 + 1e-6))
    assert all(v.shape == () and v.dtype == torch.float32 for v in out.values())


def test_rtd_loss_matches_functional():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 10, generator=gen)
    replaced = torch.rand(4, 10, generator=gen) < 0.3
    mask = (torch.arange(10)[None] < torch.tensor([[10], [7], [3], [1]])).long()
    out = rtd_loss(logits.bfloat16(), replaced.float(), mask)
    keep = mask.bool()
    ref = F.binary_cross_entropy_with_logits(logits.bfloat16().float()[keep],
                                             replaced.float()[keep], reduction="mean")
    assert approx(out["loss"], ref)
    # Padding logits do not matter.
    out2 = rtd_loss(torch.where(keep, logits, 50.0).bfloat16(), replaced, mask)
    assert torch.equal(out["loss"], out2["loss"])


@pytest.mark.parametrize("seed", range(4))
def test_rtd_auc_matches_sklearn(seed):
    """Mann-Whitney AUC over non-padding tokens, ties counted half, equals roc_auc_score."""
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    gen = torch.Generator().manual_seed(seed)
    B, L = 3, 17
    # Rounded logits make ties common, which is where a sort-based AUC usually goes wrong.
    logits = (torch.randn(B, L, generator=gen) * 2).round() / 2
    replaced = torch.rand(B, L, generator=gen) < 0.3
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 10:] = 0
    mask[2, 5:] = 0
    keep = mask.bool()
    ref = roc_auc_score(replaced[keep].numpy(), logits[keep].numpy())
    got = rtd_auc(logits, replaced, mask)
    assert got.ndim == 0
    assert abs(float(got) - ref) < 1e-6
    # Padding is ignored whatever its logits and labels.
    noisy = torch.where(keep, logits, torch.full_like(logits, 99.0))
    assert abs(float(rtd_auc(noisy, replaced | ~keep, mask)) - ref) < 1e-6
    # All-equal logits (a collapsed discriminator) give exactly 0.5; one class only gives 0.5.
    assert float(rtd_auc(torch.zeros(B, L), replaced, mask)) == 0.5
    assert float(rtd_auc(logits, torch.zeros(B, L, dtype=torch.bool), mask)) == 0.5


def test_electra_loss():
    assert approx(electra_loss(torch.tensor(2.0), torch.tensor(0.1)), 2.0 + 50 * 0.1)
    assert approx(electra_loss(torch.tensor(2.0), torch.tensor(0.1), disc_weight=1.0), 2.1)
    assert approx(electra_loss(torch.tensor(2.0), torch.tensor(0.1), gen_weight=0.0), 5.0)


def test_finetuning_losses():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([1, 0])
    expected = -(log_softmax_py([1.0, 2.0, 0.0], 1) + log_softmax_py([0.0, 0.0, 3.0], 0)) / 2
    assert approx(classification_loss(logits, labels), expected)
    assert approx(regression_loss(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.5, 2.0, 1.0])),
                  (0.25 + 0.0 + 9.0) / 3)


def test_eager_equals_compiled():
    gen = torch.Generator().manual_seed(2)
    mlm_logits = torch.randn(2, 3, 13, generator=gen)
    labels = torch.randint(0, 13, (2, 3), generator=gen)
    weights = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    disc_logits = torch.randn(2, 8, generator=gen)
    replaced = torch.rand(2, 8, generator=gen) < 0.2
    mask = torch.ones(2, 8, dtype=torch.long)

    def fn(mlm_logits, labels, weights, disc_logits, replaced, mask):
        mlm, acc = mlm_loss(mlm_logits, labels, weights)
        rtd = rtd_loss(disc_logits, replaced, mask)
        return electra_loss(mlm, rtd["loss"]), acc, rtd

    args = (mlm_logits, labels, weights, disc_logits, replaced, mask)
    eager = fn(*args)
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)(*args)
    torch.testing.assert_close(eager, compiled)
