#!/usr/bin/env python
"""Throughput of complete ELECTRA pre-training steps: electra_fn against Hugging Face.

A step is everything a training loop does per batch: masking, generator forward, Gumbel
sampling, discriminator forward, the combined loss, backward, global-norm clipping and the
AdamW update. Both implementations run in the same process on the same batch, dtype, weights
and noise derivation, alternating round-robin (the order rotates every round) so that a noisy
or shared machine slows them alike; each figure is the median over rounds.

    python -m benchmarks.throughput                                   # CPU, Small, batch 32
    python -m benchmarks.throughput --device cuda --dtype bf16 --batch-size 128
    python -m benchmarks.throughput --variants ours-func-eager,hf-eager --profile

(``python benchmarks/throughput.py ...`` works too once the package is installed,
``pip install -e .``.)

Data-parallel steps (per-rank and total tokens/s, all-reduce time per step):
``python -m benchmarks.data_parallel --nproc 2``, or under ``torchrun`` (docs/distributed.md).

Variants (``--variants``, comma separated, or ``all``):

* ``ours-{func,autograd}-{eager,compile,max-autotune,reduce-overhead}``: electra_fn's
  ``make_train_step(grad_route=...)``, eager or compiled with ``torch.compile`` in that mode
  (``compile`` = the default mode, ``reduce-overhead`` = CUDA graphs). The whole step is
  compiled with ``fullgraph=True``; if that fails (dynamo does not trace the autograd route's
  ``torch.autograd.grad`` by default), the failure is reported as its own row and the step is
  compiled again with graph breaks allowed, which compiles the forward/loss and the update as
  separate graphs (``--autograd-compile trace`` first tries dynamo's ``trace_autograd_ops``);
  the label says which one ran.
* ``ours-{func,autograd}-graph``: the eager step captured once as a CUDA graph and replayed
  (:mod:`electra_fn.cuda_graph`; CUDA only), what ``pretrain_small`` runs on a GPU.
* ``hf-{eager,compile,max-autotune,reduce-overhead}``: ``ElectraForMaskedLM`` (generator) +
  ``ElectraForPreTraining`` (discriminator) sharing one embedding module, our ``mask_batch``
  on the same noise, Gumbel-max sampling, MLM cross entropy at the masked positions of the
  full-sequence logits + 50 x BCE over non-padding tokens, ``clip_grad_norm_`` and
  ``torch.optim.AdamW`` (fused where available, else foreach). Compiled variants compile the
  forward + loss function; backward runs the compiled backward graph, the optimizer is eager.
  The peer is :class:`benchmarks.hf_peer.HFPeer`.

FLOPs: :mod:`electra_fn.flops` (matmuls only, 2·m·n·k, backward 2x forward). tokens/s,
TFLOP/s and MFU of every row use electra_fn's *useful* count (vocabulary logits at the masked
slots only), for Hugging Face too, so the rows compare like with like; Hugging Face's executed
count (logits at every position) is in the JSON as ``executed_flops_per_step``. The count is
checked against ``torch.utils.flop_counter.FlopCounterMode`` on one eager step of each
implementation. MFU is against a peak measured in the same run: a large bf16 (or float32)
matmul on GPU, a float32 matmul on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import orjson
import torch
import torch._dynamo

from benchmarks.hf_peer import HFPeer
from benchmarks.workload import synthetic_batch
from electra_fn import compiling, cuda_graph, runtime
from electra_fn import flops as flopslib
from electra_fn.config import ModelConfig, PretrainConfig
from electra_fn.model import init_params
from electra_fn.pretrain import init_opt_state, make_train_step, step_key
from electra_fn.tree import tree_map

COMPILE_MODES = ("compile", "max-autotune", "reduce-overhead")
MODES = ("eager",) + COMPILE_MODES
ALL_VARIANTS = tuple(f"ours-{route}-{mode}" for route in ("func", "autograd")
                     for mode in MODES + ("graph",)) + tuple(f"hf-{mode}" for mode in MODES)
CPU_DEFAULT = ("ours-func-eager", "ours-autograd-eager", "ours-func-compile",
               "ours-autograd-compile", "hf-eager", "hf-compile")
# --time-limit keeps this much for the timed rounds, the profile and the report.
BUILD_RESERVE_S = 45.0
CUDA_DEFAULT = CPU_DEFAULT + ("ours-autograd-graph", "ours-func-max-autotune",
                              "ours-func-reduce-overhead")
# Dense bf16 / TF32 tensor-core peaks from the datasheets (SXM parts), for "mfu_nominal".
NOMINAL_PEAKS = {"H100": {"bf16": 989e12, "tf32": 494e12}, "H200": {"bf16": 989e12,
                 "tf32": 494e12}, "A100": {"bf16": 312e12, "tf32": 156e12}}
DTYPES = {"float32": None, "fp32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- electra_fn ---------------------------------------------------------------------------
class OursRunner:
    """electra_fn's pure ``train_step`` carrying (params, opt_state) from step to step."""

    def __init__(self, cfg: PretrainConfig, params: dict, device: torch.device,
                 amp_dtype: torch.dtype | None, route: str, mode: str, fullgraph: bool = True,
                 dynamo_config: dict | None = None):
        self.route, self.mode, self.fullgraph = route, mode, fullgraph
        self.dynamo_config = dict(dynamo_config or {})
        step = make_train_step(cfg, amp_dtype=amp_dtype, device_type=device.type,
                               grad_route=route)
        if mode == "graph":
            # the eager step captured as one CUDA graph, as pretrain_small runs it on a GPU
            step = cuda_graph.graph_step(step, device=device)
        elif mode != "eager":
            # with the library's Inductor options (electra_fn.compiling), as pretrain_small
            step = compiling.compile(step, fullgraph=fullgraph,
                                     mode=None if mode == "compile" else mode)
        self._step = step
        self.params = tree_map(lambda t: t.to(device), params)
        self.opt_state = init_opt_state(self.params, cfg)
        self.cudagraphs = mode == "reduce-overhead"

    def step(self, batch: dict, key: torch.Tensor) -> dict:
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        ctx = (torch._dynamo.config.patch(**self.dynamo_config) if self.dynamo_config
               else contextlib.nullcontext())
        with ctx:
            self.params, self.opt_state, metrics = self._step(self.params, self.opt_state,
                                                              batch, key)
        return metrics


