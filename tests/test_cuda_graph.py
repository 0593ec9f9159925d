"""The CUDA-graph step wrapper (electra_fn.cuda_graph), checked on the CPU.

What a CPU can check: the wrapper's buffer handling (static inputs, copy-in, write-back,
donation, fresh metrics) with the ``replay`` backend, which re-runs the function on the static
buffers exactly where a CUDA graph would replay its kernels; and that the step, traced as it
would be captured, never reads a device value on the host or makes a tensor from host data
(both are forbidden inside a CUDA capture). The capture itself is checked on a GPU by
``benchmarks/gpu_checks.py --checks graph``.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from electra_fn import cuda_graph, model, pretrain, runtime
from electra_fn import rng as rnglib
from electra_fn.config import CLS_ID, PAD_ID, SEP_ID, ModelConfig, PretrainConfig
from electra_fn.tree import flat_dict, tree_leaves, tree_map

TINY = ModelConfig.from_name("tiny", vocab_size=97, max_position_embeddings=24)
CFG = PretrainConfig(model=TINY, seq_len=24, batch_size=3, total_steps=40, warmup_steps=3,
                     learning_rate=2e-3)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    B, L, V = CFG.batch_size, CFG.seq_len, CFG.model.vocab_size
    ids = torch.randint(5, V, (B, L), generator=g)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).to(torch.int64)
    ids[:, 0] = CLS_ID
    ids[torch.arange(B), lengths - 1] = SEP_ID
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD_ID))
    types = (torch.arange(L)[None, :] >= lengths[:, None] // 2).to(torch.int64) * mask
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def _equal(a, b) -> bool:
    """Same keys, dtypes and values bit for bit (NaN equals NaN)."""
    fa, fb = flat_dict(a), flat_dict(b)
    return fa.keys() == fb.keys() and all(
        fa[k].dtype == fb[k].dtype and torch.equal(fa[k].isnan(), fb[k].isnan())
        and torch.equal(fa[k].nan_to_num(0.0), fb[k].nan_to_num(0.0)) for k in fa)


def _clone(tree):
    return tree_map(lambda x: x.clone(), tree)


def _setup(seed: int = 0, **graph_kw):
    """(plain step, params, opt_state, the step wrapped with the replay backend)."""
    step = pretrain.make_train_step(CFG, grad_route="autograd")
    params = model.init_params(CFG.model, seed)
    opt = pretrain.init_opt_state(params, CFG)
    return step, params, opt, cuda_graph.graph_step(step, backend="replay", **graph_kw)


@pytest.mark.parametrize("seed", [0, 1])
def test_replayed_step_equals_the_plain_step(seed):
    """Five steps through the wrapper (fresh batches and keys, a schedule replaced mid-run as a
    budget re-fit does, fresh params copied in) == the plain step, bit for bit."""
    step, params, opt, graphed = _setup(seed)
    p_ref, o_ref = _clone(params), _clone(opt)
    p_g, o_g = _clone(params), _clone(opt)
    outs = []
    for i in range(5):
        batch, key = _batch(100 * seed + i), pretrain.step_key(seed, i)
        if i == 3:  # a re-fit replaces the schedule's tensors
            longer = CFG.replace(total_steps=80)
            o_ref = {**o_ref, "schedule": pretrain.schedule_state(longer)}
            o_g = {**o_g, "schedule": pretrain.schedule_state(longer)}
        with rnglib.counter_based():
            p_ref, o_ref, m_ref = step(p_ref, o_ref, batch, key)
        p_g, o_g, m_g = graphed(p_g, o_g, batch, key)
        outs.append(m_g)
        assert _equal(p_g, p_ref) and _equal(o_g, o_ref), f"step {i}"
        assert _equal(m_g, m_ref), f"metrics at step {i}"
    assert graphed.captures == 1 and graphed.replays == 5
    # Metrics are fresh tensors: the first step's are not overwritten by later steps.
    assert not torch.equal(outs[0]["loss"], outs[-1]["loss"])
    assert float(outs[0]["lr"]) == 0.0 < float(outs[1]["lr"])  # warmup: lr(0) = 0
    # The returned state is donated: the static buffers, the same objects every call.
    p_again, _, _ = graphed(p_g, o_g, _batch(7), pretrain.step_key(seed, 5))
    assert all(a is b for a, b in zip(tree_leaves(p_again), tree_leaves(p_g)))
    # New params (not the static ones) are copied in.
    fresh = model.init_params(CFG.model, seed + 10)
    o_before = _clone(o_g)  # o_g is the static state: the call below overwrites it
    p_new, _, _ = graphed(fresh, o_g, _batch(8), pretrain.step_key(seed, 6))
    with rnglib.counter_based():
        p_want, _, _ = step(_clone(fresh), o_before, _batch(8), pretrain.step_key(seed, 6))
    assert _equal(p_new, p_want)


def test_non_finite_step_is_skipped_without_a_host_read():
    _, params, opt, graphed = _setup()
    params, opt, m = graphed(params, opt, _batch(0), pretrain.step_key(0, 0))
    assert float(m["skipped"]) == 0.0
    bad = _clone(params)
    bad["discriminator"]["head"]["out"]["weight"][0, 0] = float("nan")
    before = _clone(bad)
    adam_before = _clone(opt["adam"])
    new_p, new_o, m = graphed(bad, opt, _batch(1), pretrain.step_key(0, 1))
    assert float(m["skipped"]) == 1.0
    assert _equal(new_p, before) and _equal(new_o["adam"], adam_before)
    assert int(new_o["step"]) == 2


def test_changed_inputs_are_refused():
    _, params, opt, graphed = _setup()
    params, opt, _ = graphed(params, opt, _batch(0), pretrain.step_key(0, 0))
    short = {k: v[:, :16] for k, v in _batch(1).items()}
    with pytest.raises(ValueError, match="shapes or dtypes differ"):
        graphed(params, opt, short, pretrain.step_key(0, 1))
    with pytest.raises(ValueError, match="tree structure"):
        graphed(params, {k: v for k, v in opt.items() if k != "schedule"}, _batch(1),
                pretrain.step_key(0, 1))


def test_cuda_backend_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA device"):
        cuda_graph.graph_step(lambda *a: a)
    with pytest.raises(ValueError, match="backend"):
        cuda_graph.graph_step(lambda *a: a, backend="tpu")


class _HostTraffic(TorchDispatchMode):
    """Records the ops a CUDA capture cannot contain: host reads of tensor values, tensors
    made from host data, data-dependent shapes, and the embedding backward that sorts on the
    host beyond 3,072 indices (pytorch/pytorch#82886)."""
    FORBIDDEN = {"aten._local_scalar_dense", "aten.lift_fresh", "aten.lift_fresh_copy",
                 "aten.nonzero", "aten.masked_select", "aten.embedding_dense_backward"}

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in self.FORBIDDEN or name.startswith(("aten._unique", "aten.unique")):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("route", ["autograd", "func"])
def test_the_step_is_capturable(route):
    """Traced as it is captured (inside the wrapper's capture mode), the whole train step --
    masking, generator, sampling, discriminator, backward, clipping, AdamW, schedule, the
    non-finite check -- does none of the things a CUDA capture forbids. Outside capture mode
    the eager step does read the finite flag on the host (one sync per step, on purpose)."""
    step = pretrain.make_train_step(CFG, grad_route=route)
    params = model.init_params(CFG.model, 0)
    opt = pretrain.init_opt_state(params, CFG)
    batch = _batch(3)
    key = pretrain.step_key(0, 0)
    with cuda_graph.capture_mode(fused_rng=False), _HostTraffic() as mode:
        step(params, opt, batch, key)
    assert mode.seen == [], f"forbidden in a CUDA capture: {sorted(set(mode.seen))}"
    plain = _HostTraffic()
    with plain:
        step(params, opt, batch, key)
    assert "aten._local_scalar_dense" in plain.seen  # the eager finite check and rng seeding


def test_fused_counter_noise_is_the_counter_noise():
    """The compiled hash (used while capturing on CUDA) draws exactly the counter backend's
    numbers, for several shapes through one dynamic compile."""
    k = rnglib.fold_in(rnglib.key(11), 3)
    shapes = [(5,), (3, 7), (2, 3, 17)]
    with rnglib.counter_based():
        want = [rnglib.uniform(k, s) for s in shapes]
    with rnglib.counter_based(fused=True):
        got = [rnglib.uniform(k, s) for s in shapes]
    for w, g in zip(want, got):
        assert g.shape == w.shape and torch.equal(g, w)


def test_fused_fold_in_is_the_counter_fold_in():
    """Inside ``counter_based(fused=True)`` a fold_in of an int is one compiled kernel with the
    int as a symbolic scalar: the same keys as the op-by-op arithmetic, for every value."""
    k = rnglib.fold_in(rnglib.key(5), 9)
    for data in (0, 1, 2, 17, 2**31 + 3, -1, -(2**40)):
        with rnglib.counter_based():
            want = rnglib.fold_in(k, data)
        with rnglib.counter_based(fused=True):
            got = rnglib.fold_in(k, data)
        assert torch.equal(got, want) and got.dtype == torch.int64, data
    assert torch.equal(want, rnglib.fold_in(k, data))  # = the eager host-int path


def _zero_d_hash_ops(fused: bool) -> int:
    """Top-level 0-d xor/shift kernels in one step as it is captured (the key derivations);
    the autograd route, as on CUDA (a compiled kernel cannot run inside torch.func.grad)."""
    step = pretrain.make_train_step(CFG, grad_route="autograd")
    params = model.init_params(CFG.model, 0)
    opt = pretrain.init_opt_state(params, CFG)
    batch, key = _batch(2), pretrain.step_key(0, 1)
    with cuda_graph.capture_mode(fused_rng=fused):
        step(params, opt, batch, key)  # compiles the fused kernels outside the count
        with torch.profiler.profile(record_shapes=True) as prof:
            step(params, opt, batch, key)
    return sum(1 for e in prof.events()
               if e.name in ("aten::__xor__", "aten::__rshift__") and e.input_shapes
               and all(s == [] for s in e.input_shapes if isinstance(s, list))
               and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")))


def test_a_captured_step_derives_its_keys_in_fused_kernels():
    """The key derivations of a captured step (issue: ~630 0-d kernels of an H200 profile)
    are no longer op-by-op integer hashing when the noise is fused."""
    assert _zero_d_hash_ops(fused=False) > 100
    assert _zero_d_hash_ops(fused=True) == 0


def test_a_failed_capture_falls_back_to_the_same_step():
    """With on_capture_error, a capture that fails is reported once and the step runs
    uncaptured in capture mode: the same numbers as a capture would give."""
    errors = []
    step, params, opt, graphed = _setup(on_capture_error=errors.append)
    graphed._capture = lambda *a: (_ for _ in ()).throw(RuntimeError("capture failed"))
    p1, o1, m1 = graphed(_clone(params), _clone(opt), _batch(0), pretrain.step_key(0, 0))
    assert len(errors) == 1 and "capture failed" in graphed.capture_error
    with rnglib.counter_based():
        p2, o2, m2 = step(_clone(params), _clone(opt), _batch(0), pretrain.step_key(0, 0))
    assert _equal(p1, p2) and _equal(m1, m2)
    with pytest.raises(RuntimeError, match="capture failed"):
        strict = cuda_graph.graph_step(step, backend="replay")
        strict._capture = graphed._capture
        strict(_clone(params), _clone(opt), _batch(0), pretrain.step_key(0, 0))


def test_capturing_never_queries_the_cuda_stream_while_compiling(monkeypatch):
    """The mechanism the next test checks on the whole step, in a second: under torch.compile
    ``runtime.capturing()`` (which the model and the step consult) answers without the CUDA
    stream query that dynamo cannot trace."""
    def untraceable():
        raise AssertionError("torch.cuda.is_current_stream_capturing() reached while compiling")

    monkeypatch.setattr(runtime, "cuda_stream_capturing", untraceable)
    fn = torch.compile(lambda x: x + (1.0 if runtime.capturing() or runtime.traced() else 0.0),
                       fullgraph=True, backend="eager")
    assert float(fn(torch.zeros(()))) == 1.0  # traced() is true while compiling


@pytest.mark.slow  # dynamo traces the whole step (~12 s on the 2-core CPU)
def test_compiled_step_does_not_query_cuda_capture(monkeypatch):
    """On a CUDA machine ``capturing()`` asks the CUDA stream, which dynamo cannot trace (a
    fullgraph compile of the step failed on an H200 that way): a compiled step must not reach
    that query. Simulated on the CPU by making the query fail."""
    def untraceable():
        raise AssertionError("torch.cuda.is_current_stream_capturing() reached while compiling")

    monkeypatch.setattr(runtime, "cuda_stream_capturing", untraceable)
    step = torch.compile(pretrain.make_train_step(CFG), fullgraph=True, backend="eager")
    params = model.init_params(CFG.model, 0)
    opt = pretrain.init_opt_state(params, CFG)
    _, _, m = step(params, opt, _batch(0), pretrain.step_key(0, 0))
    assert torch.isfinite(m["loss"])
