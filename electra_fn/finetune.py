"""GLUE fine-tuning: a pure step, prediction, evaluation, and the seed loop around them.

``make_finetune_step(model_cfg, ft_cfg, num_labels, is_regression, total_steps)`` returns
``step(ft_params, opt_state, batch, key) -> (ft_params, opt_state, metrics)``: cross entropy (or
MSE on ``logits[:, 0]`` for STS-B), global-norm clipping, and the original's AdamW with
layer-wise learning-rate decay (optimization._get_layer_lrs) under its polynomial schedule with
linear warmup. The learning rate comes from ``opt_state["step"]`` (a 0-d tensor) and dropout from
``key`` (a 0-d int64 tensor, :func:`electra_fn.rng.step_key`), so the step compiles once per
batch shape (eager and compiled runs agree inside ``rng.counter_based()``; otherwise they draw
different dropout streams, see :mod:`electra_fn.rng`). ``run_seed`` / ``summarize_seeds`` /
``results_markdown`` are what :mod:`electra_fn.glue_run` is made of.
"""

from __future__ import annotations

import functools
import time
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import orjson
import torch

from . import checkpoint as ckpt
from . import compiling, losses, model, optim
from .rng import step_key
from .config import FinetuneConfig, ModelConfig
from .data.glue import EncodedSplit, TaskSpec, bucket_batches, get_task
from .hf import CheckpointError, load_hf
from .metrics import glue_score, main_metric, task_metrics
from .pretrain import grad_fn, grad_route_for, init_opt_state
from .runtime import autocast
from .tree import memo_by_structure, tree_leaves, tree_map

Params = dict
Batch = dict
CompileMode = Literal["eager", "static", "dynamic"]
COMPILE_MODES = ("eager", "static", "dynamic")

# ELECTRA-Small-OWT, official code, GLUE dev (ELECTRA_FACTS.md; the paper's convention:
# MCC for CoLA, Spearman for STS-B, accuracy for the rest).
PUBLISHED_SMALL_OWT = {"cola": 56.8, "sst2": 88.3, "mrpc": 87.4, "stsb": 86.8, "qqp": 88.3,
                       "mnli": 78.9, "qnli": 87.9, "rte": 68.5}
# The eight tasks of the paper's GLUE score (WNLI excluded, as in the paper).
PAPER_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
# Padding multiple for compiled static shapes: at most max_len / 8 widths per batch size.
STATIC_PAD_MULTIPLE = 8


class FinetuneDiverged(ValueError):
    """Fine-tuning went non-finite (loss or parameters): its scores would be meaningless."""


def _check_finite(ft_params: Params, losses_T: np.ndarray, what: str) -> None:
    bad_step = next((i for i, x in enumerate(losses_T) if not np.isfinite(x)), None)
    finite_params = all(bool(torch.isfinite(x).all()) for x in tree_leaves(ft_params))
    if bad_step is not None or not finite_params:
        where = (f"the loss is non-finite from step {bad_step + 1}" if bad_step is not None
                 else "the parameters are non-finite")
        raise FinetuneDiverged(f"{what}: fine-tuning diverged ({where}); try a lower --lr")


class FinetuneInputError(ValueError):
    """Inputs that cannot be fine-tuned on (checkpoint, tokenizer); names the files involved."""


# -- parameters and state -----------------------------------------------------------------
def init_finetune(params: Params | None, cfg: ModelConfig, num_labels: int, seed: int) -> Params:
    """The fine-tuning tree from pre-trained ``params``, or from ``init_params(cfg, seed)``
    when None; the classifier is drawn from ``seed`` on the params' device."""
    if params is None:
        params = model.init_params(cfg, seed)
    device = tree_leaves(params["embeddings"])[0].device
    classifier = tree_map(lambda t: t.to(device), model.init_classifier(cfg, num_labels, seed))
    return model.finetune_params(params, classifier)


def init_finetune_state(ft_params: Params) -> dict:
    """``{"adam": zero moments, "step": 0-d int64}``."""
    return init_opt_state(ft_params)


def num_warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    # run_finetuning.py: num_warmup_steps = int(num_train_steps * warmup_proportion)
    return int(total_steps * warmup_fraction)


def finetune_lr_scales(ft_params: Params, model_cfg: ModelConfig, ft_cfg: FinetuneConfig):
    """Per-leaf LR multipliers: head 1, layer i (1-based) decay^(top-i), embeddings decay^top."""
    return optim.layerwise_lr_scales(ft_params, model_cfg.num_layers, ft_cfg.layer_decay,
                                     extra_factor=ft_cfg.extra_decay_factor)