def parse_variant(name: str) -> tuple[str, str | None, str]:
    """``ours-func-compile`` -> ("ours", "func", "compile"); ``hf-eager`` -> ("hf", None, ...)."""
    if name not in ALL_VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(ALL_VARIANTS)}")
    impl, rest = name.split("-", 1)
    if impl == "ours":
        route, mode = rest.split("-", 1)
        return impl, route, mode
    return impl, None, rest


# -- FLOPs --------------------------------------------------------------------------------
def _sdpa_fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query, key, value)


def _sdpa_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count
    return sdpa_backward_flop_count(grad_out, query, key, value)


def counted_flops(fn) -> tuple[int, dict[str, int]]:
    """FlopCounterMode's total and per-op counts for ``fn()`` (CPU flash attention included,
    which torch's registry lacks)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    custom = {}
    for name, f in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_fwd),
                    ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_bwd)):
        if hasattr(aten, name):
            custom[getattr(aten, name)] = f
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


def uses_fused_attention(per_op: dict[str, int]) -> bool:
    return any("scaled_dot_product" in op or "attention" in op for op in per_op)


def flop_check(cfg: PretrainConfig, params: dict, device: torch.device,
               amp_dtype: torch.dtype | None, batch_size: int) -> dict:
    """One eager step of each implementation at ``batch_size`` under FlopCounterMode, against
    the analytic count (FLOPs are linear in the batch, so a small batch checks the model)."""
    small = cfg.replace(batch_size=batch_size)
    batch = synthetic_batch(small, device, seed=1)
    key = step_key(0, 0)
    out = {"batch_size": batch_size}
    ours = OursRunner(small, params, device, amp_dtype, "func", "eager")
    total, per_op = counted_flops(lambda: ours.step(batch, key))
    fused = uses_fused_attention(per_op)
    analytic = flopslib.electra_step_flops(small, attention_recompute=fused)["total"]
    out["ours"] = {"counted": total, "analytic": analytic, "by_op": per_op,
                   "fused_attention": fused, "rel_err": abs(total - analytic) / analytic}
    del ours
    peer = HFPeer(small, params, device, amp_dtype, "eager")
    total, per_op = counted_flops(lambda: peer.step(batch, key))
    fused = uses_fused_attention(per_op)
    analytic = flopslib.train_step_flops(small.model, batch_size, small.seq_len, small.seq_len,
                                         attention_recompute=fused)["total"]
    out["hf"] = {"counted": total, "analytic": analytic, "by_op": per_op,
                 "fused_attention": fused, "rel_err": abs(total - analytic) / analytic}
    return out


def measure_peak(device: torch.device, amp_dtype: torch.dtype | None, seconds: float = 2.0
                 ) -> dict:
    """Best FLOP/s of a large square matmul in the run's matmul dtype (bf16 for bf16
    autocast, else float32 at the current matmul precision)."""
    dtype = amp_dtype or torch.float32
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    flop = 2 * n ** 3
    for _ in range(3):
        a @ b
    _sync(device)
    best, deadline = math.inf, time.perf_counter() + seconds
    reps = 10 if device.type == "cuda" else 2
    while time.perf_counter() < deadline or best == math.inf:
        if device.type == "cuda":
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            for _ in range(reps):
                a @ b
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1000 / reps
        else:
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            dt = (time.perf_counter() - t0) / reps
        best = min(best, dt)
    return {"flops": flop / best, "matmul": f"{n}x{n}x{n} {str(dtype).replace('torch.', '')}",
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def nominal_peak(device: torch.device, amp_dtype: torch.dtype | None) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for chip, peaks in NOMINAL_PEAKS.items():
        if chip in name:
            if amp_dtype == torch.bfloat16:
                return peaks["bf16"]
            if torch.get_float32_matmul_precision() != "highest":
                return peaks["tf32"]
    return None


# -- memory -------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the process's peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak allocated device memory (CUDA) or the process's peak RSS (CPU), MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


# -- timing -------------------------------------------------------------------------------
class Variant:
    """One implementation x mode: its runner, its keys, its per-round timings."""

    def __init__(self, name: str, runner, keys_device: torch.device):
        self.name, self.runner, self.keys_device = name, runner, keys_device
        self.calls = 0
        self.round_s: list[float] = []
        self.round_cpu_s: list[float] = []  # process CPU seconds per step (CPU runs)
        self.peak_mb: list[float] = []
        self.first_call_s = self.warmup_s = None
        self.last_metrics: dict = {}

    def key(self) -> torch.Tensor:
        k = step_key(0, self.calls).to(self.keys_device)
        self.calls += 1
        return k

    def run(self, batch: dict, n: int) -> None:
        for _ in range(n):
            self.last_metrics = self.runner.step(batch, self.key())


def time_round(v: Variant, batch: dict, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` steps (CUDA events on GPU, wall clock on CPU).

    Also records the process CPU time per step: on CPU, wall time well above CPU time /
    threads means the round was slowed by other work on the machine (or the process was
    paused), which the round-robin medians are there to absorb.
    """
    keys = [v.key() for _ in range(steps)]  # made before timing
    cpu0 = time.process_time()
    if device.type == "cuda":
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        _sync(device)
        start.record()
        for k in keys:
            v.last_metrics = v.runner.step(batch, k)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000 / steps
    else:
        t0 = time.perf_counter()
        for k in keys:
            v.last_metrics = v.runner.step(batch, k)
        seconds = (time.perf_counter() - t0) / steps
    v.round_cpu_s.append((time.process_time() - cpu0) / steps)
    return seconds


