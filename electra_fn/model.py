"""ELECTRA's networks as pure functions over pytree parameters.

Parameter tree (``init_params``)::

    embeddings:    word [V,E], position [P,E], token_type [T,E], layer_norm   (shared)
    generator:     embed_proj (only if E != H_g), layers [...], head {dense, layer_norm, output_bias}
    discriminator: embed_proj (only if E != H_d), layers [...], head {dense, out},
                   word_delta [V,E] (only with ``embedding_sharing="gdes"``)

The generator's MLM head is tied to ``embeddings.word`` (paper, section 3.2: "we share the
embeddings of the generator and discriminator"). A fine-tuning tree (``finetune_params``) is
``{embeddings, encoder: {embed_proj?, layers}, classifier}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import layers as L
from . import rng as rnglib
from . import runtime
from .config import EncoderConfig, ModelConfig

Params = dict


# -- initialisation -----------------------------------------------------------------------
def init_embeddings(gen: torch.Generator, cfg: ModelConfig) -> Params:
    std, init = cfg.initializer_range, cfg.init
    return {
        "word": L.init_weight(gen, (cfg.vocab_size, cfg.embedding_size), std, init),
        "position": L.init_weight(gen, (cfg.max_position_embeddings, cfg.embedding_size), std,
                                  init),
        "token_type": L.init_weight(gen, (cfg.type_vocab_size, cfg.embedding_size), std, init),
        "layer_norm": L.init_layer_norm(cfg.embedding_size),
    }


def init_encoder(gen: torch.Generator, enc: EncoderConfig, std: float, init: str = "original"
                 ) -> Params:
    p: Params = {}
    if enc.has_projection:  # modeling.py: tf.layers.dense with TF's default (Glorot) kernel
        p["embed_proj"] = L.init_dense(gen, enc.embedding_size, enc.hidden_size, std, init,
                                       glorot=True)
    p["layers"] = [
        {"attention": L.init_attention(gen, enc.hidden_size, std, init),
         "ffn": L.init_feed_forward(gen, enc.hidden_size, enc.intermediate_size, std, init)}
        for _ in range(enc.num_layers)
    ]
    return p


def init_params(cfg: ModelConfig, seed: int) -> Params:
    """All pre-training parameters, bit-identical for equal (cfg, seed). Float32, on CPU."""
    gen = torch.Generator().manual_seed(int(seed))
    std, init = cfg.initializer_range, cfg.init
    g, d = cfg.generator, cfg.discriminator
    embeddings = init_embeddings(gen, cfg)
    generator = init_encoder(gen, g, std, init)
    generator["head"] = {
        "dense": L.init_dense(gen, g.hidden_size, cfg.embedding_size, std, init),
        "layer_norm": L.init_layer_norm(cfg.embedding_size),
        "output_bias": torch.zeros(cfg.vocab_size),
    }
    discriminator = init_encoder(gen, d, std, init)
    discriminator["head"] = {
        "dense": L.init_dense(gen, d.hidden_size, d.hidden_size, std, init),
        # run_pretraining.py: the 1-unit output is tf.layers.dense with TF's default kernel.
        "out": L.init_dense(gen, d.hidden_size, 1, std, init, glorot=True),
    }
    if cfg.embedding_sharing == "gdes":  # drawn after everything else: the shared tree is unchanged
        discriminator["word_delta"] = torch.zeros(cfg.vocab_size, cfg.embedding_size)
    return {"embeddings": embeddings, "generator": generator, "discriminator": discriminator}


def init_classifier(cfg: ModelConfig, num_labels: int, seed: int) -> Params:
    """The original's fine-tuning head: dropout + one linear layer on [CLS] (no pooler)."""
    if num_labels < 1:
        raise ValueError(f"init_classifier: num_labels={num_labels} must be >= 1")
    gen = torch.Generator().manual_seed(int(seed))
    # finetune/classification_tasks.py: tf.layers.dense with TF's default (Glorot) kernel.
    return L.init_dense(gen, cfg.hidden_size, num_labels, cfg.initializer_range, cfg.init,
                        glorot=True)


def discriminator_embeddings(params: Params) -> Params:
    """The embedding tables the discriminator reads: the shared ones, or with a ``word_delta``
    (``embedding_sharing="gdes"``) the word table ``stop_gradient(word) + word_delta``."""
    emb = params["embeddings"]
    delta_VxE = params["discriminator"].get("word_delta")
    if delta_VxE is None:
        return emb
    return {**emb, "word": emb["word"].detach() + delta_VxE}


