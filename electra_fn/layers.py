"""Parameter initialisers and pure forward functions for the building blocks.

Every block is an ``init_x(gen, ...) -> params`` / ``x(params, inputs, ...) -> outputs`` pair.
Weights follow ``torch.nn.functional.linear``: ``weight`` is ``[out, in]``.
Initialisation (``init``): ``"original"`` as the original code, a normal(0, std) truncated at
2 std (TF's ``truncated_normal_initializer``) and Glorot-uniform where the original leaves
TF's default initialiser; ``"normal"`` an untruncated normal(0, std) everywhere. Zero
biases, LayerNorm 1/0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from . import rng as rnglib

Params = dict


INITS = ("original", "normal")


def init_weight(gen: torch.Generator, shape: tuple[int, ...], std: float,
                init: str = "original") -> torch.Tensor:
    """A float32 weight: normal(0, std) truncated at 2 std (``"original"``, actual std
    0.88 std) or untruncated (``"normal"``)."""
    if init == "original":
        w = torch.empty(shape, dtype=torch.float32)
        return torch.nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std, generator=gen)
    if init == "normal":
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std
    raise ValueError(f"init={init!r}: expected one of {INITS}")


# -- dense --------------------------------------------------------------------------------
def init_dense(gen: torch.Generator, d_in: int, d_out: int, std: float, init: str = "original",
               glorot: bool = False) -> Params:
    """``glorot=True`` marks a layer the original leaves to TF's default initialiser
    (Glorot-uniform); under ``init="normal"`` it is drawn like the others."""
    if glorot and init == "original":
        w = torch.nn.init.xavier_uniform_(torch.empty(d_out, d_in), generator=gen)
    else:
        w = init_weight(gen, (d_out, d_in), std, init)
    return {"weight": w, "bias": torch.zeros(d_out)}


def dense(p: Params, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, p["weight"], p["bias"])


# -- layer norm ---------------------------------------------------------------------------
def init_layer_norm(d: int) -> Params:
    return {"weight": torch.ones(d), "bias": torch.zeros(d)}


def layer_norm(p: Params, x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), p["weight"], p["bias"], eps)


# -- dropout ------------------------------------------------------------------------------
def dropout(x: torch.Tensor, rate: float, key: torch.Tensor | None) -> torch.Tensor:
    """Inverted dropout driven by an explicit key; ``key=None`` means eval (identity)."""
    if key is None or rate == 0.0:
        return x
    keep = rnglib.uniform(key, tuple(x.shape), x.device) >= rate
    return torch.where(keep, x / (1.0 - rate), torch.zeros((), dtype=x.dtype, device=x.device))


def _sub(key: torch.Tensor | None, tag: int) -> torch.Tensor | None:
    return None if key is None else rnglib.fold_in(key, tag)


# -- attention ----------------------------------------------------------------------------
def init_attention(gen: torch.Generator, hidden: int, std: float, init: str = "original"
                   ) -> Params:
    q, k, v = (init_dense(gen, hidden, hidden, std, init) for _ in range(3))
    return {
        "qkv": {"weight": torch.cat([q["weight"], k["weight"], v["weight"]]),
                "bias": torch.zeros(3 * hidden)},
        "out": init_dense(gen, hidden, hidden, std, init),
        "layer_norm": init_layer_norm(hidden),
    }


def attention(p: Params, x_BxLxH: torch.Tensor, bias_Bx1x1xL: torch.Tensor, *, num_heads: int,
              eps: float, attn_drop: float, hidden_drop: float,
              key: torch.Tensor | None) -> torch.Tensor:
    """Post-LN multi-head self-attention block: LN(x + drop(W_o · attn(x)))."""
    qkv = dense(p["qkv"], x_BxLxH)
    q_BxNxLxD, k_BxNxLxD, v_BxNxLxD = rearrange(
        qkv, "b l (three n d) -> three b n l d", three=3, n=num_heads).unbind(0)
    if key is None or attn_drop == 0.0:
        ctx_BxNxLxD = F.scaled_dot_product_attention(
            q_BxNxLxD, k_BxNxLxD, v_BxNxLxD, attn_mask=bias_Bx1x1xL.to(q_BxNxLxD.dtype))
    else:
        # Dropout on the attention probabilities needs them explicitly.
        scale = 1.0 / math.sqrt(q_BxNxLxD.shape[-1])
        scores_BxNxLxL = (q_BxNxLxD @ k_BxNxLxD.transpose(-1, -2)) * scale + bias_Bx1x1xL
        probs_BxNxLxL = torch.softmax(scores_BxNxLxL.float(), dim=-1).to(q_BxNxLxD.dtype)
        probs_BxNxLxL = dropout(probs_BxNxLxL, attn_drop, _sub(key, 0))
        ctx_BxNxLxD = probs_BxNxLxL @ v_BxNxLxD
    ctx_BxLxH = rearrange(ctx_BxNxLxD, "b n l d -> b l (n d)")
    out = dropout(dense(p["out"], ctx_BxLxH), hidden_drop, _sub(key, 1))
    return layer_norm(p["layer_norm"], out + x_BxLxH, eps)


# -- feed-forward -------------------------------------------------------------------------
def init_feed_forward(gen: torch.Generator, hidden: int, inner: int, std: float,
                      init: str = "original") -> Params:
    return {"in": init_dense(gen, hidden, inner, std, init),
            "out": init_dense(gen, inner, hidden, std, init),
            "layer_norm": init_layer_norm(hidden)}


def feed_forward(p: Params, x_BxLxH: torch.Tensor, *, eps: float, hidden_drop: float,
                 key: torch.Tensor | None) -> torch.Tensor:
    """Post-LN FFN block with exact (erf) GELU, as in BERT/ELECTRA."""
    h = F.gelu(dense(p["in"], x_BxLxH))
    out = dropout(dense(p["out"], h), hidden_drop, key)
    return layer_norm(p["layer_norm"], out + x_BxLxH, eps)
