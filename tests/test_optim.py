"""Tests of electra_fn.optim: AdamW arithmetic, decay masks, schedule, clipping, layer-wise LR."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from electra_fn.optim import (adamw_init, adamw_update, clip_by_global_norm, default_decay_mask,
                              electra_lr, global_norm, layerwise_lr_scales)
from electra_fn.tree import flat_dict, tree_leaves, tree_map


def make_params(num_layers: int = 2, dtype=torch.float32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    layer = lambda: {"attention": {"qkv": {"weight": t(6, 4), "bias": t(6)}},
                     "layer_norm": {"weight": t(4), "bias": t(4)}}
    return {
        "embeddings": {"word": t(10, 4), "layer_norm": {"weight": t(4), "bias": t(4)}},
        "encoder": {"embed_proj": {"weight": t(4, 4), "bias": t(4)},
                    "layers": [layer() for _ in range(num_layers)]},
        "classifier": {"weight": t(3, 4), "bias": t(3)},
        "generator_head": {"output_bias": t(10)},
    }


def reference_adamw(p, grads, lr_per_step, *, b1=0.9, b2=0.999, eps=1e-6, wd=0.01,
                    decay=True, scale=1.0):
    """AdamWeightDecayOptimizer._apply_gradients, step by step in float64."""
    p = p.double()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for g, lr in zip(grads, lr_per_step):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = m / (v.sqrt() + eps)
        if decay and wd > 0:
            u = u + wd * p
        p = p - lr * scale * u
    return p, m, v


def test_adamw_matches_reference_over_steps():
    params = make_params()
    mask = default_decay_mask(params)
    scales = layerwise_lr_scales(params, 2, 0.8)
    n_steps = 5
    gen = torch.Generator().manual_seed(1)
    grads = [tree_map(lambda p: torch.randn(p.shape, generator=gen), params)
             for _ in range(n_steps)]
    lrs = [1e-2 * (i + 1) for i in range(n_steps)]
    before = {k: v.clone() for k, v in flat_dict(params).items()}
    p, state = params, adamw_init(params)
    for g, lr in zip(grads, lrs):
        p, state = adamw_update(p, g, state, torch.tensor(lr), decay_mask=mask, lr_scale=scales)
    # The inputs are never modified.
    assert all(torch.equal(before[k], v) for k, v in flat_dict(params).items())
    flat_p, flat_m, flat_v = flat_dict(p), flat_dict(state["m"]), flat_dict(state["v"])
    flat_mask, flat_scale = flat_dict(mask), flat_dict(scales)
    for name, p0 in flat_dict(params).items():
        ref_p, ref_m, ref_v = reference_adamw(
            p0, [flat_dict(g)[name] for g in grads], lrs,
            decay=flat_mask[name], scale=flat_scale[name])
        torch.testing.assert_close(flat_p[name].double(), ref_p, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(flat_m[name].double(), ref_m, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(flat_v[name].double(), ref_v, rtol=1e-5, atol=1e-9)
        assert flat_p[name].dtype == torch.float32 and flat_m[name].dtype == torch.float32


def test_adamw_equals_torch_adamw_with_bias_correction_undone():
    # With eps = 0, torch's bias-corrected AdamW step lr_t * m_hat / sqrt(v_hat) equals
    # lr * m / sqrt(v) for lr_t = lr * (1 - b1^t) / sqrt(1 - b2^t); its decoupled decay
    # p *= 1 - lr_t * wd_t equals the original's "u += wd * p" for wd_t = wd * lr / lr_t.
    b1, b2, wd, lr = 0.9, 0.999, 0.01, 0.05
    gen = torch.Generator().manual_seed(2)
    p0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    grads = [torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(6)]

    theirs = p0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([theirs], lr=lr, betas=(b1, b2), eps=0.0, weight_decay=wd)
    ours, state = p0.clone(), adamw_init(p0)
    state = tree_map(lambda x: x.double(), state)
    for t, g in enumerate(grads, start=1):
        lr_t = lr * (1 - b1**t) / math.sqrt(1 - b2**t)
        opt.param_groups[0]["lr"] = lr_t
        opt.param_groups[0]["weight_decay"] = wd * lr / lr_t
        theirs.grad = g.clone()
        opt.step()
        ours, state = adamw_update(ours, g, state, torch.tensor(lr, dtype=torch.float64),
                                   b1=b1, b2=b2, eps=0.0, weight_decay=wd)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-6, atol=1e-9)


def test_adamw_bias_corrected_equals_torch_adamw():
    # bias_correction_step=t gives torch.optim.AdamW's step exactly (eps included), with the
    # same decoupled decay and a changing learning rate.
    b1, b2, wd, eps = 0.9, 0.999, 0.01, 1e-6
    gen = torch.Generator().manual_seed(5)
    p0 = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    grads = [torch.randn(4, 6, generator=gen, dtype=torch.float64) for _ in range(8)]
    lrs = [0.01 * (t + 1) / 8 for t in range(8)]

    theirs = p0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([theirs], lr=lrs[0], betas=(b1, b2), eps=eps, weight_decay=wd)
    ours, state = p0.clone(), tree_map(lambda x: x.double(), adamw_init(p0))
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        opt.param_groups[0]["lr"] = lr
        theirs.grad = g.clone()
        opt.step()
        ours, state = adamw_update(ours, g, state, torch.tensor(lr, dtype=torch.float64),
                                   b1=b1, b2=b2, eps=eps, weight_decay=wd,
                                   bias_correction_step=torch.tensor(t))
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-6, atol=1e-9)
    # ... and the uncorrected (original) step is measurably larger early on.
    plain, _ = adamw_update(p0, grads[0], tree_map(lambda x: x.double(), adamw_init(p0)),
                            torch.tensor(1e-3, dtype=torch.float64), weight_decay=0.0)
    corrected, _ = adamw_update(p0, grads[0], tree_map(lambda x: x.double(), adamw_init(p0)),
                                torch.tensor(1e-3, dtype=torch.float64), weight_decay=0.0,
                                bias_correction_step=torch.tensor(1))
    ratio = (plain - p0).abs().mean() / (corrected - p0).abs().mean()
    assert 3.0 < float(ratio) < 3.2  # (1 - b1) / sqrt(1 - b2) = 3.16 at t = 1


def test_adamw_infinite_bias_correction_step_is_the_original_step():
    """t = inf (how a step whose bias-correction switch is data says "off") gives the
    uncorrected update bit for bit, over several steps with fresh random gradients."""
    params = make_params(seed=int(torch.randint(0, 1000, ())))
    gen = torch.Generator().manual_seed(int(torch.randint(0, 1000, ())))
    pa, sa = params, adamw_init(params)
    pb, sb = params, adamw_init(params)
    for i in range(3):
        g = tree_map(lambda x: torch.randn(x.shape, generator=gen), params)
        lr = torch.tensor(1e-3 * (i + 1))
        pa, sa = adamw_update(pa, g, sa, lr)
        pb, sb = adamw_update(pb, g, sb, lr, bias_correction_step=torch.tensor(float("inf")))
        for a, b in zip(tree_leaves((pa, sa)), tree_leaves((pb, sb))):
            assert torch.equal(a, b)


def test_default_decay_mask():
    mask = flat_dict(default_decay_mask(make_params()))
    assert mask["embeddings.word"] is True  # embedding tables are decayed, as in the original
    assert mask["encoder.layers.1.attention.qkv.weight"] is True
    assert mask["classifier.weight"] is True
    for name in ("embeddings.layer_norm.weight", "embeddings.layer_norm.bias",
                 "encoder.layers.0.layer_norm.weight", "encoder.layers.0.attention.qkv.bias",
                 "encoder.embed_proj.bias", "classifier.bias", "generator_head.output_bias"):
        assert mask[name] is False, name
    hf_style = {"LayerNorm": {"gamma": torch.ones(1)}}
    assert default_decay_mask(hf_style) == {"LayerNorm": {"gamma": False}}


def test_no_decay_when_weight_decay_zero_or_masked():
    p = torch.ones(3)
    g = torch.zeros(3)
    state = adamw_init(p)
    new_p, _ = adamw_update(p, g, state, torch.tensor(0.1), weight_decay=0.0)
    assert torch.equal(new_p, p)
    new_p, _ = adamw_update(p, g, state, torch.tensor(0.1), decay_mask=False)
    assert torch.equal(new_p, p)
    new_p, _ = adamw_update(p, g, state, torch.tensor(0.1), weight_decay=0.5)
    torch.testing.assert_close(new_p, p * (1 - 0.1 * 0.5))


def test_adamw_rejects_mismatched_trees():
    params = {"a": torch.ones(2), "b": torch.ones(2)}
    with pytest.raises(ValueError):
        adamw_update(params, {"a": torch.ones(2)}, adamw_init(params), torch.tensor(0.1))
    with pytest.raises(ValueError):
        adamw_update(params, params, adamw_init(params), torch.tensor(0.1), lr_scale=[1.0])


def test_global_norm_and_clip():
    tree = {"a": torch.tensor([3.0, 0.0]), "b": [torch.tensor([[4.0]]), torch.tensor([12.0])]}
    assert float(global_norm(tree)) == pytest.approx(13.0)
    clipped, norm = clip_by_global_norm(tree, 1.0)
    assert float(norm) == pytest.approx(13.0)
    for c, g in zip(tree_leaves(clipped), tree_leaves(tree)):
        torch.testing.assert_close(c, g / 13.0)
    assert float(global_norm(clipped)) == pytest.approx(1.0)
    # Below the threshold: g * max_norm / max(norm, max_norm) = g exactly.
    same, norm = clip_by_global_norm(tree, 20.0)
    assert all(torch.equal(a, b) for a, b in zip(tree_leaves(same), tree_leaves(tree)))
    # Non-finite norm poisons everything (as tf.clip_by_global_norm does).
    bad, norm = clip_by_global_norm({"a": torch.tensor([float("inf"), 1.0])}, 1.0)
    assert not torch.isfinite(norm) and torch.isnan(bad["a"]).all()


def closed_form_lr(step, peak, total, warmup, end=0.0):
    lr = (peak - end) * (1 - min(step, total) / total) + end
    return lr * (min(1.0, step / warmup) if warmup > 0 else 1.0)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 2_000_000), st.floats(0.1, 1.2), st.floats(0.0, 0.3),
       st.floats(1e-5, 1e-2), st.sampled_from([0.0, 1e-6]))
def test_electra_lr_closed_form(total, at, warm_frac, peak, end):
    warmup = int(total * warm_frac)
    step = int(total * at)
    lr = electra_lr(torch.tensor(step), peak_lr=peak, total_steps=total, warmup_steps=warmup,
                    end_lr=end)
    assert lr.shape == () and lr.dtype == torch.float32
    assert float(lr) == pytest.approx(closed_form_lr(step, peak, total, warmup, end),
                                      rel=1e-5, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2_000_000), st.floats(0.0, 1.2), st.floats(0.0, 0.3),
       st.floats(1e-5, 1e-2))
def test_electra_lr_tensor_settings_match_numbers(total, at, warm_frac, peak):
    """The schedule's settings as 0-d tensors (pretrain.schedule_state) give bit for bit the
    numbers' result, warmup 0 included."""
    warmup = int(total * warm_frac)
    step = torch.tensor(int(total * at))
    want = electra_lr(step, peak_lr=peak, total_steps=total, warmup_steps=warmup)
    got = electra_lr(step, peak_lr=torch.tensor(peak, dtype=torch.float32),
                     total_steps=torch.tensor(float(total)),
                     warmup_steps=torch.tensor(float(warmup)))
    assert got.dtype == torch.float32 and got.shape == ()
    assert float(got) == float(want)


