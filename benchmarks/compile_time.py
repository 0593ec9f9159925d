"""Cold compile time of the pre-training step: plain ``torch.compile`` vs ``electra_fn.compiling``.

    python -m benchmarks.compile_time --layers 1                 # both, ELECTRA-Small with 1 layer
    python -m benchmarks.compile_time --layers 2 --which threshold,library
    python -m benchmarks.compile_time --layers 12 --which library --device cuda --dtype bf16
    python -m benchmarks.compile_time --preset tiny --layers 1 --warm-start /tmp/cc  # cold, warm
    python -m benchmarks.compile_time --warm-start compile_cache --phases warm  # committed cache
    python -m benchmarks.compile_time --which library --dropout 0.1,0  # the dropout sites' cost

Each measurement runs in a fresh subprocess with its own empty Inductor (and Triton) cache
directory, so it is a cold compile (nothing reused from an earlier run). Prints, per variant, the
first call (trace + lowering + kernel compilation + one step), the number of kernels Inductor
generated, the median of a few later steps and the loss, and with ``--json`` writes them
(orjson). ``--dropout`` sets the hidden and attention dropout (one measurement per rate given).

``--warm-start DIR`` measures the portable compile cache (:mod:`electra_fn.compile_cache`) of
the ``library`` variant instead: phase ``cold`` compiles as above and saves the artifacts into
DIR; phase ``warm``, another fresh process with empty caches, loads them before its first call.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

# run with ``python -c``: imports the installed package (``pip install -e .``)
CHILD = r"""
import time
T0 = time.perf_counter()
import statistics, sys, orjson, torch
from benchmarks.workload import synthetic_batch
from electra_fn import compile_cache, compiling, model, pretrain, runtime
from electra_fn.config import ModelConfig, PretrainConfig
from electra_fn.tree import tree_map
which, preset, layers, batch, device, dtype, cache_root, phase, dropout = {args!r}
device = torch.device(device)
rates = {{}} if dropout is None else {{"hidden_dropout": dropout, "attention_dropout": dropout}}
mcfg = ModelConfig.from_name(preset, num_layers=layers, **rates)
cfg = PretrainConfig(model=mcfg, seq_len=128, batch_size=batch, total_steps=1000,
                     warmup_steps=100)
params = tree_map(lambda t: t.to(device), model.init_params(mcfg, 0))
opt = pretrain.init_opt_state(params, cfg)
data = synthetic_batch(cfg, device, seed=1)
amp = torch.bfloat16 if dtype == "bf16" else None
route = pretrain.grad_route_for(True)  # the route a run's compiled step takes
step = pretrain.make_train_step(cfg, amp_dtype=amp, device_type=device.type, grad_route=route)
cache = {{}}
if phase is not None:  # the portable compile cache: the key a run of this config would use
    key = compile_cache.cache_key(compile_cache.step_graph_config(cfg, amp=amp, grad_route=route),
                                  device)
    say = lambda m: print(m, file=sys.stderr, flush=True)
    t = time.perf_counter()
    cache = {{"phase": phase, "key": key.digest, "file": str(key.path(cache_root)),
             "hit": compile_cache.load(cache_root, key, say) if phase == "warm" else None,
             "load_s": time.perf_counter() - t}}
if which == "library":
    step = compiling.compile(step)
elif which == "threshold":  # the library's first option alone (its options before 2026-11-27b)
    step = torch.compile(step, fullgraph=True, options={{"realize_opcount_threshold": 16}})
else:
    step = torch.compile(step, fullgraph=True)
def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()
t = time.perf_counter()
params, opt, m = step(params, opt, data, pretrain.step_key(0, 0).to(device))
sync()
first = time.perf_counter() - t
from torch._inductor import metrics as inductor_metrics
kernels = inductor_metrics.generated_kernel_count
to_first_step = time.perf_counter() - T0
if phase is not None:  # whether torch's caches hit (AOTAutograd's and Inductor's FX graphs)
    from torch._dynamo.utils import counters
    cache["cache_counters"] = {{k: v for part in ("aot_autograd", "inductor")
                               for k, v in counters[part].items() if "cache" in k}}
if phase == "cold":
    saved = compile_cache.save(cache_root, key, {{"compile_s": round(first, 1),
                                                "made_by": "benchmarks.compile_time",
                                                "commit": runtime.git_describe()}}, say)
    cache["saved_bytes"] = saved.stat().st_size if saved else None
times = []
for i in range(3):
    t = time.perf_counter()
    params, opt, m = step(params, opt, data, pretrain.step_key(0, i + 1).to(device))
    sync()
    times.append(time.perf_counter() - t)
print(orjson.dumps({{"which": which, "dropout": dropout, "kernels": kernels,
                    "first_call_s": first, "to_first_step_s": to_first_step,
                    "step_ms": 1000 * statistics.median(times),
                    "loss": float(m["loss"]), **cache}}).decode())
