"""Parity with Hugging Face ``transformers`` ELECTRA, and the checkpoint import/export.

Reference models: ``ElectraForPreTraining`` (discriminator) and ``ElectraForMaskedLM``
(generator), float32, eval mode, eager attention, every parameter randomised.
"""

from __future__ import annotations

import warnings

import orjson
import pytest
import torch
from safetensors.torch import load_file, save_file

from electra_fn import hf
from electra_fn import model as M
from electra_fn.config import ModelConfig
from electra_fn.tree import flat_dict, tree_count, tree_map

transformers = pytest.importorskip("transformers")
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining  # noqa: E402

HF_CLASS = {"discriminator": ElectraForPreTraining, "generator": ElectraForMaskedLM}
OURS = {"discriminator": (M.discriminator_hidden, M.discriminator_logits),
        "generator": (M.generator_hidden, M.generator_logits)}
# (seed, embedding size: = discriminator hidden / = generator hidden / neither)
PARITY_CASES = [(11, "disc"), (12, "gen"), (13, "other"), (14, "other"), (15, "disc"),
                (16, "gen")]


def electra_config(cfg: ModelConfig, part: str) -> ElectraConfig:
    """The transformers config of one network, built by hand (independent of hf._hf_config)."""
    enc = cfg.discriminator if part == "discriminator" else cfg.generator
    return ElectraConfig(
        vocab_size=cfg.vocab_size, embedding_size=cfg.embedding_size,
        hidden_size=enc.hidden_size, num_hidden_layers=enc.num_layers,
        num_attention_heads=enc.num_heads, intermediate_size=enc.intermediate_size,
        hidden_act="gelu", hidden_dropout_prob=cfg.hidden_dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps,
        initializer_range=cfg.initializer_range, pad_token_id=cfg.pad_token_id,
        attn_implementation="eager")