def test_electra_lr_paper_schedule():
    kw = dict(peak_lr=5e-4, total_steps=1_000_000, warmup_steps=10_000)
    assert float(electra_lr(torch.tensor(0), **kw)) == 0.0
    # At the end of warmup the linear decay has already taken 1%.
    assert float(electra_lr(torch.tensor(10_000), **kw)) == pytest.approx(5e-4 * 0.99)
    assert float(electra_lr(torch.tensor(5_000), **kw)) == pytest.approx(5e-4 * 0.995 * 0.5)
    assert float(electra_lr(torch.tensor(2_000_000), **kw)) == 0.0
    no_warmup = dict(kw, warmup_steps=0)
    assert float(electra_lr(torch.tensor(0), **no_warmup)) == pytest.approx(5e-4)


def test_layerwise_lr_scales_closed_form():
    n = 12
    params = make_params(num_layers=n)
    for extra, top in ((True, n + 2), (False, n + 1)):
        scales = flat_dict(layerwise_lr_scales(params, n, 0.8, extra_factor=extra))
        assert scales["classifier.weight"] == 1.0
        assert scales["embeddings.word"] == pytest.approx(0.8**top)
        assert scales["embeddings.layer_norm.bias"] == pytest.approx(0.8**top)
        assert scales["encoder.embed_proj.weight"] == pytest.approx(0.8**top)
        for i in range(n):
            assert scales[f"encoder.layers.{i}.attention.qkv.weight"] == pytest.approx(
                0.8 ** (top - i - 1))
    scales = flat_dict(layerwise_lr_scales(params, n, 0.8))
    assert scales["encoder.layers.11.layer_norm.weight"] == pytest.approx(0.8**2)
    assert scales["encoder.layers.0.layer_norm.weight"] == pytest.approx(0.8**13)
    assert scales["embeddings.word"] == pytest.approx(0.8**14)
    with pytest.raises(ValueError):
        layerwise_lr_scales(params, 6, 0.8)