"""


def measure(which: str, args, phase: str | None = None, dropout: float | None = None) -> dict:
    """One compile in a fresh process with empty Inductor and Triton caches; ``phase`` (cold or
    warm) saves or loads the portable compile cache in ``args.warm_start``; ``dropout`` (hidden
    and attention) overrides the preset's."""
    import orjson

    with tempfile.TemporaryDirectory(prefix="inductor-cold-") as tmp:
        # --cache-dir: the given (empty) directory, so a later process can reuse what this
        # compile left there (benchmarks/device_session.sh); by default a fresh one per run
        cache = str(args.cache_dir) if args.cache_dir else tmp
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache,
                   TRITON_CACHE_DIR=os.path.join(cache, "triton"))
        root = str(args.warm_start) if phase else None
        code = CHILD.format(args=(which, args.preset, args.layers, args.batch_size,
                                  args.device, args.dtype, root, phase, dropout))
        try:
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                  text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            # a compile still running at the limit is a result too: "not done in N s"
            return {"which": which, "error": f"not finished after --timeout {args.timeout:g} s",
                    "timed_out_s": args.timeout, **({"phase": phase} if phase else {})}
    for line in proc.stderr.splitlines():  # the compile cache's hit / miss / saved lines
        if line.startswith(("compile cache:", "warning: compile cache:")):
            print(f"  {line}", flush=True)
    if proc.returncode != 0:
        return {"which": which, "error": proc.stderr.strip().splitlines()[-1:],
                **({"phase": phase} if phase else {})}
    return orjson.loads(proc.stdout.strip().splitlines()[-1])


def print_cache_table(rows: list[dict]) -> None:
    """The cold and warm phases side by side (``--warm-start``), as a Markdown table."""
    print("| phase | to first step s | first call s | cache load s | hit | file MiB | step ms "
          "| loss |\n|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r.get('phase')} | failed: {r['error']} |||||||")
            continue
        size = r.get("saved_bytes")
        print(f"| {r['phase']} | {r['to_first_step_s']:.1f} | {r['first_call_s']:.1f} | "
              f"{r['load_s']:.2f} | {'' if r['hit'] is None else r['hit']} | "
              f"{'' if not size else f'{size / 2**20:.2f}'} | {r['step_ms']:.1f} | "
              f"{r['loss']:.5f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--which", default="both",
                    help="comma-separated: plain (torch.compile), threshold "
                         "(realize_opcount_threshold=16 only), library "
                         "(electra_fn.compiling.compile); both = plain,library")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bf16"], default="float32")
    ap.add_argument("--dropout", default=None,
                    help="comma-separated dropout rates (hidden and attention), one compile "
                         "each; default: the preset's")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="Inductor cache directory to compile into (kept afterwards; should be "
                         "empty for a cold compile); default: a fresh temporary one per run")
    ap.add_argument("--warm-start", type=Path, default=None, metavar="DIR",
                    help="measure the library variant's portable compile cache in DIR: a cold "
                         "compile that saves it, then a fresh process that loads it")
    ap.add_argument("--phases", default="cold,warm",
                    help="with --warm-start: cold (compile, save), warm (load, compile) or both")
    args = ap.parse_args(argv)
    names = ["plain", "library"] if args.which == "both" else args.which.split(",")
    bad = [n for n in names if n not in ("plain", "threshold", "library")]
    if bad:
        ap.error(f"--which: unknown {bad}; expected plain, threshold, library or both")
    phases = [None]
    if args.warm_start is not None:
        phases = args.phases.split(",")
        if [p for p in phases if p not in ("cold", "warm")] or not phases:
            ap.error(f"--phases {args.phases}: expected cold, warm or cold,warm")
        if args.which not in ("both", "library") or args.cache_dir:
            ap.error("--warm-start measures the library variant in fresh caches: drop --which "
                     "and --cache-dir")
        names = ["library"]
    try:
        rates = [None] if args.dropout is None else [float(r) for r in args.dropout.split(",")]
    except ValueError:
        ap.error(f"--dropout {args.dropout}: expected comma-separated numbers, e.g. 0.1,0")
    if [r for r in rates if r is not None and not 0.0 <= r < 1.0]:
        ap.error(f"--dropout {args.dropout}: each rate must be in [0, 1)")
    rows = []
    for name in names:
        for phase in phases:
            for rate in rates:
                r = measure(name, args, phase, rate)
                rows.append(r)
                label = name if phase is None else f"{name} {phase}"
                label += "" if rate is None else f" dropout {rate:g}"
                if "error" in r:
                    print(f"{label:8s} failed: {r['error']}", flush=True)
                else:
                    print(f"{label:8s} first call {r['first_call_s']:7.1f} s, "
                          f"{r['kernels']} kernels, step {r['step_ms']:8.1f} ms, "
                          f"loss {r['loss']:.4f}", flush=True)
    if args.warm_start is not None:
        print_cache_table(rows)
    if args.json:
        import orjson

        from electra_fn import runtime

        args.json.write_bytes(orjson.dumps({"args": {k: str(v) if isinstance(v, Path) else v
                                                     for k, v in vars(args).items()},
                                            "provenance": runtime.provenance(),
                                            "machine": {"cores": os.cpu_count(),
                                                        "platform": platform.platform(),
                                                        "processor": platform.processor()},
                                            "rows": rows}, option=orjson.OPT_INDENT_2))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
