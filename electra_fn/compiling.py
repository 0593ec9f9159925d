"""``torch.compile`` for functions that draw counter-based noise (dropout, masking, sampling).

The compiled noise of :mod:`electra_fn.rng` is an integer hash (``x ^ (x >> s)`` three times a
round, two rounds). Inductor keeps such pointwise chains unmaterialised and inlines them into
every consumer, so its lowering work grows steeply with the chain's depth; realising pointwise
buffers above 16 ops keeps the numerics (integer hashing is exact) and compiles several times
faster. The second option caps the fusion pairs Inductor's scheduler tries within a group of
nodes that read a common buffer (default 64, here 4): every parameter update of the training
step reads the same few scalars, so those groups hold every update node and most of the fusion
time went there; the pairs no longer tried are horizontal fusions of different leaves' updates.
Measured in records/2026-11-27_cpu-compile-time (``benchmarks/compile_time.py``).

``compile(fn, mode=...)`` is ``torch.compile(fn, fullgraph=True)`` with these options merged
into the mode's own (``None``/"default", "reduce-overhead", "max-autotune", ...), scoped to
that one compiled function: no global configuration is changed.
"""

from __future__ import annotations

from typing import Callable

import torch

# Inductor options every compiled function of this library gets (see the module docstring).
INDUCTOR_OPTIONS = {"realize_opcount_threshold": 16,
                    "max_fusion_buffer_group_pairwise_attempts": 4}


def inductor_options(mode: str | None = None, dynamic: bool | None = None) -> dict:
    """The options ``torch.compile(mode=mode)`` would use, plus :data:`INDUCTOR_OPTIONS`."""
    import torch._inductor

    options = {}
    if mode not in (None, "default"):
        known = torch._inductor.list_mode_options()
        if mode not in known:
            raise ValueError(f"compile mode {mode!r}: expected one of {sorted(known)}")
        options.update(torch._inductor.list_mode_options(mode, dynamic))
    options.update(INDUCTOR_OPTIONS)
    return options


# What a compiled training step on CUDA has been checked by (printed by the training loop).
CUDA_NOTE = (
    "the compiled step on CUDA is checked against the eager step with its Triton kernels run "
    "by Triton's interpreter on a CPU, not yet on a GPU (records/2026-11-29_triton-interpret-"
    "cpu): its wrong updates on an H200 came from Inductor's multi-tensor kernels, which a "
    "compiled step no longer uses. `python -m benchmarks.gpu_checks --checks compiled` checks "
    "it on this GPU")


def device_note(device: torch.device | str) -> str | None:
    """:data:`CUDA_NOTE` for a compiled training step on CUDA; None elsewhere."""
    return CUDA_NOTE if torch.device(device).type == "cuda" else None


def compile(fn: Callable, *, mode: str | None = None, fullgraph: bool = True,
            dynamic: bool | None = None, backend: str = "inductor") -> Callable:
    """``torch.compile`` with this library's Inductor options (see the module docstring).

    Other backends (``"aot_eager"`` in tests) take no Inductor options and get none."""
    if backend != "inductor":
        return torch.compile(fn, fullgraph=fullgraph, dynamic=dynamic, backend=backend)
    return torch.compile(fn, fullgraph=fullgraph, dynamic=dynamic,
                         options=inductor_options(mode, dynamic))
