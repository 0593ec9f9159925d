"""Analytic FLOP counts of an ELECTRA pre-training step, for throughput, TFLOP/s and MFU.

Counting convention (the one of ``torch.utils.flop_counter.FlopCounterMode``, so the two can be
checked against each other): only matrix products count, a product of an ``m x k`` and a
``k x n`` matrix is ``2·m·n·k`` FLOPs, bias additions, LayerNorm, GELU, softmax, dropout, the
losses, sampling and the optimizer are free (together well under 1% of the total here).

Per encoder layer of width ``H``, FFN width ``I`` and ``T = B·L`` tokens, the forward pass does
``2·T·H·3H`` (fused Q,K,V) + ``2·T·H·H`` (attention output) + ``2·T·H·I·2`` (FFN) for the dense
layers and ``2·B·L²·H`` each for ``Q·Kᵀ`` and ``probs·V``. The heads: the generator's
``dense(H_g→E)`` and tied vocabulary projection ``E→V`` at the positions where logits are
computed (``B·P`` masked slots in electra_fn; every one of the ``B·L`` positions in Hugging
Face's ``ElectraForMaskedLM``), the discriminator's ``dense(H→H)`` and ``dense(H→1)`` at every
position.

Backward: every matrix product ``Y = X·W`` costs two products of the same size (``dX`` and
``dW``), i.e. 2x its forward, because every matmul input depends on the parameters (the
embedding output feeds the first projection). For attention, ``Q·Kᵀ`` and ``probs·V`` give
``dQ, dK`` and ``dprobs, dV`` (2x forward) when attention runs as explicit matmuls (our training
path, which needs the probabilities for attention dropout). Fused attention kernels (SDPA:
flash / memory-efficient / cuDNN) recompute ``Q·Kᵀ`` in the backward, which FlopCounterMode
counts as 2.5x forward; ``attention_recompute=True`` reproduces that count. The *model* FLOPs
used for TFLOP/s and MFU never include recomputation (``attention_recompute=False``).

ELECTRA-Small, batch 128, sequence 128: ~1.15e12 FLOPs per step (~7.0e7 per token, 88% in the
discriminator). The paper quotes 1.3e12 (7.9e7 per token) with a counter that also charges
the elementwise ops and computes vocabulary logits at every position.
"""

from __future__ import annotations

from .config import EncoderConfig, ModelConfig, PretrainConfig

PARTS = ("generator_encoder", "generator_attention", "generator_head",
         "discriminator_encoder", "discriminator_attention", "discriminator_head")


def _mm(m: int, k: int, n: int) -> int:
    """FLOPs of an (m x k) @ (k x n) matrix product."""
    return 2 * m * k * n


def encoder_forward_flops(enc: EncoderConfig, batch_size: int, seq_len: int) -> dict[str, int]:
    """Forward FLOPs of one encoder stack: ``dense`` (projection, Q/K/V, output, FFN) and
    ``attention`` (Q·Kᵀ and probs·V)."""
    T, H, I = batch_size * seq_len, enc.hidden_size, enc.intermediate_size
    proj = _mm(T, enc.embedding_size, H) if enc.has_projection else 0
    per_layer_dense = _mm(T, H, 3 * H) + _mm(T, H, H) + _mm(T, H, I) + _mm(T, I, H)
    # Per head: (L x d) @ (d x L) and (L x L) @ (L x d); summed over heads d·N = H.
    per_layer_attention = 2 * _mm(batch_size * seq_len, H, seq_len)
    return {"dense": proj + enc.num_layers * per_layer_dense,
            "attention": enc.num_layers * per_layer_attention}


def forward_flops(cfg: ModelConfig, batch_size: int, seq_len: int,
                  vocab_positions: int) -> dict[str, int]:
    """Forward FLOPs of generator + discriminator by part (see :data:`PARTS`).

    ``vocab_positions`` is the number of positions per sequence at which the generator head
    (and its vocabulary projection) runs: ``max_predictions`` for electra_fn, ``seq_len`` for
    Hugging Face's ``ElectraForMaskedLM``.
    """
    g, d = cfg.generator, cfg.discriminator
    gen, disc = encoder_forward_flops(g, batch_size, seq_len), encoder_forward_flops(
        d, batch_size, seq_len)
    n_vocab = batch_size * vocab_positions
    n_tokens = batch_size * seq_len
    return {
        "generator_encoder": gen["dense"],
        "generator_attention": gen["attention"],
        "generator_head": (_mm(n_vocab, g.hidden_size, cfg.embedding_size)
                           + _mm(n_vocab, cfg.embedding_size, cfg.vocab_size)),
        "discriminator_encoder": disc["dense"],
        "discriminator_attention": disc["attention"],
        "discriminator_head": _mm(n_tokens, d.hidden_size, d.hidden_size)
                              + _mm(n_tokens, d.hidden_size, 1),
    }


def train_step_flops(cfg: ModelConfig, batch_size: int, seq_len: int,
                     vocab_positions: int, *, attention_recompute: bool = False) -> dict:
    """FLOPs of one training step (forward + backward) by part, plus totals.

    Returns ``{"forward": {part: n}, "backward": {part: n}, "total": n, "forward_total": n,
    "backward_total": n, "per_token": float, "discriminator_fraction": float}``. Backward is
    2x forward for every part, 2.5x for attention when ``attention_recompute`` (fused SDPA
    kernels, as counted by FlopCounterMode).
    """
    fwd = forward_flops(cfg, batch_size, seq_len, vocab_positions)
    bwd = {}
    for part, n in fwd.items():
        if part.endswith("attention") and attention_recompute:
            bwd[part] = n * 5 // 2
        else:
            bwd[part] = 2 * n
    total = sum(fwd.values()) + sum(bwd.values())
    disc = sum(v for k, v in fwd.items() if k.startswith("discriminator")) + sum(
        v for k, v in bwd.items() if k.startswith("discriminator"))
    return {"forward": fwd, "backward": bwd, "total": total,
            "forward_total": sum(fwd.values()), "backward_total": sum(bwd.values()),
            "per_token": total / (batch_size * seq_len),
            "discriminator_fraction": disc / total}


def electra_step_flops(cfg, *, attention_recompute: bool = False) -> dict:
    """:func:`train_step_flops` of electra_fn's step for a :class:`PretrainConfig`
    (vocabulary logits at the ``max_predictions`` masked slots only)."""
    return train_step_flops(cfg.model, cfg.batch_size, cfg.seq_len, cfg.max_predictions,
                            attention_recompute=attention_recompute)


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak FLOP/s."""
    return tokens_per_second * flops_per_token / peak_flops


PAPER_SMALL_STEPS = 1_000_000  # ELECTRA-Small: 1M steps of batch 128 x 128


def pretraining_compute(cfg, steps: int) -> dict:
    """The training FLOPs of ``steps`` steps of ``cfg`` (a :class:`PretrainConfig`), and that
    as a fraction of the paper's ELECTRA-Small run counted the same way (1M steps of its
    config), to place a run on the paper's compute axis (6.25% ... 100%)."""
    per_step = electra_step_flops(cfg)["total"]
    paper = electra_step_flops(PretrainConfig())["total"] * PAPER_SMALL_STEPS
    return {"flops_per_step": per_step, "flops": per_step * steps,
            "paper_small_flops": paper, "paper_fraction": per_step * steps / paper}