def build_variant(name: str, cfg: PretrainConfig, params: dict, device: torch.device,
                  amp_dtype, batch: dict, warmup: int, log, autograd_compile: str = "breaks"
                  ) -> tuple[list[Variant], list[dict]]:
    """Build ``name``, time its first call (compilation) and warm it up.

    Returns the working variant and failure rows: a compiled step of ours whose fullgraph
    compile fails adds a failure row and is retried (with ``autograd_compile="trace"`` the
    autograd route first with ``torch._dynamo.config.trace_autograd_ops``), last with graph
    breaks allowed, which compiles the forward/loss and the update separately.
    """
    impl, route, mode = parse_variant(name)
    # A compiled step of ours takes its key on the device, as experiments.pretrain_small
    # passes it: its counter-based noise is hashed there, with no CPU ops inside the graph
    # (and CUDA graphs would skip a graph with a CPU input). Eager steps keep CPU keys: the
    # native generator is seeded from the key's value, which would sync on a device key.
    # A CUDA-graph step takes CPU keys too (it writes the value into its key buffer).
    keys_device = (device if (mode not in ("eager", "graph") and impl == "ours")
                   else torch.device("cpu"))
    # (label, fullgraph, dynamo config): a compiled step of ours first as one graph; the
    # autograd route then with dynamo tracing torch.autograd.grad, then with graph breaks.
    attempts = [(name, True, {})]
    if impl == "ours" and mode not in ("eager", "graph"):
        if route == "autograd" and autograd_compile == "trace" and hasattr(
                torch._dynamo.config, "trace_autograd_ops"):
            attempts.append((f"{name} (trace_autograd_ops)", True, {"trace_autograd_ops": True}))
        attempts.append((f"{name} (graph breaks)", False, {}))
    failures = []
    for i, (label, fullgraph, dynamo_config) in enumerate(attempts):
        try:
            if impl == "ours":
                runner = OursRunner(cfg, params, device, amp_dtype, route, mode, fullgraph,
                                    dynamo_config)
            else:
                runner = HFPeer(cfg, params, device, amp_dtype, mode)
            v = Variant(label, runner, keys_device)
            log(f"[{label}] first call ...")
            _sync(device)
            t0 = time.perf_counter()
            v.run(batch, 1)
            _sync(device)
            v.first_call_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            v.run(batch, warmup)
            _sync(device)
            v.warmup_s = time.perf_counter() - t0
            loss = float(v.last_metrics["loss"])
            log(f"[{label}] first call {v.first_call_s:.1f} s, warm-up {warmup} steps "
                f"{v.warmup_s:.1f} s, loss {loss:.4f}")
            return [v], failures
        except Exception as e:  # noqa: BLE001 -- a failed variant becomes a row, not a crash
            text = str(e).strip()
            msg = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
            log(f"[{label}] FAILED: {msg}")
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
            row_name = f"{name} (fullgraph)" if len(attempts) > 1 and i == 0 else label
            failures.append({"variant": row_name, "error": msg[:500]})
    return [], failures


