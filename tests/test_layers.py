"""The building blocks of electra_fn.layers against independent references: dense vs
``x @ W.T + b``, LayerNorm vs its formula, the FFN with exact (erf) GELU, dropout, and
attention vs ``torch.nn.MultiheadAttention`` with a padding mask.

Blocks that end in a LayerNorm are tested with widths of at least 4: over 1-2 features its
output is +-1 and amplifies rounding noise (as in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from electra_fn import layers as L
from electra_fn import rng

EPS = 1e-12  # BERT/ELECTRA's LayerNorm epsilon
ATOL = 1e-5
seeds = st.integers(0, 2**31 - 1)
BACKENDS = {"native": contextlib.nullcontext, "counter": rng.counter_based}


def _randn(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=g) * scale


def _dense_params(g: torch.Generator, d_in: int, d_out: int) -> dict:
    """Random weight [out, in] and a non-zero bias (so a wrong layout or a dropped bias shows)."""
    return {"weight": _randn(g, d_out, d_in, scale=1 / math.sqrt(d_in)),
            "bias": _randn(g, d_out, scale=0.5)}


def _ln_params(g: torch.Generator, d: int) -> dict:
    return {"weight": 1 + _randn(g, d, scale=0.2), "bias": _randn(g, d, scale=0.2)}


def _attention_params(g: torch.Generator, hidden: int) -> dict:
    return {"qkv": _dense_params(g, hidden, 3 * hidden), "out": _dense_params(g, hidden, hidden),
            "layer_norm": _ln_params(g, hidden)}


def _ffn_params(g: torch.Generator, hidden: int, inner: int) -> dict:
    return {"in": _dense_params(g, hidden, inner), "out": _dense_params(g, inner, hidden),
            "layer_norm": _ln_params(g, hidden)}


def _mask(g: torch.Generator, batch: int, seq_len: int) -> torch.Tensor:
    """[B, L] bool, row lengths random in [1, L] (the first row full)."""
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=g)
    lengths[0] = seq_len
    return torch.arange(seq_len)[None, :] < lengths[:, None]


def _bias(mask_BxL: torch.Tensor) -> torch.Tensor:
    """The additive [B,1,1,L] attention bias: 0 for real keys, the most negative float32 else."""
    return torch.where(mask_BxL[:, None, None, :], 0.0, torch.finfo(torch.float32).min)


def _ref_layer_norm(p: dict, x: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)  # biased, as LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * p["weight"] + p["bias"]


def _ref_attention_branch(p: dict, x: torch.Tensor, mask: torch.Tensor,
                          num_heads: int) -> torch.Tensor:
    """torch's own MultiheadAttention(x) (q, k, v stacked as ours), padded keys ignored."""
    hidden = x.shape[-1]
    mha = torch.nn.MultiheadAttention(hidden, num_heads, dropout=0.0, bias=True,
                                      batch_first=True)
    mha.train()  # the plain (not the fast-path) implementation; dropout is 0
    with torch.no_grad():
        mha.in_proj_weight.copy_(p["qkv"]["weight"])
        mha.in_proj_bias.copy_(p["qkv"]["bias"])
        mha.out_proj.weight.copy_(p["out"]["weight"])
        mha.out_proj.bias.copy_(p["out"]["bias"])
        out, _ = mha(x, x, x, key_padding_mask=~mask, need_weights=False)
    return out


def _ref_attention(p: dict, x: torch.Tensor, mask: torch.Tensor, num_heads: int,
                   eps: float) -> torch.Tensor:
    """The post-LN block: LN(x + MultiheadAttention(x))."""
    return _ref_layer_norm(p["layer_norm"], _ref_attention_branch(p, x, mask, num_heads) + x, eps)


def _check_dropped_branch(out: torch.Tensor, x: torch.Tensor, branch: torch.Tensor, ln: dict,
                          rate: float) -> None:
    """Each output row is LN(x + branch * keep / (1 - rate)) for some 0/1 ``keep`` (all 2**H
    tried): hidden dropout acts on the branch, never on the residual ``x``."""
    hidden = x.shape[-1]
    keeps_MxH = (torch.arange(2**hidden)[:, None] >> torch.arange(hidden)) & 1
    x_N, branch_N, out_N = (t.reshape(-1, 1, hidden) for t in (x, branch, out))
    cand_NxMxH = _ref_layer_norm(ln, x_N + branch_N * keeps_MxH / (1 - rate), EPS)
    err_NxM = (cand_NxMxH - out_N).abs().amax(-1)
    assert float(err_NxM.min(-1).values.max()) < 1e-4
    kept = keeps_MxH[err_NxM.argmin(-1)].float().mean()
    assert abs(float(kept) - (1 - rate)) < 0.1
    assert (keeps_MxH[err_NxM.argmin(-1)].sum(-1) == 0).any()  # rows with the whole branch off


