"""The Hugging Face peer of the throughput benchmark: ELECTRA pre-training with ``transformers``.

:class:`HFPeer` is the training step that ``benchmarks/throughput.py`` times against
electra_fn's (``ElectraForMaskedLM`` generator + ``ElectraForPreTraining`` discriminator
sharing one embedding module, our masking on the same noise, Gumbel-max sampling, the combined
loss, ``clip_grad_norm_`` and ``torch.optim.AdamW``); :func:`step_noise` is the masking and
Gumbel noise electra_fn's step derives from a key, so that both consume identical noise.
``benchmarks/gpu_checks.py`` (HF parity) and ``experiments/collapse_probe.py --hf`` use it too.
Needs ``transformers`` (the ``test`` extra), imported when a peer is built.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from electra_fn import masking, sampling
from electra_fn import rng as rnglib
from electra_fn.config import CLS_ID, MASK_ID, PAD_ID, SEP_ID, ModelConfig, PretrainConfig
from electra_fn.hf import to_hf_state_dict
from electra_fn.pretrain import K_GUMBEL, mask_noise

SPECIAL_IDS = (PAD_ID, CLS_ID, SEP_ID, MASK_ID)


def step_noise(key: torch.Tensor, cfg: PretrainConfig, batch_size: int, seq_len: int,
               device: torch.device) -> dict:
    """The masking and Gumbel noise that ``electra_forward`` derives from ``key`` (same tags)."""
    P, V = cfg.max_predictions, cfg.model.vocab_size
    return {
        **mask_noise(key, cfg, batch_size, seq_len, device),
        "gumbel_BxPxV": rnglib.gumbel(rnglib.fold_in(key, K_GUMBEL), (batch_size, P, V), device),
    }


def _autocast(amp_dtype: torch.dtype | None, device: torch.device):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def hf_configs(mcfg: ModelConfig, dropout: bool = True):
    """``ElectraConfig`` s of the generator and the discriminator of ``mcfg``."""
    from transformers import ElectraConfig

    common = dict(vocab_size=mcfg.vocab_size, embedding_size=mcfg.embedding_size,
                  max_position_embeddings=mcfg.max_position_embeddings,
                  type_vocab_size=mcfg.type_vocab_size, layer_norm_eps=mcfg.layer_norm_eps,
                  initializer_range=mcfg.initializer_range, pad_token_id=mcfg.pad_token_id,
                  hidden_act="gelu",
                  hidden_dropout_prob=mcfg.hidden_dropout if dropout else 0.0,
                  attention_probs_dropout_prob=mcfg.attention_dropout if dropout else 0.0)

    def one(enc):
        return ElectraConfig(hidden_size=enc.hidden_size, num_hidden_layers=enc.num_layers,
                             num_attention_heads=enc.num_heads,
                             intermediate_size=enc.intermediate_size, **common)
    return one(mcfg.generator), one(mcfg.discriminator)


class HFPeer:
    """ELECTRA pre-training written the way a ``transformers`` user writes it.

    ``ElectraForMaskedLM`` (small generator) and ``ElectraForPreTraining`` share the embedding
    module (``generator.electra.embeddings = discriminator.electra.embeddings``, with the LM
    head re-tied to the shared word embeddings). ``params`` (electra_fn's tree) are loaded
    through :func:`electra_fn.hf.to_hf_state_dict`, so both implementations start equal.
    ``mode`` is ``eager`` or a compile mode; ``dropout=False`` sets both dropouts to 0.
    """

    def __init__(self, cfg: PretrainConfig, params: dict, device: torch.device,
                 amp_dtype: torch.dtype | None = None, mode: str = "eager",
                 dropout: bool = True):
        from transformers import ElectraForMaskedLM, ElectraForPreTraining

        self.cfg, self.device, self.amp_dtype, self.mode = cfg, device, amp_dtype, mode
        gen_cfg, disc_cfg = hf_configs(cfg.model, dropout)
        self.generator = ElectraForMaskedLM(gen_cfg)
        self.discriminator = ElectraForPreTraining(disc_cfg)
        self.generator.load_state_dict(to_hf_state_dict(params, "generator"))
        self.discriminator.load_state_dict(to_hf_state_dict(params, "discriminator"))
        self.generator.to(device).train()
        self.discriminator.to(device).train()
        # Share the embeddings (word, position, token type, LayerNorm) as ELECTRA does.
        shared = self.discriminator.electra.embeddings
        self.generator.electra.embeddings = shared
        self.generator.generator_lm_head.weight = shared.word_embeddings.weight
        self.attn_implementation = getattr(disc_cfg, "_attn_implementation", None)

        named = list(self.generator.named_parameters()) + list(
            self.discriminator.named_parameters())
        seen: set[int] = set()
        decay, no_decay = [], []
        for name, p in named:
            if id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if "LayerNorm" in name or name.endswith("bias") else decay).append(p)
        self.params = decay + no_decay
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        kw = dict(lr=cfg.learning_rate, betas=(cfg.adam_b1, cfg.adam_b2), eps=cfg.adam_eps)
        try:
            self.optimizer = torch.optim.AdamW(groups, fused=True, **kw)
            self.optimizer_impl = "fused"
        except (RuntimeError, ValueError):
            self.optimizer = torch.optim.AdamW(groups, foreach=True, **kw)
            self.optimizer_impl = "foreach"
        total, warmup = cfg.total_steps, cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: max(0.0, 1.0 - s / total) * (
                min(1.0, s / warmup) if warmup > 0 else 1.0))
        self.loss_fn = self.forward_loss
        if mode != "eager":
            self.loss_fn = torch.compile(self.forward_loss,
                                         mode=None if mode == "compile" else mode)
        self.cudagraphs = mode == "reduce-overhead"

    def forward_loss(self, batch: dict, noise: dict) -> tuple[torch.Tensor, dict]:
        """Mask, generator (logits at every position), sample, discriminator, combined loss."""
        cfg = self.cfg
        ids_BxL, types_BxL = batch["input_ids"], batch["token_type_ids"]
        mask_BxL = batch["attention_mask"]
        mb = masking.mask_batch(ids_BxL, noise, max_predictions=cfg.max_predictions,
                                mask_prob=cfg.mask_prob, mask_token_id=MASK_ID,
                                special_ids=SPECIAL_IDS, positions=cfg.masking)
        with _autocast(self.amp_dtype, self.device):
            gen_logits_BxLxV = self.generator(input_ids=mb["masked_ids_BxL"],
                                              attention_mask=mask_BxL,
                                              token_type_ids=types_BxL).logits
        V = gen_logits_BxLxV.shape[-1]
        idx_BxPxV = mb["positions_BxP"][..., None].expand(-1, -1, V)
        logits_BxPxV = gen_logits_BxLxV.gather(1, idx_BxPxV).float()
        weights_BxP = mb["weights_BxP"]
        ce_BxP = F.cross_entropy(logits_BxPxV.reshape(-1, V), mb["labels_BxP"].reshape(-1),
                                 reduction="none").view_as(weights_BxP)
        mlm = (ce_BxP * weights_BxP).sum() / weights_BxP.sum().clamp(min=1.0)
        sampled_BxP = (logits_BxPxV.detach() / cfg.temperature + noise["gumbel_BxPxV"]).argmax(-1)
        fake = sampling.replace_tokens(mb["masked_ids_BxL"], mb["positions_BxP"], sampled_BxP,
                                       mb["labels_BxP"], weights_BxP)
        with _autocast(self.amp_dtype, self.device):
            disc_logits_BxL = self.discriminator(input_ids=fake["disc_ids_BxL"],
                                                 attention_mask=mask_BxL,
                                                 token_type_ids=types_BxL).logits
        real_BxL = mask_BxL.float()
        bce_BxL = F.binary_cross_entropy_with_logits(
            disc_logits_BxL.float(), fake["is_replaced_BxL"].float(), reduction="none")
        rtd = (bce_BxL * real_BxL).sum() / real_BxL.sum().clamp(min=1.0)
        loss = mlm + cfg.disc_weight * rtd
        return loss, {"loss": loss.detach(), "gen_loss": mlm.detach(), "disc_loss": rtd.detach()}

    def step(self, batch: dict, key: torch.Tensor) -> dict:
        """One training step; the noise is drawn eagerly from ``key`` like electra_fn's."""
        B, L = batch["input_ids"].shape
        noise = step_noise(key, self.cfg, B, L, self.device)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss, metrics = self.loss_fn(batch, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_norm, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return metrics
