"""ELECTRA pre-training: a pure ``train_step`` and ``eval_step``.

``make_train_step(cfg)`` returns ``train_step(params, opt_state, batch, key) -> (params,
opt_state, metrics)``. Everything random (masking, dropout, Gumbel sampling) is derived from
``key``, a 0-d int64 tensor (see :mod:`electra_fn.rng`); use :func:`step_key` to make it from
(seed, step), so a run is a pure function of its seed and eager and compiled steps agree.
The learning rate is computed from ``opt_state["step"]`` (a 0-d tensor), so compiled steps
never recompile.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch.func import grad_and_value

from . import losses, masking, model, optim, sampling
from . import rng as rnglib
from .config import CLS_ID, MASK_ID, PAD_ID, SEP_ID, PretrainConfig
from .tree import tree_leaves, tree_map, tree_unflatten, tree_flatten

Params = dict
Batch = dict
# Purposes folded into a step's key.
_K_MASK_POS, _K_MASK_KEEP, _K_GEN, _K_GUMBEL, _K_DISC = range(5)


def step_key(seed: int, step: int | torch.Tensor) -> torch.Tensor:
    """The key of training step ``step`` of a run seeded with ``seed`` (a CPU 0-d tensor)."""
    return rnglib.fold_in(rnglib.key(seed), step)


def init_opt_state(params: Params) -> dict:
    """AdamW moments plus the step counter (a 0-d int64 tensor on the params' device)."""
    device = tree_leaves(params)[0].device
    return {"adam": optim.adamw_init(params), "step": torch.zeros((), dtype=torch.int64,
                                                                   device=device)}


def _autocast(cfg_dtype: torch.dtype | None, device_type: str):
    if cfg_dtype is None or cfg_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=cfg_dtype)


def electra_forward(params: Params, batch: Batch, key: torch.Tensor, cfg: PretrainConfig,
                    train: bool = True) -> tuple[torch.Tensor, dict]:
    """Mask, run the generator, sample, run the discriminator; return (loss, metrics).

    ``train=False`` turns dropout off (the masking and sampling noise still come from ``key``).
    """
    mcfg = cfg.model
    ids_BxL = batch["input_ids"]
    types_BxL = batch.get("token_type_ids")
    mask_BxL = batch["attention_mask"]
    B, Lx = ids_BxL.shape
    P = cfg.max_predictions
    dev = ids_BxL.device
    noise = {"position_u_BxL": rnglib.uniform(rnglib.fold_in(key, _K_MASK_POS), (B, Lx), dev),
             "keep_u_BxP": rnglib.uniform(rnglib.fold_in(key, _K_MASK_KEEP), (B, P), dev)}
    mb = masking.mask_batch(ids_BxL, noise, max_predictions=P, mask_prob=cfg.mask_prob,
                            mask_token_id=MASK_ID, special_ids=(PAD_ID, CLS_ID, SEP_ID, MASK_ID))
    gen_key = rnglib.fold_in(key, _K_GEN) if train else None
    gen_logits_BxPxV = model.generator_logits(params, mb["masked_ids_BxL"], types_BxL, mask_BxL,
                                              mcfg, positions_BxP=mb["positions_BxP"],
                                              key=gen_key)
    mlm, gen_acc = losses.mlm_loss(gen_logits_BxPxV, mb["labels_BxP"], mb["weights_BxP"])
    # Sampling in float32 with no gradient into the generator (pretrain_helpers.sample_from_softmax).
    gumbel_BxPxV = rnglib.gumbel(rnglib.fold_in(key, _K_GUMBEL), tuple(gen_logits_BxPxV.shape),
                                 dev)
    sampled_BxP = sampling.gumbel_sample(gen_logits_BxPxV, gumbel_BxPxV, cfg.temperature)
    fake = sampling.replace_tokens(mb["masked_ids_BxL"], mb["positions_BxP"], sampled_BxP,
                                   mb["labels_BxP"], mb["weights_BxP"])
    disc_key = rnglib.fold_in(key, _K_DISC) if train else None
    disc_logits_BxL = model.discriminator_logits(params, fake["disc_ids_BxL"], types_BxL,
                                                 mask_BxL, mcfg, key=disc_key)
    rtd = losses.rtd_loss(disc_logits_BxL, fake["is_replaced_BxL"], mask_BxL)
    loss = losses.electra_loss(mlm, rtd["loss"], cfg.disc_weight)
    n_real = mask_BxL.to(torch.float32).sum()
    metrics = {
        "loss": loss.detach(),
        "gen_loss": mlm.detach(),
        "gen_accuracy": gen_acc.detach(),
        "disc_loss": rtd["loss"].detach(),
        "disc_accuracy": rtd["accuracy"].detach(),
        "disc_replaced_accuracy": rtd["replaced_accuracy"].detach(),
        "disc_original_accuracy": rtd["original_accuracy"].detach(),
        "replaced_fraction": (fake["is_replaced_BxL"].to(torch.float32).sum() / n_real).detach(),
        "masked_tokens": mb["weights_BxP"].sum().detach(),
        "tokens": n_real.detach(),
    }
    if not train:
        metrics["disc_auc"] = losses.rtd_auc(disc_logits_BxL, fake["is_replaced_BxL"], mask_BxL)
    return loss, metrics


