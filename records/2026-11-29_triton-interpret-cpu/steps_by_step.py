"""Eager vs compiled (Triton kernels interpreted on the CPU), step by step, per metric and leaf.

    PYTHONPATH=. OMP_NUM_THREADS=1 python records/2026-11-29_triton-interpret-cpu/steps_by_step.py PRESET LAYERS BATCH SEQ [STEPS]

Inductor options for the compiled step come from the JSON in $INDUCTOR_OPTS (default: none).
"""
import json, os, sys, time
from benchmarks import triton_interpret
triton_interpret.install_shims()
import torch
from electra_fn import model, pretrain, rng as rnglib
from electra_fn.config import ModelConfig, PretrainConfig
from electra_fn.tree import tree_map, flat_dict
from benchmarks.workload import synthetic_batch
preset, L, B, S = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
mcfg = ModelConfig.from_name(preset, num_layers=L)
cfg = PretrainConfig(model=mcfg, seq_len=S, batch_size=B, total_steps=1000, warmup_steps=0, learning_rate=5e-4)
params = model.init_params(mcfg, 0)
batch = synthetic_batch(cfg, torch.device("cpu"), seed=1)
opt = pretrain.init_opt_state(params, cfg)
eager = pretrain.make_train_step(cfg, device_type="cpu")
options = json.loads(os.environ.get("INDUCTOR_OPTS", "{}"))
print("inductor options:", options, flush=True)
compiled = torch.compile(pretrain.make_train_step(cfg, device_type="cpu"), fullgraph=True, options=options)
pe, oe = params, opt
pc, oc = tree_map(torch.clone, (params, opt))
def top(a, b):
    fa, fb = flat_dict(a), flat_dict(b)
    return sorted(((float((fa[k].float()-fb[k].float()).abs().max()), k) for k in fa), reverse=True)[:4]
for i in range(int(sys.argv[5]) if len(sys.argv) > 5 else 3):
    key = pretrain.step_key(cfg.seed, i)
    with rnglib.counter_based():
        pe, oe, me = eager(pe, oe, batch, key)
    t = time.time()
    pc, oc, mc = compiled(pc, oc, batch, key)
    print(f"step {i} ({time.time()-t:.0f}s):", {k: (round(float(me[k]), 5), round(float(mc[k]), 5)) for k in me if me[k].numel() == 1}, flush=True)
    print("  params", top(pc, pe), flush=True)
    print("  m", top(oc["adam"]["m"], oe["adam"]["m"])[:2], "v", top(oc["adam"]["v"], oe["adam"]["v"])[:2], "step", oc["step"], oe["step"], flush=True)
