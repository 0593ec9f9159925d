"""Frozen, validated configuration dataclasses and the named model presets.

Configs are hashable so they can act as static arguments: equal configs reuse a compiled
graph, a changed one recompiles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Fixed ids of the special tokens of our sentencepiece vocabularies (electra_fn.data.tokenizer).
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _require(cond: bool, cls: str, field_name: str, value, why: str) -> None:
    if not cond:
        raise ValueError(f"{cls}.{field_name}={value!r}: {why}")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the shared embeddings, the discriminator and the generator.

    The generator keeps the discriminator's depth and shrinks width, heads and FFN by
    ``generator_multiplier`` (paper, section 3.2: 1/4 for Small and Large, 1/3 for Base).
    """

    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 256
    num_layers: int = 12
    num_heads: int = 4
    intermediate_size: int = 1024
    generator_multiplier: float = 0.25
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = PAD_ID
    # "full" (ELECTRA) or "self": a diagnostic control whose discriminator attends only to
    # each token itself, so it sees no context (electra_fn.diagnostics).
    disc_context: str = "full"
    # "original": truncated normal and Glorot-uniform where the original has them
    # (electra_fn.layers); "normal": an untruncated normal(0, initializer_range) everywhere.
    init: str = "original"
    # "shared" (ELECTRA): one word-embedding table trained by both losses. "gdes": the
    # discriminator reads stop_gradient(word) + word_delta, a zero-initialised table of its
    # own, so its loss no longer pulls on the generator's embeddings (gradient-disentangled
    # embedding sharing, DeBERTaV3: He et al. 2021, arXiv:2111.09543, section 3.2).
    embedding_sharing: str = "shared"
    name: str = "custom"

    def __post_init__(self) -> None:
        c = "ModelConfig"
        for f in ("vocab_size", "embedding_size", "hidden_size", "num_layers", "num_heads",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            v = getattr(self, f)
            _require(isinstance(v, int) and not isinstance(v, bool) and v > 0, c, f, v,
                     "must be a positive integer")
        _require(self.hidden_size % self.num_heads == 0, c, "hidden_size", self.hidden_size,
                 f"must be divisible by num_heads={self.num_heads}")
        _require(0.0 < self.generator_multiplier <= 1.0, c, "generator_multiplier",
                 self.generator_multiplier, "must be in (0, 1]")
        for f in ("hidden_dropout", "attention_dropout"):
            v = getattr(self, f)
            _require(0.0 <= v < 1.0, c, f, v, "must be in [0, 1)")
        _require(self.layer_norm_eps > 0, c, "layer_norm_eps", self.layer_norm_eps, "must be > 0")
        _require(self.initializer_range > 0, c, "initializer_range", self.initializer_range,
                 "must be > 0")
        _require(0 <= self.pad_token_id < self.vocab_size, c, "pad_token_id", self.pad_token_id,
                 f"must be in [0, vocab_size={self.vocab_size})")
        _require(self.disc_context in ("full", "self"), c, "disc_context", self.disc_context,
                 "must be 'full' or 'self'")
        _require(self.init in ("original", "normal"), c, "init", self.init,
                 "must be 'original' or 'normal'")
        _require(self.embedding_sharing in ("shared", "gdes"), c, "embedding_sharing",
                 self.embedding_sharing, "must be 'shared' or 'gdes'")
        g = self.generator
        _require(g.hidden_size >= 1 and g.hidden_size % g.num_heads == 0, c,
                 "generator_multiplier", self.generator_multiplier,
                 f"gives generator hidden {g.hidden_size} not divisible by heads {g.num_heads}")

    # -- the two encoders --------------------------------------------------------------
    @property
    def discriminator(self) -> "EncoderConfig":
        return EncoderConfig(self.embedding_size, self.hidden_size, self.num_layers,
                             self.num_heads, self.intermediate_size)

    @property
    def generator(self) -> "EncoderConfig":
        m = self.generator_multiplier
        return EncoderConfig(self.embedding_size, max(1, int(round(self.hidden_size * m))),
                             self.num_layers, max(1, int(round(self.num_heads * m))),
                             max(1, int(round(self.intermediate_size * m))))

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelConfig":
        """A named preset (``tiny``, ``small``, ``small++``, ``base``, ``large``) with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **overrides) -> "ModelConfig":
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}")
        return cls(**d)


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of one transformer stack (derived from ModelConfig, never built by hand)."""

    embedding_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def has_projection(self) -> bool:
        # The original creates ``embeddings_project`` only when the sizes differ.
        return self.embedding_size != self.hidden_size


PRESETS: dict[str, ModelConfig] = {
    # For tests and CPU demos.
    "tiny": ModelConfig(vocab_size=1000, embedding_size=32, hidden_size=64, num_layers=2,
                        num_heads=2, intermediate_size=128, generator_multiplier=0.5,
                        max_position_embeddings=128, name="tiny"),
    # The paper's ELECTRA-Small: 1/4-size generator.
    "small": ModelConfig(name="small"),
    # The released ELECTRA-Small++ (google/electra-small-*): full-size generator.
    "small++": ModelConfig(generator_multiplier=1.0, name="small++"),
    "base": ModelConfig(embedding_size=768, hidden_size=768, num_layers=12, num_heads=12,
                        intermediate_size=3072, generator_multiplier=1 / 3, name="base"),
    "large": ModelConfig(embedding_size=1024, hidden_size=1024, num_layers=24, num_heads=16,
                         intermediate_size=4096, generator_multiplier=0.25, name="large"),
}


@dataclass(frozen=True)
class PretrainConfig:
    """The pre-training recipe. Defaults are the paper's ELECTRA-Small (Table 6, Appendix A)."""

    model: ModelConfig = field(default_factory=lambda: PRESETS["small"])
    seq_len: int = 128
    batch_size: int = 128
    total_steps: int = 1_000_000
    warmup_steps: int = 10_000
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-6
    # The original's Adam has no bias correction; True uses torch.optim.AdamW's corrected step
    # (for short runs whose warmup cannot absorb the uncorrected early steps; see optim.py).
    adam_bias_correction: bool = False
    clip_norm: float = 1.0
    mask_prob: float = 0.15
    # "original": the original's count and positions drawn with replacement; "distinct": the
    # count over candidates and distinct positions (electra_fn.masking.mask_batch).
    masking: str = "original"
    disc_weight: float = 50.0
    gen_weight: float = 1.0
    # Share of the masked slots refilled from a fixed proposal (e.g. unigram) instead of the
    # generator: not in the original (0); pretrain.replaced_batch.
    mix_fraction: float = 0.0
    # Steps before the generator's loss counts: the discriminator first trains against the
    # untrained generator (not in the original, 0).
    gen_delay_steps: int = 0
    temperature: float = 1.0
    seed: int = 0
    # The tokenizer's special-token ids (ours: 0, 2, 3, 4; a BERT WordPiece vocabulary: 0, 101,
    # 102, 103): never masked or proposed; [MASK] fills masked slots, [PAD] marks padding.
    pad_id: int = PAD_ID
    cls_id: int = CLS_ID
    sep_id: int = SEP_ID
    mask_id: int = MASK_ID

    def __post_init__(self) -> None:
        c = "PretrainConfig"
        for f in ("pad_id", "cls_id", "sep_id", "mask_id"):
            v = getattr(self, f)
            _require(isinstance(v, int) and 0 <= v < self.model.vocab_size, c, f, v,
                     f"must be a token id in [0, {self.model.vocab_size})")
        _require(len(set(self.special_ids)) == 4, c, "special ids", self.special_ids,
                 "[PAD], [CLS], [SEP] and [MASK] need four different ids")
        for f in ("seq_len", "batch_size", "total_steps"):
            v = getattr(self, f)
            _require(isinstance(v, int) and v > 0, c, f, v, "must be a positive integer")
        _require(self.seq_len <= self.model.max_position_embeddings, c, "seq_len", self.seq_len,
                 f"exceeds model.max_position_embeddings={self.model.max_position_embeddings}")
        _require(self.seq_len >= 8, c, "seq_len", self.seq_len, "must be at least 8")
        _require(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, c,
                 "warmup_steps", self.warmup_steps, "must be a non-negative integer")
        _require(self.learning_rate > 0, c, "learning_rate", self.learning_rate, "must be > 0")
        _require(self.weight_decay >= 0, c, "weight_decay", self.weight_decay, "must be >= 0")
        _require(0 <= self.adam_b1 < 1, c, "adam_b1", self.adam_b1, "must be in [0, 1)")
        _require(0 <= self.adam_b2 < 1, c, "adam_b2", self.adam_b2, "must be in [0, 1)")
        _require(self.adam_eps > 0, c, "adam_eps", self.adam_eps, "must be > 0")
        _require(self.clip_norm > 0, c, "clip_norm", self.clip_norm, "must be > 0")
        _require(0 < self.mask_prob < 1, c, "mask_prob", self.mask_prob, "must be in (0, 1)")
        _require(self.masking in ("original", "distinct"), c, "masking", self.masking,
                 "must be 'original' or 'distinct'")
        _require(self.disc_weight >= 0, c, "disc_weight", self.disc_weight, "must be >= 0")
        _require(self.gen_weight >= 0, c, "gen_weight", self.gen_weight, "must be >= 0")
        _require(0 <= self.mix_fraction <= 1, c, "mix_fraction", self.mix_fraction,
                 "must be in [0, 1]")
        _require(isinstance(self.gen_delay_steps, int) and self.gen_delay_steps >= 0, c,
                 "gen_delay_steps", self.gen_delay_steps, "must be a non-negative integer")
        _require(self.temperature > 0, c, "temperature", self.temperature, "must be > 0")

    @property
    def special_ids(self) -> tuple[int, int, int, int]:
        """(pad, cls, sep, mask): the tokens masking and the fixed proposals leave alone."""
        return (self.pad_id, self.cls_id, self.sep_id, self.mask_id)

    @property
    def max_predictions(self) -> int:
        # configure_pretraining.py: max_predictions_per_seq = int((mask_prob + 0.005) * max_len)
        return int((self.mask_prob + 0.005) * self.seq_len)

    def replace(self, **overrides) -> "PretrainConfig":
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["max_predictions"] = self.max_predictions
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        d = dict(d)
        d.pop("max_predictions", None)
        model = ModelConfig.from_dict(d.pop("model"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"PretrainConfig: unknown field(s) {unknown}")
        return cls(model=model, **d)


@dataclass(frozen=True)
class FinetuneConfig:
    """The GLUE fine-tuning recipe. Defaults are ELECTRA-Small's: lr 3e-4 and no weight decay
    (the paper's Table 7; the released configure_finetuning.py defaults to 1e-4 and 0.01),
    layer-wise decay 0.8, 10% warmup, batch 32, length 128, 3 epochs (10 for RTE and STS-B,
    ``epochs=None`` picks the task's), batches shuffled at random (``length_bucketing`` sorts
    them by length within chunks instead: faster, not the original's)."""

    learning_rate: float = 3e-4
    layer_decay: float = 0.8
    # optimization._get_layer_lrs puts the head at depth n_layers + 2: one factor of decay is
    # left over from a removed pooler. Kept by default to match the published numbers.
    extra_decay_factor: bool = True
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    batch_size: int = 32
    max_len: int = 128
    epochs: int | None = None
    clip_norm: float = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-6
    # The original fine-tunes with the same uncorrected Adam; True uses the corrected step.
    adam_bias_correction: bool = False
    length_bucketing: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        c = "FinetuneConfig"
        _require(isinstance(self.length_bucketing, bool), c, "length_bucketing",
                 self.length_bucketing, "must be a bool")
        _require(self.learning_rate > 0, c, "learning_rate", self.learning_rate, "must be > 0")
        _require(0 < self.layer_decay <= 1, c, "layer_decay", self.layer_decay,
                 "must be in (0, 1]")
        _require(isinstance(self.extra_decay_factor, bool), c, "extra_decay_factor",
                 self.extra_decay_factor, "must be a bool")
        _require(self.weight_decay >= 0, c, "weight_decay", self.weight_decay, "must be >= 0")
        _require(0 <= self.warmup_fraction <= 1, c, "warmup_fraction", self.warmup_fraction,
                 "must be in [0, 1]")
        for f in ("batch_size", "max_len"):
            v = getattr(self, f)
            _require(isinstance(v, int) and not isinstance(v, bool) and v > 0, c, f, v,
                     "must be a positive integer")
        _require(self.max_len >= 3, c, "max_len", self.max_len,
                 "must be at least 3 ([CLS] a [SEP] b [SEP] needs room)")
        _require(self.epochs is None or (isinstance(self.epochs, int) and self.epochs > 0), c,
                 "epochs", self.epochs, "must be None (the task's default) or a positive int")
        _require(self.clip_norm > 0, c, "clip_norm", self.clip_norm, "must be > 0")
        _require(0 <= self.adam_b1 < 1, c, "adam_b1", self.adam_b1, "must be in [0, 1)")
        _require(0 <= self.adam_b2 < 1, c, "adam_b2", self.adam_b2, "must be in [0, 1)")
        _require(self.adam_eps > 0, c, "adam_eps", self.adam_eps, "must be > 0")
        _require(isinstance(self.seed, int), c, "seed", self.seed, "must be an integer")

    def num_epochs(self, task_default: int) -> int:
        """``epochs`` if set, else the task's default (3; 10 for RTE and STS-B)."""
        return self.epochs if self.epochs is not None else task_default

    def replace(self, **overrides) -> "FinetuneConfig":
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"FinetuneConfig: unknown field(s) {unknown}")
        return cls(**d)
