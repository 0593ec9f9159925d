"""Parity with Hugging Face ``transformers`` ELECTRA, and the checkpoint import/export.

Reference models: ``ElectraForPreTraining`` (discriminator) and ``ElectraForMaskedLM``
(generator), float32, eval mode, eager attention, every parameter randomised. Exports are read
back through the real ``transformers`` classes: ``AutoTokenizer`` (same ids as ours),
``pipeline("fill-mask")``, ``AutoModel`` and ``ElectraForSequenceClassification``.
"""

from __future__ import annotations

import sys
import unicodedata
import warnings
from pathlib import Path

import orjson
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from electra_fn import finetune as FT
from electra_fn import hf
from electra_fn import model as M
from electra_fn.config import (CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID,
                               ModelConfig)
from electra_fn.data.glue import Example, encode_examples
from electra_fn.data.tokenizer import is_own_config, load_tokenizer, train_tokenizer
from electra_fn.finetune import load_finetune_inputs
from electra_fn.tree import flat_dict, tree_count, tree_map

transformers = pytest.importorskip("transformers")
from transformers import (AutoModel, AutoTokenizer, ElectraConfig,  # noqa: E402
                          ElectraForMaskedLM, ElectraForPreTraining)

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


# -- exports with a tokenizer: AutoTokenizer, pipeline, classifiers -----------------------------
CORPUS = Path(__file__).parent / "fixtures" / "corpus"
CORPUS_WORDS = sorted({w for p in sorted(CORPUS.rglob("*.txt"))
                       for w in p.read_text(encoding="utf-8").split()})
SPECIAL_IDS = {"pad_token_id": PAD_ID, "unk_token_id": UNK_ID, "cls_token_id": CLS_ID,
               "sep_token_id": SEP_ID, "mask_token_id": MASK_ID}


@pytest.fixture(scope="module", params=[("unigram", True), ("bpe", False)],
                ids=["unigram-uncased", "bpe-cased"])
def sp_export(request, tmp_path_factory):
    """A tiny sentencepiece tokenizer, random tiny params, and their save_hf export."""
    model_type, lowercase = request.param
    root = tmp_path_factory.mktemp(f"export-{model_type}")
    tok = train_tokenizer([str(CORPUS)], 150, str(root / "cache"), model_type=model_type,
                          lowercase=lowercase, log=lambda _: None)
    tok.save(str(root / "tokenizer"))
    cfg = ModelConfig.from_name("tiny").replace(vocab_size=tok.vocab_size)
    params = random_params(cfg, 7)
    written = hf.save_hf(params, cfg, root / "hf", tokenizer_dir=root / "tokenizer")
    return {"tok": tok, "cfg": cfg, "params": params, "root": root, **written}


def text_like_corpus():
    """Text from corpus words with varied case, spacing, punctuation, accents and unknowns."""
    word = st.one_of(st.sampled_from(CORPUS_WORDS),
                     st.sampled_from(CORPUS_WORDS).map(str.upper),
                     st.sampled_from(CORPUS_WORDS).map(str.title),
                     st.sampled_from(["café", "naïve", "Zürich", unicodedata.normalize(
                         "NFD", "résumé"), "ﬁne", "１２３", "東京", "🙂", "§", "42", "3.14"]))
    space = st.sampled_from([" ", " ", " ", "  ", "\t", "\n", "\u00a0", ", ", ". ", "! "])
    return st.builds(lambda ws, seps, lead, trail: lead + "".join(
        w + s for w, s in zip(ws, seps))[:None if trail else -1] if ws else lead,
        st.lists(word, max_size=14), st.lists(space, min_size=14, max_size=14),
        st.sampled_from(["", " ", "  "]), st.booleans())