# -- the pure step ------------------------------------------------------------------------
def task_loss(ft_params: Params, batch: Batch, key: torch.Tensor | None, cfg: ModelConfig,
              is_regression: bool) -> tuple[torch.Tensor, dict]:
    """(loss, metrics) of one batch: MSE on logits[:, 0] (regression) or cross entropy."""
    logits_BxC = classifier_logits_of(ft_params, batch, cfg, key).float()  # bf16 under autocast
    labels_B = batch["labels"]
    if is_regression:
        loss = losses.regression_loss(logits_BxC[:, 0], labels_B)
        return loss, {"loss": loss.detach()}
    loss = losses.classification_loss(logits_BxC, labels_B)
    correct_B = (logits_BxC.argmax(-1) == labels_B).to(torch.float32)
    return loss, {"loss": loss.detach(), "accuracy": correct_B.mean().detach()}


def classifier_logits_of(ft_params: Params, batch: Batch, cfg: ModelConfig,
                         key: torch.Tensor | None) -> torch.Tensor:
    return model.classifier_logits(ft_params, batch["input_ids"], batch.get("token_type_ids"),
                                   batch["attention_mask"], cfg, key)


def default_grad_route(mode: CompileMode) -> str:
    """The gradient route for a compile mode (:func:`electra_fn.pretrain.grad_route_for`)."""
    return grad_route_for(mode != "eager")


def make_finetune_step(model_cfg: ModelConfig, ft_cfg: FinetuneConfig, num_labels: int,
                       is_regression: bool, total_steps: int, *,
                       amp_dtype: torch.dtype | None = None, device_type: str = "cpu",
                       grad_route: str = "func", foreach: bool | None = None) -> Callable:
    """Build the pure ``step(ft_params, opt_state, batch, key)`` (wrap with :func:`compile_fn`).

    ``batch`` holds input_ids, token_type_ids, attention_mask [B, L] and labels [B] (int64
    class ids, or float32 scores when ``is_regression``); other keys are ignored. ``metrics``
    are 0-d tensors: loss, grad_norm, lr (and accuracy for classification).
    ``amp_dtype=torch.bfloat16`` runs the network under autocast (float32 master weights,
    optimizer and loss); ``grad_route`` as in :func:`electra_fn.pretrain.grad_fn`;
    ``foreach=False`` updates leaf by leaf, as ``torch.func.vmap`` needs (:func:`train_seeds`);
    None as :func:`electra_fn.optim.multi_tensor`.
    """
    if is_regression and num_labels != 1:
        raise ValueError(f"regression needs num_labels=1, got {num_labels}")
    if not is_regression and num_labels < 2:
        raise ValueError(f"classification needs num_labels >= 2, got {num_labels}")
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    warmup = num_warmup_steps(total_steps, ft_cfg.warmup_fraction)

    def loss_fn(ft_params, batch, key):
        with autocast(amp_dtype, device_type):
            return task_loss(ft_params, batch, key, model_cfg, is_regression)

    grads_of = grad_fn(loss_fn, grad_route)
    # Python constants from the tree's paths: once per structure eagerly, folded away when
    # compiled (tree.memo_by_structure).
    lr_scale_of = memo_by_structure(lambda p: finetune_lr_scales(p, model_cfg, ft_cfg))
    decay_mask_of = memo_by_structure(optim.default_decay_mask)

    def step(ft_params: Params, opt_state: dict, batch: Batch, key: torch.Tensor):
        lr_scale = lr_scale_of(ft_params)
        decay_mask = decay_mask_of(ft_params)
        grads, (loss, metrics) = grads_of(ft_params, batch, key)
        grads, gnorm = optim.clip_by_global_norm(grads, ft_cfg.clip_norm, foreach)
        step_t = opt_state["step"]
        lr = optim.electra_lr(step_t, peak_lr=ft_cfg.learning_rate, total_steps=total_steps,
                              warmup_steps=warmup)
        new_params, new_adam = optim.adamw_update(
            ft_params, grads, opt_state["adam"], lr, b1=ft_cfg.adam_b1, b2=ft_cfg.adam_b2,
            eps=ft_cfg.adam_eps, weight_decay=ft_cfg.weight_decay,
            decay_mask=decay_mask, lr_scale=lr_scale,
            bias_correction_step=step_t + 1 if ft_cfg.adam_bias_correction else None,
            foreach=foreach)
        metrics = dict(metrics, grad_norm=gnorm.detach(), lr=lr.detach())
        return new_params, {"adam": new_adam, "step": step_t + 1}, metrics

    return step


def make_predict(model_cfg: ModelConfig, *, amp_dtype: torch.dtype | None = None,
                 device_type: str = "cpu") -> Callable:
    """``predict(ft_params, batch) -> float32 logits [B, C]`` in eval mode (no dropout, no
    grad), under autocast when ``amp_dtype`` is given."""

    def predict(ft_params: Params, batch: Batch) -> torch.Tensor:
        with torch.no_grad(), autocast(amp_dtype, device_type):
            return classifier_logits_of(ft_params, batch, model_cfg, None).float()

    return predict