# -- initialisation -----------------------------------------------------------------------
def test_init_weight_original_is_truncated_at_two_std_and_normal_is_not():
    std = 0.02
    orig = L.init_weight(torch.Generator().manual_seed(0), (300, 300), std, "original")
    assert orig.dtype == torch.float32 and orig.shape == (300, 300)
    assert float(orig.abs().max()) <= 2 * std
    assert abs(float(orig.std()) - 0.8796 * std) < 0.01 * std  # std of N(0,1) cut at +-2
    normal = L.init_weight(torch.Generator().manual_seed(0), (300, 300), std, "normal")
    assert abs(float(normal.std()) - std) < 0.01 * std
    assert float(normal.abs().max()) > 3 * std
    again = L.init_weight(torch.Generator().manual_seed(0), (300, 300), std, "original")
    assert torch.equal(orig, again)
    with pytest.raises(ValueError, match="init='xavier'"):
        L.init_weight(torch.Generator(), (2, 2), std, "xavier")


def test_init_dense_layout_and_glorot_only_under_the_original_init():
    gen = torch.Generator().manual_seed(1)
    p = L.init_dense(gen, 30, 50, 0.02)
    assert p["weight"].shape == (50, 30) and torch.equal(p["bias"], torch.zeros(50))
    glorot = L.init_dense(torch.Generator().manual_seed(1), 30, 50, 0.02, glorot=True)["weight"]
    limit = math.sqrt(6 / (30 + 50))
    assert float(glorot.abs().max()) <= limit and float(glorot.abs().max()) > 0.9 * limit
    # Under "normal" the glorot flag is ignored: the same draw as any other layer.
    a = L.init_dense(torch.Generator().manual_seed(2), 30, 50, 0.02, "normal", glorot=True)
    b = L.init_dense(torch.Generator().manual_seed(2), 30, 50, 0.02, "normal")
    assert torch.equal(a["weight"], b["weight"])


def test_block_initialisers_shapes_and_identity_layer_norms():
    gen = torch.Generator().manual_seed(0)
    att, ffn = L.init_attention(gen, 8, 0.02), L.init_feed_forward(gen, 8, 20, 0.02)
    assert att["qkv"]["weight"].shape == (24, 8) and att["qkv"]["bias"].shape == (24,)
    assert att["out"]["weight"].shape == (8, 8)
    assert ffn["in"]["weight"].shape == (20, 8) and ffn["out"]["weight"].shape == (8, 20)
    for ln in (att["layer_norm"], ffn["layer_norm"], L.init_layer_norm(8)):
        assert torch.equal(ln["weight"], torch.ones(8)) and torch.equal(ln["bias"], torch.zeros(8))
    for dense in (att["qkv"], att["out"], ffn["in"], ffn["out"]):
        assert torch.equal(dense["bias"], torch.zeros_like(dense["bias"]))
        assert float(dense["weight"].abs().max()) <= 0.04


# -- dense and layer norm -----------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(seed=seeds, lead=st.lists(st.integers(1, 4), max_size=3), d_in=st.integers(1, 12),
       d_out=st.integers(1, 12))