def finetune_params(params: Params, classifier: Params) -> Params:
    """The fine-tuning tree: the discriminator's embeddings (a GDES delta merged in), its
    encoder and a classifier."""
    encoder = {k: v for k, v in params["discriminator"].items() if k not in ("head", "word_delta")}
    return {"embeddings": discriminator_embeddings(params), "encoder": encoder,
            "classifier": classifier}


# -- forward ------------------------------------------------------------------------------
def _lookup(table_VxE: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows of ``table_VxE`` for ``ids``. While a step is captured as a CUDA graph, by
    ``index_select`` (its backward is an atomic ``index_add``): the CUDA backward of
    ``F.embedding`` sorts and reads a count on the host beyond 3,072 indices, which a capture
    forbids (pytorch/pytorch#82886). Otherwise ``F.embedding`` (deterministic on CUDA)."""
    if runtime.capturing():
        return table_VxE.index_select(0, ids.reshape(-1)).reshape(*ids.shape, -1)
    return F.embedding(ids, table_VxE)


def embed(p: Params, input_ids_BxL: torch.Tensor, token_type_ids_BxL: torch.Tensor | None,
          cfg: ModelConfig, key: torch.Tensor | None = None) -> torch.Tensor:
    """Word + position + token-type embeddings, LayerNorm, dropout -> [B, L, E]."""
    seq_len = input_ids_BxL.shape[-1]
    if seq_len > cfg.max_position_embeddings:
        raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings="
                         f"{cfg.max_position_embeddings}")
    x = _lookup(p["word"], input_ids_BxL) + p["position"][:seq_len]
    if token_type_ids_BxL is None:
        x = x + p["token_type"][0]
    else:
        x = x + _lookup(p["token_type"], token_type_ids_BxL)
    x = L.layer_norm(p["layer_norm"], x, cfg.layer_norm_eps)
    return L.dropout(x, cfg.hidden_dropout, key)


def attention_bias(attention_mask_BxL: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Additive mask [B,1,1,L]: 0 for real tokens, a large negative number for padding."""
    if attention_mask_BxL is None:
        return torch.zeros((like.shape[0], 1, 1, like.shape[1]), dtype=torch.float32,
                           device=like.device)
    neg = torch.finfo(torch.float32).min
    keep = attention_mask_BxL[:, None, None, :].to(torch.bool)
    return torch.where(keep, 0.0, neg).to(torch.float32)


def self_only_bias(bias_Bx1x1xL: torch.Tensor) -> torch.Tensor:
    """[B,1,L,L] additive mask that lets each token attend to itself only."""
    n = bias_Bx1x1xL.shape[-1]
    eye_LxL = torch.eye(n, dtype=torch.bool, device=bias_Bx1x1xL.device)
    off = torch.full((), torch.finfo(torch.float32).min, device=bias_Bx1x1xL.device)
    return torch.where(eye_LxL, bias_Bx1x1xL.expand(-1, -1, n, -1), off)


def encoder(p: Params, emb_BxLxE: torch.Tensor, bias_Bx1x1xL: torch.Tensor, enc: EncoderConfig,
            cfg: ModelConfig, key: torch.Tensor | None = None) -> torch.Tensor:
    """Projection (if any) and the post-LN transformer stack -> [B, L, H]."""
    x = L.dense(p["embed_proj"], emb_BxLxE) if "embed_proj" in p else emb_BxLxE
    for i, layer in enumerate(p["layers"]):
        k_att = None if key is None else rnglib.fold_in(key, 2 * i)
        k_ffn = None if key is None else rnglib.fold_in(key, 2 * i + 1)
        x = L.attention(layer["attention"], x, bias_Bx1x1xL, num_heads=enc.num_heads,
                        eps=cfg.layer_norm_eps, attn_drop=cfg.attention_dropout,
                        hidden_drop=cfg.hidden_dropout, key=k_att)
        x = L.feed_forward(layer["ffn"], x, eps=cfg.layer_norm_eps,
                           hidden_drop=cfg.hidden_dropout, key=k_ffn)
    return x


def _keys(key: torch.Tensor | None) -> tuple:
    if key is None:
        return None, None
    return rnglib.fold_in(key, 0), rnglib.fold_in(key, 1)


def generator_hidden(params: Params, input_ids_BxL, token_type_ids_BxL, attention_mask_BxL,
                     cfg: ModelConfig, key: torch.Tensor | None = None) -> torch.Tensor:
    """Generator encoder states [B, L, H_g]."""
    k_emb, k_enc = _keys(key)
    emb = embed(params["embeddings"], input_ids_BxL, token_type_ids_BxL, cfg, k_emb)
    bias = attention_bias(attention_mask_BxL, input_ids_BxL)
    return encoder(params["generator"], emb, bias, cfg.generator, cfg, k_enc)


def generator_head(params: Params, hidden_BxPxH: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """MLM head tied to the word embeddings -> vocabulary logits [B, P, V]."""
    head = params["generator"]["head"]
    h = F.gelu(L.dense(head["dense"], hidden_BxPxH))
    h = L.layer_norm(head["layer_norm"], h, cfg.layer_norm_eps)
    return F.linear(h, params["embeddings"]["word"], head["output_bias"])


def generator_logits(params: Params, input_ids_BxL, token_type_ids_BxL, attention_mask_BxL,
                     cfg: ModelConfig, positions_BxP: torch.Tensor | None = None,
                     key: torch.Tensor | None = None) -> torch.Tensor:
    """Vocabulary logits at ``positions_BxP`` ([B, P, V]), or at every token if None."""
    h_BxLxH = generator_hidden(params, input_ids_BxL, token_type_ids_BxL, attention_mask_BxL,
                               cfg, key)
    if positions_BxP is not None:
        idx = positions_BxP[..., None].expand(-1, -1, h_BxLxH.shape[-1])
        h_BxLxH = torch.gather(h_BxLxH, 1, idx)
    return generator_head(params, h_BxLxH, cfg)


def discriminator_hidden(params: Params, input_ids_BxL, token_type_ids_BxL, attention_mask_BxL,
                         cfg: ModelConfig, key: torch.Tensor | None = None) -> torch.Tensor:
    """Discriminator encoder states [B, L, H] (``cfg.disc_context="self"``: each token
    attends only to itself, the no-context control)."""
    k_emb, k_enc = _keys(key)
    emb = embed(discriminator_embeddings(params), input_ids_BxL, token_type_ids_BxL, cfg, k_emb)
    bias = attention_bias(attention_mask_BxL, input_ids_BxL)
    if cfg.disc_context == "self":
        bias = self_only_bias(bias)
    return encoder(params["discriminator"], emb, bias, cfg.discriminator, cfg, k_enc)


def discriminator_logits(params: Params, input_ids_BxL, token_type_ids_BxL, attention_mask_BxL,
                         cfg: ModelConfig, key: torch.Tensor | None = None) -> torch.Tensor:
    """Replaced-token-detection logits [B, L] (positive = replaced)."""
    h = discriminator_hidden(params, input_ids_BxL, token_type_ids_BxL, attention_mask_BxL, cfg,
                             key)
    return discriminator_head(params, h)


def discriminator_head(params: Params, hidden_BxLxH: torch.Tensor) -> torch.Tensor:
    """Replaced-token-detection logits [B, L] from the discriminator's states."""
    head = params["discriminator"]["head"]
    return L.dense(head["out"], F.gelu(L.dense(head["dense"], hidden_BxLxH)))[..., 0]


def classifier_logits(ft_params: Params, input_ids_BxL, token_type_ids_BxL, attention_mask_BxL,
                      cfg: ModelConfig, key: torch.Tensor | None = None) -> torch.Tensor:
    """Fine-tuning logits [B, C] from the [CLS] state (dropout + linear, as the original)."""
    k_emb, k_enc = _keys(key)
    emb = embed(ft_params["embeddings"], input_ids_BxL, token_type_ids_BxL, cfg, k_emb)
    bias = attention_bias(attention_mask_BxL, input_ids_BxL)
    h = encoder(ft_params["encoder"], emb, bias, cfg.discriminator, cfg, k_enc)
    cls_BxH = L.dropout(h[:, 0], cfg.hidden_dropout,
                        None if key is None else rnglib.fold_in(key, 2))
    return L.dense(ft_params["classifier"], cls_BxH)
