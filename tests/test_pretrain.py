"""The pre-training step: purity, eager == compiled, grad routes, learning, non-finite skips,
masked-only generator logits, eval without dropout, fixed-proposal evaluation."""

from __future__ import annotations


import pytest
import torch
import torch._dynamo.testing

from electra_fn import model, pretrain
from electra_fn import rng as rnglib
from electra_fn.config import CLS_ID, PAD_ID, SEP_ID, ModelConfig, PretrainConfig
from electra_fn.tree import flat_dict, tree_leaves, tree_map

TINY = ModelConfig.from_name("tiny", vocab_size=100, max_position_embeddings=32)
# warmup 0: the first step already moves the params (lr(0) = peak).
CFG = PretrainConfig(model=TINY, seq_len=32, batch_size=2, total_steps=100, warmup_steps=0,
                     learning_rate=1e-3)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: intra-op threads only add contention (10-50x slower steps on a
    busy 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _batch(cfg: PretrainConfig = CFG, seed: int = 0) -> dict:
    """[CLS] tokens [SEP] rows; the second row ends in padding."""
    B, L, V = cfg.batch_size, cfg.seq_len, cfg.model.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.int64)
    mask[1:, L - L // 4:] = 0
    ids[:, 0] = CLS_ID
    lengths = mask.sum(1)
    ids[torch.arange(B), lengths - 1] = SEP_ID
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD_ID))
    types = torch.zeros_like(ids)
    types[:, L // 2:] = 1
    types = types * mask
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def _init(cfg: PretrainConfig = CFG, seed: int = 0):
    params = model.init_params(cfg.model, seed)
    return params, pretrain.init_opt_state(params, cfg)


def _clone(tree):
    return tree_map(lambda x: x.clone(), tree)


def _trees_equal(a, b) -> bool:
    fa, fb = flat_dict(a), flat_dict(b)
    return fa.keys() == fb.keys() and all(
        fa[k].dtype == fb[k].dtype and torch.equal(fa[k], fb[k]) for k in fa)


def _assert_trees_close(a, b, atol: float, rtol: float = 0.0):
    fa, fb = flat_dict(a), flat_dict(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], atol=atol, rtol=rtol, msg=lambda m: f"{k}: {m}")


# -- the pure step --------------------------------------------------------------------------
def test_train_step_is_pure_and_keyed():
    step = pretrain.make_train_step(CFG)
    params, opt = _init()
    batch = _batch()
    before = _clone((params, opt, batch))
    key = pretrain.step_key(0, 0)
    out1 = step(params, opt, batch, key)
    assert _trees_equal((params, opt, batch), before), "train_step mutated its inputs"
    out2 = step(params, opt, batch, key.clone())
    assert _trees_equal(out1, out2), "same key, different result"
    out3 = step(params, opt, batch, pretrain.step_key(0, 1))
    assert not torch.equal(out1[2]["loss"], out3[2]["loss"]), "the key does not matter"
    assert not _trees_equal(out1[0], out3[0])
    assert _trees_equal((params, opt, batch), before)
    new_params, new_opt, metrics = out1
    assert not _trees_equal(new_params, params), "the step did not update the params"
    assert int(new_opt["step"]) == 1 and new_opt["step"].dtype == torch.int64
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in metrics.values())
    assert {"loss", "gen_loss", "gen_accuracy", "disc_loss", "disc_accuracy",
            "disc_replaced_accuracy", "disc_original_accuracy", "grad_norm", "lr",
            "skipped"} <= set(metrics)
    assert float(metrics["skipped"]) == 0.0
    assert float(metrics["masked_tokens"]) <= CFG.batch_size * CFG.max_predictions


def test_step_key_is_a_function_of_seed_and_step():
    assert torch.equal(pretrain.step_key(3, 5), pretrain.step_key(3, torch.tensor(5)))
    keys = {int(pretrain.step_key(s, i)) for s in range(3) for i in range(50)}
    assert len(keys) == 150


