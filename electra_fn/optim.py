"""Pure AdamW of the original ELECTRA (model/optimization.py), schedules, clipping, layer-wise LR.

The update is written for lists of tensors (out-of-place ``torch._foreach_*`` ops, which
return new lists) and lifted to pytrees with :mod:`electra_fn.tree`. Scalars that change
every step (the learning rate) are 0-d tensors so a compiled step never recompiles.

Under ``torch.compile`` the same updates are written one op per leaf (``foreach=None``, the
default, decides): Inductor (torch 2.11-2.13) fuses the producer of a scalar that every
sub-kernel of a multi-tensor kernel reads (the learning rate, once realised as a buffer) into
the sub-kernel of a one-element leaf, and the other leaves then read it before it is written:
the compiled step's wrong updates on CUDA (records/2026-11-29_triton-interpret-cpu).
"""

from __future__ import annotations

from typing import Any

import torch

from electra_fn.tree import (Tree, tree_flatten, tree_leaves, tree_map, tree_map_with_path,
                             tree_unflatten)


class _ListOps:
    """Elementwise ops over lists of tensors: one multi-tensor ``torch._foreach_*`` kernel each
    (``foreach=True``), or one op per tensor, which ``torch.func.vmap`` can batch (it has no
    rules for the multi-tensor ops)."""

    def __init__(self, foreach: bool | None):
        self.foreach = multi_tensor(foreach)

    def __getattr__(self, name: str):
        if self.foreach:
            return getattr(torch, f"_foreach_{name}")
        op = getattr(torch, name)

        def per_tensor(xs, *others, **kw):
            others = [o if isinstance(o, (list, tuple)) else [o] * len(xs) for o in others]
            return [op(x, *rest, **kw) for x, *rest in zip(xs, *others)]
        return per_tensor


def multi_tensor(foreach: bool | None = None) -> bool:
    """Whether list updates use ``torch._foreach_*`` kernels: ``foreach``, or when None, eagerly
    yes and under ``torch.compile`` no (one op per leaf; see the module docstring)."""
    return not torch.compiler.is_compiling() if foreach is None else foreach


