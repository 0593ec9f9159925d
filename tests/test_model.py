"""Tests of electra_fn.model: init, tree structure, shapes, invariances, grads, compile."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch._inductor.config
from hypothesis import given, settings
from hypothesis import strategies as st

from electra_fn import model as M
from electra_fn import rng
from electra_fn.config import ModelConfig
from electra_fn.tree import flat_dict, tree_flatten, tree_leaves, tree_map, tree_unflatten

ATOL = 1e-5
seeds = st.integers(0, 2**31 - 1)


def perturbed(params, seed: int, scale: float = 0.05):
    """Params with every leaf moved randomly, so zero biases and unit LayerNorms get tested."""
    g = torch.Generator().manual_seed(seed)
    return tree_map(lambda x: x + scale * torch.randn(x.shape, generator=g), params)


# -- initialisation -------------------------------------------------------------------------
def test_init_is_deterministic(tiny_cfg):
    a, b = M.init_params(tiny_cfg, 3), M.init_params(tiny_cfg, 3)
    assert tree_flatten(a)[1] == tree_flatten(b)[1]
    for (name, x), y in zip(flat_dict(a).items(), tree_leaves(b)):
        assert x.dtype == torch.float32 and torch.equal(x, y), name
    c = flat_dict(M.init_params(tiny_cfg, 4))
    for name, x in flat_dict(a).items():
        random_leaf = x.std() > 0 if x.numel() > 1 else False
        assert torch.equal(x, c[name]) != random_leaf, name  # random leaves differ, rest equal


def test_init_statistics(tiny_cfg):
    """The original's initialisers: TF's truncated_normal (cut at 2 std, so an actual std of
    0.8796 std) and Glorot-uniform for embeddings_project, the 1-unit RTD output and the
    classifier; ``init="normal"`` an untruncated normal everywhere."""
    std = tiny_cfg.initializer_range
    flat = flat_dict(M.init_params(tiny_cfg, 0))
    word = flat["embeddings.word"]
    assert abs(float(word.std()) - 0.8796 * std) < 0.001
    assert float(word.abs().max()) <= 2 * std
    for name in ("discriminator.embed_proj.weight", "discriminator.head.out.weight"):
        w = flat[name]
        limit = (6.0 / sum(w.shape)) ** 0.5
        assert float(w.abs().max()) <= limit and float(w.abs().max()) > 0.8 * limit, name
        assert abs(float(w.std()) - limit / 3 ** 0.5) < 0.25 * limit / 3 ** 0.5, name
    head = M.init_classifier(tiny_cfg, 3, seed=0)["weight"]
    assert float(head.abs().max()) <= (6.0 / sum(head.shape)) ** 0.5
    assert float(head.abs().max()) > 2 * std
    normal = flat_dict(M.init_params(tiny_cfg.replace(init="normal"), 0))
    assert abs(float(normal["embeddings.word"].std()) - std) < 0.002
    assert float(normal["embeddings.word"].abs().max()) > 2 * std
    assert abs(float(normal["discriminator.head.out.weight"].std()) - std) < 0.01
    for name, x in flat.items():
        if name.endswith("layer_norm.weight"):
            assert torch.equal(x, torch.ones_like(x)), name
        elif name.endswith("bias"):
            assert torch.equal(x, torch.zeros_like(x)), name


@settings(max_examples=25, deadline=None)
@given(seed=seeds, embedding=st.sampled_from(["disc", "gen", "other"]))
def test_param_tree_structure(seed, embedding, make_config):
    cfg = make_config(seed, embedding)
    p = M.init_params(cfg, seed)
    V, E, P, T = (cfg.vocab_size, cfg.embedding_size, cfg.max_position_embeddings,
                  cfg.type_vocab_size)
    assert set(p) == {"embeddings", "generator", "discriminator"}
    assert p["embeddings"]["word"].shape == (V, E)
    assert p["embeddings"]["position"].shape == (P, E)
    assert p["embeddings"]["token_type"].shape == (T, E)
    for part, enc in (("generator", cfg.generator), ("discriminator", cfg.discriminator)):
        net = p[part]
        assert ("embed_proj" in net) == (E != enc.hidden_size), part
        if "embed_proj" in net:
            assert net["embed_proj"]["weight"].shape == (enc.hidden_size, E)
        assert len(net["layers"]) == cfg.num_layers
        H, I = enc.hidden_size, enc.intermediate_size
        for layer in net["layers"]:
            assert layer["attention"]["qkv"]["weight"].shape == (3 * H, H)
            assert layer["attention"]["out"]["weight"].shape == (H, H)
            assert layer["ffn"]["in"]["weight"].shape == (I, H)
            assert layer["ffn"]["out"]["weight"].shape == (H, I)
    # The generator head is tied to the word embeddings: no [V, E] matrix of its own.
    head = p["generator"]["head"]
    assert set(head) == {"dense", "layer_norm", "output_bias"}
    assert head["dense"]["weight"].shape == (E, cfg.generator.hidden_size)
    assert head["output_bias"].shape == (V,)
    assert set(flat_dict(head)) == {"dense.weight", "dense.bias", "layer_norm.weight",
                                    "layer_norm.bias", "output_bias"}
    assert set(p["discriminator"]["head"]) == {"dense", "out"}
    assert p["discriminator"]["head"]["out"]["weight"].shape == (1, cfg.hidden_size)


def test_finetune_tree(tiny_cfg):
    p = M.init_params(tiny_cfg, 0)
    cls = M.init_classifier(tiny_cfg, 3, seed=1)
    assert cls["weight"].shape == (3, tiny_cfg.hidden_size) and cls["bias"].shape == (3,)
    ft = M.finetune_params(p, cls)
    assert set(ft) == {"embeddings", "encoder", "classifier"}
    assert "head" not in ft["encoder"]
    assert ft["encoder"]["layers"][0]["ffn"]["in"]["weight"] is \
        p["discriminator"]["layers"][0]["ffn"]["in"]["weight"]
    assert torch.equal(M.init_classifier(tiny_cfg, 3, seed=1)["weight"], cls["weight"])
    with pytest.raises(ValueError, match="num_labels=0"):
        M.init_classifier(tiny_cfg, 0, seed=1)


# -- forward shapes and invariances -------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(seed=seeds, batch=st.integers(1, 3), seq_len=st.integers(1, 12),
       num_pos=st.integers(1, 4), labels=st.integers(1, 3))
def test_output_shapes(seed, batch, seq_len, num_pos, labels, make_config, make_batch):
    cfg = make_config(seed)
    p = M.init_params(cfg, seed)
    ids, tt, mask = make_batch(cfg, batch, seq_len, seed)
    positions = torch.randint(0, seq_len, (batch, num_pos))
    ft = M.finetune_params(p, M.init_classifier(cfg, labels, seed))
    outs = {
        "disc_hidden": (M.discriminator_hidden(p, ids, tt, mask, cfg),
                        (batch, seq_len, cfg.hidden_size)),
        "disc": (M.discriminator_logits(p, ids, tt, mask, cfg), (batch, seq_len)),
        "gen_hidden": (M.generator_hidden(p, ids, tt, mask, cfg),
                       (batch, seq_len, cfg.generator.hidden_size)),
        "gen": (M.generator_logits(p, ids, tt, mask, cfg), (batch, seq_len, cfg.vocab_size)),
        "gen_at": (M.generator_logits(p, ids, tt, mask, cfg, positions),
                   (batch, num_pos, cfg.vocab_size)),
        "cls": (M.classifier_logits(ft, ids, tt, mask, cfg), (batch, labels)),
        "no_mask": (M.discriminator_logits(p, ids, None, None, cfg), (batch, seq_len)),
    }
    for name, (x, shape) in outs.items():
        assert x.shape == shape and x.dtype == torch.float32, name
        assert torch.isfinite(x).all(), name


def test_too_long_sequence_is_rejected(tiny_cfg):
    p = M.init_params(tiny_cfg, 0)
    ids = torch.zeros((1, tiny_cfg.max_position_embeddings + 1), dtype=torch.long)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        M.discriminator_logits(p, ids, None, None, tiny_cfg)


def test_token_types_none_means_zeros(tiny_cfg, make_batch):
    p = perturbed(M.init_params(tiny_cfg, 0), 1)
    ids, _, mask = make_batch(tiny_cfg, 2, 7, 0)
    a = M.discriminator_logits(p, ids, None, mask, tiny_cfg)
    b = M.discriminator_logits(p, ids, torch.zeros_like(ids), mask, tiny_cfg)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@settings(max_examples=10, deadline=None)
@given(seed=seeds, seq_len=st.integers(1, 8), extra=st.integers(1, 5))
def test_padding_invariance(seed, seq_len, extra, make_config, make_batch):
    """Appending padded positions (mask 0) leaves the real positions' outputs unchanged."""
    cfg = make_config(seed, max_position_embeddings=16)
    p = perturbed(M.init_params(cfg, seed), seed)
    ids, tt, mask = make_batch(cfg, 3, seq_len, seed)
    g = torch.Generator().manual_seed(seed + 1)
    pad_ids = torch.randint(0, cfg.vocab_size, (3, extra), generator=g)  # any id: masked
    pad_tt = torch.randint(0, cfg.type_vocab_size, (3, extra), generator=g)
    ids2, tt2 = torch.cat([ids, pad_ids], 1), torch.cat([tt, pad_tt], 1)
    mask2 = torch.cat([mask, torch.zeros_like(pad_ids)], 1)
    real = mask.bool()
    for fn in (M.discriminator_logits, M.generator_logits):
        short = fn(p, ids, tt, mask, cfg)
        long = fn(p, ids2, tt2, mask2, cfg)[:, :seq_len]
        torch.testing.assert_close(long[real], short[real], atol=ATOL, rtol=0)