def test_bad_grad_route():
    with pytest.raises(ValueError, match="grad_route"):
        pretrain.make_train_step(CFG, grad_route="jvp")


def _compare_eager_compiled(backend: str):
    # One layer: the same code paths, half the tracing time (dynamo traces every layer).
    cfg = CFG.replace(model=TINY.replace(num_layers=1))
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(pretrain.make_train_step(cfg), fullgraph=True, backend=counter)
    eager = pretrain.make_train_step(cfg)
    batch = _batch(cfg)
    pe, oe = _init(cfg)
    pc, oc = _clone((pe, oe))
    for i in range(2):
        key = pretrain.step_key(cfg.seed, i)
        with rnglib.counter_based():  # eager draws the compiled (counter-based) noise
            pe, oe, me = eager(pe, oe, batch, key)
        pc, oc, mc = compiled(pc, oc, batch, key)
        assert me.keys() == mc.keys()
        for k in me:
            torch.testing.assert_close(mc[k], me[k], atol=1e-5, rtol=1e-5, msg=k)
        _assert_trees_close(pc, pe, atol=1e-5)
        _assert_trees_close(oc, oe, atol=1e-5)
    assert int(oc["step"]) == 2
    assert counter.frame_count == 1
    # A later step: a new step counter (so a new lr) and a new key reuse the graph.
    oc_late = dict(oc, step=torch.tensor(cfg.total_steps // 2))
    with torch._dynamo.config.patch(error_on_recompile=True):
        _, _, m_late = compiled(pc, oc_late, batch, pretrain.step_key(cfg.seed, 50))
    assert counter.frame_count == 1, "a new step / lr recompiled the train step"
    assert float(m_late["lr"]) == pytest.approx(cfg.learning_rate / 2, rel=1e-6)
    # A re-fitted (twice as long) schedule is data in the optimizer state: no recompile.
    longer = dict(oc_late, schedule=dict(oc_late["schedule"],
                                         total_steps=torch.tensor(2.0 * cfg.total_steps)))
    with torch._dynamo.config.patch(error_on_recompile=True):
        _, o_long, m_long = compiled(pc, longer, batch, pretrain.step_key(cfg.seed, 51))
    assert counter.frame_count == 1, "a new schedule recompiled the train step"
    assert float(m_long["lr"]) == pytest.approx(0.75 * cfg.learning_rate, rel=1e-6)
    assert float(o_long["schedule"]["total_steps"]) == 2.0 * cfg.total_steps


def test_schedule_state_matches_config_constants():
    """The schedule as optimizer state (init_opt_state(params, cfg)) steps exactly as the
    config's constants do (init_opt_state(params)), over warmup and decay, and is carried
    through unchanged; changing it changes the lr as the closed form says."""
    for corrected in (False, True):
        cfg = CFG.replace(total_steps=10, warmup_steps=3, adam_bias_correction=corrected)
        step = pretrain.make_train_step(cfg)
        batch = _batch(cfg)
        params = model.init_params(cfg.model, 0)
        pa, oa = params, pretrain.init_opt_state(params)
        pb, ob = params, pretrain.init_opt_state(params, cfg)
        assert "schedule" not in oa
        assert {k: float(v) for k, v in ob["schedule"].items()} == {
            "peak_lr": pytest.approx(cfg.learning_rate, rel=1e-7), "total_steps": 10.0,
            "warmup_steps": 3.0, "bias_correction": float(corrected)}
        for i in range(5):
            key = pretrain.step_key(0, i)
            pa, oa, ma = step(pa, oa, batch, key)
            pb, ob, mb = step(pb, ob, batch, key)
            assert float(ma["lr"]) == float(mb["lr"])
            _assert_trees_close(pb, pa, atol=0.0)
            _assert_trees_close(ob["adam"], oa["adam"], atol=0.0)
        assert float(ob["schedule"]["total_steps"]) == 10.0
    ob = dict(ob, schedule=dict(ob["schedule"], total_steps=torch.tensor(20.0),
                                warmup_steps=torch.tensor(0.0)))
    _, _, m = step(pb, ob, batch, pretrain.step_key(0, 5))
    assert float(m["lr"]) == pytest.approx(cfg.learning_rate * 15 / 20, rel=1e-6)


def test_eager_vs_compiled_graph_capture():
    """fullgraph=True capture (dynamo + AOTAutograd) agrees with eager for 2 steps, once."""
    torch._dynamo.reset()
    _compare_eager_compiled("aot_eager")


@pytest.mark.slow  # inductor's cold C++ compile takes minutes on CPU
def test_eager_vs_compiled_inductor():
    torch._dynamo.reset()
    _compare_eager_compiled("inductor")


def test_grad_routes_agree():
    batch = _batch()
    params, opt = _init()
    key = pretrain.step_key(0, 0)
    pf, of, mf = pretrain.make_train_step(CFG, grad_route="func")(params, opt, batch, key)
    pa, oa, ma = pretrain.make_train_step(CFG, grad_route="autograd")(params, opt, batch, key)
    _assert_trees_close(pa, pf, atol=1e-6)
    _assert_trees_close(oa, of, atol=1e-6)
    torch.testing.assert_close(ma["loss"], mf["loss"], atol=1e-6, rtol=0)
    torch.testing.assert_close(ma["grad_norm"], mf["grad_norm"], atol=1e-5, rtol=1e-6)


def test_bias_corrected_step_uses_the_step_count():
    """adam_bias_correction: the first update is the corrected one, 1/3.16 of the original's
    (from the config's constant, and from the switch in the optimizer state alike)."""
    params = model.init_params(CFG.model, 0)
    opt = pretrain.init_opt_state(params)  # no schedule state: the config decides
    batch, key = _batch(), pretrain.step_key(0, 0)
    cfg = CFG.replace(weight_decay=0.0)
    cfg_corr = cfg.replace(adam_bias_correction=True)
    p_plain, o_plain, _ = pretrain.make_train_step(cfg)(params, opt, batch, key)
    p_corr, o_corr, _ = pretrain.make_train_step(cfg_corr)(params, opt, batch, key)
    _assert_trees_close(o_corr["adam"], o_plain["adam"], atol=0.0)  # same moments
    # the switch as data: the optimizer state's schedule wins over the step's config
    p_data, _, _ = pretrain.make_train_step(cfg)(
        params, pretrain.init_opt_state(params, cfg_corr), batch, key)
    _assert_trees_close(p_data, p_corr, atol=0.0)
    # Moved by ~lr * sign(g) * 1 instead of ~lr * sign(g) * (1 - b1) / sqrt(1 - b2) = 3.16.
    d_plain = flat_dict(p_plain)["discriminator.head.out.bias"] - flat_dict(params)[
        "discriminator.head.out.bias"]
    d_corr = flat_dict(p_corr)["discriminator.head.out.bias"] - flat_dict(params)[
        "discriminator.head.out.bias"]
    torch.testing.assert_close(d_plain / d_corr, torch.full_like(d_plain, 0.1 / 0.001 ** 0.5),
                               rtol=1e-3, atol=0)


def test_loss_decreases_on_a_repeated_batch():
    """Overfitting one small batch: generator loss falls, discriminator accuracy rises."""
    cfg = CFG.replace(seq_len=16, learning_rate=2e-3, total_steps=1000)
    step = pretrain.make_train_step(cfg)
    batch = _batch(cfg, seed=1)
    params, opt = _init(cfg)
    gen, disc_loss, disc_acc = [], [], []
    for i in range(40):
        params, opt, m = step(params, opt, batch, pretrain.step_key(0, i))
        assert float(m["skipped"]) == 0.0
        gen.append(float(m["gen_loss"]))
        disc_loss.append(float(m["disc_loss"]))
        disc_acc.append(float(m["disc_accuracy"]))
    first, last = slice(0, 5), slice(-5, None)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(gen[last]) < mean(gen[first]) - 0.5, gen
    # From ln 2 at initialisation to well below it (single steps of a 32-token batch are noisy,
    # so against the first step, not a window that the first few updates already move).
    assert mean(disc_loss[last]) < disc_loss[0] - 0.2, disc_loss
    # From chance at initialisation (~0.5) to at least the majority class (original tokens).
    assert mean(disc_acc[last]) > disc_acc[0] + 0.1, disc_acc
    assert mean(disc_acc[last]) > 0.8, disc_acc


# -- non-finite steps ----------------------------------------------------------------------
def test_non_finite_step_is_skipped():
    step = pretrain.make_train_step(CFG)
    batch = _batch()
    params, opt = _init()
    params, opt, m = step(params, opt, batch, pretrain.step_key(0, 0))  # non-zero moments
    assert float(m["skipped"]) == 0.0
    bad = _clone(params)
    bad["discriminator"]["head"]["out"]["weight"][0, 0] = float("inf")
    before = _clone((bad, opt))
    new_params, new_opt, m = step(bad, opt, batch, pretrain.step_key(0, 1))
    assert not torch.isfinite(m["loss"]) or not torch.isfinite(m["grad_norm"])
    assert float(m["skipped"]) == 1.0
    assert _trees_equal(new_params, before[0]), "params changed on a skipped step"
    assert _trees_equal(new_opt["adam"], before[1]["adam"]), "moments changed on a skipped step"
    assert int(new_opt["step"]) == int(opt["step"]) + 1, "the step counter must still advance"
    # Back to finite params: the next step updates again.
    good_params, _, m = step(params, new_opt, batch, pretrain.step_key(0, 2))
    assert float(m["skipped"]) == 0.0 and not _trees_equal(good_params, params)


def test_nan_param_is_skipped_every_step():
    step = pretrain.make_train_step(CFG)
    params, opt = _init()
    params["embeddings"]["word"][7, 0] = float("nan")
    batch = _batch()
    for i in range(2):
        params, opt, m = step(params, opt, batch, pretrain.step_key(0, i))
        assert float(m["skipped"]) == 1.0
    assert int(opt["step"]) == 2
    assert all(int(torch.count_nonzero(x)) == 0 for x in tree_leaves(opt["adam"]))


# -- the generator only sees masked positions ----------------------------------------------
def test_generator_logits_only_at_masked_positions(monkeypatch):
    seen = []
    real_head = model.generator_head

    def recording_head(params, hidden, cfg):
        seen.append(tuple(hidden.shape))
        out = real_head(params, hidden, cfg)
        seen.append(tuple(out.shape))
        return out

    monkeypatch.setattr(model, "generator_head", recording_head)
    params, opt = _init()
    batch = _batch()
    pretrain.make_train_step(CFG)(params, opt, batch, pretrain.step_key(0, 0))
    B, P = CFG.batch_size, CFG.max_predictions
    assert P < CFG.seq_len // 4
    assert seen == [(B, P, TINY.generator.hidden_size), (B, P, TINY.vocab_size)]


# -- evaluation ----------------------------------------------------------------------------
def test_eval_step_has_no_dropout_and_is_pure():
    params, _ = _init()
    batch = _batch()
    before = _clone(params)
    key = pretrain.step_key(0, 3)
    eval_step = pretrain.make_eval_step(CFG)
    m1 = eval_step(params, batch, key)
    m2 = eval_step(params, batch, key.clone())
    assert _trees_equal(m1, m2)
    assert _trees_equal(params, before), "eval_step changed the params"
    with torch.no_grad():
        _, ref = pretrain.electra_forward(params, batch, key, CFG, train=False)
    assert _trees_equal(m1, ref)
    # With dropout rates at 0, train=True computes the same thing: eval has no dropout at all.
    no_drop = CFG.replace(model=TINY.replace(hidden_dropout=0.0, attention_dropout=0.0))
    with torch.no_grad():
        _, train_no_drop = pretrain.electra_forward(params, batch, key, no_drop, train=True)
        _, train_drop = pretrain.electra_forward(params, batch, key, CFG, train=True)
    assert set(m1) == set(train_no_drop) | {"disc_auc"}  # AUC only when evaluating
    for k in train_no_drop:
        torch.testing.assert_close(m1[k], train_no_drop[k], atol=1e-6, rtol=1e-6, msg=k)
    assert not torch.equal(m1["disc_loss"], train_drop["disc_loss"])  # dropout was on there
    assert all(not v.requires_grad for v in m1.values())


# -- fixed-proposal evaluation -------------------------------------------------------------

def test_proposal_logits():
    V = CFG.model.vocab_size
    special = [PAD_ID, CLS_ID, SEP_ID, 3, 4]
    uni = pretrain.proposal_logits("uniform", V)
    assert uni.shape == (V,) and uni.dtype == torch.float32
    from electra_fn.config import MASK_ID
    assert torch.isinf(uni[[PAD_ID, CLS_ID, SEP_ID, MASK_ID]]).all()
    ordinary = torch.ones(V, dtype=torch.bool)
    ordinary[[PAD_ID, CLS_ID, SEP_ID, MASK_ID]] = False
    assert torch.equal(uni[ordinary], torch.zeros(int(ordinary.sum())))
    counts = torch.arange(V, dtype=torch.float64)
    counts[special] = 1000.0  # counts of special ids are ignored
    gram = pretrain.proposal_logits("unigram", V, counts)
    probs = torch.softmax(gram.double(), 0)
    expected = torch.where(ordinary, counts, torch.zeros_like(counts))
    torch.testing.assert_close(probs, expected / expected.sum(), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="unigram"):
        pretrain.proposal_logits("unigram", V)
    with pytest.raises(ValueError, match="shape"):
        pretrain.proposal_logits("unigram", V, torch.ones(V + 1))
    with pytest.raises(ValueError, match="no weight"):
        pretrain.proposal_logits("unigram", V, torch.zeros(V))
    with pytest.raises(ValueError, match="bigram"):
        pretrain.proposal_logits("bigram", V)


def test_fixed_proposal_batch_masks_like_training_and_samples_the_proposal():
    batch = _batch()
    V = CFG.model.vocab_size
    key = pretrain.step_key(7, 11)
    # point mass on token 42: every changed position holds 42, and the replaced positions are
    # exactly the masked slots whose original token was not 42
    point = torch.full((V,), float("-inf"))
    point[42] = 0.0
    fake = pretrain.fixed_proposal_batch(batch, key, CFG, point)
    mb = pretrain.masked_batch(batch, key, CFG)
    assert torch.equal(fake["positions_BxP"], mb["positions_BxP"])
    real = mb["weights_BxP"] > 0
    rows = torch.arange(CFG.batch_size)[:, None].expand_as(mb["positions_BxP"])
    changed = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    changed[rows[real], mb["positions_BxP"][real]] = True
    assert torch.equal(fake["disc_ids_BxL"][changed], torch.full((int(changed.sum()),), 42))
    assert torch.equal(fake["disc_ids_BxL"][~changed], batch["input_ids"][~changed])
    assert torch.equal(fake["is_replaced_BxL"], changed & (batch["input_ids"] != 42))
    # a two-token proposal with odds 1:3, over many keys: the draws follow it
    two = torch.full((V,), float("-inf"))
    two[10], two[11] = 0.0, float(torch.log(torch.tensor(3.0)))
    n10 = n11 = 0
    for i in range(150):
        f = pretrain.fixed_proposal_batch(batch, pretrain.step_key(1, i), CFG, two)
        m = pretrain.masked_batch(batch, pretrain.step_key(1, i), CFG)
        r = m["weights_BxP"] > 0
        written = f["disc_ids_BxL"].gather(1, m["positions_BxP"])[r]
        n10 += int((written == 10).sum())
        n11 += int((written == 11).sum())
    n = n10 + n11
    assert n > 1000
    assert abs(n11 / n - 0.75) < 4 * (0.75 * 0.25 / n) ** 0.5, (n10, n11)


def test_fixed_proposal_metrics_score_the_discriminator():
    params, _ = _init()
    batch = _batch()
    key = pretrain.step_key(0, 5)
    uni = pretrain.proposal_logits("uniform", CFG.model.vocab_size)
    m = pretrain.fixed_proposal_metrics(params, batch, key, CFG, uni)
    fake = pretrain.fixed_proposal_batch(batch, key, CFG, uni)
    real = batch["attention_mask"].bool()
    frac = fake["is_replaced_BxL"][real].float().mean()
    torch.testing.assert_close(m["replaced_fraction"], frac)
    assert 0 < float(frac) < 0.2
    # a discriminator that calls everything replaced (or everything original)
    for bias, rep, orig in ((30.0, 1.0, 0.0), (-30.0, 0.0, 1.0)):
        p = _clone(params)
        p["discriminator"]["head"]["out"]["bias"] = torch.full_like(
            p["discriminator"]["head"]["out"]["bias"], bias)
        mm = pretrain.fixed_proposal_metrics(p, batch, key, CFG, uni)
        assert float(mm["disc_replaced_accuracy"]) == pytest.approx(rep, abs=1e-5)
        assert float(mm["disc_original_accuracy"]) == pytest.approx(orig, abs=1e-5)
        torch.testing.assert_close(mm["disc_accuracy"], frac if rep else 1 - frac, atol=1e-5,
                                   rtol=0)
    # in the eval step, under the proposal's name, next to the generator's metrics
    eval_step = pretrain.make_eval_step(CFG, proposals={"uniform": uni})
    e = eval_step(params, batch, key)
    base = pretrain.make_eval_step(CFG)(params, batch, key)
    assert _trees_equal({k: v for k, v in e.items() if "/" not in k}, base)
    assert _trees_equal({k.split("/")[1]: v for k, v in e.items() if "/" in k}, m)


def test_grad_route_per_mode():
    """Compiled steps need torch.func (one graph); eager steps take autograd (less host work
    on CUDA, less time on CPU); the same on every device."""
    from electra_fn.pretrain import grad_route_for

    assert grad_route_for(compiled=True) == "func"
    assert grad_route_for(compiled=False) == "autograd"




def test_special_ids_come_from_the_config_as_in_a_wordpiece_vocabulary():
    """A BERT WordPiece layout ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103): as the
    original's candidates mask, [CLS]/[SEP]/[PAD] are never masked, masked slots take 103, and
    the fixed proposals never offer the specials."""
    cfg = CFG.replace(model=TINY.replace(vocab_size=200, max_position_embeddings=32),
                      cls_id=101, sep_id=102, mask_id=103)
    g = torch.Generator().manual_seed(11)
    B, L = 4, 32
    ids = torch.randint(110, 200, (B, L), generator=g)
    ids[:, 0], ids[:, L // 2], ids[:, -1] = 101, 102, 102
    ids[1, 20:] = 0
    mask = (ids != 0).long()
    batch = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask}
    for i in range(5):
        mb = pretrain.masked_batch(batch, pretrain.step_key(4, i), cfg)
        pos = mb["positions_BxP"][mb["weights_BxP"] > 0]
        rows = torch.arange(B)[:, None].expand_as(mb["positions_BxP"])[mb["weights_BxP"] > 0]
        assert not bool(torch.isin(ids[rows, pos], torch.tensor([0, 101, 102, 103])).any())
        changed = mb["masked_ids_BxL"] != ids
        assert bool((mb["masked_ids_BxL"][changed] == 103).all()) and bool(changed.any())
    with pytest.raises(ValueError, match="four different ids"):
        cfg.replace(mask_id=101)
    logits_V = pretrain.proposal_logits("uniform", 200, special_ids=cfg.special_ids)
    assert torch.isinf(logits_V[[0, 101, 102, 103]]).all() and torch.isfinite(logits_V[104:]).all()
    params, opt = _init(cfg)
    _, _, m = pretrain.make_train_step(cfg)(params, opt, batch, pretrain.step_key(0, 0))
    assert torch.isfinite(m["loss"])