def test_auto_tokenizer_gives_our_ids(sp_export):
    tok = sp_export["tok"]
    for part in ("discriminator", "generator"):
        theirs = AutoTokenizer.from_pretrained(sp_export[part])
        for name, value in SPECIAL_IDS.items():
            assert getattr(theirs, name) == value, (part, name)
        assert theirs.convert_ids_to_tokens([0, 1, 2, 3, 4]) == list(SPECIAL_TOKENS)
        assert theirs.model_max_length == sp_export["cfg"].max_position_embeddings
    assert len(theirs) == tok.vocab_size

    @settings(max_examples=60, deadline=None)
    @given(text_like_corpus(), text_like_corpus())
    def check(a, b):
        ours_a, ours_b = tok.encode(a), tok.encode(b)
        single = theirs(a)
        assert single["input_ids"] == [CLS_ID, *ours_a, SEP_ID], a
        assert single["token_type_ids"] == [0] * (len(ours_a) + 2)
        assert theirs(a, add_special_tokens=False)["input_ids"] == ours_a
        if b:  # transformers reads text_pair="" as no second segment
            pair = theirs(a, b)
            assert pair["input_ids"] == [CLS_ID, *ours_a, SEP_ID, *ours_b, SEP_ID], (a, b)
            assert pair["token_type_ids"] == [0] * (len(ours_a) + 2) + [1] * (len(ours_b) + 1)

    check()


def test_auto_tokenizer_matches_glue_encoding(sp_export):
    """[CLS] a [SEP] b [SEP] as the GLUE pipeline builds it, padding with [PAD]."""
    theirs = AutoTokenizer.from_pretrained(sp_export["discriminator"])
    examples = [Example("0", "The keeper rowed to the village.", "Bees were kept.", 1),
                Example("1", "Old apple trees", "the Orchard, in late winter!", 0)]
    ours = encode_examples(examples, sp_export["tok"], max_len=64)
    enc = theirs([e.text_a for e in examples], [e.text_b for e in examples], padding=True)
    for i, (ids, types) in enumerate(zip(ours["input_ids"], ours["token_type_ids"])):
        n = len(ids)
        assert enc["input_ids"][i][:n] == ids and enc["token_type_ids"][i][:n] == types
        assert set(enc["input_ids"][i][n:]) <= {PAD_ID}
        assert enc["attention_mask"][i] == [1] * n + [0] * (len(enc["attention_mask"][i]) - n)


def test_exported_models_match_ours_on_tokenized_text(sp_export):
    cfg, params = sp_export["cfg"], sp_export["params"]
    tokenizer = AutoTokenizer.from_pretrained(sp_export["generator"])
    enc = tokenizer(["The keeper rowed to the village at dawn.", "Apple trees!"],
                    ["Bees were kept in the orchard.", "The ferry ran"], padding=True,
                    return_tensors="pt")
    batch = (enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
    loaders = {"discriminator": (ElectraForPreTraining, AutoModel),
               "generator": (ElectraForMaskedLM, AutoModel)}
    for part, (head_class, base_class) in loaders.items():
        model = head_class.from_pretrained(sp_export[part], attn_implementation="eager").eval()
        base = base_class.from_pretrained(sp_export[part], attn_implementation="eager").eval()
        with torch.no_grad():
            theirs = hf_outputs(model, batch)
            base_hidden = base(input_ids=batch[0], token_type_ids=batch[1],
                               attention_mask=batch[2]).last_hidden_state
        ours = our_outputs(params, part, batch, cfg)
        assert_close(ours[0], theirs[0], f"{part} hidden")
        assert_close(ours[1], theirs[1], f"{part} logits")
        assert_close(ours[0], base_hidden, f"{part} AutoModel hidden")


def test_fill_mask_pipeline_loads_the_generator(sp_export):
    fill = transformers.pipeline("fill-mask", model=str(sp_export["generator"]))
    results = fill("The keeper rowed [MASK] to the village.", top_k=3)
    assert len(results) == 3
    assert all(0 <= r["token"] < sp_export["cfg"].vocab_size and isinstance(r["sequence"], str)
               for r in results)
    # the pipeline's scores are our generator's softmax at the [MASK] position
    enc = fill.tokenizer("The keeper rowed [MASK] to the village.", return_tensors="pt")
    at = enc["input_ids"][0].tolist().index(MASK_ID)
    logits = M.generator_logits(sp_export["params"], enc["input_ids"], enc["token_type_ids"],
                                enc["attention_mask"], sp_export["cfg"])
    probs = logits[0, at].softmax(-1)
    top = probs.topk(3)
    assert [r["token"] for r in results] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([r["score"] for r in results]), top.values,
                               atol=1e-5, rtol=1e-4)