@settings(max_examples=8, deadline=None)
@given(seed=seeds, seq_len=st.integers(1, 8))
def test_batch_independence(seed, seq_len, make_config, make_batch):
    """A row's outputs do not depend on the other rows; batched == vmap over single rows."""
    cfg = make_config(seed)
    p = perturbed(M.init_params(cfg, seed), seed)
    ids, tt, mask = make_batch(cfg, 4, seq_len, seed)
    batched = M.discriminator_logits(p, ids, tt, mask, cfg)
    gen_batched = M.generator_logits(p, ids, tt, mask, cfg)
    for i in range(4):
        row = M.discriminator_logits(p, ids[i:i + 1], tt[i:i + 1], mask[i:i + 1], cfg)
        torch.testing.assert_close(row[0], batched[i], atol=ATOL, rtol=0)
    # Changing row 0 leaves rows 1.. untouched.
    ids_changed = ids.clone()
    ids_changed[0] = (ids_changed[0] + 1) % cfg.vocab_size
    changed = M.discriminator_logits(p, ids_changed, tt, mask, cfg)
    torch.testing.assert_close(changed[1:], batched[1:], atol=ATOL, rtol=0)

    def single(fn):
        return lambda i, t, m: fn(p, i[None], t[None], m[None], cfg)[0]

    vmapped = torch.func.vmap(single(M.discriminator_logits))(ids, tt, mask)
    torch.testing.assert_close(vmapped, batched, atol=ATOL, rtol=0)
    gen_vmapped = torch.func.vmap(single(M.generator_logits))(ids, tt, mask)
    torch.testing.assert_close(gen_vmapped, gen_batched, atol=ATOL, rtol=0)


