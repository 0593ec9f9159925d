"""Stateless random numbers from an explicit key.

A key is a 0-d int64 tensor (kept on the CPU). ``fold_in`` derives independent keys (per
step, per layer, per use), in the spirit of JAX's ``random.fold_in``; nothing reads or
advances a global generator.

Two backends, each a deterministic function of the key:

* counter-based (used while ``torch.compile`` traces, and inside ``counter_based()``): hashes
  (key, element index) with a 32-bit integer mixer. Inductor fuses it into the consumer, and
  it gives the same bits on any device and under ``vmap``.
* native (eager default): ``torch.rand`` with a ``torch.Generator`` seeded from the key. The
  hash costs ~15 integer passes over every element when run op by op, which made an eager
  ELECTRA-Small step several times slower on CPU; the native Philox/MT generator does not.

So a key gives the same numbers every time in a given mode, but eager and compiled runs draw
different streams. Tests that compare the two enter ``counter_based()`` for the eager side.
"""

from __future__ import annotations

import contextlib
import math

import torch

_FORCE_COUNTER = [False]
_FUSED = [False]
_ROWS: list = [None]  # (start, total) inside batch_rows()


@contextlib.contextmanager
def counter_based(fused: bool = False):
    """Use the counter-based backend in eager mode too (bit-identical to compiled runs).

    ``fused=True`` computes each draw's hash, and each ``fold_in`` of an int, in one compiled
    kernel (``torch.compile`` of a small function with dynamic sizes, compiled once per
    process and device type) instead of ~30 and ~25 elementwise ops; the numbers are the
    same. Meant for steps captured as CUDA graphs (:mod:`electra_fn.cuda_graph`), where the
    hash would otherwise dominate the replay."""
    old = _FORCE_COUNTER[0], _FUSED[0]
    _FORCE_COUNTER[0], _FUSED[0] = True, fused
    try:
        yield
    finally:
        _FORCE_COUNTER[0], _FUSED[0] = old


def batch_rows(start: int, total: int):
    """Inside, a draw of shape [b, ...] is rows ``start`` to ``start + b`` of the same key's
    draw of shape [total, ...]: a data-parallel rank draws its slice of the whole batch's
    noise, so its step sees the noise one process would on the whole batch. Every draw inside
    must lead with the batch dimension."""
    return _rows_set((int(start), int(total)))


@contextlib.contextmanager
def _rows_set(rows: tuple[int, int] | None):
    old = _ROWS[0]
    _ROWS[0] = rows
    try:
        yield
    finally:
        _ROWS[0] = old


def _use_counter() -> bool:
    return _FORCE_COUNTER[0] or torch.compiler.is_compiling()

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_MUL = 0x5BD1E995  # odd, below 2**31: (x < 2**32) * _MUL < 2**63


def _mix32(x):
    """A 32-bit avalanche hash on int64 tensors holding uint32 (or on Python ints).

    Multipliers stay below 2**31 so no int64 product can overflow (eager, compiled and
    CUDA then agree bit for bit)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


# key() and fold_in() arithmetic, on int64 tensors or on Python ints alike.
def _key(seed):
    return _mix32((seed & _M32) ^ _GOLDEN)


def _fold_in(k, data):
    return _fold_in_offset(k, _data_offset(data))


def _data_offset(data):
    return (data & _M32) * 0x165667B1 + 0x632BE5AB


def _fold_in_offset(k, offset):
    return _mix32((_mix32(k) + offset) & _M32)


def _eager_cpu_scalar(k) -> bool:
    """A plain CPU 0-d tensor outside tracing and outside ``counter_based()`` (which steps
    captured as CUDA graphs use, where no value may be read on the host): its value can be
    read for free."""
    return (type(k) is torch.Tensor and k.dim() == 0 and k.device.type == "cpu"
            and not torch.compiler.is_compiling() and not _FORCE_COUNTER[0]
            and not torch._C._functorch.is_functorch_wrapped_tensor(k))


def key(seed: int | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """A key from an integer seed."""
    if isinstance(seed, int) and (device is None or torch.device(device).type == "cpu"):
        return torch.tensor(_key(seed), dtype=torch.int64)
    return _key(torch.as_tensor(seed, dtype=torch.int64, device=device))


def fold_in(k: torch.Tensor, data: int | torch.Tensor) -> torch.Tensor:
    """A new key from ``k`` and an integer (a step, a layer index, a purpose tag)."""
    if isinstance(data, int) and _eager_cpu_scalar(k):
        # The same arithmetic on Python ints: one tensor instead of ~20 tiny tensor ops,
        # which were a visible share of an eager step's host time.
        return torch.tensor(_fold_in(int(k), data), dtype=torch.int64)
    if isinstance(data, int) and _FUSED[0] and not torch.compiler.is_compiling():
        # Captured steps: the ~25 0-d integer ops of the derivation as one compiled kernel,
        # the int a symbolic scalar (no tensor from host data, one compile for every value).
        # (Only the key is hashed in the kernel: Inductor's C++ backend emitted integer
        # arithmetic on a symbolic int as float.)
        return _fused(_fold_in_offset)(k, _data_offset(data))
    if isinstance(data, int) and not torch.compiler.is_compiling():
        # Eagerly a Python int stays a scalar operand: no tensor is made from host data (on a
        # GPU that is a copy, which CUDA graph capture forbids). The same int64 arithmetic.
        return _fold_in(k, data)
    data_t = torch.as_tensor(data, dtype=torch.int64, device=k.device) if not isinstance(
        data, torch.Tensor) else data.to(torch.int64)
    return _fold_in(k, data_t)


def bits(k: torch.Tensor, shape: tuple[int, ...],
         device: torch.device | str | None = None, offset: int = 0) -> torch.Tensor:
    """Uniform 32-bit integers (held in int64) of the given shape (counter-based): elements
    ``offset`` onwards of the key's flat stream."""
    n = math.prod(shape)
    # The counter is only ever added to the key (a tensor): Inductor turns arithmetic on a bare
    # arange into an index expression, and Triton evaluates those in int32 for tensors under
    # 2**31 elements, so `arange * constant` overflowed there ("Scalar 2654435769 is out of
    # range for type int32" on CUDA; pytorch/pytorch#175966 is the silent variant). After the
    # key is added the value is ordinary int64 data. Products stay below 2**63.
    counter = torch.arange(offset, offset + n, device=device or k.device,
                           dtype=torch.int64).reshape(shape)
    x = _mix32((((counter + k) & _M32) * _MUL) & _M32)
    return _mix32((x + k * 0x27D4EB2F + 1) & _M32)


