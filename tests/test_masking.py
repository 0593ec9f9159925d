"""Tests of electra_fn.masking: properties (hypothesis), statistics, eager == compiled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from electra_fn.config import CLS_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID
from electra_fn.masking import draw_mask_noise, mask_batch, max_predictions_for

SPECIAL = (PAD_ID, CLS_ID, SEP_ID, MASK_ID)
VOCAB = 40


def make_batch(seed: int, batch: int, seq_len: int) -> torch.Tensor:
    """Random ids with [CLS] first, a [SEP] somewhere, a padding tail, stray [MASK]/[UNK]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, seq_len), generator=g)
    for b in range(batch):
        length = int(torch.randint(1, seq_len + 1, (1,), generator=g))
        ids[b, 0] = CLS_ID
        if length > 1:
            ids[b, int(torch.randint(1, length, (1,), generator=g))] = SEP_ID
        stray = torch.rand(seq_len, generator=g) < 0.1
        ids[b] = torch.where(stray, torch.tensor([MASK_ID, UNK_ID])[b % 2], ids[b])
        ids[b, 0] = CLS_ID
        ids[b, length:] = PAD_ID
    return ids


def expected_count(n: int, max_predictions: int, mask_prob: float = 0.15,
                   n_candidates: int | None = None) -> int:
    """The original's count of ``n`` tokens in float32 with half-to-even rounding, floored at
    1 if the row has candidates."""
    if (n if n_candidates is None else n_candidates) == 0:
        return 0
    r = int(np.round(np.float32(n) * np.float32(mask_prob)))
    return min(max_predictions, max(1, r))


def run(ids: torch.Tensor, seed: int, max_predictions: int, **kw) -> dict:
    B, L = ids.shape
    noise = draw_mask_noise(torch.Generator().manual_seed(seed), B, L, max_predictions, "cpu")
    return mask_batch(ids, noise, max_predictions=max_predictions, **kw)


def test_max_predictions_for():
    assert max_predictions_for(128) == 19
    assert max_predictions_for(512) == 79
    assert max_predictions_for(20) == 3


def test_noise_shapes_and_range():
    noise = draw_mask_noise(torch.Generator().manual_seed(0), 3, 16, 4, "cpu")
    assert noise["position_u_BxL"].shape == (3, 16) and noise["keep_u_BxP"].shape == (3, 4)
    for u in noise.values():
        assert u.dtype == torch.float32 and bool((u >= 0).all() and (u < 1).all())


batches = st.tuples(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(2, 48))


@settings(max_examples=60, deadline=None)
@given(batches, st.integers(0, 2**31 - 1), st.floats(0.05, 0.5))
def test_mask_properties_distinct(shape, noise_seed, mask_prob):
    seed, B, L = shape
    ids = make_batch(seed, B, L)
    P = max(1, min(L, max_predictions_for(L, mask_prob)))
    out = run(ids, noise_seed, P, mask_prob=mask_prob, positions="distinct")
    pos, lab, w, masked = (out["positions_BxP"], out["labels_BxP"], out["weights_BxP"],
                           out["masked_ids_BxL"])
    assert pos.shape == lab.shape == w.shape == (B, P) and masked.shape == (B, L)
    assert pos.dtype == lab.dtype == torch.long and w.dtype == torch.float32
    for b in range(B):
        n = sum(int(t) not in SPECIAL for t in ids[b])
        k = expected_count(n, P, mask_prob)
        assert w[b].tolist() == [1.0] * k + [0.0] * (P - k)
        real = pos[b, :k].tolist()
        assert len(set(real)) == k  # distinct
        assert all(int(ids[b, p]) not in SPECIAL for p in real)  # never special or padding
        assert lab[b, :k].tolist() == ids[b, real].tolist()
        assert pos[b, k:].eq(0).all() and lab[b, k:].eq(0).all()
        chosen = set(real)
        for i in range(L):
            if i not in chosen:
                assert masked[b, i] == ids[b, i]
            else:
                assert int(masked[b, i]) in (MASK_ID, int(ids[b, i]))
    # Deterministic for fixed noise; the input is not modified.
    ids_copy = ids.clone()
    again = run(ids, noise_seed, P, mask_prob=mask_prob, positions="distinct")
    assert all(torch.equal(out[k], again[k]) for k in out)
    assert torch.equal(ids, ids_copy)