def test_generator_logits_at_positions_equal_gathered(tiny_cfg, make_batch):
    p = perturbed(M.init_params(tiny_cfg, 0), 1)
    ids, tt, mask = make_batch(tiny_cfg, 3, 10, 2)
    positions = torch.tensor([[0, 3, 9, 3], [1, 1, 2, 8], [5, 6, 7, 0]])
    full = M.generator_logits(p, ids, tt, mask, tiny_cfg)
    at = M.generator_logits(p, ids, tt, mask, tiny_cfg, positions)
    gathered = torch.gather(full, 1, positions[..., None].expand(-1, -1, tiny_cfg.vocab_size))
    torch.testing.assert_close(at, gathered, atol=1e-6, rtol=1e-6)


# -- dropout ----------------------------------------------------------------------------------
def _all_logits(p, ft, batch, cfg, key):
    ids, tt, mask = batch
    positions = torch.tensor([[1, 4], [0, 2]])
    return (M.discriminator_logits(p, ids, tt, mask, cfg, key=key),
            M.generator_logits(p, ids, tt, mask, cfg, positions, key=key),
            M.classifier_logits(ft, ids, tt, mask, cfg, key=key))


@pytest.mark.parametrize("counter", [False, True], ids=["native", "counter"])
def test_dropout_eval_identity_and_train_determinism(tiny_cfg, make_batch, counter):
    cfg = tiny_cfg.replace(hidden_dropout=0.2, attention_dropout=0.3)
    no_drop = cfg.replace(hidden_dropout=0.0, attention_dropout=0.0)
    p = perturbed(M.init_params(cfg, 0), 1)
    ft = M.finetune_params(p, M.init_classifier(cfg, 3, 2))
    batch = make_batch(cfg, 2, 6, 3)
    k1, k2 = rng.key(1), rng.key(2)
    with rng.counter_based() if counter else contextlib.nullcontext():
        eval_out = _all_logits(p, ft, batch, cfg, None)
        rate0_out = _all_logits(p, ft, batch, no_drop, k1)  # rates 0: the key is ignored
        train_a = _all_logits(p, ft, batch, cfg, k1)
        train_b = _all_logits(p, ft, batch, cfg, k1)
        train_c = _all_logits(p, ft, batch, cfg, k2)
    for e, z, a, b, c in zip(eval_out, rate0_out, train_a, train_b, train_c):
        assert torch.equal(e, z)       # eval mode is dropout-free
        assert torch.equal(a, b)       # same key, same masks
        assert not torch.allclose(a, c, atol=1e-3)  # another key, other masks
        assert not torch.allclose(a, e, atol=1e-3)  # train differs from eval