def _where_tree(cond: torch.Tensor, a, b):
    return tree_map(lambda x, y: torch.where(cond, x, y), a, b)


def make_train_step(cfg: PretrainConfig, *, amp_dtype: torch.dtype | None = None,
                    device_type: str = "cpu", grad_route: str = "func") -> Callable:
    """Build the pure ``train_step`` for ``cfg`` (compile it with ``torch.compile``).

    ``amp_dtype=torch.bfloat16`` runs the networks under autocast with float32 master weights,
    float32 losses and float32 sampling. ``grad_route`` is ``"func"`` (torch.func.grad_and_value,
    the default: it compiles as one graph) or ``"autograd"`` (torch.autograd.grad over leaves).
    A non-finite loss or gradient skips the update (params and moments unchanged) and reports
    ``metrics["skipped"] = 1``.
    """
    if grad_route not in ("func", "autograd"):
        raise ValueError(f"grad_route={grad_route!r}: expected 'func' or 'autograd'")

    def loss_fn(params, batch, key):
        with _autocast(amp_dtype, device_type):
            return electra_forward(params, batch, key, cfg, train=True)

    def grads_of(params, batch, key):
        if grad_route == "func":
            return grad_and_value(loss_fn, has_aux=True)(params, batch, key)
        leaves, spec = tree_flatten(params)
        leaves = [p.detach().requires_grad_(True) for p in leaves]
        with torch.enable_grad():
            loss, metrics = loss_fn(tree_unflatten(leaves, spec), batch, key)
            g = torch.autograd.grad(loss, leaves)
        return tree_unflatten(list(g), spec), (loss.detach(), metrics)

    def train_step(params: Params, opt_state: dict, batch: Batch, key: torch.Tensor):
        # Recomputed per call (a pure function of the tree's paths; traced away when compiled):
        # caching it in a closure dict made the compiled step guard on the dict and recompile
        # on its second call.
        decay_mask = optim.default_decay_mask(params)
        grads, (loss, metrics) = grads_of(params, batch, key)
        grads, gnorm = optim.clip_by_global_norm(grads, cfg.clip_norm)
        step = opt_state["step"]
        lr = optim.electra_lr(step, peak_lr=cfg.learning_rate, total_steps=cfg.total_steps,
                              warmup_steps=cfg.warmup_steps)
        new_params, new_adam = optim.adamw_update(
            params, grads, opt_state["adam"], lr, b1=cfg.adam_b1, b2=cfg.adam_b2,
            eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
            decay_mask=decay_mask,
            bias_correction_step=step + 1 if cfg.adam_bias_correction else None)
        finite = torch.isfinite(loss) & torch.isfinite(gnorm)
        if torch.compiler.is_compiling():  # fused into the update's kernels
            new_params = _where_tree(finite, new_params, params)
            new_adam = _where_tree(finite, new_adam, opt_state["adam"])
        elif not bool(finite):
            # Eagerly: one host check instead of a `where` (a launch and a full copy) per
            # parameter and moment. On a GPU the check waits for the step's kernels.
            new_params, new_adam = params, opt_state["adam"]
        metrics = dict(metrics)
        metrics.update(grad_norm=gnorm.detach(), lr=lr.detach(),
                       skipped=(~finite).to(torch.float32))
        return new_params, {"adam": new_adam, "step": step + 1}, metrics

    return train_step


def make_eval_step(cfg: PretrainConfig, *, amp_dtype: torch.dtype | None = None,
                   device_type: str = "cpu") -> Callable:
    """``eval_step(params, batch, key) -> metrics`` with dropout off."""

    def eval_step(params: Params, batch: Batch, key: torch.Tensor) -> dict:
        with torch.no_grad(), _autocast(amp_dtype, device_type):
            _, metrics = electra_forward(params, batch, key, cfg, train=False)
        return metrics

    return eval_step