def test_dense_is_x_times_the_transposed_out_by_in_weight_plus_bias(seed, lead, d_in, d_out):
    g = torch.Generator().manual_seed(seed)
    p = _dense_params(g, d_in, d_out)
    x = _randn(g, *lead, d_in)
    got = L.dense(p, x)
    assert got.shape == (*lead, d_out)
    torch.testing.assert_close(got, x @ p["weight"].T + p["bias"], atol=ATOL, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, lead=st.lists(st.integers(1, 4), max_size=3), d=st.integers(2, 16),
       scale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_layer_norm_matches_its_formula(seed, lead, d, scale):
    g = torch.Generator().manual_seed(seed)
    p = _ln_params(g, d)
    x = _randn(g, *lead, d, scale=scale) + 3.0 * scale
    torch.testing.assert_close(L.layer_norm(p, x, EPS), _ref_layer_norm(p, x, EPS),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(L.layer_norm(p, x, EPS),
                               F.layer_norm(x, (d,), p["weight"], p["bias"], EPS))


def test_layer_norm_of_a_constant_row_is_its_bias():
    """Zero variance: eps keeps it finite, and the normalised row is 0."""
    p = _ln_params(torch.Generator().manual_seed(0), 6)
    out = L.layer_norm(p, torch.full((2, 6), 7.0), EPS)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, p["bias"].expand(2, 6))


# -- dropout ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_is_the_identity_at_rate_zero_and_without_a_key(backend):
    x = _randn(torch.Generator().manual_seed(0), 5, 7)
    with BACKENDS[backend]():
        assert torch.equal(L.dropout(x, 0.0, rng.key(3)), x)
        for rate in (0.0, 0.1, 0.9):
            assert torch.equal(L.dropout(x, rate, None), x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_zeroes_about_rate_scales_the_rest_and_keeps_the_mean(backend, rate):
    n = 200_000
    with BACKENDS[backend]():
        out = L.dropout(torch.ones(n), rate, rng.key(11))
    dropped = out == 0
    assert abs(float(dropped.float().mean()) - rate) < 0.01
    torch.testing.assert_close(out[~dropped], torch.full_like(out[~dropped], 1 / (1 - rate)))
    assert abs(float(out.mean()) - 1.0) < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_mask_depends_on_the_key_and_shape_only(backend):
    g = torch.Generator().manual_seed(0)
    x, y = _randn(g, 64, 32) + 5.0, _randn(g, 64, 32) + 5.0  # no zeros of their own
    with BACKENDS[backend]():
        a, a2 = L.dropout(x, 0.3, rng.key(1)), L.dropout(x, 0.3, rng.key(1))
        b = L.dropout(y, 0.3, rng.key(1))
        c = L.dropout(x, 0.3, rng.key(2))
    assert torch.equal(a, a2)  # same key, same mask
    assert torch.equal(a == 0, b == 0)  # the mask does not look at the values
    assert not torch.equal(a == 0, c == 0)  # another key, another mask


# -- feed-forward -------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(seed=seeds, batch=st.integers(1, 3), seq_len=st.integers(1, 6), hidden=st.integers(4, 12),
       inner=st.integers(1, 24))
def test_feed_forward_is_post_layer_norm_with_exact_gelu(seed, batch, seq_len, hidden, inner):
    g = torch.Generator().manual_seed(seed)
    p = _ffn_params(g, hidden, inner)
    x = _randn(g, batch, seq_len, hidden, scale=2.0)
    h = x @ p["in"]["weight"].T + p["in"]["bias"]
    gelu = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU, not the tanh form
    ref = _ref_layer_norm(p["layer_norm"], gelu @ p["out"]["weight"].T + p["out"]["bias"] + x,
                          EPS)
    torch.testing.assert_close(L.feed_forward(p, x, eps=EPS, hidden_drop=0.3, key=None), ref,
                               atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(L.feed_forward(p, x, eps=EPS, hidden_drop=0.0, key=rng.key(seed)),
                               ref, atol=ATOL, rtol=1e-4)


def test_feed_forward_dropout_drops_the_branch_not_the_residual():
    g = torch.Generator().manual_seed(0)
    p, x = _ffn_params(g, 4, 16), _randn(g, 8, 32, 4)
    h = x @ p["in"]["weight"].T + p["in"]["bias"]
    branch = 0.5 * h * (1 + torch.erf(h / math.sqrt(2))) @ p["out"]["weight"].T + p["out"]["bias"]
    out = L.feed_forward(p, x, eps=EPS, hidden_drop=0.5, key=rng.key(3))
    _check_dropped_branch(out, x, branch, p["layer_norm"], 0.5)


def test_feed_forward_dropout_is_keyed():
    g = torch.Generator().manual_seed(0)
    p, x = _ffn_params(g, 8, 16), _randn(g, 2, 5, 8)

    def run(key):
        return L.feed_forward(p, x, eps=EPS, hidden_drop=0.3, key=key)

    assert torch.equal(run(rng.key(1)), run(rng.key(1)))
    assert not torch.allclose(run(rng.key(1)), run(rng.key(2)), atol=1e-3)
    assert not torch.allclose(run(rng.key(1)), run(None), atol=1e-3)


# -- attention ----------------------------------------------------------------------------
attention_shapes = dict(seed=seeds, batch=st.integers(1, 3), seq_len=st.integers(1, 8),
                        num_heads=st.sampled_from([1, 2, 4]), head_dim=st.integers(1, 6))


@settings(max_examples=25, deadline=None)
@given(**attention_shapes)
def test_attention_matches_multihead_attention_with_a_padding_mask(seed, batch, seq_len,
                                                                   num_heads, head_dim):
    hidden = num_heads * head_dim
    assume(hidden >= 4)
    g = torch.Generator().manual_seed(seed)
    p, x = _attention_params(g, hidden), _randn(g, batch, seq_len, hidden)
    mask = _mask(g, batch, seq_len)
    got = L.attention(p, x, _bias(mask), num_heads=num_heads, eps=EPS, attn_drop=0.2,
                      hidden_drop=0.2, key=None)
    torch.testing.assert_close(got, _ref_attention(p, x, mask, num_heads, EPS), atol=ATOL,
                               rtol=1e-4)


@settings(max_examples=25, deadline=None)
@given(**attention_shapes)
def test_attention_probabilities_path_equals_the_fused_one(seed, batch, seq_len, num_heads,
                                                           head_dim):
    """With a key and an attention-dropout rate below any uniform number (nothing dropped),
    the explicit softmax path computes what scaled_dot_product_attention computes."""
    hidden = num_heads * head_dim
    assume(hidden >= 4)
    g = torch.Generator().manual_seed(seed)
    p, x = _attention_params(g, hidden), _randn(g, batch, seq_len, hidden)
    bias = _bias(_mask(g, batch, seq_len))
    kw = dict(num_heads=num_heads, eps=EPS, hidden_drop=0.0)
    fused = L.attention(p, x, bias, attn_drop=0.0, key=rng.key(seed), **kw)
    explicit = L.attention(p, x, bias, attn_drop=1e-30, key=rng.key(seed), **kw)
    torch.testing.assert_close(explicit, fused, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(fused, L.attention(p, x, bias, attn_drop=0.5, key=None, **kw))


@settings(max_examples=25, deadline=None)
@given(**attention_shapes, train=st.booleans())
def test_padded_keys_get_no_weight(seed, batch, seq_len, num_heads, head_dim, train):
    """Changing the inputs at padded positions leaves the outputs at real positions alone, in
    eval and under dropout (same key: the masks do not depend on the inputs)."""
    hidden = num_heads * head_dim
    assume(hidden >= 4)
    g = torch.Generator().manual_seed(seed)
    p, x = _attention_params(g, hidden), _randn(g, batch, seq_len, hidden)
    mask = _mask(g, batch, seq_len)
    x2 = torch.where(mask[..., None], x, _randn(g, batch, seq_len, hidden, scale=10.0))
    kw = dict(num_heads=num_heads, eps=EPS, attn_drop=0.3 * train, hidden_drop=0.2 * train,
              key=rng.key(seed) if train else None)
    a = L.attention(p, x, _bias(mask), **kw)
    b = L.attention(p, x2, _bias(mask), **kw)
    torch.testing.assert_close(a[mask], b[mask], atol=ATOL, rtol=1e-5)


def test_attention_hidden_dropout_drops_the_branch_not_the_residual():
    g = torch.Generator().manual_seed(0)
    p, x = _attention_params(g, 4), _randn(g, 8, 32, 4)
    mask = _mask(g, 8, 32)
    branch = _ref_attention_branch(p, x, mask, 2)
    out = L.attention(p, x, _bias(mask), num_heads=2, eps=EPS, attn_drop=0.0, hidden_drop=0.5,
                      key=rng.key(3))
    _check_dropped_branch(out, x, branch, p["layer_norm"], 0.5)


def test_attention_dropout_is_keyed_and_each_rate_is_used():
    g = torch.Generator().manual_seed(0)
    p, x = _attention_params(g, 8), _randn(g, 2, 6, 8)
    bias = _bias(_mask(g, 2, 6))

    def run(key, attn_drop=0.3, hidden_drop=0.3):
        return L.attention(p, x, bias, num_heads=2, eps=EPS, attn_drop=attn_drop,
                           hidden_drop=hidden_drop, key=key)

    assert torch.equal(run(rng.key(1)), run(rng.key(1)))
    assert not torch.allclose(run(rng.key(1)), run(rng.key(2)), atol=1e-3)
    eval_out = run(None)
    assert not torch.allclose(run(rng.key(1), hidden_drop=0.0), eval_out, atol=1e-3)
    assert not torch.allclose(run(rng.key(1), attn_drop=0.0), eval_out, atol=1e-3)
    torch.testing.assert_close(run(rng.key(1), 0.0, 0.0), eval_out)