def adamw_init(params: Tree) -> dict:
    """Zero first and second moments (float32) with the structure of ``params``."""
    def zeros(p: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(p, dtype=torch.float32)
    return {"m": tree_map(zeros, params), "v": tree_map(zeros, params)}


def _flat_options(options: Tree | None, n: int, default: Any, name: str) -> list:
    if options is None:
        return [default] * n
    leaves = tree_leaves(options)
    if len(leaves) != n:
        raise ValueError(f"{name} has {len(leaves)} leaves, params have {n}")
    return leaves


def adamw_update(params: Tree, grads: Tree, state: dict, lr: torch.Tensor, *,
                 b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
                 weight_decay: float = 0.01, decay_mask: Tree | None = None,
                 lr_scale: Tree | None = None,
                 bias_correction_step: torch.Tensor | None = None,
                 foreach: bool | None = None) -> tuple[Tree, dict]:
    """One step of AdamWeightDecayOptimizer: Adam without bias correction, decoupled decay.

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g²;  u = m / (sqrt(v) + eps) [+ wd p];
    p = p - lr * scale * u. With ``bias_correction_step`` t (a 0-d tensor, 1 for the first
    update) the step is Adam's bias-corrected one instead, u = m̂ / (sqrt(v̂) + eps) with
    m̂ = m / (1 - b1^t), v̂ = v / (1 - b2^t), which is what ``torch.optim.AdamW`` computes.
    Without it (the original), m / sqrt(v) is up to ~3x larger than m̂ / sqrt(v̂) in the
    first few hundred steps, which the original's 10,000-step warmup absorbs.
    ``decay_mask`` (bools) and ``lr_scale`` (floats) are trees like
    ``params`` of Python constants, or None for "decay everything" / "scale 1". Every leaf
    of ``grads`` must be a tensor (the original skips None grads; we never produce them).
    Moments are float32 (from :func:`adamw_init`); the new params keep each param's dtype.
    ``foreach=False`` runs one op per leaf (the same numbers; what ``vmap`` needs); None
    chooses by :func:`multi_tensor`.
    """
    ops = _ListOps(foreach)
    p_leaves, spec = tree_flatten(params)
    g_leaves = tree_leaves(grads)
    m_leaves, v_leaves = tree_leaves(state["m"]), tree_leaves(state["v"])
    n = len(p_leaves)
    if not len(g_leaves) == len(m_leaves) == len(v_leaves) == n:
        raise ValueError(f"params/grads/m/v leaf counts differ: "
                         f"{n}/{len(g_leaves)}/{len(m_leaves)}/{len(v_leaves)}")
    decay = _flat_options(decay_mask, n, True, "decay_mask")
    scale = [float(s) for s in _flat_options(lr_scale, n, 1.0, "lr_scale")]

    # Math in float32, or float64 for float64 params (used by the reference tests); the
    # per-leaf casts are skipped when there is nothing to cast (host time, eagerly).
    p_math = p_leaves
    if any(p.dtype not in (torch.float32, torch.float64) for p in p_leaves):
        p_math = [p.to(torch.promote_types(p.dtype, torch.float32)) for p in p_leaves]
    if any(g.dtype != p.dtype for g, p in zip(g_leaves, p_math)):
        g_leaves = [g.to(p.dtype) for g, p in zip(g_leaves, p_math)]
    m_new = ops.add(ops.mul(m_leaves, b1), g_leaves, alpha=1.0 - b1)
    v_new = ops.addcmul(ops.mul(v_leaves, b2), g_leaves, g_leaves,
                                   value=1.0 - b2)
    if bias_correction_step is None:
        update = ops.div(m_new, ops.add(ops.sqrt(v_new), eps))
    else:
        t = bias_correction_step.to(p_math[0].dtype if n else torch.float32)
        c1 = 1.0 / (1.0 - torch.pow(b1, t))
        c2 = torch.rsqrt(1.0 - torch.pow(b2, t))
        update = ops.div(
            ops.mul(m_new, c1),
            ops.add(ops.mul(ops.sqrt(v_new), c2), eps))
    # "if self.weight_decay_rate > 0: update += weight_decay_rate * param" (decoupled decay).
    decayed = [i for i in range(n) if decay[i]] if weight_decay > 0 else []
    if decayed:
        with_decay = ops.add([update[i] for i in decayed],
                                        [p_math[i] for i in decayed], alpha=weight_decay)
        update = list(update)
        for i, u in zip(decayed, with_decay):
            update[i] = u
    step = ops.mul(update, lr)
    if any(s != 1.0 for s in scale):
        step = ops.mul(step, scale)
    p_new = list(ops.sub(p_math, step))
    if any(p.dtype != d.dtype for p, d in zip(p_new, p_leaves)):
        p_new = [p.to(d.dtype) for p, d in zip(p_new, p_leaves)]

    _, m_spec = tree_flatten(state["m"])
    _, v_spec = tree_flatten(state["v"])
    new_state = {"m": tree_unflatten(m_new, m_spec), "v": tree_unflatten(v_new, v_spec)}
    return tree_unflatten(p_new, spec), new_state


def default_decay_mask(params: Tree) -> Tree:
    """True where weight decay applies: not LayerNorm parameters and not biases.

    The original excludes names matching "LayerNorm", "layer_norm" or "bias"; word, position
    and token-type embedding tables are decayed.
    """
    def decays(path: str, _leaf: Any) -> bool:
        parts = path.split(".")
        is_layer_norm = any("layer_norm" in p.lower() or "layernorm" in p.lower() for p in parts)
        return not (is_layer_norm or parts[-1].endswith("bias"))
    return tree_map_with_path(decays, params)


def global_norm(tree: Tree, foreach: bool | None = None) -> torch.Tensor:
    """sqrt of the sum of squares of every element of every leaf (float32, 0-d)."""
    leaves = [x.to(torch.float32) for x in tree_leaves(tree)]
    norms = (torch._foreach_norm(leaves) if multi_tensor(foreach)
             else [torch.linalg.vector_norm(x) for x in leaves])
    return torch.linalg.vector_norm(torch.stack(norms))


def clip_by_global_norm(grads: Tree, max_norm: float | torch.Tensor,
                        foreach: bool | None = None) -> tuple[Tree, torch.Tensor]:
    """tf.clip_by_global_norm: g * max_norm / max(norm, max_norm); returns (clipped, norm).

    The original clips with max_norm 1.0 (optimization.create_optimizer). A non-finite norm
    makes every gradient NaN, as in TensorFlow.
    """
    leaves, spec = tree_flatten(grads)
    norm = global_norm(leaves, foreach)
    if isinstance(max_norm, torch.Tensor):
        factor = max_norm / torch.maximum(norm, max_norm.to(norm))
    else:  # a number stays a scalar operand (no tensor made from host data on the device)
        factor = max_norm / norm.clamp_min(max_norm)
    factor = factor + (norm - norm)  # NaN when norm is inf/NaN, as tf.clip_by_global_norm
    if multi_tensor(foreach) and all(g.dtype == torch.float32 for g in leaves):
        clipped = list(torch._foreach_mul(leaves, factor))
    else:
        clipped = [(g.to(torch.float32) * factor).to(g.dtype) for g in leaves]
    return tree_unflatten(clipped, spec), norm


def electra_lr(step: torch.Tensor, *, peak_lr: float | torch.Tensor,
               total_steps: int | torch.Tensor, warmup_steps: int | torch.Tensor,
               end_lr: float = 0.0, power: float = 1.0) -> torch.Tensor:
    """Polynomial decay from peak_lr to end_lr over total_steps times min(1, step / warmup).

    As optimization.create_optimizer: tf.train.polynomial_decay(cycle=False) multiplied by the
    warmup factor, so warmup and decay overlap; warmup_steps=0 means no warmup.
    ``peak_lr``, ``total_steps`` and ``warmup_steps`` may be numbers or 0-d tensors (as
    ``pretrain.schedule_state`` keeps them, so a compiled step can change them without
    recompiling); numbers are made such tensors, so both take the same float32 arithmetic.
    """
    step_f = step.to(torch.float32)

    def f32(x):  # a number or a 0-d tensor, as float32 on the step's device
        return torch.as_tensor(x, dtype=torch.float32, device=step_f.device)

    total, warm = f32(total_steps), f32(warmup_steps)
    # (total - step) / total rather than 1 - step / total: exact near the end in float32.
    remaining = (total - torch.minimum(step_f, total)) / total
    lr = (f32(peak_lr) - end_lr) * remaining ** power + end_lr
    # no branch on the value (it is data when compiled): warmup 0 gives a factor of 1
    factor = torch.where(warm > 0, step_f / torch.clamp(warm, min=1.0), 1.0)
    lr = lr * torch.clamp(factor, max=1.0)
    return lr


def layerwise_lr_scales(params: Tree, num_layers: int, decay: float,
                        extra_factor: bool = True) -> Tree:
    """Per-leaf LR multipliers decay ** (top - depth) for fine-tuning (lower near the input).

    Depth: ``embeddings.*`` and ``encoder.embed_proj.*`` 0, ``encoder.layers.i.*`` i + 1,
    anything else (the task head) ``top``. The original (optimization._get_layer_lrs) puts
    "task_specific/" at depth n_layers + 2 and uses decay ** (n_layers + 2 - depth), a
    factor left from a removed pooler: with 12 layers and 0.8 the head gets 1, the last
    layer 0.8², the first 0.8¹³, the embeddings 0.8¹⁴. ``extra_factor=False`` drops it
    (top = n_layers + 1).
    """
    top = num_layers + 2 if extra_factor else num_layers + 1

    def scale(path: str, _leaf: Any) -> float:
        parts = path.split(".")
        if parts[0] == "embeddings" or parts[:2] == ["encoder", "embed_proj"]:
            depth = 0
        elif parts[:2] == ["encoder", "layers"]:
            layer = int(parts[2])
            if not 0 <= layer < num_layers:
                raise ValueError(f"{path}: layer {layer} outside num_layers={num_layers}")
            depth = layer + 1
        else:
            depth = top
        return float(decay ** (top - depth))
    return tree_map_with_path(scale, params)
