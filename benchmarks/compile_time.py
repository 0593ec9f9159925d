"""Cold compile time of the pre-training step: plain ``torch.compile`` vs ``electra_fn.compiling``.

    python -m benchmarks.compile_time --layers 1                 # both, ELECTRA-Small with 1 layer
    python -m benchmarks.compile_time --layers 2 --which threshold,library
    python -m benchmarks.compile_time --layers 12 --which library --device cuda --dtype bf16

Each measurement runs in a fresh subprocess with its own empty Inductor cache directory, so it
is a cold compile (nothing reused from an earlier run). Prints, per variant, the first call
(trace + lowering + kernel compilation + one step), the median of a few later steps and the
loss, and with ``--json`` writes them (orjson).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# run with ``python -c``: imports the installed package (``pip install -e .``)
CHILD = r"""
import statistics, time, orjson, torch
from benchmarks.workload import synthetic_batch
from electra_fn import compiling, model, pretrain
from electra_fn.config import ModelConfig, PretrainConfig
from electra_fn.tree import tree_map
which, preset, layers, batch, device, dtype = {args!r}
device = torch.device(device)
mcfg = ModelConfig.from_name(preset, num_layers=layers)
cfg = PretrainConfig(model=mcfg, seq_len=128, batch_size=batch, total_steps=1000,
                     warmup_steps=100)
params = tree_map(lambda t: t.to(device), model.init_params(mcfg, 0))
opt = pretrain.init_opt_state(params, cfg)
data = synthetic_batch(cfg, device, seed=1)
amp = torch.bfloat16 if dtype == "bf16" else None
step = pretrain.make_train_step(cfg, amp_dtype=amp, device_type=device.type)
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
times = []
for i in range(3):
    t = time.perf_counter()
    params, opt, m = step(params, opt, data, pretrain.step_key(0, i + 1).to(device))
    sync()
    times.append(time.perf_counter() - t)
print(orjson.dumps({{"which": which, "first_call_s": first,
                    "step_ms": 1000 * statistics.median(times),
                    "loss": float(m["loss"])}}).decode())
"""


def measure(which: str, args) -> dict:
    import orjson

    with tempfile.TemporaryDirectory(prefix="inductor-cold-") as tmp:
        # --cache-dir: the given (empty) directory, so a later process can reuse what this
        # compile left there (benchmarks/device_session.sh); by default a fresh one per run
        cache = str(args.cache_dir) if args.cache_dir else tmp
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        code = CHILD.format(args=(which, args.preset, args.layers, args.batch_size,
                                  args.device, args.dtype))
        try:
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                  text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            # a compile still running at the limit is a result too: "not done in N s"
            return {"which": which, "error": f"not finished after --timeout {args.timeout:g} s",
                    "timed_out_s": args.timeout}
    if proc.returncode != 0:
        return {"which": which, "error": proc.stderr.strip().splitlines()[-1:]}
    return orjson.loads(proc.stdout.strip().splitlines()[-1])


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
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="Inductor cache directory to compile into (kept afterwards; should be "
                         "empty for a cold compile); default: a fresh temporary one per run")
    args = ap.parse_args(argv)
    names = ["plain", "library"] if args.which == "both" else args.which.split(",")
    bad = [n for n in names if n not in ("plain", "threshold", "library")]
    if bad:
        ap.error(f"--which: unknown {bad}; expected plain, threshold, library or both")
    rows = []
    for name in names:
        r = measure(name, args)
        rows.append(r)
        if "error" in r:
            print(f"{name:8s} failed: {r['error']}", flush=True)
        else:
            print(f"{name:8s} first call {r['first_call_s']:7.1f} s, step {r['step_ms']:8.1f} "
                  f"ms, loss {r['loss']:.4f}", flush=True)
    if args.json:
        import orjson

        args.json.write_bytes(orjson.dumps({"args": {k: str(v) if isinstance(v, Path) else v
                                                     for k, v in vars(args).items()},
                                            "rows": rows}, option=orjson.OPT_INDENT_2))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
