"""The context diagnostics and the learning test of the discriminator. (The synthetic corpora
themselves, electra_fn.data.synthetic: tests/test_synthetic.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from electra_fn import diagnostics as D
from electra_fn import model, pretrain
from electra_fn import rng as rnglib
from electra_fn.config import CLS_ID, PAD_ID, SEP_ID, ModelConfig, PretrainConfig
from electra_fn.data import synthetic


# -- the shuffle ----------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(4, 24), st.integers(0, 2**31), st.data())
def test_shuffle_permutes_ordinary_tokens_and_keeps_specials_in_place(B, L, seed, data):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (B, L), generator=g)
    ids[:, 0] = CLS_ID
    for b in range(B):
        n_pad = data.draw(st.integers(0, L - 3))
        ids[b, L - n_pad:] = PAD_ID
        ids[b, L - n_pad - 1] = SEP_ID
    shuffled, to, frm, valid = D.shuffle_tokens(ids, rnglib.key(seed))
    special = ids < 5
    assert torch.equal(shuffled[special], ids[special])
    for b in range(B):
        assert sorted(shuffled[b].tolist()) == sorted(ids[b].tolist())
        v = valid[b]
        assert int(v.sum()) == int((~special[b]).sum())
        assert torch.equal(shuffled[b, to[b, v]], ids[b, frm[b, v]])
        assert not special[b, to[b, v]].any() and not special[b, frm[b, v]].any()
    again = D.shuffle_tokens(ids, rnglib.key(seed))[0]
    assert torch.equal(shuffled, again)


def _tiny(**fields) -> ModelConfig:
    return ModelConfig.from_name("tiny", vocab_size=60, max_position_embeddings=32, **fields)


def test_shuffle_shift_is_zero_for_order_blind_discriminators_only():
    """Without position embeddings a discriminator cannot see order (attending to itself
    only, or to the whole bag of words): its logits move with their tokens and the shift is
    0. With positions and context, order changes the logits."""
    ids = synthetic.topic_corpus(8, 24, 48, seed=1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    key = rnglib.key(5)
    for context in ("self", "full"):
        cfg = _tiny(disc_context=context)
        params = model.init_params(cfg, seed=0)
        params["embeddings"]["position"] = torch.zeros_like(params["embeddings"]["position"])
        m = D.shuffled_context_metrics(params, batch, key, cfg)
        assert float(m["shuffle/logit_shift"]) < 1e-5
        assert float(m["shuffle/logit_spread"]) > 1e-3
        assert float(m["shuffle/p_natural"]) == pytest.approx(float(m["shuffle/p_shuffled"]),
                                                             abs=1e-6)
    cfg = _tiny()
    m = D.shuffled_context_metrics(model.init_params(cfg, seed=0), batch, key, cfg)
    assert float(m["shuffle/logit_shift"]) > 1e-3


def test_self_only_attention_sees_no_other_token():
    cfg = _tiny(disc_context="self")
    params = model.init_params(cfg, seed=0)
    ids = torch.randint(5, 60, (2, 12))
    mask = torch.ones_like(ids)
    other = ids.clone()
    other[:, 7] = (ids[:, 7] - 5 + 1) % 55 + 5
    a = model.discriminator_logits(params, ids, None, mask, cfg)
    b = model.discriminator_logits(params, other, None, mask, cfg)
    assert torch.equal(torch.cat([a[:, :7], a[:, 8:]], 1), torch.cat([b[:, :7], b[:, 8:]], 1))
    assert not torch.equal(a[:, 7], b[:, 7])
    full = _tiny()
    c = model.discriminator_logits(params, other, None, mask, full)
    d = model.discriminator_logits(params, ids, None, mask, full)
    assert not torch.allclose(c[:, :7], d[:, :7])


# -- the AUC breakdown ---------------------------------------------------------------------
@pytest.mark.parametrize("masking", ["original", "distinct"])
def test_breakdown_groups_partition_the_replacements_and_match_sklearn(masking):
    cfg = PretrainConfig(model=_tiny(), seq_len=32, batch_size=4, masking=masking)
    params = model.init_params(cfg.model, seed=2)
    ids = synthetic.topic_corpus(6, 32, 48, seed=4)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    key = rnglib.key(9)
    counts = torch.arange(60, 0, -1)
    rank = D.frequency_rank_V(counts)
    assert torch.equal(rank, torch.arange(60))
    m = D.breakdown_metrics(params, batch, key, cfg, rank)
    _, base = pretrain.electra_forward(params, batch, key, cfg, train=False)
    total = float(base["replaced_fraction"])
    assert total > 0
    assert float(m["top1/replaced_fraction"] + m["not_top1/replaced_fraction"]) == \
        pytest.approx(total, abs=1e-6)
    freq = sum(float(m[f"freq{i}/replaced_fraction"]) for i in range(4))
    assert freq == pytest.approx(total, abs=1e-6)
    # The top-1 group's AUC, recomputed with sklearn from the same logits.
    fake = pretrain.replaced_batch(params, batch, key, cfg, train=False)
    logits = model.discriminator_logits(params, fake["disc_ids_BxL"], None,
                                        batch["attention_mask"], cfg.model)
    top1 = fake["gen_logits_BxPxV"].argmax(-1) == fake["sampled_BxP"]
    pos = torch.zeros_like(ids, dtype=torch.bool)
    for b in range(ids.shape[0]):  # each position's last writing slot decides its group
        for j in range(top1.shape[1]):
            if fake["weights_BxP"][b, j] > 0:
                pos[b, fake["positions_BxP"][b, j]] = bool(top1[b, j])
    pos &= fake["is_replaced_BxL"]
    rows = pos | ~fake["is_replaced_BxL"]
    if pos.any():
        want = roc_auc_score(pos[rows].numpy(), logits[rows].numpy())
        assert float(m["top1/disc_auc"]) == pytest.approx(want, abs=1e-6)


# -- the learning test ---------------------------------------------------------------------
def _probe(task: str, steps: int, **over) -> list[dict]:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = D.probe_config(steps=steps, **over)
    return D.context_probe(task, cfg, eval_every=100, seed=0, num_eval=128)


def test_discriminator_learns_bag_of_words_context_and_not_without_it():
    """A replaced token in the topic corpus is visible only from the other tokens (every
    token is equally frequent). With context the real train_step must detect uniform
    replacements (AUC >= 0.9) and, while the generator still samples off-topic, its
    replacements (best AUC >= 0.8); a discriminator that sees only each token itself must
    stay near chance on both."""
    full = _probe("topic", 300)
    assert full[-1]["uniform/disc_auc"] >= 0.9
    assert max(r["disc_auc"] for r in full) >= 0.8
    assert full[0]["uniform/disc_auc"] < 0.6
    cut = _probe("topic", 300, model={"disc_context": "self"})
    assert max(r["uniform/disc_auc"] for r in cut) < 0.62
    assert max(r["disc_auc"] for r in cut) < 0.62


def test_gen_weight_zero_leaves_the_generator_encoder_untouched():
    cfg = D.probe_config(steps=3, gen_weight=0.0, weight_decay=0.0)
    params = model.init_params(cfg.model, seed=0)
    ids = synthetic.topic_corpus(4, 32, 64, seed=0)
    step = pretrain.make_train_step(cfg, grad_route="autograd")
    new, opt_state = params, pretrain.init_opt_state(params, cfg)
    for i in range(2):  # the first step's learning rate is 0 (warmup)
        new, opt_state, _ = step(new, opt_state,
                                 {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                                 pretrain.step_key(0, i))
    g0, g1 = params["generator"]["layers"][0], new["generator"]["layers"][0]
    assert torch.equal(g0["ffn"]["in"]["weight"], g1["ffn"]["in"]["weight"])
    d0, d1 = params["discriminator"]["layers"][0], new["discriminator"]["layers"][0]
    assert not torch.equal(d0["ffn"]["in"]["weight"], d1["ffn"]["in"]["weight"])
    assert np.isfinite(float(new["embeddings"]["word"].sum()))


# -- the recipe switches the probe measures ------------------------------------------------
def _batch(seed: int = 0) -> dict:
    ids = synthetic.topic_corpus(4, 32, 64, seed=seed)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_mix_fraction_one_draws_every_replacement_from_the_proposal_in_training_only():
    cfg = D.probe_config(steps=3, mix_fraction=1.0)
    params = model.init_params(cfg.model, seed=0)
    only_V = torch.full((cfg.model.vocab_size,), float("-inf"))
    only_V[17] = 0.0
    key = rnglib.key(3)
    fake = pretrain.replaced_batch(params, _batch(), key, cfg, train=True, mix_logits_V=only_V)
    real = fake["weights_BxP"] > 0
    assert real.any() and (fake["sampled_BxP"][real] == 17).all()
    assert (fake["disc_ids_BxL"].gather(1, fake["positions_BxP"])[real] == 17).all()
    # Evaluation scores the generator's own samples, as without mixing.
    ev = pretrain.replaced_batch(params, _batch(), key, cfg, train=False, mix_logits_V=only_V)
    plain = pretrain.replaced_batch(params, _batch(), key, cfg.replace(mix_fraction=0.0),
                                    train=False)
    assert torch.equal(ev["sampled_BxP"], plain["sampled_BxP"])
    with pytest.raises(ValueError, match="mix_logits_V"):
        pretrain.make_train_step(cfg)


def test_mix_fraction_draws_about_that_share_from_the_proposal():
    cfg = D.probe_config(steps=3, mix_fraction=0.3, batch_size=64)
    params = model.init_params(cfg.model, seed=0)
    only_V = torch.full((cfg.model.vocab_size,), float("-inf"))
    only_V[3] = 0.0  # a token the generator hardly ever samples
    ids = synthetic.topic_corpus(64, 32, 64, seed=1)
    fake = pretrain.replaced_batch(params, {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                                   rnglib.key(4), cfg, train=True, mix_logits_V=only_V)
    real = fake["weights_BxP"] > 0
    gen_top = fake["gen_logits_BxPxV"].argmax(-1)
    from_proposal = (fake["sampled_BxP"] == 3) & (gen_top != 3)
    share = float(from_proposal[real].float().mean())
    assert 0.2 < share < 0.4


def test_gen_delay_keeps_the_generator_still_until_its_step():
    cfg = D.probe_config(steps=10, gen_delay_steps=3, weight_decay=0.0)
    params = model.init_params(cfg.model, seed=0)
    step = pretrain.make_train_step(cfg, grad_route="autograd")
    opt_state = pretrain.init_opt_state(params, cfg)
    w = lambda p: p["generator"]["layers"][0]["ffn"]["in"]["weight"]  # noqa: E731
    new = params
    for i in range(3):
        new, opt_state, _ = step(new, opt_state, _batch(i), pretrain.step_key(0, i))
    assert torch.equal(w(new), w(params))
    new, opt_state, _ = step(new, opt_state, _batch(3), pretrain.step_key(0, 3))
    assert not torch.equal(w(new), w(params))


def test_context_metrics_in_the_eval_step_equal_the_standalone_diagnostics():
    cfg = PretrainConfig(model=_tiny(), seq_len=32, batch_size=4)
    params = model.init_params(cfg.model, seed=1)
    ids = synthetic.topic_corpus(4, 32, 48, seed=2)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    key = rnglib.key(11)
    rank = D.frequency_rank_V(torch.arange(60, 0, -1))
    step = pretrain.make_eval_step(cfg, extra_metrics=D.context_metrics(cfg, rank))
    got = step(params, batch, key)
    want = {**D.shuffled_context_metrics(params, batch, key, cfg.model),
            **D.breakdown_metrics(params, batch, key, cfg, rank)}
    plain = pretrain.make_eval_step(cfg)(params, batch, key)
    assert set(got) == set(plain) | set(want)
    for k, v in want.items():
        assert float(got[k]) == pytest.approx(float(v), abs=1e-6), k
