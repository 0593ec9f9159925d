"""Run a pure training step as one captured CUDA graph.

An eager ELECTRA-Small step launches a few thousand small kernels; on a fast GPU the host
cannot launch them as quickly as the GPU runs them, so the eager step is host-bound.
``torch.compile`` removes that but compiles for minutes. :func:`graph_step` captures the eager
step once (seconds) and replays it: one launch per step.

    step = graph_step(pretrain.make_train_step(cfg, amp_dtype=torch.bfloat16,
                                               device_type="cuda", grad_route="autograd"))
    params, opt_state, metrics = step(params, opt_state, batch, key)

Semantics, as JAX's buffer donation: the wrapper keeps one static copy of every input; a call
copies in each input leaf that is not already that static tensor, replays, and returns the
static params and optimizer state, now holding the new values. So the returned trees are
*overwritten by the next call*: pass them back in (the usual loop, which then copies
nothing) and copy them (``tree_map(torch.clone, ...)``) if the old values must be kept.
Metrics are returned as fresh tensors. Tree structure, shapes, dtypes and devices are fixed
at capture; a call with different ones raises ``ValueError``.

While warming up and capturing, the step draws its noise from the counter-based generator
(:func:`electra_fn.rng.counter_based`, the numbers a compiled step draws, with the hash in one
compiled kernel per draw on CUDA), since the eager generator reads the key on the host, and
:func:`electra_fn.runtime.capturing` is true, which makes the step check for a non-finite loss
with ``where`` rather than a host read (no CPU-GPU synchronisation may happen inside a
capture).

``backend="replay"`` runs the same buffer logic without CUDA (capture = the first call,
replay = calling the function again on the static buffers): the tests check with it that
the buffer handling gives exactly the plain step's results.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from . import rng as rnglib
from . import runtime
from .tree import tree_flatten, tree_unflatten

@contextlib.contextmanager
def capture_mode(fused_rng: bool):
    """The mode a step is warmed up and captured in: :func:`runtime.capturing` is true and the
    noise comes from the counter-based generator (fused into one kernel if ``fused_rng``)."""
    with runtime.capture_flag(), rnglib.counter_based(fused=fused_rng):
        yield


def _signature(leaves: list, spec) -> tuple:
    return (spec, tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else
                        ("const", x) for x in leaves))


class GraphedStep:
    """``step(params, opt_state, batch, key) -> (params, opt_state, metrics)`` replayed from a
    CUDA graph (see the module docstring). ``captures`` counts captures (1 after the first
    call); ``replays`` counts calls."""

    def __init__(self, step_fn: Callable, *, device: torch.device | str | None = None,
                 warmup: int = 2, backend: str = "cuda", fused_rng: bool | None = None,
                 on_capture_error: Callable[[BaseException], None] | None = None):
        if backend not in ("cuda", "replay"):
            raise ValueError(f"backend={backend!r}: expected 'cuda' or 'replay'")
        if backend == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("graph_step: CUDA graphs need a CUDA device "
                               "(torch.cuda.is_available() is False)")
        self.step_fn = step_fn
        self.device = torch.device(device) if device is not None else None
        self.warmup = warmup
        self.backend = backend
        self.fused_rng = (backend == "cuda") if fused_rng is None else fused_rng
        self.on_capture_error = on_capture_error
        self.captures = 0
        self.replays = 0
        self.capture_error: str | None = None
        self._static: list | None = None
        self._metrics: dict | None = None  # the graph's metric outputs (static tensors)

    # -- capture ---------------------------------------------------------------------------
    def _capture(self, leaves: list, spec, state_spec) -> None:
        dev = self.device or next(x.device for x in leaves if isinstance(x, torch.Tensor))
        static = [x.detach().to(dev).clone() if isinstance(x, torch.Tensor) else x
                  for x in leaves]
        n_state = state_spec.num_leaves  # params and opt_state lead the flattened inputs

        def capture_body():
            params, opt_state, batch, key = tree_unflatten(static, spec)
            new_params, new_state, metrics = self.step_fn(params, opt_state, batch, key)
            out, out_spec = tree_flatten((new_params, new_state))
            if out_spec != state_spec:
                raise ValueError("graph_step: the step returned params/opt_state with another "
                                 "tree structure than it was given")
            # Write the new state into the static inputs, as part of the graph (in stream
            # order, after everything that read them).
            pairs = [(s, o) for s, o in zip(static[:n_state], out) if o is not s]
            if pairs:
                torch._foreach_copy_([s for s, _ in pairs], [o for _, o in pairs])
            return metrics

        with capture_mode(self.fused_rng):
            if self.backend == "cuda":
                side = torch.cuda.Stream(device=dev)
                side.wait_stream(torch.cuda.current_stream(dev))
                with torch.cuda.stream(side):
                    for _ in range(self.warmup):  # the step is pure: warm-up changes nothing
                        params, opt_state, batch, key = tree_unflatten(static, spec)
                        self.step_fn(params, opt_state, batch, key)
                torch.cuda.current_stream(dev).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._metrics = capture_body()
                self._graph = graph
                self._replay = graph.replay
            else:
                def replay():
                    with capture_mode(self.fused_rng):
                        self._metrics = capture_body()
                self._replay = replay
        self._static, self._spec = static, spec
        self._signature = _signature(leaves, spec)
        self.captures += 1

    # -- call --------------------------------------------------------------------------------
    def __call__(self, params, opt_state, batch, key):
        if self.capture_error is not None:  # capture failed: the same step, not captured
            with capture_mode(self.fused_rng):
                return self.step_fn(params, opt_state, batch, key)
        leaves, spec = tree_flatten((params, opt_state, batch, key))
        if self._static is None:
            try:
                self._capture(leaves, spec, tree_flatten((params, opt_state))[1])
            except Exception as e:
                if self.on_capture_error is None:
                    raise
                # The step runs uncaptured from now on, in the same mode (the same noise),
                # so a run's numbers do not depend on whether the capture worked.
                self.capture_error = f"{type(e).__name__}: {e}"
                if self.backend == "cuda":
                    with contextlib.suppress(Exception):
                        torch.cuda.synchronize()
                self.on_capture_error(e)
                return self(params, opt_state, batch, key)
        elif _signature(leaves, spec) != self._signature:
            raise ValueError(
                "graph_step: the inputs' tree structure, shapes or dtypes differ from those "
                "the graph was captured with; make a new graph_step for them")
        # Copy in what is not already the static buffer (the first call copies its own
        # values once more, harmless).
        dst, src = [], []
        for s, x in zip(self._static, leaves):
            if not isinstance(x, torch.Tensor) or x is s:
                continue
            if x.dim() == 0 and x.device.type == "cpu" and s.device.type != "cpu":
                s.fill_(x.item())  # a host scalar (the step's key): no copy, no wait
            else:
                dst.append(s)
                src.append(x)
        if dst:
            torch._foreach_copy_(dst, src)
        self._replay()
        self.replays += 1
        params, opt_state = tree_unflatten(self._static, self._spec)[:2]
        metrics = {k: v.clone() for k, v in self._metrics.items()}
        return params, opt_state, metrics


def graph_step(step_fn: Callable, **kwargs) -> GraphedStep:
    """Wrap a pure ``step(params, opt_state, batch, key)`` so it runs as a captured CUDA graph;
    see the module docstring for its donation semantics. Keyword arguments: ``device``,
    ``warmup`` (eager calls before the capture, default 2), ``backend`` (``"cuda"`` or
    ``"replay"``, a CPU stand-in for tests), ``fused_rng`` (default: on with CUDA),
    ``on_capture_error`` (called with the exception if the capture fails; the step then runs
    uncaptured in the same mode, drawing the same noise; without it the error is raised)."""
    return GraphedStep(step_fn, **kwargs)