@settings(max_examples=60, deadline=None)
@given(batches, st.integers(0, 2**31 - 1), st.floats(0.05, 0.5))
def test_mask_properties_original(shape, noise_seed, mask_prob):
    """The original's rule: the count over non-padding tokens ([CLS]/[SEP] included),
    positions drawn with replacement among the candidates."""
    seed, B, L = shape
    ids = make_batch(seed, B, L)
    P = max(1, min(L, max_predictions_for(L, mask_prob)))
    out = run(ids, noise_seed, P, mask_prob=mask_prob)
    pos, lab, w, masked = (out["positions_BxP"], out["labels_BxP"], out["weights_BxP"],
                           out["masked_ids_BxL"])
    assert pos.shape == lab.shape == w.shape == (B, P) and masked.shape == (B, L)
    for b in range(B):
        n_cand = sum(int(t) not in SPECIAL for t in ids[b])
        n_tokens = int((ids[b] != PAD_ID).sum())
        k = expected_count(n_tokens, P, mask_prob, n_candidates=n_cand)
        assert w[b].tolist() == [1.0] * k + [0.0] * (P - k)
        real = pos[b, :k].tolist()
        assert all(int(ids[b, p]) not in SPECIAL for p in real)
        assert lab[b, :k].tolist() == ids[b, real].tolist()
        assert pos[b, k:].eq(0).all() and lab[b, k:].eq(0).all()
        for i in range(L):
            if i not in set(real):
                assert masked[b, i] == ids[b, i]
            else:
                assert int(masked[b, i]) in (MASK_ID, int(ids[b, i]))
    again = run(ids, noise_seed, P, mask_prob=mask_prob)
    assert all(torch.equal(out[k], again[k]) for k in out)


def test_original_rule_draws_with_replacement_uniformly():
    """A full row of 128 (126 candidates) draws 19 positions with replacement: on average
    126 (1 - (125/126)^19) = 17.67 distinct, every candidate equally likely."""
    row = torch.tensor([CLS_ID] + list(range(5, 131)) + [SEP_ID])
    B = 3000
    out = run(row.expand(B, -1).clone(), 99, 19)
    assert out["weights_BxP"].sum(-1).eq(19).all()  # round(0.15 * 128) = 19
    pos = out["positions_BxP"]
    distinct = torch.tensor([len(set(r.tolist())) for r in pos], dtype=torch.float32)
    assert abs(float(distinct.mean()) - 126 * (1 - (125 / 126) ** 19)) < 0.05
    counts = torch.bincount(pos.reshape(-1), minlength=128)
    assert counts[0] == 0 and counts[127] == 0
    _, p_value = stats.chisquare(counts[1:127].numpy())
    assert p_value > 1e-4, p_value
    # The count includes [CLS]/[SEP]: 14 ordinary tokens + 2 -> round(2.4) = 2, not round(2.1).
    short = torch.tensor([[CLS_ID] + list(range(5, 19)) + [SEP_ID] + [PAD_ID] * 4])
    assert run(short, 0, 3)["weights_BxP"].sum() == 2
    assert run(short, 0, 3, mask_prob=0.2)["weights_BxP"].sum() == 3  # 3.2 vs 2.8

def test_no_candidates_row():
    ids = torch.tensor([[CLS_ID, SEP_ID, PAD_ID, PAD_ID], [CLS_ID, 9, 10, SEP_ID]])
    out = run(ids, 0, 2)
    assert out["weights_BxP"].tolist() == [[0.0, 0.0], [1.0, 0.0]]
    assert torch.equal(out["masked_ids_BxL"][0], ids[0])


def test_mask_fraction_and_uniformity():
    # One row repeated: 15 candidates -> round(2.25) = 2 predictions per row.
    row = torch.tensor([CLS_ID] + list(range(10, 25)) + [SEP_ID] + [PAD_ID] * 3)
    B = 4000
    ids = row.expand(B, -1).clone()
    out = run(ids, 1234, 3, positions="distinct")
    w = out["weights_BxP"]
    assert w.sum(-1).eq(2).all()
    real = w > 0
    pos = out["positions_BxP"][real]
    became_mask = torch.gather(out["masked_ids_BxL"], 1, out["positions_BxP"])[real] == MASK_ID
    frac = became_mask.float().mean().item()
    assert abs(frac - 0.85) < 0.02, frac
    counts = torch.bincount(pos, minlength=row.numel())
    assert counts[0] == 0 and counts[16:].sum() == 0
    _, p_value = stats.chisquare(counts[1:16].numpy())
    assert p_value > 1e-4, (p_value, counts)


@pytest.mark.parametrize("rule", ["original", "distinct"])
def test_eager_equals_compiled(rule):
    ids = make_batch(7, 4, 32)
    noise = draw_mask_noise(torch.Generator().manual_seed(3), 4, 32, 5, "cpu")
    eager = mask_batch(ids, noise, max_predictions=5, positions=rule)
    compiled = torch.compile(mask_batch, fullgraph=True, dynamic=False)(
        ids, noise, max_predictions=5, positions=rule)
    for k in eager:
        assert torch.equal(eager[k], compiled[k]), k


def test_rejects_bad_shapes():
    ids = make_batch(0, 2, 8)
    with pytest.raises(ValueError):
        run(ids, 0, 9)
    with pytest.raises(ValueError, match="positions"):
        run(ids, 0, 2, positions="bert")
