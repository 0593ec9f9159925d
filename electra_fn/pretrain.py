"""ELECTRA pre-training: a pure ``train_step`` and ``eval_step``.

``make_train_step(cfg)`` returns ``train_step(params, opt_state, batch, key) -> (params,
opt_state, metrics)``. Everything random (masking, dropout, Gumbel sampling) is derived from
``key``, a 0-d int64 tensor (see :mod:`electra_fn.rng`); use :func:`step_key` to make it from
(seed, step), so a run is a pure function of its seed and eager and compiled steps agree.
The learning rate is computed from ``opt_state["step"]`` (a 0-d tensor) and, where
``init_opt_state(params, cfg)`` put them there, the schedule's settings in
``opt_state["schedule"]``, so compiled steps never recompile.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import grad_and_value

from . import distributed, losses, masking, model, optim, runtime, sampling
from . import rng as rnglib
from .rng import step_key  # noqa: F401 (re-exported as pretrain.step_key)
from .config import PretrainConfig
from .masking import DEFAULT_SPECIAL_IDS as SPECIAL_IDS
from .tree import memo_by_structure, tree_flatten, tree_leaves, tree_map, tree_unflatten

Params = dict
Batch = dict
# Purposes folded into a step's key.
_K_MASK_POS, _K_MASK_KEEP, _K_GEN, K_GUMBEL, _K_DISC, _K_PROPOSAL, _K_MIX = range(7)


def schedule_state(cfg: PretrainConfig, device: torch.device | str | None = None) -> dict:
    """The optimizer schedule's settings as 0-d float32 tensors: ``peak_lr``,
    ``total_steps``, ``warmup_steps`` and ``bias_correction`` (1 or 0: Adam's bias-corrected
    step or the original's) from ``cfg``.

    Kept in ``opt_state["schedule"]`` (as optax's ``inject_hyperparams`` does), the step reads
    them as data, so a compiled step is not compiled again when they change (a run re-fitting
    its length to a time budget; a benchmark and a run of different lengths share one compiled
    graph). Replace the tensors to change the schedule."""
    def t(x):
        return torch.tensor(float(x), dtype=torch.float32, device=device)
    return {"peak_lr": t(cfg.learning_rate), "total_steps": t(cfg.total_steps),
            "warmup_steps": t(cfg.warmup_steps),
            "bias_correction": t(1.0 if cfg.adam_bias_correction else 0.0)}


def _bias_correction_step(flag: torch.Tensor, step: torch.Tensor) -> torch.Tensor | None:
    """Adam's bias-correction step t (``step + 1``) where ``flag`` is set, else none.

    As data (compiled, or on a device where reading the flag would wait for it): t = inf when
    unset, where 1 - b^t is exactly 1 and the corrected update equals the original's bit for
    bit. Eagerly on the CPU the flag is read and the uncorrected step skips the correction."""
    if runtime.traced() or flag.device.type != "cpu":
        return torch.where(flag > 0, (step + 1).to(torch.float32), float("inf"))
    return step + 1 if bool(flag > 0) else None


def init_opt_state(params: Params, cfg: PretrainConfig | None = None) -> dict:
    """AdamW moments plus the step counter (a 0-d int64 tensor on the params' device) and,
    given ``cfg``, its schedule's settings (:func:`schedule_state`). Without them the step
    uses its own ``cfg``'s schedule as constants."""
    device = tree_leaves(params)[0].device
    state = {"adam": optim.adamw_init(params), "step": torch.zeros((), dtype=torch.int64,
                                                                   device=device)}
    if cfg is not None:
        state["schedule"] = schedule_state(cfg, device)
    return state


def replaced_batch(params: Params, batch: Batch, key: torch.Tensor, cfg: PretrainConfig,
                   train: bool = True, mix_logits_V: torch.Tensor | None = None) -> dict:
    """Mask, run the generator and sample its replacements: the discriminator's input.

    Returns the masking (``masked_ids_BxL``, ``positions_BxP``, ``labels_BxP``,
    ``weights_BxP``), the generator's ``gen_logits_BxPxV`` and ``sampled_BxP``, and
    :func:`sampling.replace_tokens`' ``disc_ids_BxL`` and ``is_replaced_BxL``. In training
    with ``cfg.mix_fraction > 0`` that share of the slots (at random) takes a draw from the
    fixed proposal ``mix_logits_V`` [V] instead of the generator's sample; evaluation
    (``train=False``) always scores the generator's own samples."""
    mcfg = cfg.model
    dev = batch["input_ids"].device
    mb = masked_batch(batch, key, cfg)
    gen_key = rnglib.fold_in(key, _K_GEN) if train else None
    gen_logits_BxPxV = model.generator_logits(params, mb["masked_ids_BxL"],
                                              batch.get("token_type_ids"),
                                              batch["attention_mask"], mcfg,
                                              positions_BxP=mb["positions_BxP"], key=gen_key)
    # Sampling in float32 with no gradient into the generator (pretrain_helpers.sample_from_softmax).
    gumbel_BxPxV = rnglib.gumbel(rnglib.fold_in(key, K_GUMBEL), tuple(gen_logits_BxPxV.shape),
                                 dev)
    sampled_BxP = sampling.gumbel_sample(gen_logits_BxPxV, gumbel_BxPxV, cfg.temperature)
    if train and cfg.mix_fraction > 0:
        if mix_logits_V is None:
            raise ValueError(f"mix_fraction={cfg.mix_fraction} needs mix_logits_V (a fixed "
                             "proposal, see proposal_logits)")
        shape = tuple(sampled_BxP.shape)
        u_BxP = rnglib.uniform(rnglib.fold_in(key, _K_PROPOSAL), shape, dev)
        use_BxP = rnglib.uniform(rnglib.fold_in(key, _K_MIX), shape, dev) < cfg.mix_fraction
        sampled_BxP = torch.where(use_BxP, proposal_sample(mix_logits_V, u_BxP), sampled_BxP)
    fake = sampling.replace_tokens(mb["masked_ids_BxL"], mb["positions_BxP"], sampled_BxP,
                                   mb["labels_BxP"], mb["weights_BxP"])
    return {**mb, **fake, "gen_logits_BxPxV": gen_logits_BxPxV, "sampled_BxP": sampled_BxP}


def proposal_sample(logits_V: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token ids ~ softmax(``logits_V``) by inverse CDF, one per uniform in ``u`` (any
    shape): one uniform a draw instead of a [..., V] Gumbel tensor, as the proposal is the
    same for every slot. Zero-probability tokens have empty intervals and never come up."""
    cdf_V = torch.cumsum(torch.softmax(logits_V.to(u.device, torch.float64), 0), 0)
    ids = torch.searchsorted(cdf_V, (u.to(torch.float64) * cdf_V[-1]).contiguous(), right=True)
    return ids.clamp_max(cdf_V.shape[0] - 1)


def electra_forward(params: Params, batch: Batch, key: torch.Tensor, cfg: PretrainConfig,
                    train: bool = True, mix_logits_V: torch.Tensor | None = None,
                    gen_scale: torch.Tensor | None = None,
                    denominators: tuple | None = None) -> tuple[torch.Tensor, dict]:
    """Mask, run the generator, sample, run the discriminator; return (loss, metrics).

    ``train=False`` turns dropout off (the masking and sampling noise still come from ``key``).
    ``mix_logits_V``: the fixed proposal of ``cfg.mix_fraction`` (:func:`replaced_batch`);
    ``gen_scale`` (a 0-d tensor) multiplies the generator's loss weight (``gen_delay_steps``).
    ``denominators``: (masked slots, tokens) of the whole data-parallel batch, which the means
    divide by (:func:`local_counts`): the loss and the summed metrics are then this rank's share.
    """
    loss, metrics, _, _ = electra_forward_parts(params, batch, key, cfg, train, mix_logits_V,
                                                gen_scale, denominators)
    return loss, metrics


def electra_forward_parts(params: Params, batch: Batch, key: torch.Tensor, cfg: PretrainConfig,
                          train: bool = True, mix_logits_V: torch.Tensor | None = None,
                          gen_scale: torch.Tensor | None = None,
                          denominators: tuple | None = None) -> tuple:
    """:func:`electra_forward`'s (loss, metrics) and the :func:`replaced_batch` and
    discriminator logits [B, L] they came from."""
    slots, tokens = denominators if denominators is not None else (None, None)
    types_BxL = batch.get("token_type_ids")
    mask_BxL = batch["attention_mask"]
    fake = replaced_batch(params, batch, key, cfg, train, mix_logits_V)
    mlm, gen_acc = losses.mlm_loss(fake["gen_logits_BxPxV"], fake["labels_BxP"],
                                   fake["weights_BxP"], slots)
    disc_key = rnglib.fold_in(key, _K_DISC) if train else None
    disc_logits_BxL = model.discriminator_logits(params, fake["disc_ids_BxL"], types_BxL,
                                                 mask_BxL, cfg.model, key=disc_key)
    rtd = losses.rtd_loss(disc_logits_BxL, fake["is_replaced_BxL"], mask_BxL, tokens)
    gen_weight = cfg.gen_weight if gen_scale is None else cfg.gen_weight * gen_scale
    loss = losses.electra_loss(mlm, rtd["loss"], cfg.disc_weight, gen_weight)
    n_real = mask_BxL.to(torch.float32).sum()
    replaced_of = n_real if tokens is None else tokens
    metrics = {
        "loss": loss.detach(),
        "gen_loss": mlm.detach(),
        "gen_accuracy": gen_acc.detach(),
        "disc_loss": rtd["loss"].detach(),
        "disc_accuracy": rtd["accuracy"].detach(),
        "disc_replaced_accuracy": rtd["replaced_accuracy"].detach(),
        "disc_original_accuracy": rtd["original_accuracy"].detach(),
        "replaced_fraction": (fake["is_replaced_BxL"].to(torch.float32).sum()
                              / replaced_of).detach(),
        "masked_tokens": fake["weights_BxP"].sum().detach(),
        "tokens": n_real.detach(),
    }
    if not train:
        metrics["disc_auc"] = losses.rtd_auc(disc_logits_BxL, fake["is_replaced_BxL"], mask_BxL)
    return loss, metrics, fake, disc_logits_BxL


def mask_noise(key: torch.Tensor, cfg: PretrainConfig, batch_size: int, seq_len: int,
               device: torch.device | str) -> dict:
    """The masking noise a step with ``key`` draws (:func:`masking.mask_batch`'s ``noise``
    for ``cfg.masking``)."""
    P = cfg.max_predictions
    u_key, u_shape = (("position_u_BxP", (batch_size, P)) if cfg.masking == "original"
                      else ("position_u_BxL", (batch_size, seq_len)))
    return {u_key: rnglib.uniform(rnglib.fold_in(key, _K_MASK_POS), u_shape, device),
            "keep_u_BxP": rnglib.uniform(rnglib.fold_in(key, _K_MASK_KEEP),
                                         (batch_size, P), device)}


def masked_batch(batch: Batch, key: torch.Tensor, cfg: PretrainConfig) -> dict:
    """The step's masking (masking.mask_batch) with its noise drawn from ``key``."""
    ids_BxL = batch["input_ids"]
    B, Lx = ids_BxL.shape
    P = cfg.max_predictions
    noise = mask_noise(key, cfg, B, Lx, ids_BxL.device)
    return masking.mask_batch(ids_BxL, noise, max_predictions=P, mask_prob=cfg.mask_prob,
                              mask_token_id=cfg.mask_id, special_ids=cfg.special_ids,
                              positions=cfg.masking, pad_token_id=cfg.pad_id)


def proposal_logits(kind: str, vocab_size: int, token_counts_V=None,
                    special_ids: tuple[int, ...] = SPECIAL_IDS) -> torch.Tensor:
    """Log-weights [V] of a fixed replacement distribution for :func:`fixed_proposal_metrics`:
    ``"uniform"`` (every non-special token alike) or ``"unigram"`` (token frequencies, from
    ``token_counts_V``, e.g. counted over the training data). ``special_ids`` get -inf."""
    if kind == "uniform":
        w_V = torch.ones(vocab_size, dtype=torch.float64)
    elif kind == "unigram":
        if token_counts_V is None:
            raise ValueError("proposal 'unigram' needs token_counts_V")
        w_V = torch.as_tensor(token_counts_V, dtype=torch.float64).clone()
        if w_V.shape != (vocab_size,):
            raise ValueError(f"token_counts_V has shape {tuple(w_V.shape)}, expected "
                             f"({vocab_size},)")
    else:
        raise ValueError(f"proposal kind {kind!r}: expected 'uniform' or 'unigram'")
    w_V[list(special_ids)] = 0.0
    if not bool((w_V > 0).any()):
        raise ValueError(f"proposal {kind!r} puts no weight on any ordinary token")
    return torch.log(w_V).to(torch.float32)


def fixed_proposal_batch(batch: Batch, key: torch.Tensor, cfg: PretrainConfig,
                         logits_V: torch.Tensor) -> dict:
    """The discriminator's input when the masked positions (those :func:`electra_forward`
    masks with ``key``) are refilled by draws from softmax(``logits_V``) [V]:
    ``disc_ids_BxL``, ``is_replaced_BxL`` (see sampling.replace_tokens) and ``positions_BxP``,
    ``weights_BxP`` of the masking."""
    ids_BxL = batch["input_ids"]
    mb = masked_batch(batch, key, cfg)
    B, P = mb["positions_BxP"].shape
    u_BxP = rnglib.uniform(rnglib.fold_in(key, _K_PROPOSAL), (B, P), ids_BxL.device)
    sampled_BxP = proposal_sample(logits_V, u_BxP)
    fake = sampling.replace_tokens(mb["masked_ids_BxL"], mb["positions_BxP"], sampled_BxP,
                                   mb["labels_BxP"], mb["weights_BxP"])
    return {**fake, "positions_BxP": mb["positions_BxP"], "weights_BxP": mb["weights_BxP"]}


def fixed_proposal_metrics(params: Params, batch: Batch, key: torch.Tensor,
                           cfg: PretrainConfig, logits_V: torch.Tensor) -> dict:
    """Discriminator metrics (dropout off) on the step's masked positions refilled from a FIXED
    distribution ``logits_V`` instead of the generator.

    The usual held-out metrics score the discriminator against the current generator, whose
    samples get harder to spot as it learns, so they mix the two networks' progress. Against
    a fixed proposal the task is the same at every evaluation: the scores measure the
    discriminator alone. Masking is the same as :func:`electra_forward` with the same key;
    a sample equal to the original counts as original, as in training.
    """
    mask_BxL = batch["attention_mask"]
    fake = fixed_proposal_batch(batch, key, cfg, logits_V)
    disc_logits_BxL = model.discriminator_logits(params, fake["disc_ids_BxL"],
                                                 batch.get("token_type_ids"), mask_BxL,
                                                 cfg.model, key=None)
    rtd = losses.rtd_loss(disc_logits_BxL, fake["is_replaced_BxL"], mask_BxL)
    n_real = mask_BxL.to(torch.float32).sum()
    return {
        "disc_loss": rtd["loss"],
        "disc_accuracy": rtd["accuracy"],
        "disc_replaced_accuracy": rtd["replaced_accuracy"],
        "disc_original_accuracy": rtd["original_accuracy"],
        "disc_auc": losses.rtd_auc(disc_logits_BxL, fake["is_replaced_BxL"], mask_BxL),
        "replaced_fraction": fake["is_replaced_BxL"].to(torch.float32).sum() / n_real,
        "tokens": n_real,
    }


def _where_tree(cond: torch.Tensor, a, b):
    return tree_map(lambda x, y: torch.where(cond, x, y), a, b)


GRAD_ROUTES = ("func", "autograd")


def grad_route_for(compiled: bool) -> str:
    """The faster correct route: ``torch.func`` compiles as one graph, so compiled steps use
    it; an eager step uses autograd over the leaves, which does less host work and is faster
    on GPU and CPU alike (records/2026-11-27_h200-session1, records/2026-11-27_cpu-throughput)."""
    return "func" if compiled else "autograd"


def grad_fn(loss_fn: Callable, grad_route: str = "func") -> Callable:
    """``(params, *args) -> (grads, (loss, aux))`` of ``loss_fn(params, *args) -> (loss, aux)``
    by ``torch.func.grad_and_value`` (``"func"``: one graph when compiled) or by
    ``torch.autograd.grad`` over detached leaves (``"autograd"``: faster eagerly)."""
    if grad_route not in GRAD_ROUTES:
        raise ValueError(f"grad_route={grad_route!r}: expected 'func' or 'autograd'")
    if grad_route == "func":
        return grad_and_value(loss_fn, has_aux=True)

    def grads_of(params, *args):
        leaves, spec = tree_flatten(params)
        leaves = [p.detach().requires_grad_(True) for p in leaves]
        with torch.enable_grad():
            loss, aux = loss_fn(tree_unflatten(leaves, spec), *args)
            g = torch.autograd.grad(loss, leaves)
        return tree_unflatten(list(g), spec), (loss.detach(), aux)

    return grads_of


def local_counts(batch: Batch, key: torch.Tensor, cfg: PretrainConfig) -> torch.Tensor:
    """[masked slots, non-padding tokens] (float32) of the step with ``key`` on ``batch``:
    summed over the data-parallel ranks, the denominators of the global means."""
    weights_BxP = masked_batch(batch, key, cfg)["weights_BxP"]
    return torch.stack([weights_BxP.to(torch.float32).sum(),
                        batch["attention_mask"].to(torch.float32).sum()])


# Metrics that, with global denominators, are each rank's share of the global value (summed);
# the two accuracies over replaced or original tokens are means weighted by those counts; any
# other metric is the mean of the ranks' values.
SUMMED_METRICS = ("loss", "gen_loss", "gen_accuracy", "disc_loss", "disc_accuracy",
                  "replaced_fraction", "masked_tokens", "tokens")
WEIGHTED_METRICS = ("disc_replaced_accuracy", "disc_original_accuracy")


def rank_metric_terms(metrics: dict, tokens: torch.Tensor, world_size: int) -> torch.Tensor:
    """A rank's metrics (computed with ``tokens``, the global token count, as denominator) as
    one vector whose sum over the ranks :func:`global_metrics` turns into the global ones."""
    replaced = metrics["replaced_fraction"] * tokens
    original = metrics["tokens"] - replaced
    rest = [metrics[k].to(torch.float32) / world_size for k in metrics
            if k not in SUMMED_METRICS + WEIGHTED_METRICS]
    return torch.stack([*(metrics[k] for k in SUMMED_METRICS),
                        metrics["disc_replaced_accuracy"] * (replaced + losses.EPS), replaced,
                        metrics["disc_original_accuracy"] * (original + losses.EPS), original,
                        *rest])


def global_metrics(summed: torch.Tensor, names: list[str]) -> dict:
    """The metrics ``names`` (a rank's metrics' keys, in order) of the whole batch from the
    ranks' :func:`rank_metric_terms`, summed."""
    n = len(SUMMED_METRICS)
    out = dict(zip(SUMMED_METRICS, summed[:n]))
    out["disc_replaced_accuracy"] = summed[n] / (summed[n + 1] + losses.EPS)
    out["disc_original_accuracy"] = summed[n + 2] / (summed[n + 3] + losses.EPS)
    out.update(zip([k for k in names if k not in out], summed[n + 4:]))
    return {k: out[k] for k in names}


def make_train_step(cfg: PretrainConfig, *, amp_dtype: torch.dtype | None = None,
                    device_type: str = "cpu", grad_route: str = "func",
                    mix_logits_V: torch.Tensor | None = None,
                    world: distributed.World | None = None) -> Callable:
    """Build the pure ``train_step`` for ``cfg`` (compile it with ``torch.compile``).

    ``amp_dtype=torch.bfloat16`` runs the networks under autocast with float32 master weights,
    float32 losses and float32 sampling. ``grad_route`` is ``"func"`` (torch.func.grad_and_value,
    the default: it compiles as one graph) or ``"autograd"`` (torch.autograd.grad over leaves).
    A non-finite loss or gradient skips the update (params and moments unchanged) and reports
    ``metrics["skipped"] = 1``. ``mix_logits_V`` is the fixed proposal that
    ``cfg.mix_fraction > 0`` draws from (:func:`replaced_batch`).

    Given a data-parallel ``world`` the step takes the rank's rows of the global batch and
    draws their rows of its noise; the loss terms are divided by the global counts and summed
    with the gradients over the ranks before clipping, so the update, the metrics and the skip
    decision are those of one process on the whole batch, on every rank.
    """
    if cfg.mix_fraction > 0 and mix_logits_V is None:
        raise ValueError(f"mix_fraction={cfg.mix_fraction} needs mix_logits_V")

    def loss_fn(params, batch, key, gen_scale, denominators=None):
        with runtime.autocast(amp_dtype, device_type):
            return electra_forward(params, batch, key, cfg, train=True,
                                   mix_logits_V=mix_logits_V, gen_scale=gen_scale,
                                   denominators=denominators)

    grads_of = grad_fn(loss_fn, grad_route)

    def data_parallel_grads(params, batch, key, gen_scale):
        rows = batch["input_ids"].shape[0]
        with rnglib.batch_rows(world.rank * rows, world.size * rows):
            counts = distributed.all_reduce_sum([local_counts(batch, key, cfg)], world)[0]
            grads, (_, metrics) = grads_of(params, batch, key, gen_scale,
                                           (counts[0], counts[1]))
        leaves, spec = tree_flatten(grads)
        *leaves, terms = distributed.all_reduce_sum(
            leaves + [rank_metric_terms(metrics, counts[1], world.size)], world)
        metrics = global_metrics(terms, list(metrics))
        return tree_unflatten(leaves, spec), (metrics["loss"], metrics)
    # A pure function of the tree's paths: once per structure eagerly (~5 ms a call), traced
    # away when compiled (tree.memo_by_structure).
    decay_mask_of = memo_by_structure(optim.default_decay_mask)

    def train_step(params: Params, opt_state: dict, batch: Batch, key: torch.Tensor):
        decay_mask = decay_mask_of(params)
        # gen_delay_steps: the generator's loss counts from that step on (0-d, no recompile).
        gen_scale = ((opt_state["step"] >= cfg.gen_delay_steps).to(torch.float32)
                     if cfg.gen_delay_steps > 0 else None)
        if world is None:
            grads, (loss, metrics) = grads_of(params, batch, key, gen_scale)
        else:
            grads, (loss, metrics) = data_parallel_grads(params, batch, key, gen_scale)
        grads, gnorm = optim.clip_by_global_norm(grads, cfg.clip_norm)
        step = opt_state["step"]
        sched = opt_state.get("schedule")
        if sched is None:
            lr = optim.electra_lr(step, peak_lr=cfg.learning_rate, total_steps=cfg.total_steps,
                                  warmup_steps=cfg.warmup_steps)
            bc_step = step + 1 if cfg.adam_bias_correction else None
        else:
            lr = optim.electra_lr(step, peak_lr=sched["peak_lr"],
                                  total_steps=sched["total_steps"],
                                  warmup_steps=sched["warmup_steps"])
            bc_step = _bias_correction_step(sched["bias_correction"], step)
        new_params, new_adam = optim.adamw_update(
            params, grads, opt_state["adam"], lr, b1=cfg.adam_b1, b2=cfg.adam_b2,
            eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
            decay_mask=decay_mask,
            bias_correction_step=bc_step)
        finite = torch.isfinite(loss) & torch.isfinite(gnorm)
        if runtime.traced():
            # Compiled: fused into the update's kernels. Captured as a CUDA graph: no host read.
            new_params = _where_tree(finite, new_params, params)
            new_adam = _where_tree(finite, new_adam, opt_state["adam"])
        elif not bool(finite):
            # Eagerly: one host check instead of a `where` (a launch and a full copy) per
            # parameter and moment. On a GPU the check waits for the step's kernels.
            new_params, new_adam = params, opt_state["adam"]
        metrics = dict(metrics)
        metrics.update(grad_norm=gnorm.detach(), lr=lr.detach(),
                       skipped=(~finite).to(torch.float32))
        new_state = {"adam": new_adam, "step": step + 1}
        if sched is not None:
            new_state["schedule"] = sched
        return new_params, new_state, metrics

    return train_step


def make_eval_step(cfg: PretrainConfig, *, amp_dtype: torch.dtype | None = None,
                   device_type: str = "cpu", proposals: dict | None = None,
                   extra_metrics: Callable | None = None) -> Callable:
    """``eval_step(params, batch, key) -> metrics`` with dropout off.

    ``proposals`` maps a name to fixed replacement log-weights [V] (:func:`proposal_logits`);
    for each, :func:`fixed_proposal_metrics` is added as ``"{name}/{metric}"``.
    ``extra_metrics(params, batch, key, fake, disc_logits_BxL) -> dict`` adds metrics computed
    from the same forward (:func:`electra_forward_parts`; e.g. electra_fn.diagnostics).
    """
    proposals = dict(proposals or {})

    def eval_step(params: Params, batch: Batch, key: torch.Tensor) -> dict:
        with torch.no_grad(), runtime.autocast(amp_dtype, device_type):
            _, metrics, fake, disc_logits_BxL = electra_forward_parts(params, batch, key, cfg,
                                                                      train=False)
            metrics = dict(metrics)
            if extra_metrics is not None:
                metrics.update(extra_metrics(params, batch, key, fake, disc_logits_BxL))
            for name, logits_V in proposals.items():
                fixed = fixed_proposal_metrics(params, batch, key, cfg, logits_V)
                metrics.update({f"{name}/{k}": v for k, v in fixed.items()})
        return metrics

    return eval_step