@torch.no_grad()
def randomise_(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        p.copy_(scale * torch.randn(p.shape, generator=g) + (1.0 if "LayerNorm.weight" in name
                                                              else 0.0))
    return module


def hf_model(cfg: ModelConfig, part: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomise_(HF_CLASS[part](electra_config(cfg, part)), seed).eval()


def both_token_types(batch):
    ids, tt, mask = batch
    tt = tt.clone()
    tt[:, tt.shape[1] // 2:] = 1
    return ids, tt * mask, mask


def hf_outputs(model, batch):
    ids, tt, mask = batch
    hidden = model.electra(input_ids=ids, attention_mask=mask,
                           token_type_ids=tt).last_hidden_state
    logits = model(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
    return hidden, logits


def our_outputs(params, part, batch, cfg):
    hidden_fn, logits_fn = OURS[part]
    return hidden_fn(params, *batch, cfg), logits_fn(params, *batch, cfg)


def assert_close(ours, theirs, what):
    # max-abs <= 1e-5, relative 1e-5 where values are large.
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5, msg=lambda m: f"{what}: {m}")


def norm_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-12))


# -- HF -> ours: forward and gradient parity --------------------------------------------------
@pytest.mark.parametrize("part", ["discriminator", "generator"])
@pytest.mark.parametrize("seed, embedding", PARITY_CASES)
def test_forward_and_grad_parity(seed, embedding, part, make_config, make_batch):
    cfg = make_config(seed, embedding)
    model = hf_model(cfg, part, seed)
    params = hf.from_hf_state_dict(model.state_dict(), cfg, part)
    assert tree_count(params) == sum(p.numel() for p in model.parameters())  # tied head once
    batch = both_token_types(make_batch(cfg, 3, min(9, cfg.max_position_embeddings), seed))

    with torch.no_grad():
        theirs = hf_outputs(model, batch)
    ours = our_outputs(params, part, batch, cfg)
    assert_close(ours[0], theirs[0], f"{part} hidden")
    assert_close(ours[1], theirs[1], f"{part} logits")

    # Gradients of a scalar loss w.r.t. every parameter. Padded positions get weight 0, as
    # in a real loss (transformers' padding_idx would otherwise zero the pad row's gradient).
    g = torch.Generator().manual_seed(seed + 100)
    real = batch[2].float()
    w_hidden = torch.randn(theirs[0].shape, generator=g) * real[..., None]
    w_logits = torch.randn(theirs[1].shape, generator=g) * (
        real if part == "discriminator" else real[..., None])

    def our_loss(p):
        hidden, logits = our_outputs(p, part, batch, cfg)
        return (hidden * w_hidden).sum() + (logits * w_logits).sum()

    model.zero_grad()
    hidden, logits = hf_outputs(model, batch)
    ((hidden * w_hidden).sum() + (logits * w_logits).sum()).backward()
    our_grads = hf.to_hf_state_dict(torch.func.grad(our_loss)(params), part)
    named = dict(model.named_parameters())
    assert set(named) <= set(our_grads)
    total = torch.cat([p.grad.flatten() for p in named.values()]).norm()
    for name, p in named.items():
        assert p.grad is not None, name
        if name.endswith("attention.self.key.bias"):
            # Softmax ignores a constant added to every score, so q.b_k has no effect: the
            # true gradient is 0 and both sides hold rounding noise only.
            assert our_grads[name].norm() < 1e-6 * total and p.grad.norm() < 1e-6 * total
            continue
        assert norm_rel_err(our_grads[name], p.grad) <= 1e-4, name
    # Concatenated q/k/v gradients match our fused qkv gradient too.
    qkv = torch.cat([named[f"electra.encoder.layer.0.attention.self.{n}.weight"].grad
                     for n in ("query", "key", "value")])
    fused = torch.func.grad(our_loss)(params)[part]["layers"][0]["attention"]["qkv"]["weight"]
    assert norm_rel_err(fused, qkv) <= 1e-4


def test_state_dict_conversion_round_trip(tiny_cfg):
    params = M.init_params(tiny_cfg, 0)
    for part in ("discriminator", "generator"):
        back = hf.from_hf_state_dict(hf.to_hf_state_dict(params, part), tiny_cfg, part)
        ours = {k: params[k] for k in ("embeddings", part)}
        assert flat_dict(back).keys() == flat_dict(ours).keys()
        for name, x in flat_dict(back).items():
            assert torch.equal(x, flat_dict(ours)[name]), name
    with pytest.raises(ValueError, match="part='pooler'"):
        hf.to_hf_state_dict(params, "pooler")


def test_untied_generator_head_is_rejected(tiny_cfg):
    sd = hf.to_hf_state_dict(M.init_params(tiny_cfg, 0), "generator")
    sd["generator_lm_head.weight"] = sd["generator_lm_head.weight"] + 1.0
    with pytest.raises(hf.CheckpointError, match="generator_lm_head.weight"):
        hf.from_hf_state_dict(sd, tiny_cfg, "generator")


# -- ours -> HF: save_hf, from_pretrained, load_hf ----------------------------------------------
def random_params(cfg: ModelConfig, seed: int):
    g = torch.Generator().manual_seed(seed)
    return tree_map(lambda x: x + 0.05 * torch.randn(x.shape, generator=g),
                    M.init_params(cfg, seed))


@pytest.mark.parametrize("seed, embedding", [(21, "other"), (22, "disc"), (23, "gen")])
def test_save_hf_loads_in_transformers(seed, embedding, make_config, make_batch, tmp_path):
    cfg = make_config(seed, embedding)
    params = random_params(cfg, seed)
    written = hf.save_hf(params, cfg, tmp_path / "export", extra_files={"vocab.txt": b"x\n"})
    assert set(written) == {"discriminator", "generator"}
    batch = both_token_types(make_batch(cfg, 2, 8, seed))
    for part, directory in written.items():
        assert (directory / "vocab.txt").read_bytes() == b"x\n"
        model, info = HF_CLASS[part].from_pretrained(directory, output_loading_info=True,
                                                     attn_implementation="eager")
        assert not info["missing_keys"] and not info["unexpected_keys"], (part, info)
        assert not info.get("mismatched_keys"), (part, info)
        model.eval()
        with torch.no_grad():
            theirs = hf_outputs(model, batch)
        ours = our_outputs(params, part, batch, cfg)
        assert_close(ours[0], theirs[0], f"{part} hidden")
        assert_close(ours[1], theirs[1], f"{part} logits")
    # No temporary directories are left behind.
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["discriminator",
                                                                     "generator"]


@pytest.mark.parametrize("seed, embedding", [(31, "other"), (32, "disc"), (33, "gen"),
                                             (34, "other")])
def test_load_hf_round_trip(seed, embedding, make_config, tmp_path):
    cfg = make_config(seed, embedding)
    params = random_params(cfg, seed)
    hf.save_hf(params, cfg, tmp_path)
    hf.save_hf(params, cfg, tmp_path)  # overwriting an export is fine
    loaded, cfg2 = hf.load_hf(tmp_path)
    assert cfg2 == cfg
    a, b = flat_dict(params), flat_dict(loaded)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The discriminator alone (a single directory) loads too.
    disc, _ = hf.load_hf(tmp_path / "discriminator", config=cfg)
    assert set(disc) == {"embeddings", "discriminator"}


def test_load_hf_round_trip_keeps_a_rounded_generator_multiplier(tmp_path):
    """hidden 18 at 1/4 gives a generator of hidden 4 (round(4.5)), FFN 10: the size ratio
    4/18 is not the multiplier and would predict FFN 9, so the loader must keep the exact one."""
    cfg = ModelConfig(vocab_size=30, embedding_size=8, hidden_size=18, num_layers=1,
                      num_heads=2, intermediate_size=40, generator_multiplier=0.25,
                      max_position_embeddings=16)
    assert (cfg.generator.hidden_size, cfg.generator.intermediate_size) == (4, 10)
    hf.save_hf(random_params(cfg, 0), cfg, tmp_path)
    _, cfg2 = hf.load_hf(tmp_path)
    assert cfg2 == cfg


def test_load_from_pytorch_model_bin(tiny_cfg, make_batch, tmp_path):
    model = hf_model(tiny_cfg, "discriminator", 5)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path)
    params, cfg = hf.load_hf(tmp_path)
    for f in ("vocab_size", "embedding_size", "hidden_size", "num_layers", "num_heads",
              "intermediate_size", "max_position_embeddings", "type_vocab_size"):
        assert getattr(cfg, f) == getattr(tiny_cfg, f), f
    batch = both_token_types(make_batch(cfg, 2, 7, 0))
    with torch.no_grad():
        theirs = hf_outputs(model, batch)
    assert_close(M.discriminator_logits(params, *batch, cfg), theirs[1], "logits")


