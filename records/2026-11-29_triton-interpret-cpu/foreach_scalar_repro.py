"""Inductor's multi-tensor fault, without electra_fn: a scalar computed in the graph (a
learning rate) and read by every sub-kernel of a ``_foreach`` update one of whose tensors has a
single element. Inductor fuses the scalar's producer into that one sub-kernel, and the other
sub-kernels read it before it is written (or lose the pointer altogether).

    PYTHONPATH=. python records/2026-11-29_triton-interpret-cpu/foreach_scalar_repro.py \
        ROUNDS LAST [per-leaf]

ROUNDS: extra ops on the scalar (0 leaves it inlined; 1 or more realise it as a buffer).
LAST: elements of the last tensor (1 triggers the fault). per-leaf: one op per tensor instead.
Needs triton (benchmarks/triton_interpret.py runs the kernels in Triton's interpreter).
"""
import sys
from benchmarks import triton_interpret
triton_interpret.install_shims()
import torch

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
LAST = int(sys.argv[2]) if len(sys.argv) > 2 else 1
PER_LEAF = len(sys.argv) > 3 and sys.argv[3] == "per-leaf"

def f(ps, gs, step):
    s = step.to(torch.float32).sum()
    lr = 1e-3 * torch.clamp(s / 10.0, max=1.0) * torch.clamp(1.0 - s / 1000.0, min=0.0)
    for _ in range(ROUNDS):
        lr = torch.sqrt(lr * lr + 1e-12) * torch.exp(lr * 0.0)   # more ops, about the same value
    if PER_LEAF:
        return [p - g * lr for p, g in zip(ps, gs)]
    return torch._foreach_sub(ps, torch._foreach_mul(gs, lr))

torch.manual_seed(0)
shapes = [(300, 7), (64,), (5, 3), (LAST,)]
ps = [torch.randn(s) for s in shapes]; gs = [torch.randn(s) for s in shapes]
step = torch.tensor([5])
ref = f(ps, gs, step)
for opts in ({}, {"realize_opcount_threshold": 16}):
    torch._dynamo.reset()
    try:
        out = torch.compile(f, fullgraph=True, options=opts)(ps, gs, step)
        err = max(float((a - b).abs().max()) for a, b in zip(out, ref))
        print(f"rounds {ROUNDS}, last leaf {LAST} element(s), {'per leaf' if PER_LEAF else 'foreach'}, options {opts}: max error {err:.3g}", flush=True)
    except Exception as e:
        print(f"rounds {ROUNDS}, last leaf {LAST} element(s), {'per leaf' if PER_LEAF else 'foreach'}, options {opts}: {type(e).__name__}: {str(e).splitlines()[-1][:120]}", flush=True)