def test_export_keeps_our_tokenizer_loadable(sp_export):
    """load_tokenizer and fine-tuning read the export directory (ours, not transformers')."""
    tok = sp_export["tok"]
    for part in ("discriminator", "generator"):
        again = load_tokenizer(str(sp_export[part]))
        assert again.fingerprint == tok.fingerprint and again.lowercase == tok.lowercase
    params, cfg, tokenizer, info = load_finetune_inputs(sp_export["root"] / "hf")
    assert tokenizer.fingerprint == tok.fingerprint and cfg.vocab_size == tok.vocab_size
    assert not is_own_config((sp_export["discriminator"] / "tokenizer.json").read_bytes())


def test_a_stopped_run_fine_tunes_from_its_training_checkpoint(sp_export, tmp_path):
    """A run stopped before its export (no hf/) fine-tunes from its newest training checkpoint,
    or from a chosen step_N.pt, with the run's tokenizer: the same fine-tuning start as the
    export of the same parameters."""
    from electra_fn import checkpoint as ckpt
    from electra_fn.config import PretrainConfig

    cfg, tok = sp_export["cfg"], sp_export["tok"]
    run = tmp_path / "run"
    tok.save(str(run / "tokenizer"))
    blob = {"pretrain": PretrainConfig(model=cfg).to_dict(), "run": {}}
    other = random_params(cfg, 8)
    for step, params in ((3, other), (5, sp_export["params"])):
        ckpt.save_checkpoint(run / "checkpoints", params=params, opt_state={}, step=step,
                             data_position=(0, 0), config=blob)
    want, want_cfg, _, _ = load_finetune_inputs(sp_export["root"] / "hf")
    for where, expect in ((run, sp_export["params"]),
                          (run / "checkpoints" / "step_00000003.pt", other)):
        params, got_cfg, tokenizer, info = load_finetune_inputs(where)
        assert got_cfg == want_cfg and tokenizer.fingerprint == tok.fingerprint
        assert info["checkpoint"].endswith("step_00000005.pt" if where == run
                                           else "step_00000003.pt")
        a = flat_dict(FT.init_finetune(params, got_cfg, 2, 0))
        b = flat_dict(FT.init_finetune(want if where == run else expect, want_cfg, 2, 0))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    (run / "checkpoints" / "step_00000005.pt").write_bytes(b"broken")
    with pytest.raises(FT.FinetuneInputError, match="step_00000005.pt"):
        load_finetune_inputs(run)


def test_legacy_tokenizer_json_in_extra_files_is_renamed(sp_export, tmp_path):
    """A run directory written before the rename holds our settings as tokenizer.json: passed
    as extra_files it lands under our new name, never where transformers reads its own."""
    tok_dir = sp_export["root"] / "tokenizer"
    legacy = {"tokenizer.model": (tok_dir / "tokenizer.model").read_bytes(),
              "tokenizer.json": (tok_dir / "electra_fn_tokenizer.json").read_bytes()}
    cfg = sp_export["cfg"]
    written = hf.save_hf(sp_export["params"], cfg, tmp_path, extra_files=legacy)
    names = sorted(p.name for p in written["discriminator"].iterdir())
    assert "tokenizer.json" not in names and "electra_fn_tokenizer.json" in names
    assert load_tokenizer(str(written["discriminator"])).fingerprint == \
        sp_export["tok"].fingerprint
    with pytest.raises(ValueError, match="plain file name"):
        hf.save_hf(sp_export["params"], cfg, tmp_path, extra_files={"../x": b""})