# -- profiling ----------------------------------------------------------------------------
def profile_variant(v: Variant, batch: dict, device: torch.device, steps: int, trace_path: Path,
                    top: int) -> dict:
    """torch.profiler over ``steps`` steps: top ops by self time and a Chrome trace."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=False) as prof:
        v.run(batch, steps)
        _sync(device)
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace_path))
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = []
    for e in events:
        t = getattr(e, attr, None)
        if t is None and device.type == "cuda":
            t = getattr(e, "self_cuda_time_total", 0)
        rows.append((float(t or 0.0), e.key, e.count))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows) or 1.0
    top_rows = [{"op": k, "self_ms_per_step": t / 1000 / steps, "share": t / total,
                 "calls_per_step": c / steps} for t, k, c in rows[:top]]
    return {"variant": v.name, "sort": sort, "steps": steps, "trace": str(trace_path),
            "top": top_rows}


def profile_table(p: dict) -> str:
    lines = [f"Profile of {p['variant']} ({p['steps']} steps, by self time; trace: {p['trace']})",
             "", "| op | self ms/step | share | calls/step |", "|---|---:|---:|---:|"]
    for r in p["top"]:
        lines.append(f"| {r['op']} | {r['self_ms_per_step']:.2f} | {100 * r['share']:.1f}% | "
                     f"{r['calls_per_step']:.0f} |")
    return "\n".join(lines)


# -- report -------------------------------------------------------------------------------
def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def results_table(rows: list[dict], failures: list[dict]) -> str:
    head = ("| variant | ms/step | tokens/s | TFLOP/s | MFU | peak mem MiB | first call s "
            "| vs HF eager | vs HF compiled |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{r['tflops']:.3f} | {_fmt(r['mfu'], '.1%')} | {_fmt(r['peak_memory_mb'], ',.0f')} "
            f"| {r['first_call_s']:.1f} | {_fmt(r['vs_hf_eager'], '.2f')}x "
            f"| {_fmt(r['vs_hf_compile'], '.2f')}x |")
    for f in failures:
        lines.append(f"| {f['variant']} | failed: {f['error'][:140].replace('|', '/')} "
                     "| | | | | | | |")
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "platform": platform.platform(), "cpu": runtime.machine()["cpu"],
           "cpu_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "hostname": platform.node(),
           "commit": runtime.git_describe()}
    with contextlib.suppress(Exception):
        import transformers
        env["transformers"] = transformers.__version__
    with contextlib.suppress(OSError):
        env["loadavg_start"] = os.getloadavg()
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="small", help="model preset (tiny, small, small++, ...)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="default: 32 on CPU, 128 on GPU")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                    help="float32, or bf16 autocast (default: bf16 on GPU, float32 on CPU)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per variant per round (default: 3 on CPU, 20 on GPU)")
    ap.add_argument("--rounds", type=int, default=3, help="round-robin rounds; medians over them")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps after the first call (default: 1 on CPU, 5 on GPU)")
    ap.add_argument("--variants", default=None,
                    help=f"comma-separated subset of {', '.join(ALL_VARIANTS)}, or 'all' "
                         f"(default on CPU: {', '.join(CPU_DEFAULT)}; on GPU also "
                         f"{', '.join(CUDA_DEFAULT[len(CPU_DEFAULT):])})")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (orjson)")
    ap.add_argument("--autograd-compile", default="breaks", choices=("breaks", "trace"),
                    help="when the autograd route's fullgraph compile fails: recompile with "
                         "graph breaks, or first try dynamo's trace_autograd_ops (trace; "
                         "experimental, did not finish compiling within minutes on CPU)")
    ap.add_argument("--md", type=Path, default=None,
                    help="also write the printed report (Markdown) here")
    ap.add_argument("--profile", action="store_true",
                    help="profile the fastest of ours and HF eager: top ops + Chrome trace")
    ap.add_argument("--profile-variants", default=None,
                    help="comma-separated variants to profile instead (implies --profile)")
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--profile-top", type=int, default=15)
    ap.add_argument("--trace-dir", type=Path, default=Path("runs/traces"))
    ap.add_argument("--peak-seconds", type=float, default=2.0,
                    help="how long to time the peak matmul")
    ap.add_argument("--no-flop-check", action="store_true",
                    help="skip the FlopCounterMode cross-check")
    ap.add_argument("--flop-check-batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls for float32 on GPU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds for the whole run: no further variant is built (compiled) "
                         f"once fewer than {BUILD_RESERVE_S:.0f} s are left (it becomes a "
                         "'not built' row), so a time-limited run still times what it built")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (128 if on_gpu else 32)
    args.dtype = args.dtype or ("bf16" if on_gpu else "float32")
    args.steps = args.steps or (20 if on_gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    if args.variants in (None, ""):
        names = list(CUDA_DEFAULT if on_gpu else CPU_DEFAULT)
    elif args.variants == "all":
        names = list(ALL_VARIANTS)
    else:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
    for n in names:
        parse_variant(n)
    args.variant_names = names
    if args.profile_variants:
        args.profile = True
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr,
                                                                  flush=True))
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and args.tf32:
        torch.set_float32_matmul_precision("high")
    amp_dtype = DTYPES[args.dtype]
    cfg = PretrainConfig(model=ModelConfig.from_name(args.preset), seq_len=args.seq_len,
                         batch_size=args.batch_size, seed=args.seed)
    B, L = cfg.batch_size, cfg.seq_len
    tokens = B * L
    params = init_params(cfg.model, args.seed)
    batch = synthetic_batch(cfg, device, args.seed)
    started = time.time()

    ours_flops = flopslib.electra_step_flops(cfg)
    hf_flops = flopslib.train_step_flops(cfg.model, B, L, L)
    log(f"ELECTRA {args.preset}, batch {B} x {L}, {args.dtype}, {device}; "
        f"{ours_flops['total'] / 1e9:.1f} GFLOP/step useful, "
        f"HF executes {hf_flops['total'] / 1e9:.1f}")
    peak = measure_peak(device, amp_dtype, args.peak_seconds)
    log(f"measured peak: {peak['flops'] / 1e12:.3f} TFLOP/s ({peak['matmul']})")

    check = None
    if not args.no_flop_check:
        check = flop_check(cfg, params, device, amp_dtype, min(args.flop_check_batch, B))
        for impl in ("ours", "hf"):
            c = check[impl]
            log(f"FLOP check {impl} (batch {check['batch_size']}): counted "
                f"{c['counted'] / 1e9:.3f} G, analytic {c['analytic'] / 1e9:.3f} G, "
                f"rel err {c['rel_err']:.2%}")

    variants: list[Variant] = []
    failures: list[dict] = []
    for name in args.variant_names:
        left = None if args.time_limit is None else args.time_limit - (time.time() - started)
        if left is not None and left < BUILD_RESERVE_S:
            log(f"[{name}] not built: {left:.0f} s left of --time-limit {args.time_limit:g}")
            failures.append({"variant": name, "error": f"not built: {left:.0f} s left of "
                                                       f"--time-limit {args.time_limit:g}"})
            continue
        got, failed = build_variant(name, cfg, params, device, amp_dtype, batch, args.warmup,
                                    log, args.autograd_compile)
        variants += got
        failures += failed

    peak_rounds = [peak["flops"]]
    for r in range(args.rounds):
        # The peak is re-measured every round too, so MFU sees the same machine load.
        peak_rounds.append(measure_peak(device, amp_dtype, args.peak_seconds / 2)["flops"])
        order = variants[r % len(variants):] + variants[:r % len(variants)] if variants else []
        for v in order:
            reset_peak_memory(device)
            s = time_round(v, batch, args.steps, device)
            v.round_s.append(s)
            mem = peak_memory_mb(device)
            if mem is not None:
                v.peak_mb.append(mem)
            log(f"round {r + 1}/{args.rounds} {v.name}: {1000 * s:.1f} ms/step "
                f"(process CPU {1000 * v.round_cpu_s[-1]:.1f} ms/step)")

    measured_peak = statistics.median(peak_rounds)
    nominal = nominal_peak(device, amp_dtype)
    rows = []
    for v in variants:
        s = statistics.median(v.round_s)
        tps = tokens / s
        achieved = ours_flops["total"] / s
        is_hf = v.name.startswith("hf-")
        rows.append({
            "variant": v.name,
            "implementation": "hf" if is_hf else "ours",
            "ms_per_step": 1000 * s,
            "ms_per_step_rounds": [1000 * x for x in v.round_s],
            "cpu_ms_per_step_rounds": [1000 * x for x in v.round_cpu_s],
            "tokens_per_s": tps,
            "tflops": achieved / 1e12,
            "executed_flops_per_step": (hf_flops if is_hf else ours_flops)["total"],
            "executed_tflops": (hf_flops if is_hf else ours_flops)["total"] / s / 1e12,
            "mfu": achieved / measured_peak,
            "mfu_nominal": achieved / nominal if nominal else None,
            "peak_memory_mb": max(v.peak_mb) if v.peak_mb else None,
            "first_call_s": v.first_call_s,
            "compile_s": max(0.0, v.first_call_s - s) if "eager" not in v.name else None,
            "warmup_s": v.warmup_s,
            "final_loss": float(v.last_metrics.get("loss", float("nan"))),
            **({"optimizer": v.runner.optimizer_impl,
                "attn_implementation": v.runner.attn_implementation} if is_hf else {}),
        })
    by_name = {r["variant"]: r for r in rows}
    for r in rows:
        for peer in ("hf-eager", "hf-compile"):
            p = by_name.get(peer)
            r[f"vs_{peer.replace('-', '_')}"] = r["tokens_per_s"] / p["tokens_per_s"] if p else None
    ours_rows = [r for r in rows if r["implementation"] == "ours"]
    fastest = min(ours_rows, key=lambda r: r["ms_per_step"])["variant"] if ours_rows else None

    profiles = []
    if args.profile and variants:
        wanted = ([p.strip() for p in args.profile_variants.split(",")]
                  if args.profile_variants else [fastest, "hf-eager"])
        for v in variants:
            if v.name in wanted:
                slug = re.sub(r"[^A-Za-z0-9_-]+", "_", v.name).strip("_")
                trace = args.trace_dir / f"trace-{slug}.json.gz"
                profiles.append(profile_variant(v, batch, device, args.profile_steps, trace,
                                                args.profile_top))

    table = results_table(rows, failures)
    header = (f"ELECTRA-{args.preset} pre-training step, batch {B} x seq {L}, {args.dtype}, "
              f"{device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}"
              f"; medians of {args.rounds} round-robin rounds x {args.steps} steps.\n"
              f"TFLOP/s and MFU use the useful analytic count for every row "
              f"({ours_flops['total'] / 1e9:.1f} GFLOP/step, vocabulary logits at the "
              f"{cfg.max_predictions} masked slots; HF executes {hf_flops['total'] / 1e9:.1f}). "
              f"Measured peak {measured_peak / 1e12:.3f} TFLOP/s ({peak['matmul']}, median "
              f"over the run).")
    report = [header, "", table]
    if fastest:
        report += ["", f"Fastest of ours: {fastest}"]
    if check:
        report += ["", "FLOP check (FlopCounterMode, one eager step at batch "
                   f"{check['batch_size']}): " + "; ".join(
                       f"{impl} counted {check[impl]['counted'] / 1e9:.3f} G vs analytic "
                       f"{check[impl]['analytic'] / 1e9:.3f} G ({check[impl]['rel_err']:.2%})"
                       for impl in ("ours", "hf"))]
    if failures:
        report += [""] + [f"Failure, {f['variant']}: {f['error']}" for f in failures]
    for p in profiles:
        report += ["", profile_table(p)]
    report_md = "\n".join(report)
    print(report_md)

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment(device),
        "config": cfg.to_dict(),
        "device": str(device),
        "dtype": args.dtype,
        "batch_size": B,
        "seq_len": L,
        "tokens_per_step": tokens,
        "flops": {"ours": ours_flops, "hf_executed": hf_flops,
                  "note": "tokens/s, tflops and mfu of every row use flops.ours.total (useful); "
                          "HF's executed count includes vocabulary logits at every position"},
        "flop_check": check,
        "peak": {**peak, "measured_flops": measured_peak, "measured_flops_rounds": peak_rounds,
                 "nominal_flops": nominal},
        "rows": rows,
        "failures": failures,
        "fastest_ours": fastest,
        "profiles": profiles,
        "table_md": header + "\n\n" + table,
        "report_md": report_md,
        "wall_s": time.time() - started,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2
                                           | orjson.OPT_SERIALIZE_NUMPY))
        log(f"wrote {args.json}")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(report_md + "\n")
        log(f"wrote {args.md}")
    return result


if __name__ == "__main__":
    main()