def test_eager_equals_compiled_and_lr_does_not_recompile():
    params = make_params(num_layers=1)
    mask = default_decay_mask(params)
    scales = layerwise_lr_scales(params, 1, 0.8)
    gen = torch.Generator().manual_seed(3)
    grads = tree_map(lambda p: 3 * torch.randn(p.shape, generator=gen), params)
    state = adamw_init(params)
    state = adamw_update(params, grads, state, torch.tensor(1e-3))[1]  # non-zero moments

    def step(params, grads, state, lr):
        grads, norm = clip_by_global_norm(grads, 1.0)
        new_params, new_state = adamw_update(params, grads, state, lr, decay_mask=mask,
                                             lr_scale=scales)
        return new_params, new_state, norm

    lr = electra_lr(torch.tensor(7), peak_lr=1e-3, total_steps=100, warmup_steps=10)
    eager = step(params, grads, state, lr)
    compiled_step = torch.compile(step, fullgraph=True, dynamic=False)
    compiled = compiled_step(params, grads, state, lr)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-7)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled_step(params, grads, state, lr * 0.5)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_per_leaf_update_equals_the_multi_tensor_one(bias_correction):
    """foreach=False (one op per leaf, what vmap batches) computes the same update and clip
    as the multi-tensor kernels, on fresh random inputs."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ())))
    params = {"w": torch.randn(5, 3, generator=g), "b": torch.randn(3, generator=g),
              "layer_norm": {"gamma": torch.randn(3, generator=g)}}
    grads = tree_map(lambda p: torch.randn(p.shape, generator=g) * 3, params)
    state = adamw_update(params, grads, adamw_init(params), torch.tensor(1e-3))[1]
    step = torch.tensor(7) if bias_correction else None
    kw = dict(decay_mask=default_decay_mask(params), weight_decay=0.01,
              lr_scale={"w": 0.5, "b": 1.0, "layer_norm": {"gamma": 2.0}},
              bias_correction_step=step)
    a = adamw_update(params, grads, state, torch.tensor(3e-4), **kw)
    b = adamw_update(params, grads, state, torch.tensor(3e-4), foreach=False, **kw)
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    (ca, na), (cb, nb) = clip_by_global_norm(grads, 1.0), clip_by_global_norm(grads, 1.0, False)
    torch.testing.assert_close(na, nb)
    for x, y in zip(tree_leaves(ca), tree_leaves(cb)):
        torch.testing.assert_close(x, y)