def test_dropout_rates_are_used(tiny_cfg, make_batch):
    """Only the attention-probability dropout changes the output when it alone is on."""
    p = M.init_params(tiny_cfg, 0)
    batch = make_batch(tiny_cfg, 2, 6, 3)
    only_attn = tiny_cfg.replace(hidden_dropout=0.0, attention_dropout=0.5)
    eval_out = M.discriminator_logits(p, *batch, only_attn)
    train_out = M.discriminator_logits(p, *batch, only_attn, key=rng.key(0))
    assert not torch.allclose(eval_out, train_out, atol=1e-4)


# -- gradients --------------------------------------------------------------------------------
def _loss(p, batch, cfg, weights):
    ids, tt, mask = batch
    w_disc, w_gen = weights
    disc = M.discriminator_logits(p, ids, tt, mask, cfg)
    gen = M.generator_logits(p, ids, tt, mask, cfg)
    return (disc * w_disc).sum() + (gen * w_gen).sum()


def test_grad_through_torch_func(tiny_cfg, make_batch):
    cfg = tiny_cfg
    seq_len = 9
    p = perturbed(M.init_params(cfg, 0), 1)
    batch = make_batch(cfg, 3, seq_len, 4)
    batch[1][0, 4:] = 1  # both token types occur
    g = torch.Generator().manual_seed(5)
    weights = (torch.randn(3, seq_len, generator=g),
               torch.randn(3, seq_len, cfg.vocab_size, generator=g))
    grads, value = torch.func.grad_and_value(_loss)(p, batch, cfg, weights)
    assert torch.allclose(value, _loss(p, batch, cfg, weights))
    assert tree_flatten(grads)[1] == tree_flatten(p)[1]
    flat = flat_dict(grads)
    for name, gx in flat.items():
        assert torch.isfinite(gx).all(), name
        if name == "embeddings.position":
            assert (gx[:seq_len].norm(dim=-1) > 0).all()
            assert torch.equal(gx[seq_len:], torch.zeros_like(gx[seq_len:]))  # unused rows
        else:
            assert gx.norm() > 0, name
    # The same gradients as classic autograd.
    leaves = [x.clone().requires_grad_(True) for x in tree_leaves(p)]
    spec = tree_flatten(p)[1]
    _loss(tree_unflatten(leaves, spec), batch, cfg, weights).backward()
    for (name, gx), leaf in zip(flat.items(), leaves):
        torch.testing.assert_close(gx, leaf.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_grad_of_classifier(tiny_cfg, make_batch):
    p = perturbed(M.init_params(tiny_cfg, 0), 1)
    ft = M.finetune_params(p, M.init_classifier(tiny_cfg, 2, 1))
    batch = make_batch(tiny_cfg, 2, 5, 0)

    def loss(ft_params):
        return M.classifier_logits(ft_params, *batch, tiny_cfg).square().sum()

    grads = torch.func.grad(loss)(ft)
    for name, gx in flat_dict(grads).items():
        if name != "embeddings.position":
            assert torch.isfinite(gx).all() and gx.norm() > 0, name


# -- eager vs compiled ----------------------------------------------------------------------
def test_eager_equals_compiled(make_batch):
    """One small shape; eval and dropout (counter-based RNG, so masks match exactly)."""
    cfg = ModelConfig.from_name("tiny", vocab_size=41, num_layers=1, max_position_embeddings=16,
                                intermediate_size=32, hidden_dropout=0.2, attention_dropout=0.2)
    p = perturbed(M.init_params(cfg, 0), 1)
    ft = M.finetune_params(p, M.init_classifier(cfg, 3, 2))
    batch = make_batch(cfg, 2, 7, 3)

    def all_logits(p, ft, ids, tt, mask, key):
        return _all_logits(p, ft, (ids, tt, mask), cfg, key)

    torch._dynamo.reset()
    compiled = torch.compile(all_logits, fullgraph=True, dynamic=False)  # graph break = error
    for key in (None, rng.key(7), rng.key(8)):  # the second key reuses the graph
        with rng.counter_based():
            eager = all_logits(p, ft, *batch, key)
        # Inductor inlines the (unrealised) integer hash into every consumer and re-evaluates
        # each `x ^ (x >> s)` operand twice while lowering, which costs minutes on 2 CPUs;
        # realising pointwise buffers earlier keeps the same numerics and compiles ~4x faster.
        with torch._inductor.config.patch(realize_opcount_threshold=8):
            got = compiled(p, ft, *batch, key)
        for name, e, c in zip(("disc", "gen", "cls"), eager, got):
            torch.testing.assert_close(c, e, atol=ATOL, rtol=1e-5, msg=f"{name} key={key}")


# -- the ablation switches (electra_fn.study) ---------------------------------------------
def _disc_loss(p, batch, cfg, w):
    return (M.discriminator_logits(p, *batch, cfg) * w).sum()


def _gen_loss(p, batch, cfg, w):
    return (M.generator_logits(p, *batch, cfg) * w).sum()


def test_gdes_off_is_todays_tree_and_on_adds_only_a_zero_delta(tiny_cfg, make_batch):
    shared = M.init_params(tiny_cfg, 3)
    gdes = M.init_params(tiny_cfg.replace(embedding_sharing="gdes"), 3)
    delta = gdes["discriminator"].pop("word_delta")
    assert torch.equal(delta, torch.zeros(tiny_cfg.vocab_size, tiny_cfg.embedding_size))
    assert tree_flatten(gdes)[1] == tree_flatten(shared)[1]
    assert all(torch.equal(a, b) for a, b in zip(tree_leaves(gdes), tree_leaves(shared)))
    assert "word_delta" not in M.init_params(tiny_cfg, 3)["discriminator"]


def test_gdes_stops_the_discriminators_gradient_at_the_shared_table(tiny_cfg, make_batch):
    cfg = tiny_cfg.replace(embedding_sharing="gdes")
    shared = perturbed(M.init_params(tiny_cfg, 0), 1)
    gdes = {**shared, "discriminator": {**shared["discriminator"], "word_delta": torch.zeros(
        cfg.vocab_size, cfg.embedding_size)}}
    batch = make_batch(cfg, 2, 7, 4)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    w_disc = torch.randn(2, 7, generator=g)
    w_gen = torch.randn(2, 7, cfg.vocab_size, generator=g)
    # A zero delta: the same forward.
    assert torch.equal(M.discriminator_logits(gdes, *batch, cfg),
                       M.discriminator_logits(shared, *batch, tiny_cfg))
    g_shared = flat_dict(torch.func.grad(_disc_loss)(shared, batch, tiny_cfg, w_disc))
    g_gdes = flat_dict(torch.func.grad(_disc_loss)(gdes, batch, cfg, w_disc))
    assert g_shared["embeddings.word"].abs().sum() > 0
    assert torch.equal(g_gdes["embeddings.word"], torch.zeros_like(g_gdes["embeddings.word"]))
    torch.testing.assert_close(g_gdes["discriminator.word_delta"], g_shared["embeddings.word"])
    # The generator's gradient is untouched.
    gen_shared = flat_dict(torch.func.grad(_gen_loss)(shared, batch, tiny_cfg, w_gen))
    gen_gdes = flat_dict(torch.func.grad(_gen_loss)(gdes, batch, cfg, w_gen))
    assert torch.equal(gen_gdes["embeddings.word"], gen_shared["embeddings.word"])
    assert torch.equal(gen_gdes["discriminator.word_delta"],
                       torch.zeros_like(gen_gdes["discriminator.word_delta"]))


def test_gdes_fine_tunes_and_exports_the_merged_table(tiny_cfg, make_batch):
    from electra_fn import hf

    cfg = tiny_cfg.replace(embedding_sharing="gdes")
    p = perturbed(M.init_params(cfg, 0), 2)
    merged = p["embeddings"]["word"] + p["discriminator"]["word_delta"]
    ft = M.finetune_params(p, M.init_classifier(cfg, 2, 0))
    assert "word_delta" not in ft["encoder"]
    torch.testing.assert_close(ft["embeddings"]["word"], merged, rtol=0, atol=0)
    sd = hf.to_hf_state_dict(p, "discriminator")
    torch.testing.assert_close(sd["electra.embeddings.word_embeddings.weight"], merged,
                               rtol=0, atol=0)
    gen_sd = hf.to_hf_state_dict(p, "generator")
    assert torch.equal(gen_sd["electra.embeddings.word_embeddings.weight"],
                       p["embeddings"]["word"])


@pytest.mark.parametrize("rates", [(0.0, 0.0), (0.1, 0.1)])
def test_zero_dropout_draws_no_dropout_noise(tiny_cfg, make_batch, monkeypatch, rates):
    cfg = tiny_cfg.replace(hidden_dropout=rates[0], attention_dropout=rates[1])
    drawn = []
    real = rng.uniform
    monkeypatch.setattr(rng, "uniform", lambda key, shape, *a, **k: (
        drawn.append(shape), real(key, shape, *a, **k))[1])
    p = M.init_params(cfg, 0)
    M.discriminator_logits(p, *make_batch(cfg, 2, 6, 1), cfg, key=rng.key(0))
    if rates == (0.0, 0.0):
        assert drawn == []
    else:  # embeddings, and per layer: attention probabilities, attention output, FFN output
        assert len(drawn) == 1 + 3 * cfg.num_layers


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_head_count_sets_the_attention_maps_per_layer(tiny_cfg, make_batch, monkeypatch, heads):
    cfg = tiny_cfg.replace(num_heads=heads, hidden_dropout=0.0, attention_dropout=0.0)
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *a, **k: (seen.append(tuple(q.shape)), real(q, *a, **k))[1])
    M.discriminator_logits(M.init_params(cfg, 0), *make_batch(cfg, 2, 6, 1), cfg)
    assert seen == [(2, heads, 6, cfg.hidden_size // heads)] * cfg.num_layers
