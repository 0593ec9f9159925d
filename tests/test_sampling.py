"""Tests of electra_fn.sampling: Gumbel-max statistics, no gradient, replaced-token labels."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from electra_fn.config import MASK_ID
from electra_fn.sampling import (draw_gumbel_noise, gumbel_from_uniform, gumbel_sample,
                                 replace_tokens)


def test_gumbel_noise_is_finite_float32():
    g = draw_gumbel_noise(torch.Generator().manual_seed(0), (64, 100), "cpu")
    assert g.dtype == torch.float32 and g.shape == (64, 100) and bool(torch.isfinite(g).all())
    # Standard Gumbel: mean = Euler-Mascheroni constant, variance = pi^2 / 6.
    assert abs(g.mean().item() - 0.5772) < 0.02
    assert abs(g.var().item() - 1.6449) < 0.05


def test_gumbel_noise_is_finite_at_u_zero():
    # torch.rand can return exactly 0; the clamp must keep the noise finite.
    u = torch.tensor([0.0, 1e-45, 0.5, 1.0 - 2**-24])
    g = gumbel_from_uniform(u)
    assert bool(torch.isfinite(g).all())


def test_sample_distribution_matches_softmax():
    logits_V = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    n = 20000
    gen = torch.Generator().manual_seed(0)
    for temperature in (1.0, 0.5, 2.0):
        gumbel = draw_gumbel_noise(gen, (1, n, 5), "cpu")
        samples = gumbel_sample(logits_V.expand(1, n, 5), gumbel, temperature)
        assert samples.shape == (1, n) and samples.dtype == torch.long
        observed = torch.bincount(samples.flatten(), minlength=5).double()
        expected = torch.softmax(logits_V.double() / temperature, -1) * n
        assert (observed / n - expected / n).abs().max() < 0.02
        _, p_value = stats.chisquare(observed.numpy(), expected.numpy())
        assert p_value > 1e-4, (temperature, p_value)


def test_no_gradient_through_sample():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    gumbel = draw_gumbel_noise(torch.Generator().manual_seed(1), (2, 3, 7), "cpu")
    sampled = gumbel_sample(logits, gumbel)
    assert sampled.grad_fn is None and not sampled.requires_grad
    # Using the samples as indices into something that depends on logits elsewhere gives
    # gradient only through that other path, never through the sampling.
    table = torch.randn(7, 4)
    loss = table[sampled].sum()
    assert not loss.requires_grad
    # bf16 logits are sampled in float32.
    assert torch.equal(gumbel_sample(logits.detach().bfloat16(), gumbel),
                       gumbel_sample(logits.detach().bfloat16().float(), gumbel))


def test_replace_tokens_by_hand():
    original = torch.tensor([[2, 10, 11, 12, 13, 3, 0]])
    masked = torch.tensor([[2, MASK_ID, 11, MASK_ID, 13, 3, 0]])  # 11 chosen but kept
    positions = torch.tensor([[1, 3, 2, 0]])
    labels = torch.tensor([[10, 12, 11, 0]])
    weights = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    sampled = torch.tensor([[10, 20, 21, 99]])  # 10 == original; slot 3 is padding
    out = replace_tokens(masked, positions, sampled, labels, weights)
    assert out["disc_ids_BxL"].tolist() == [[2, 10, 21, 20, 13, 3, 0]]
    assert out["is_replaced_BxL"].tolist() == [[False, False, True, True, False, False, False]]
    assert out["is_replaced_BxL"].dtype == torch.bool
    assert torch.equal(out["is_replaced_BxL"], out["disc_ids_BxL"] != original)
    assert masked.tolist() == [[2, MASK_ID, 11, MASK_ID, 13, 3, 0]]  # input untouched


def test_real_position_zero_with_padding_slots():
    # A real prediction at position 0 next to padding slots (also position 0) still writes.
    masked = torch.tensor([[MASK_ID, 7, 8]])
    out = replace_tokens(masked, torch.tensor([[0, 0, 0]]), torch.tensor([[30, 31, 32]]),
                         torch.tensor([[5, 0, 0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    assert out["disc_ids_BxL"].tolist() == [[30, 7, 8]]
    assert out["is_replaced_BxL"].tolist() == [[True, False, False]]


def test_duplicate_positions_take_the_floor_of_the_mean_sample():
    """pretrain_helpers.scatter_update on int ids: summed updates // their count."""
    masked = torch.tensor([[2, MASK_ID, 11, 3]])
    positions = torch.tensor([[1, 1, 2, 0]])
    labels = torch.tensor([[10, 10, 11, 0]])
    weights = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = replace_tokens(masked, positions, torch.tensor([[20, 23, 11, 99]]), labels, weights)
    assert out["disc_ids_BxL"].tolist() == [[2, 21, 11, 3]]
    assert out["is_replaced_BxL"].tolist() == [[False, True, False, False]]
    # Two samples whose floor-mean is the original count as original.
    out = replace_tokens(masked, positions, torch.tensor([[9, 11, 11, 99]]), labels, weights)
    assert out["disc_ids_BxL"].tolist() == [[2, 10, 11, 3]]
    assert not out["is_replaced_BxL"].any()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.integers(3, 24), st.integers(1, 3))
def test_replace_tokens_properties(seed, B, L, P):
    P = min(P, L)
    g = torch.Generator().manual_seed(seed)
    original = torch.randint(5, 12, (B, L), generator=g)
    positions = torch.stack([torch.randperm(L, generator=g)[:P] for _ in range(B)])
    count = torch.randint(0, P + 1, (B, 1), generator=g)
    weights = (torch.arange(P)[None] < count).float()
    positions = torch.where(weights > 0, positions, 0)
    labels = torch.where(weights > 0, torch.gather(original, 1, positions), 0)
    to_mask = (torch.rand(B, P, generator=g) < 0.85) & (weights > 0)
    masked = original.clone()
    for b in range(B):
        for j in range(P):
            if to_mask[b, j]:
                masked[b, positions[b, j]] = MASK_ID
    sampled = torch.randint(5, 12, (B, P), generator=g)
    out = replace_tokens(masked, positions, sampled, labels, weights)
    expected = original.clone()
    for b in range(B):
        for j in range(P):
            if weights[b, j] > 0:
                expected[b, positions[b, j]] = sampled[b, j]
    assert torch.equal(out["disc_ids_BxL"], expected)
    assert torch.equal(out["is_replaced_BxL"], expected != original)


def test_eager_equals_compiled():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 11, generator=gen)
    gumbel = draw_gumbel_noise(gen, (2, 3, 11), "cpu")
    masked = torch.randint(5, 11, (2, 9), generator=gen)
    positions = torch.tensor([[1, 4, 0], [2, 5, 7]])
    labels = torch.gather(masked, 1, positions)
    weights = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])

    def fn(logits, gumbel, masked, positions, labels, weights):
        sampled = gumbel_sample(logits, gumbel, 0.7)
        return sampled, replace_tokens(masked, positions, sampled, labels, weights)

    eager = fn(logits, gumbel, masked, positions, labels, weights)
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)(
        logits, gumbel, masked, positions, labels, weights)
    assert torch.equal(eager[0], compiled[0])
    for k in eager[1]:
        assert torch.equal(eager[1][k], compiled[1][k]), k
