"""Shared fixtures: small model configs, random valid configs and random batches.

Helpers are handed out as session-scoped fixtures (factories), so hypothesis tests can use
them without the function-scoped-fixture health check and nothing imports ``conftest``.
"""

from __future__ import annotations

import random

import pytest
import torch

from electra_fn.config import ModelConfig

# vmap over F.scaled_dot_product_attention falls back to a slow loop and says so once per
# call; the fallback is correct, the warning is noise in the batch-independence tests.
_SDPA_VMAP_WARNING = (r"ignore:There is a performance drop because we have not yet implemented "
                      r"the batching rule:UserWarning")


# Raised from inside torch.compile's own machinery, not from our code.
_JIT_DEPRECATION = r"ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", _SDPA_VMAP_WARNING)
    config.addinivalue_line("filterwarnings", _JIT_DEPRECATION)


def random_model_config(seed: int, embedding: str = "any", **overrides) -> ModelConfig:
    """A small random valid ModelConfig.

    ``embedding`` picks the embedding size: ``"disc"`` (= discriminator hidden, no
    discriminator projection), ``"gen"`` (= generator hidden, no generator projection),
    ``"other"`` (differs from both, both networks project) or ``"any"``.
    Widths are at least 4: LayerNorm over 1-2 features is degenerate (its output is +-1 and
    its input gradient is rounding noise), which would make gradient comparisons meaningless.
    """
    r = random.Random(seed)
    num_heads = r.choice([1, 2, 4])
    hidden = num_heads * r.choice([4, 6, 8])
    multipliers = [0.25, 1 / 3, 0.5, 1.0]
    r.shuffle(multipliers)
    base = dict(vocab_size=r.randint(12, 60), num_layers=r.randint(1, 2), num_heads=num_heads,
                hidden_size=hidden, intermediate_size=r.randint(4, 40),
                max_position_embeddings=r.randint(12, 24), type_vocab_size=r.randint(2, 3),
                hidden_dropout=r.choice([0.0, 0.1, 0.3]),
                attention_dropout=r.choice([0.0, 0.1, 0.2]), embedding_size=hidden,
                layer_norm_eps=r.choice([1e-12, 1e-6]), name=f"random-{seed}")
    cfg = None
    for m in multipliers:  # 1.0 always gives a valid generator
        try:
            cfg = ModelConfig(generator_multiplier=m, **base)
        except ValueError:
            continue
        if cfg.generator.hidden_size >= 4:
            break
    assert cfg is not None
    g_hidden = cfg.generator.hidden_size
    if embedding == "any":
        embedding = r.choice(["disc", "gen", "other"])
    if embedding == "disc":
        emb = hidden
    elif embedding == "gen":
        emb = g_hidden
    elif embedding == "other":
        emb = r.choice([e for e in (5, 6, 10, 12, 20) if e not in (hidden, g_hidden)])
    else:
        raise ValueError(f"embedding={embedding!r}")
    return cfg.replace(embedding_size=emb, **overrides)


def random_batch(cfg: ModelConfig, batch: int, seq_len: int, seed: int, pad: bool = True,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, token_type_ids, attention_mask)``, each [batch, seq_len].

    Row lengths are random in [1, seq_len] (the first row is full) when ``pad``; padding
    positions, and only they, hold ``pad_token_id``; token types are 0 then 1 after a random
    split.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size - 1, (batch, seq_len), generator=g)
    ids = ids + (ids >= cfg.pad_token_id).long()  # skip the pad id
    lengths = torch.full((batch,), seq_len)
    if pad:
        lengths = torch.randint(1, seq_len + 1, (batch,), generator=g)
        lengths[0] = seq_len
    pos = torch.arange(seq_len)
    mask = (pos[None, :] < lengths[:, None]).long()
    split = torch.randint(0, seq_len + 1, (batch, 1), generator=g)
    token_types = (pos[None, :] >= split).long().clamp(max=cfg.type_vocab_size - 1)
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, cfg.pad_token_id))
    token_types = torch.where(mask.bool(), token_types, torch.zeros_like(token_types))
    return ids, token_types, mask


@pytest.fixture(scope="session")
def tiny_cfg() -> ModelConfig:
    """The ``tiny`` preset shrunk further: 2 layers, vocab 60, 32 positions."""
    return ModelConfig.from_name("tiny", vocab_size=60, max_position_embeddings=32,
                                 intermediate_size=48)


@pytest.fixture(scope="session")
def make_config():
    """``make_config(seed, embedding="any", **overrides) -> ModelConfig`` (random, valid)."""
    return random_model_config


@pytest.fixture(scope="session")
def make_batch():
    """``make_batch(cfg, batch, seq_len, seed, pad=True) -> (ids, token_types, mask)``."""
    return random_batch


@pytest.fixture
def disk_full_at(monkeypatch):
    """``disk_full_at(fragment, after=0, times=None)``: after ``after`` writes, the next
    ``times`` (None: all) writes of a file whose path contains ``fragment`` fail as on a full
    disk (ENOSPC) where the bytes go down to the OS: ``os.write`` writes half its bytes and
    then raises, ``os.fsync`` (where a buffered file's bytes must reach the disk) raises.
    Returns the list of paths that failed."""
    import errno
    import os

    failed: list[str] = []

    def install(fragment: str, after: int = 0, times: int | None = None) -> list[str]:
        seen = [0]
        real_write, real_fsync = os.write, os.fsync

        def hit(fd: int) -> str | None:
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return None
            if fragment not in path:
                return None
            seen[0] += 1
            return path if seen[0] > after and (times is None or len(failed) < times) else None

        def write(fd, data):
            path = hit(fd)
            if path is None:
                return real_write(fd, data)
            real_write(fd, bytes(data[: len(data) // 2]))
            failed.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")

        def fsync(fd):
            path = hit(fd)
            if path is None:
                return real_fsync(fd)
            failed.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)
        return failed

    return install