def compile_fn(fn: Callable, mode: CompileMode, backend: str = "inductor") -> Callable:
    """``fn`` itself (eager), or ``torch.compile(fn, fullgraph=True)`` with static or dynamic
    shapes. Static shapes compile once per batch shape: pad batches to a multiple of
    ``STATIC_PAD_MULTIPLE``; the recompile limit is raised so they all stay compiled.
    ``backend="aot_eager"`` checks graph capture without inductor's C++ compile (tests)."""
    if mode == "eager":
        return fn
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: expected one of {COMPILE_MODES}")
    if mode == "static":
        # One graph per (batch size, width): up to 2 * max_len / 8 per task, more over tasks.
        import torch._dynamo.config as dynamo_config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 512)
        dynamo_config.accumulated_recompile_limit = max(
            dynamo_config.accumulated_recompile_limit, 4096)
    return compiling.compile(fn, dynamic=(mode == "dynamic"), backend=backend)


@functools.lru_cache(maxsize=8)
def cached_step(model_cfg: ModelConfig, ft_cfg: FinetuneConfig, num_labels: int,
                is_regression: bool, total_steps: int, mode: CompileMode,
                amp_dtype: torch.dtype | None = None, device_type: str = "cpu") -> Callable:
    """The (compiled) step for these static arguments, built once: every seed of a task
    reuses its graphs instead of recompiling for a new closure."""
    return compile_fn(make_finetune_step(model_cfg, ft_cfg.replace(seed=0), num_labels,
                                         is_regression, total_steps, amp_dtype=amp_dtype,
                                         device_type=device_type,
                                         grad_route=default_grad_route(mode)), mode)


@functools.lru_cache(maxsize=8)
def cached_predict(model_cfg: ModelConfig, mode: CompileMode,
                   amp_dtype: torch.dtype | None = None, device_type: str = "cpu") -> Callable:
    return compile_fn(make_predict(model_cfg, amp_dtype=amp_dtype, device_type=device_type),
                      mode)


def default_compile_mode(device: str | torch.device) -> CompileMode:
    """Eager on every device: on a CPU inductor's compile takes longer than it saves at GLUE
    sizes (``benchmarks/finetune_compile.py``), and on a GPU the compile is unmeasured and the
    larger pre-training step's took minutes; ``--compile static|dynamic`` opts in."""
    return "eager"


def pad_multiple_for(mode: CompileMode) -> int:
    return STATIC_PAD_MULTIPLE if mode == "static" else 1


