"""Tests of electra_fn.config: presets, validation, hashing, dict round trips."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electra_fn.config import PRESETS, EncoderConfig, ModelConfig

SIZE_FIELDS = ("vocab_size", "embedding_size", "hidden_size", "num_layers", "num_heads",
               "intermediate_size", "max_position_embeddings", "type_vocab_size")


def sizes(enc: EncoderConfig) -> tuple[int, int, int, int]:
    return enc.hidden_size, enc.num_layers, enc.num_heads, enc.intermediate_size


@pytest.mark.parametrize("name, emb, disc, gen", [
    # (embedding, (hidden, layers, heads, ffn) of the discriminator, of the generator)
    ("small", 128, (256, 12, 4, 1024), (64, 12, 1, 256)),
    ("small++", 128, (256, 12, 4, 1024), (256, 12, 4, 1024)),
    ("base", 768, (768, 12, 12, 3072), (256, 12, 4, 1024)),
    ("large", 1024, (1024, 24, 16, 4096), (256, 24, 4, 1024)),
])
def test_presets_match_the_paper(name, emb, disc, gen):
    cfg = ModelConfig.from_name(name)
    assert cfg.name == name
    assert cfg.embedding_size == emb
    assert sizes(cfg.discriminator) == disc
    assert sizes(cfg.generator) == gen
    assert cfg.generator.embedding_size == cfg.discriminator.embedding_size == emb
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.type_vocab_size) == (30522, 512, 2)
    assert (cfg.hidden_dropout, cfg.attention_dropout) == (0.1, 0.1)
    assert (cfg.layer_norm_eps, cfg.initializer_range) == (1e-12, 0.02)


def test_preset_multipliers_and_projections():
    assert ModelConfig.from_name("small").generator_multiplier == 0.25
    assert ModelConfig.from_name("small++").generator_multiplier == 1.0
    assert ModelConfig.from_name("base").generator_multiplier == pytest.approx(1 / 3)
    assert ModelConfig.from_name("large").generator_multiplier == 0.25
    small = ModelConfig.from_name("small")
    assert small.discriminator.has_projection and small.generator.has_projection  # 128->256, ->64
    base = ModelConfig.from_name("base")
    assert not base.discriminator.has_projection and base.generator.has_projection
    assert base.discriminator.head_dim == 64 and small.generator.head_dim == 64


def test_all_presets_exist_and_default_is_small():
    assert set(PRESETS) >= {"tiny", "small", "small++", "base", "large"}
    tiny = ModelConfig.from_name("tiny")
    assert tiny.hidden_size < 256 and tiny.num_layers <= 2
    assert dataclasses.replace(ModelConfig(), name="small") == ModelConfig.from_name("small")


def test_from_name_applies_and_validates_overrides():
    cfg = ModelConfig.from_name("small", vocab_size=8000, num_layers=2)
    assert (cfg.vocab_size, cfg.num_layers, cfg.hidden_size) == (8000, 2, 256)
    with pytest.raises(ValueError, match=re.escape("hidden_size=250")):
        ModelConfig.from_name("small", hidden_size=250)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="'huge'") as e:
        ModelConfig.from_name("huge")
    assert "small++" in str(e.value)  # the message lists the choices


def test_frozen_and_hashable():
    a, b = ModelConfig.from_name("small"), ModelConfig.from_name("small")
    assert a == b and a is not b and hash(a) == hash(b)
    assert len({a, b, ModelConfig.from_name("base")}) == 2
    assert a.replace(num_layers=3) != a
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.hidden_size = 512  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.discriminator.hidden_size = 1  # type: ignore[misc]
    assert hash(a.generator) == hash(b.generator)


@pytest.mark.parametrize("field", SIZE_FIELDS)
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_sizes_name_the_field(field, value):
    with pytest.raises(ValueError, match=re.escape(f"{field}={value!r}")):
        ModelConfig.from_name("tiny", **{field: value})


@pytest.mark.parametrize("overrides, field, value", [
    (dict(hidden_size=250, num_heads=4), "hidden_size", 250),
    (dict(num_heads=3), "hidden_size", 64),
    (dict(generator_multiplier=0), "generator_multiplier", 0),
    (dict(generator_multiplier=1.5), "generator_multiplier", 1.5),
    (dict(generator_multiplier=-0.25), "generator_multiplier", -0.25),
    (dict(hidden_dropout=1.0), "hidden_dropout", 1.0),
    (dict(attention_dropout=1.0), "attention_dropout", 1.0),
    (dict(hidden_dropout=-0.1), "hidden_dropout", -0.1),
    (dict(layer_norm_eps=0.0), "layer_norm_eps", 0.0),
    (dict(initializer_range=-1.0), "initializer_range", -1.0),
    (dict(pad_token_id=1000), "pad_token_id", 1000),
    (dict(num_layers=2.0), "num_layers", 2.0),
    (dict(vocab_size=True), "vocab_size", True),
    (dict(embedding_sharing="tied"), "embedding_sharing", "tied"),
])
def test_invalid_values_name_field_and_value(overrides, field, value):
    with pytest.raises(ValueError, match=re.escape(f"{field}={value!r}")):
        ModelConfig.from_name("tiny", **overrides)


def test_generator_multiplier_that_breaks_generator_heads():
    # hidden 96 / 6 heads at 1/4: generator hidden 24 with round(1.5) = 2 heads is fine,
    # but hidden 60 / 6 heads at 1/4 gives hidden 15 with 2 heads: rejected, and named.
    assert ModelConfig(hidden_size=96, num_heads=6).generator.num_heads == 2
    with pytest.raises(ValueError, match="generator_multiplier=0.25"):
        ModelConfig(hidden_size=60, num_heads=6)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trip_presets(name):
    cfg = ModelConfig.from_name(name)
    d = cfg.to_dict()
    assert isinstance(d, dict) and d["name"] == name
    assert ModelConfig.from_dict(d) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(d))) == cfg


def test_from_dict_names_unknown_key():
    d = ModelConfig.from_name("tiny").to_dict()
    d["bogus_field"] = 3
    with pytest.raises(ValueError, match="bogus_field"):
        ModelConfig.from_dict(d)


def test_from_dict_validates():
    d = ModelConfig.from_name("tiny").to_dict() | {"hidden_dropout": 1.0}
    with pytest.raises(ValueError, match=re.escape("hidden_dropout=1.0")):
        ModelConfig.from_dict(d)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), embedding=st.sampled_from(["disc", "gen", "other"]))
def test_random_configs_round_trip_and_hash(seed, embedding, make_config):
    cfg = make_config(seed, embedding)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and hash(again) == hash(cfg)
    g = cfg.generator
    assert g.hidden_size % g.num_heads == 0 and g.num_layers == cfg.num_layers
    assert cfg.discriminator.has_projection == (cfg.embedding_size != cfg.hidden_size)
    assert g.has_projection == (cfg.embedding_size != g.hidden_size)