def uniform(k: torch.Tensor, shape: tuple[int, ...],
            device: torch.device | str | None = None) -> torch.Tensor:
    """Float32 uniform numbers in (0, 1) on ``device`` (default: the key's device); inside
    :func:`batch_rows`, rows of a larger draw."""
    device = torch.device(device) if device is not None else k.device
    rows = _ROWS[0]
    if rows is not None:
        return _rows_of_draw(k, tuple(shape), device, *rows)
    if _use_counter():
        if _FUSED[0] and not torch.compiler.is_compiling():
            return _fused(_uniform_flat)(k.to(device), math.prod(shape)).reshape(shape)
        return _uniform_from_bits(bits(k, shape, device))
    gen = torch.Generator(device=device).manual_seed(int(k))
    u = torch.rand(shape, generator=gen, device=device, dtype=torch.float32)
    # torch.rand is in [0, 1); keep the (0, 1) contract of the counter backend.
    return u.clamp_min(2.0 ** -25)


def _rows_of_draw(k: torch.Tensor, shape: tuple[int, ...], device: torch.device, start: int,
                  total: int) -> torch.Tensor:
    """Rows ``start:start + shape[0]`` of ``uniform(k, (total, *shape[1:]))``: the counter
    backend hashes only those elements; the native one draws the whole and copies the rows."""
    b, row = shape[0], math.prod(shape[1:])
    if start + b > total:
        raise ValueError(f"rows {start}:{start + b} of a draw of {total}")
    full = (total, *shape[1:])
    with _rows_set(None):  # the full draw
        if _use_counter() and not _FUSED[0]:
            return _uniform_from_bits(bits(k, shape, device, offset=start * row))
        return uniform(k, full, device)[start:start + b].clone()


def _uniform_from_bits(b: torch.Tensor) -> torch.Tensor:
    # 23 bits: i + 0.5 (i < 2**23) is exact in float32, so u stays in (0, 1); with 24 bits,
    # i = 2**24 - 1 rounded to exactly 1.0 (Gumbel noise +inf).
    return ((b >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def _uniform_flat(k: torch.Tensor, n: int) -> torch.Tensor:
    return _uniform_from_bits(bits(k, (n,), k.device))


_FUSED_FN: dict = {}


def _fused(fn):
    """``fn`` compiled once per process, with dynamic sizes and ints (one kernel for every
    shape and every folded-in value)."""
    if fn not in _FUSED_FN:
        _FUSED_FN[fn] = torch.compile(fn, fullgraph=True, dynamic=True)
    return _FUSED_FN[fn]


def gumbel(k: torch.Tensor, shape: tuple[int, ...],
           device: torch.device | str | None = None) -> torch.Tensor:
    """Float32 standard Gumbel noise, -log(-log(u))."""
    return -torch.log(-torch.log(uniform(k, shape, device)))


def step_key(seed: int, step: int | torch.Tensor) -> torch.Tensor:
    """The key of step ``step`` of a run seeded with ``seed`` (pre-training and fine-tuning
    alike): ``fold_in(key(seed), step)``, a CPU 0-d int64 tensor."""
    return fold_in(key(seed), step)