def test_load_hf_saved_dirs_and_shared_embeddings(tiny_cfg, make_batch, tmp_path):
    disc = hf_model(tiny_cfg, "discriminator", 1)
    gen = hf_model(tiny_cfg, "generator", 2)
    with torch.no_grad():  # the generator shares the discriminator's embeddings
        for name, p in disc.electra.embeddings.named_parameters():
            dict(gen.electra.embeddings.named_parameters())[name].copy_(p)
    disc.save_pretrained(tmp_path / "d")
    gen.save_pretrained(tmp_path / "g")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # equal embeddings: no warning
        params, cfg = hf.load_hf(tmp_path / "d", generator=tmp_path / "g")
    assert cfg.generator == tiny_cfg.generator and cfg.discriminator == tiny_cfg.discriminator
    assert set(params) == {"embeddings", "discriminator", "generator"}
    batch = both_token_types(make_batch(cfg, 2, 7, 0))
    with torch.no_grad():
        d_theirs, g_theirs = hf_outputs(disc, batch), hf_outputs(gen, batch)
    assert_close(M.discriminator_logits(params, *batch, cfg), d_theirs[1], "disc logits")
    assert_close(M.generator_logits(params, *batch, cfg), g_theirs[1], "gen logits")
    # One embedding table serves both networks (pre-training trains it from both losses).
    word = params["embeddings"]["word"]
    assert torch.equal(word, disc.electra.embeddings.word_embeddings.weight.detach())
    grads = torch.func.grad(lambda p: M.generator_logits(p, *batch, cfg).sum()
                            + M.discriminator_logits(p, *batch, cfg).sum())(params)
    assert grads["embeddings"]["word"].norm() > 0

    # Different embeddings: a warning, and the discriminator's table is used.
    gen2 = hf_model(tiny_cfg, "generator", 3)
    gen2.save_pretrained(tmp_path / "g2")
    with pytest.warns(UserWarning, match="differ from the discriminator") as caught:
        params2, _ = hf.load_hf(tmp_path / "d", generator=tmp_path / "g2")
    assert any("embeddings.word differ" in str(w.message) for w in caught)
    assert torch.equal(params2["embeddings"]["word"], word)

    # A generator directory given as the discriminator is refused.
    with pytest.raises(hf.CheckpointError, match="generator"):
        hf.load_hf(tmp_path / "g")


# -- error cases --------------------------------------------------------------------------------
@pytest.fixture
def exported(tiny_cfg, tmp_path):
    hf.save_hf(random_params(tiny_cfg, 0), tiny_cfg, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _edit_json(path, **changes):
    d = orjson.loads(path.read_bytes()) | changes
    path.write_bytes(orjson.dumps(d))


def test_wrong_vocab_names_the_tensor(exported, tiny_cfg):
    _edit_json(exported / "discriminator" / "config.json", vocab_size=tiny_cfg.vocab_size + 7)
    with pytest.raises(hf.CheckpointError, match="word_embeddings.weight") as e:
        hf.load_hf(exported / "discriminator")
    assert str(tiny_cfg.vocab_size + 7) in str(e.value)


def test_missing_tensor_is_named(exported):
    st = exported / "discriminator" / "model.safetensors"
    sd = load_file(str(st))
    name = "electra.encoder.layer.1.attention.self.key.weight"
    del sd[name]
    save_file(sd, str(st))
    with pytest.raises(hf.CheckpointError, match="encoder.layer.1.attention.self.key.weight"):
        hf.load_hf(exported)


def test_config_mismatch_names_the_field(exported, tiny_cfg):
    with pytest.raises(hf.CheckpointError, match="hidden_size"):
        hf.load_hf(exported, config=tiny_cfg.replace(hidden_size=32))
    with pytest.raises(hf.CheckpointError, match="num_layers"):
        hf.load_hf(exported, config=tiny_cfg.replace(num_layers=3))
    hf.load_hf(exported, config=tiny_cfg.replace(hidden_dropout=0.0))  # sizes equal: fine


def test_unsupported_config_is_named(exported):
    _edit_json(exported / "discriminator" / "config.json", hidden_act="relu")
    with pytest.raises(hf.CheckpointError, match="hidden_act"):
        hf.load_hf(exported)


def test_nonexistent_directory(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        hf.load_hf(missing)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_bytes(b"{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf.load_hf(tmp_path / "empty")
