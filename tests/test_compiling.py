"""electra_fn.compiling: the library's Inductor options, merged into torch.compile's modes."""

from __future__ import annotations

import pytest
import torch

from electra_fn import compiling, layers, rng


def test_options_merge_the_modes_own():
    assert compiling.inductor_options() == compiling.INDUCTOR_OPTIONS
    assert compiling.inductor_options("default") == compiling.INDUCTOR_OPTIONS
    ro = compiling.inductor_options("reduce-overhead")
    assert ro["triton.cudagraphs"] is True
    ma = compiling.inductor_options("max-autotune")
    assert ma["max_autotune"] is True
    for opts in (ro, ma):
        assert opts["realize_opcount_threshold"] == compiling.INDUCTOR_OPTIONS[
            "realize_opcount_threshold"]
    with pytest.raises(ValueError, match="compile mode 'fastest'"):
        compiling.inductor_options("fastest")
    # every option is one Inductor knows (torch.compile would reject an unknown one)
    import torch._inductor.config as cfg
    assert all(hasattr(cfg, k.split(".")[0]) for k in ma)


def test_compiled_dropout_equals_eager_and_changes_no_global_config():
    import torch._inductor.config as cfg

    before = cfg.realize_opcount_threshold
    torch._dynamo.reset()
    x = torch.randn(8, 24)

    def f(x, key):
        return layers.dropout(torch.tanh(x), 0.25, rng.fold_in(key, 1)).sum(-1)

    compiled = compiling.compile(f)
    key = rng.key(5)
    with rng.counter_based():
        want = f(x, key)
    torch.testing.assert_close(compiled(x, key), want, rtol=1e-6, atol=1e-6)
    assert cfg.realize_opcount_threshold == before
    # another backend gets no Inductor options
    torch.testing.assert_close(compiling.compile(f, backend="aot_eager")(x, key), want)


def _update(params, grads, state, step, foreach=None):
    from electra_fn import optim

    lr = optim.electra_lr(step, peak_lr=5e-4, total_steps=1000, warmup_steps=2)
    grads, _ = optim.clip_by_global_norm(grads, 1.0, foreach)
    return optim.adamw_update(params, grads, state, lr, bias_correction_step=step + 1,
                              foreach=foreach)


def test_compiled_updates_run_leaf_by_leaf_and_eager_ones_multi_tensor():
    """Under torch.compile the optimizer's list ops are one op per leaf (no ``_foreach_*`` in
    the graph, whose Triton kernels Inductor misorders); eagerly, multi-tensor kernels."""
    from electra_fn import optim

    graphs = []

    def record(gm, _inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes])
        return gm.forward

    torch._dynamo.reset()
    params = {"w": torch.randn(6, 3), "head": {"bias": torch.randn(1)}}
    grads = {"w": torch.randn(6, 3), "head": {"bias": torch.randn(1)}}
    state, step = optim.adamw_init(params), torch.tensor(3)
    got = torch.compile(_update, backend=record, fullgraph=True)(params, grads, state, step)
    assert len(graphs) == 1 and len(graphs[0]) > 10
    assert not [t for t in graphs[0] if "_foreach" in t]
    assert optim.multi_tensor() and not optim.multi_tensor(False)
    want = _update(params, grads, state, step, foreach=True)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


TRITON_CHECK = r"""
from benchmarks import triton_interpret
triton_interpret.install_shims()
import torch
from electra_fn import compiling, optim
from tests.test_compiling import _update
gen = torch.Generator().manual_seed(int({seed}))
params = {{"w": torch.randn(300, 7, generator=gen), "b": torch.randn(64, generator=gen),
          "head": {{"bias": torch.randn(1, generator=gen)}}}}
grads = {{k: (v * 0.3 if not isinstance(v, dict) else {{"bias": v["bias"] * 0.3}})
         for k, v in params.items()}}
state, step = optim.adamw_init(params), torch.tensor(3)
want = _update(params, grads, state, step)
got = compiling.compile(_update)(params, grads, state, step)
leaves = torch.utils._pytree.tree_leaves
moved = max(float((a - p).abs().max()) for a, p in zip(leaves(want[0]), leaves(params)))
print(max(float((a - b).abs().max()) for a, b in zip(leaves(want), leaves(got))) / moved)
"""


def test_compiled_update_with_triton_kernels_equals_eager():
    """The optimizer update compiled to Triton kernels (run by Triton's interpreter on the CPU,
    benchmarks/triton_interpret.py) equals eager, with a one-element leaf and an in-graph
    learning rate: the case Inductor's multi-tensor kernels got wrong (they read the learning
    rate before it was written: errors of 1.7 to 6e30). The error is relative to the largest
    parameter change.
    Runs where triton is installed (it is not a project dependency)."""
    pytest.importorskip("triton")
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    seed = int(torch.randint(0, 2**31 - 1, ()))
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK.format(seed=seed)], cwd=root,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-2  # float32 rounding: ~1e-3