# -- data helpers -------------------------------------------------------------------------
def _to_device(batch: Batch, device: torch.device) -> Batch:
    keep = ("input_ids", "token_type_ids", "attention_mask", "labels")
    return {k: batch[k].to(device, non_blocking=True) for k in keep if k in batch}


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    """Batches per fine-tuning epoch, the last one partial."""
    return -(-num_examples // batch_size)


def subsample(split: EncodedSplit, max_examples: int | None, seed: int = 0) -> EncodedSplit:
    """At most ``max_examples`` original examples, a fixed random subset (``seed``), keeping the
    swapped-order copies (guid ``<guid>-swapped``) of the chosen ones for MRPC and STS-B."""
    cols = split.columns
    guids = cols["guid"]
    originals = [i for i, g in enumerate(guids) if not str(g).endswith("-swapped")]
    if max_examples is None or max_examples >= len(originals):
        return split
    if max_examples < 1:
        raise ValueError(f"max_examples={max_examples} must be >= 1")
    rng = np.random.default_rng(seed)
    chosen = sorted(originals[i] for i in rng.permutation(len(originals))[:max_examples])
    swapped_row = {g[: -len("-swapped")]: i for i, g in enumerate(guids)
                   if str(g).endswith("-swapped")}
    rows = chosen + [swapped_row[guids[i]] for i in chosen if guids[i] in swapped_row]
    columns = {k: [v[i] for i in rows] for k, v in cols.items()}
    return dc_replace(split, columns=columns)


# -- prediction and evaluation --------------------------------------------------------------
def predict_split(predict: Callable, ft_params: Params, split: EncodedSplit, *,
                  is_regression: bool, batch_size: int = 128, pad_to_multiple_of: int = 1,
                  device: str | torch.device = "cpu", target_scale: float = 1.0) -> np.ndarray:
    """Predictions (class ids, or scores for regression: the output × ``target_scale``, the
    score's own scale) in the split's example order."""
    device = torch.device(device)
    out = np.zeros(len(split), dtype=np.float64 if is_regression else np.int64)
    for batch in bucket_batches(split, batch_size, shuffle=False,
                                pad_to_multiple_of=pad_to_multiple_of):
        logits_BxC = predict(ft_params, _to_device(batch, device)).to("cpu", torch.float32)
        pred = logits_BxC[:, 0] * target_scale if is_regression else logits_BxC.argmax(-1)
        out[batch["index"].numpy()] = pred.numpy()
    return out


def evaluate(predict: Callable, ft_params: Params, split: EncodedSplit,
             task: str | TaskSpec, **kwargs) -> dict[str, float]:
    """``task_metrics`` of a labelled split (values in [0, 1]; callers scale by 100)."""
    spec = get_task(task)
    preds = predict_split(predict, ft_params, split, is_regression=spec.is_regression,
                          target_scale=spec.target_scale, **kwargs)
    return task_metrics(spec.name, preds, np.asarray(split.columns["labels"]))


# -- the training loop --------------------------------------------------------------------
ProgressFn = Callable[[int, int, int, dict], None]  # (step, total_steps, rows, metrics)


def train(ft_params: Params, train_split: EncodedSplit, model_cfg: ModelConfig,
          ft_cfg: FinetuneConfig, task: str | TaskSpec, *, seed: int,
          compile_mode: CompileMode = "eager", device: str | torch.device = "cpu",
          amp_dtype: torch.dtype | None = None,
          progress: ProgressFn | None = None,
          pad_widths: list[int] | None = None) -> tuple[Params, dict]:
    """Fine-tune for the task's epochs on batches shuffled by (seed, epoch) (sorted by length
    within chunks if ``ft_cfg.length_bucketing``), regression targets divided by the task's
    ``target_scale``; ``amp_dtype=torch.bfloat16`` trains under autocast with float32 master
    weights. ``pad_widths``: pad step i's batch to that width (as :func:`train_seeds` does).

    Returns (ft_params, info) with info = total_steps, epochs, examples, first/last losses.
    Metrics handed to ``progress`` are tensors: read them (``.item()``) only when logging.
    """
    spec = get_task(task)
    device = torch.device(device)
    epochs = ft_cfg.num_epochs(spec.num_epochs)
    per_epoch = batches_per_epoch(len(train_split), ft_cfg.batch_size)
    total = epochs * per_epoch
    if total == 0:
        raise ValueError(f"{spec.name}: empty training split {train_split.path}")
    step_fn = cached_step(model_cfg, ft_cfg, spec.num_labels, spec.is_regression, total,
                          compile_mode, amp_dtype, device.type)
    opt_state = init_finetune_state(ft_params)
    losses_seen: list[torch.Tensor] = []
    step = 0
    for epoch in range(epochs):
        for batch in bucket_batches(train_split, ft_cfg.batch_size, shuffle=True, seed=seed,
                                    epoch=epoch, pad_to_multiple_of=pad_multiple_for(compile_mode),
                                    sort_by_length=ft_cfg.length_bucketing):
            if pad_widths is not None:
                batch = _pad_width(batch, pad_widths[step], train_split.pad_id)
            if spec.is_regression and spec.target_scale != 1.0:
                batch = {**batch, "labels": batch["labels"] / spec.target_scale}
            key = step_key(seed, step)  # keys stay on the CPU (electra_fn.rng)
            ft_params, opt_state, metrics = step_fn(ft_params, opt_state,
                                                    _to_device(batch, device), key)
            losses_seen.append(metrics["loss"])
            step += 1
            if progress is not None:
                progress(step, total, int(batch["input_ids"].shape[0]), metrics)
    losses_np = torch.stack(losses_seen).to("cpu").numpy()
    _check_finite(ft_params, losses_np, f"{spec.name} seed {seed}")
    k = max(1, min(total // 4, 20))  # mean over the first / last quarter (at most 20 steps)
    info = {"total_steps": total, "epochs": epochs, "train_examples": len(train_split),
            "first_loss": float(losses_np[:k].mean()), "last_loss": float(losses_np[-k:].mean())}
    return ft_params, info


def _stack(trees: list) -> Params:
    return tree_map(lambda *xs: torch.stack(xs), *trees)


def _unstack(tree: Params, n: int) -> list:
    return [tree_map(lambda x, i=i: x[i], tree) for i in range(n)]


def _pad_width(batch: Batch, width: int, pad_id: int) -> Batch:
    extra = width - batch["input_ids"].shape[1]
    if extra == 0:
        return batch
    pad = {"input_ids": pad_id, "token_type_ids": 0, "attention_mask": 0}
    return {k: torch.nn.functional.pad(v, (0, extra), value=pad[k]) if k in pad else v
            for k, v in batch.items()}


def train_seeds(ft_params: list[Params], train_split: EncodedSplit, model_cfg: ModelConfig,
                ft_cfg: FinetuneConfig, task: str | TaskSpec, *, seeds: list[int],
                device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None,
                progress: ProgressFn | None = None) -> list[tuple[Params, dict]]:
    """Fine-tune several seeds at once: one ``torch.func.vmap`` of the pure step over the
    seeds' stacked parameters, optimizer states, batches (each seed's own shuffle, padded to a
    common width) and keys. Batched, dropout comes from the counter-based generator (the
    compiled step's; the native one cannot be batched), whose draws depend on the padded
    width: each seed equals :func:`train` inside ``rng.counter_based()`` with the same
    ``pad_widths`` (returned in the info). Returns :func:`train`'s pairs."""
    from . import rng as rnglib

    if len(ft_params) != len(seeds) or not seeds:
        raise ValueError(f"train_seeds: {len(ft_params)} parameter trees for seeds {seeds}")
    if amp_dtype not in (None, torch.float32):
        raise ValueError(f"train_seeds: batched seeds train in float32 ({amp_dtype} autocast "
                         "under torch.func.vmap fails in the backward in this torch)")
    spec = get_task(task)
    device = torch.device(device)
    epochs = ft_cfg.num_epochs(spec.num_epochs)
    total = epochs * batches_per_epoch(len(train_split), ft_cfg.batch_size)
    if total == 0:
        raise ValueError(f"{spec.name}: empty training split {train_split.path}")
    step_fn = make_finetune_step(model_cfg, ft_cfg, spec.num_labels, spec.is_regression, total,
                                 amp_dtype=amp_dtype, device_type=device.type,
                                 grad_route="func", foreach=False)
    batched = torch.func.vmap(step_fn, randomness="error")
    params = _stack([tree_map(lambda t: t.to(device), p) for p in ft_params])
    opt_state = _stack([init_finetune_state(p) for p in ft_params])
    losses_seen: list[torch.Tensor] = []
    widths: list[int] = []
    step = 0
    with rnglib.counter_based():
        for epoch in range(epochs):
            per_seed = [bucket_batches(train_split, ft_cfg.batch_size, shuffle=True, seed=s,
                                       epoch=epoch, sort_by_length=ft_cfg.length_bucketing)
                        for s in seeds]
            for group in zip(*per_seed):
                width = max(b["input_ids"].shape[1] for b in group)
                widths.append(width)
                group = [_to_device(_pad_width(b, width, train_split.pad_id), device)
                         for b in group]
                batch = _stack(group)
                if spec.is_regression and spec.target_scale != 1.0:
                    batch = {**batch, "labels": batch["labels"] / spec.target_scale}
                keys = torch.stack([step_key(s, step) for s in seeds])
                params, opt_state, metrics = batched(params, opt_state, batch, keys)
                losses_seen.append(metrics["loss"])
                step += 1
                if progress is not None:
                    progress(step, total, int(batch["input_ids"].shape[1]) * len(seeds),
                             {k: v.mean() for k, v in metrics.items()})
    losses_SxT = torch.stack(losses_seen, dim=1).to("cpu").numpy()
    trained = _unstack(params, len(seeds))
    for s, p, losses_T in zip(seeds, trained, losses_SxT):
        _check_finite(p, losses_T, f"{spec.name} seed {s}")
    k = max(1, min(total // 4, 20))
    return [(p, {"total_steps": total, "epochs": epochs, "train_examples": len(train_split),
                 "first_loss": float(losses_SxT[i, :k].mean()),
                 "last_loss": float(losses_SxT[i, -k:].mean()), "pad_widths": widths})
            for i, p in enumerate(trained)]


def run_seed(pretrained: Params | None, model_cfg: ModelConfig, splits: dict[str, EncodedSplit],
             task: str | TaskSpec, ft_cfg: FinetuneConfig, seed: int, *,
             compile_mode: CompileMode = "eager", device: str | torch.device = "cpu",
             amp_dtype: torch.dtype | None = None,
             progress: ProgressFn | None = None, eval_batch_size: int = 128,
             keep_params: bool = False) -> dict:
    """Fine-tune one seed on ``splits["train"]``; evaluate every dev split; predict every test
    split. ``pretrained=None`` initialises from scratch (from ``seed``). Returns metrics (the
    first dev split's unprefixed, e.g. MNLI's ``dev_mismatched/accuracy`` prefixed), test
    predictions, training info and wall time; and the fine-tuned parameters (on the CPU)
    under ``"params"`` if ``keep_params``."""
    spec = get_task(task)
    device = torch.device(device)
    t0 = time.perf_counter()
    ft_params = init_finetune(pretrained, model_cfg, spec.num_labels, seed)
    ft_params = tree_map(lambda t: t.to(device), ft_params)
    ft_params, info = train(ft_params, splits["train"], model_cfg, ft_cfg, spec, seed=seed,
                            compile_mode=compile_mode, device=device, amp_dtype=amp_dtype,
                            progress=progress)
    train_s = time.perf_counter() - t0
    out = _evaluate_seed(ft_params, model_cfg, splits, spec, compile_mode, amp_dtype, device,
                         eval_batch_size)
    out = {"seed": seed, **out, "train": info, "train_s": train_s,
           "wall_s": time.perf_counter() - t0}
    if keep_params:
        out["params"] = tree_map(lambda t: t.detach().to("cpu"), ft_params)
    return out


def run_seeds(pretrained: Params | None, model_cfg: ModelConfig, splits: dict[str, EncodedSplit],
              task: str | TaskSpec, ft_cfg: FinetuneConfig, seeds: list[int], *,
              device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None,
              progress: ProgressFn | None = None, eval_batch_size: int = 128,
              keep_params: bool = False) -> list[dict]:
    """:func:`run_seed` for every seed, trained together (:func:`train_seeds`, one batched
    step; counter-based dropout); the training time is shared out evenly."""
    spec = get_task(task)
    device = torch.device(device)
    t0 = time.perf_counter()
    inits = [init_finetune(pretrained, model_cfg, spec.num_labels, s) for s in seeds]
    trained = train_seeds(inits, splits["train"], model_cfg, ft_cfg, spec, seeds=seeds,
                          device=device, amp_dtype=amp_dtype, progress=progress)
    train_s = (time.perf_counter() - t0) / len(seeds)
    runs = []
    for seed, (ft_params, info) in zip(seeds, trained):
        t1 = time.perf_counter()
        out = _evaluate_seed(ft_params, model_cfg, splits, spec, "eager", amp_dtype, device,
                             eval_batch_size)
        out = {"seed": seed, **out, "train": {**info, "batched_seeds": list(seeds)},
               "train_s": train_s, "wall_s": train_s + time.perf_counter() - t1}
        if keep_params:
            out["params"] = tree_map(lambda t: t.detach().to("cpu"), ft_params)
        runs.append(out)
    return runs


def _evaluate_seed(ft_params: Params, model_cfg: ModelConfig, splits: dict[str, EncodedSplit],
                   spec: TaskSpec, compile_mode: CompileMode, amp_dtype, device: torch.device,
                   eval_batch_size: int) -> dict:
    predict = cached_predict(model_cfg, compile_mode, amp_dtype, device.type)
    kw = dict(is_regression=spec.is_regression, target_scale=spec.target_scale,
              batch_size=eval_batch_size,
              pad_to_multiple_of=pad_multiple_for(compile_mode), device=device)
    metrics: dict[str, float] = {}
    for i, split in enumerate(s for s in spec.dev_splits if s in splits):
        preds = predict_split(predict, ft_params, splits[split], **kw)
        m = task_metrics(spec.name, preds, np.asarray(splits[split].columns["labels"]))
        metrics.update(m if i == 0 else {f"{split}/{k}": v for k, v in m.items()})
    test_predictions = {split: predict_split(predict, ft_params, splits[split], **kw)
                        for split in spec.test_splits if split in splits}
    return {"metrics": metrics, "test_predictions": test_predictions}


# -- summaries and reports ----------------------------------------------------------------
def summarize_seeds(per_seed_metrics: list[dict[str, float]]) -> dict[str, dict]:
    """``{metric: {values, median, mean, std}}`` over seeds (std with ddof=1; 0 for one seed)."""
    if not per_seed_metrics:
        return {}
    out = {}
    for name in per_seed_metrics[0]:
        v = np.asarray([m[name] for m in per_seed_metrics], dtype=np.float64)
        out[name] = {"values": v.tolist(), "median": float(np.median(v)),
                     "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}
    return out


def best_seed_index(per_seed_metrics: list[dict[str, float]], task: str | TaskSpec) -> int:
    """Index of the seed with the best main dev metric (the first on ties)."""
    name = main_metric(get_task(task).name)
    values = [m[name] for m in per_seed_metrics]
    return int(np.argmax(values))


def results_markdown(medians: dict[str, float], num_seeds: dict[str, int],
                     title: str = "GLUE dev results",
                     train_examples: dict[str, tuple[int, int]] | None = None) -> str:
    """A table of our median main metric (x100) per task next to ELECTRA-Small-OWT's, with
    GLUE scores (unweighted means) over the tasks run. ``train_examples`` maps a task to
    (examples used, examples in its train split), shown per task so that tasks run by
    separate invocations with different subsamples are labelled correctly."""
    tasks = [t for t in PAPER_TASKS if t in medians] + sorted(t for t in medians
                                                              if t not in PAPER_TASKS)
    train_examples = train_examples or {}
    lines = [f"# {title}", "",
             "| task | metric | ours (median) | seeds | train examples | ELECTRA-Small-OWT "
             "| difference |",
             "|---|---|---|---|---|---|---|"]
    for t in tasks:
        ours = 100 * medians[t]
        ref = PUBLISHED_SMALL_OWT.get(t)
        ref_s, diff_s = ("–", "–") if ref is None else (f"{ref:.1f}", f"{ours - ref:+.1f}")
        used, total = train_examples.get(t, (None, None))
        n_s = ("–" if used is None else f"{used:,}" if used == total
               else f"{used:,} of {total:,}")
        lines.append(f"| {get_task(t).dir_name} | {main_metric(t)} | {ours:.1f} | "
                     f"{num_seeds.get(t, 0)} | {n_s} | {ref_s} | {diff_s} |")
    if tasks:
        ours_avg = 100 * glue_score({t: medians[t] for t in tasks})
        with_ref = [t for t in tasks if t in PUBLISHED_SMALL_OWT]
        ref_avg = (np.mean([PUBLISHED_SMALL_OWT[t] for t in with_ref]) if with_ref
                   else float("nan"))
        lines.append(f"| **GLUE score** ({len(tasks)} task{'s' * (len(tasks) != 1)}) | mean | "
                     f"**{ours_avg:.1f}** | | | {ref_avg:.1f} | {ours_avg - ref_avg:+.1f} |")
    lines += ["", "Main metrics as in the ELECTRA paper: Matthews corr. (CoLA), Spearman "
              "(STS-B), accuracy (others). Reference: ELECTRA-Small-OWT (official code, 1M "
              "steps), GLUE dev, median of ≥10 seeds; its GLUE score here averages the same "
              "tasks as ours."]
    return "\n".join(lines) + "\n"


def write_submission(out_dir: str | Path, task: str | TaskSpec, run: dict,
                     splits: dict[str, EncodedSplit]) -> dict[str, str]:
    """Write ``run``'s test predictions as GLUE submission files (``out_dir/CoLA.tsv``, ...,
    ``MNLI-m.tsv``/``MNLI-mm.tsv``), indexed by the test files' own ids."""
    from .data.glue import submission_filename, write_predictions

    spec = get_task(task)
    files = {}
    for split, preds in run["test_predictions"].items():
        path = Path(out_dir) / submission_filename(spec, split)
        write_predictions(path, spec, preds, indices=splits[split].columns["guid"])
        files[split] = str(path)
    return files


def collect_results(out_dir: str | Path) -> tuple[dict[str, float], dict[str, int],
                                                  dict[str, tuple[int, int]]]:
    """(median main metric, number of seeds, (train examples used, train examples in the
    split)) per task, from every ``<task>.json`` in ``out_dir``, so tasks run by separate
    invocations (with their own subsamples) share one results table."""
    import orjson

    medians, seeds, sizes = {}, {}, {}
    for path in sorted(Path(out_dir).glob("*.json")):
        try:
            r = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            continue
        if isinstance(r, dict) and path.stem in PUBLISHED_SMALL_OWT.keys() | {"wnli"} and \
                r.get("task") == path.stem and "main_median" in r:
            medians[r["task"]] = float(r["main_median"])
            seeds[r["task"]] = len(r.get("seeds", []))
            data = r.get("data") or {}
            if "train_examples_used" in data and "train_examples_total" in data:
                sizes[r["task"]] = (int(data["train_examples_used"]),
                                    int(data["train_examples_total"]))
    return medians, seeds, sizes


# -- checkpoints and tokenizers -----------------------------------------------------------
def resolve_checkpoint(directory: str | Path) -> Path:
    """``DIR/hf/discriminator`` (our finished pre-training output), else ``DIR/discriminator``,
    else ``DIR`` (a Hugging Face ELECTRA directory), else the newest training checkpoint in
    ``DIR/checkpoints`` (a run stopped before its export); a ``step_N.pt`` file is itself."""
    root = Path(directory)
    if root.is_file() and ckpt.checkpoint_step(root) is not None:
        return root
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {root}")
    for candidate in (root / "hf" / "discriminator", root / "discriminator"):
        if (candidate / "config.json").is_file():
            return candidate
    newest = ckpt.latest_checkpoint(root / "checkpoints")  # a run's config.json is no model's
    if newest is not None:
        return newest
    if (root / "config.json").is_file():
        if is_run_config(root / "config.json"):
            raise FileNotFoundError(
                f"{root} is a pre-training run's folder, but its weights are not here: no "
                f"export in {root / 'hf/discriminator'} and no training checkpoint in "
                f"{root / 'checkpoints'} (a run copied from a record keeps only its logs)")
        return root
    raise FileNotFoundError(f"{root}: no config.json (looked in {root / 'hf/discriminator'}, "
                            f"{root / 'discriminator'} and {root}) and no training "
                            f"checkpoint in {root / 'checkpoints'}")


def is_run_config(path: Path) -> bool:
    """Whether a ``config.json`` is a pre-training run's (``{"pretrain": ...}``), not a model's."""
    try:
        return "pretrain" in orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError, TypeError):
        return False


def load_training_checkpoint(path: Path) -> tuple[dict, ModelConfig]:
    """(params, ModelConfig) of a pre-training checkpoint file ``step_N.pt``, for fine-tuning."""
    try:
        payload = ckpt.load_checkpoint(path)
        model_cfg = ModelConfig.from_dict(dict(payload["config"]["pretrain"]["model"]))
    except (ckpt.CheckpointCorrupt, KeyError, TypeError) as e:
        raise FinetuneInputError(f"{path}: not a readable pre-training checkpoint ({e})") from None
    return payload["params"], model_cfg


def tokenizer_file(directory: str | Path) -> Path:
    """The file a tokenizer directory is read from (tokenizer.model or vocab.txt)."""
    d = Path(directory)
    return d / "tokenizer.model" if (d / "tokenizer.model").is_file() else d / "vocab.txt"


def load_finetune_inputs(checkpoint: str | Path | None, tokenizer_dir: str | Path | None = None,
                         *, from_scratch: bool = False, preset: str | None = None):
    """(params or None, ModelConfig, tokenizer, info) for fine-tuning.

    The checkpoint is resolved by :func:`resolve_checkpoint` and read with ``load_hf`` (or
    :func:`load_training_checkpoint`); the tokenizer comes from ``tokenizer_dir``, else the
    resolved directory (a training checkpoint's run's ``tokenizer/``), else the checkpoint
    root. ``from_scratch`` keeps the config and drops the weights; without a checkpoint it uses
    ``preset`` with the tokenizer's vocabulary size. A vocabulary size that differs between
    checkpoint and tokenizer raises FinetuneInputError naming both files.
    """
    from .data.tokenizer import load_tokenizer

    resolved = resolve_checkpoint(checkpoint) if checkpoint is not None else None
    from_training = resolved is not None and resolved.is_file()
    run_root = resolved.parent.parent if from_training else None  # RUN/checkpoints/step_N.pt
    candidates = [Path(tokenizer_dir)] if tokenizer_dir is not None else [
        d for d in (run_root / "tokenizer" if run_root else resolved,
                    Path(checkpoint) if checkpoint else None) if d is not None]
    tok_dir = next((d for d in candidates if (d / "tokenizer.model").is_file()
                    or (d / "vocab.txt").is_file()), None)
    if tok_dir is None:
        where = ", ".join(str(d) for d in candidates) or "(no --checkpoint or --tokenizer given)"
        raise FileNotFoundError(f"no tokenizer (tokenizer.model or vocab.txt) in {where}")
    tokenizer = load_tokenizer(str(tok_dir))
    tok_file = tokenizer_file(tok_dir)
    if resolved is not None:
        if from_training:
            params, cfg = load_training_checkpoint(resolved)
        else:
            try:
                params, cfg = load_hf(resolved)
            except CheckpointError as e:
                raise FinetuneInputError(str(e)) from None
        if cfg.vocab_size != tokenizer.vocab_size:
            raise FinetuneInputError(
                f"vocabulary mismatch: {resolved / 'config.json'} has vocab_size="
                f"{cfg.vocab_size} but the tokenizer {tok_file} has {tokenizer.vocab_size}")
        if from_scratch:
            params = None
    else:
        if not from_scratch:
            raise FinetuneInputError("a --checkpoint is needed unless fine-tuning from scratch")
        cfg = ModelConfig.from_name(preset or "small", vocab_size=tokenizer.vocab_size)
        params = None
    info = {"checkpoint": str(resolved) if resolved else None, "tokenizer": str(tok_file),
            "tokenizer_id": tokenizer.fingerprint, "from_scratch": from_scratch}
    return params, cfg, tokenizer, info


def max_len_for(cfg: ModelConfig, ft_cfg: FinetuneConfig) -> int:
    if ft_cfg.max_len > cfg.max_position_embeddings:
        raise FinetuneInputError(f"max_len={ft_cfg.max_len} exceeds the model's "
                                 f"max_position_embeddings={cfg.max_position_embeddings}")
    return ft_cfg.max_len


def aggregate_results(task: str, seed_runs: list[dict]) -> dict:
    """The per-task JSON: every seed's metrics, their summary, the main metric's median."""
    spec = get_task(task)
    per_seed = [r["metrics"] for r in seed_runs]
    summary = summarize_seeds(per_seed)
    name = main_metric(spec.name)
    return {
        "task": spec.name, "main_metric": name, "main_median": summary[name]["median"],
        "published_small_owt": PUBLISHED_SMALL_OWT.get(spec.name),
        "seeds": [{"seed": r["seed"], "metrics": r["metrics"], "train": r["train"],
                   "train_s": r["train_s"], "wall_s": r["wall_s"]} for r in seed_runs],
        "summary": summary,
    }


__all__ = [
    "FinetuneInputError", "FinetuneDiverged", "PUBLISHED_SMALL_OWT", "PAPER_TASKS", "COMPILE_MODES",
    "init_finetune", "init_finetune_state", "step_key", "num_warmup_steps",
    "finetune_lr_scales", "task_loss", "make_finetune_step", "make_predict", "compile_fn",
    "cached_step", "cached_predict", "default_compile_mode", "pad_multiple_for",
    "batches_per_epoch", "subsample", "predict_split", "evaluate", "train", "train_seeds",
    "run_seed", "run_seeds",
    "summarize_seeds", "best_seed_index", "results_markdown", "resolve_checkpoint", "is_run_config",
    "load_training_checkpoint",
    "tokenizer_file", "load_finetune_inputs", "max_len_for", "aggregate_results",
    "write_submission", "collect_results",
]