def test_vocab_mismatch_and_missing_tokenizers_package(sp_export, tmp_path, monkeypatch):
    params, cfg = sp_export["params"], sp_export["cfg"]
    tok_dir = sp_export["root"] / "tokenizer"
    with pytest.raises(ValueError, match="vocab_size"):
        hf.save_hf(random_params(cfg.replace(vocab_size=cfg.vocab_size + 1), 0),
                   cfg.replace(vocab_size=cfg.vocab_size + 1), tmp_path / "a", tok_dir)
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` fails
    with pytest.warns(UserWarning, match="pip install"):
        written = hf.save_hf(params, cfg, tmp_path / "b", tok_dir)
    assert sorted(p.name for p in written["generator"].iterdir()) == [
        "config.json", "electra_fn_tokenizer.json", "model.safetensors", "tokenizer.model"]


def test_wordpiece_export_loads_as_electra_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    words = ["the", "keeper", "row", "##ed", "to", "village", ".", ",", "light", "##house",
             "a", "old", "orchard", "apple", "tree", "##s", "!", "bee", "were", "kept", "in"]
    lines = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]",
                                                                "[MASK]"] + words
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = load_tokenizer(str(tmp_path / "tok"))
    cfg = ModelConfig.from_name("tiny").replace(vocab_size=tok.vocab_size)
    params = random_params(cfg, 3)
    written = hf.save_hf(params, cfg, tmp_path / "hf", tmp_path / "tok")
    theirs = AutoTokenizer.from_pretrained(written["discriminator"])
    assert (theirs.pad_token_id, theirs.unk_token_id, theirs.cls_token_id, theirs.sep_token_id,
            theirs.mask_token_id) == (0, 100, 101, 102, 103)
    texts = ["The Keeper rowed to the village.", "Old apple trees, the lighthouse!",
             "Bees were kept in the orchard", "zebra Café"]
    for a, b in zip(texts, texts[1:] + texts[:1]):
        ia, ib = tok.encode(a), tok.encode(b)
        assert theirs(a, b)["input_ids"] == [101, *ia, 102, *ib, 102]
        assert theirs(a, b)["token_type_ids"] == [0] * (len(ia) + 2) + [1] * (len(ib) + 1)
    assert load_tokenizer(str(written["generator"])).fingerprint == tok.fingerprint
    fill = transformers.pipeline("fill-mask", model=str(written["generator"]))
    assert len(fill("the keeper [MASK] to the village.", top_k=2)) == 2


@pytest.mark.parametrize("num_labels", [3, 2, 1])
def test_classifier_export_predicts_like_ours(num_labels, sp_export, tmp_path):
    cfg = sp_export["cfg"]
    ft = FT.init_finetune(sp_export["params"], cfg, num_labels, seed=num_labels)
    g = torch.Generator().manual_seed(num_labels)
    ft["classifier"] = {"weight": ft["classifier"]["weight"] * 20,  # logits far from 0
                        "bias": torch.randn(num_labels, generator=g)}
    labels = ["entailment", "neutral", "contradiction"][:num_labels] if num_labels > 1 else None
    out = hf.save_hf_classifier(ft, cfg, num_labels, tmp_path / "cls",
                                sp_export["root"] / "tokenizer", id2label=labels)
    tokenizer = AutoTokenizer.from_pretrained(out)
    enc = tokenizer(["The keeper rowed to the village.", "Apple trees grow old", "Bees!"],
                    ["Bees were kept.", "The ferry ran", "the orchard in late winter"],
                    padding=True, return_tensors="pt")
    ours = FT.classifier_logits_of(ft, dict(enc), cfg, None)
    for cls in (transformers.ElectraForSequenceClassification,
                transformers.AutoModelForSequenceClassification):
        model, info = cls.from_pretrained(out, output_loading_info=True,
                                          attn_implementation="eager")
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert type(model).__name__ == "ElectraForSequenceClassification"
        model.eval()
        with torch.no_grad():
            theirs = model(**enc).logits
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
        if num_labels > 1:
            assert theirs.argmax(-1).tolist() == ours.argmax(-1).tolist()
    assert model.config.problem_type == ("regression" if num_labels == 1
                                         else "single_label_classification")
    if labels:
        assert model.config.id2label == dict(enumerate(labels))
    # the encoder reads back into our tree unchanged
    back, cfg2 = hf.load_hf(out)
    assert cfg2.hidden_size == cfg.hidden_size
    for name, x in flat_dict(ft["encoder"]).items():
        assert torch.equal(flat_dict(back["discriminator"])[name], x), name


def test_classifier_export_rejects_bad_inputs(tiny_cfg, tmp_path):
    ft = FT.init_finetune(None, tiny_cfg, 3, 0)
    with pytest.raises(ValueError, match="shape"):
        hf.save_hf_classifier(ft, tiny_cfg, 2, tmp_path / "a")
    with pytest.raises(ValueError, match="id2label"):
        hf.save_hf_classifier(ft, tiny_cfg, 3, tmp_path / "b", id2label={0: "a", 2: "c"})
    narrow = tiny_cfg.replace(hidden_size=4, num_heads=1, embedding_size=4)
    with pytest.raises(ValueError, match="2 \\* num_labels"):
        hf.save_hf_classifier(FT.init_finetune(None, narrow, 3, 0), narrow, 3, tmp_path / "c")
    assert list(tmp_path.iterdir()) == []  # refused before anything is written
