"""The GPU checks with Inductor's Triton kernels run by Triton's interpreter on a CPU.

    pip install triton==3.9.0        # not a project dependency; torch 2.13 CPU wheel
    python -m benchmarks.triton_interpret --checks compiled_diag --layers 1 --batch-size 2 \\
        --seq-len 32 --json runs/triton_interpret.json

The compiled training step disagreed with the eager one on an H200 (``compiled`` in
records/2026-11-27_h200-session3) and no GPU is at hand to localise it. Here Inductor's CPU
backend is switched to Triton (``cpu_backend="triton"``) and every generated kernel is
executed by ``TRITON_INTERPRET=1`` in NumPy, so the Triton code a GPU would get (the same
lowering, fusion and indexing) is checked against eager on the CPU. Four shims make that
possible with torch 2.13 and triton 3.9: a stand-in driver reporting an sm90 target, 0-d
tensors passed as pointers as on CUDA (not unwrapped to scalars, which the interpreter
mishandles), the ``libdevice`` functions the step uses computed with NumPy, and ``|``/``&`` of
mixed boolean handles cast to bool. What it cannot show: CUDA's own arithmetic (libdevice,
fast-math), launch configurations picked by autotuning on the GPU, races. Slow: a 1-layer
step at batch 2 x 32 takes about 20 minutes to compile and run.
Arguments are those of :mod:`benchmarks.gpu_checks` (``--device`` is forced to cpu).
"""

from __future__ import annotations

import math
import os
import sys


def install_shims() -> None:
    """Make Inductor emit Triton for CPU tensors and Triton's interpreter run it (see above).
    Call it before triton is imported: ``@triton.jit`` reads TRITON_INTERPRET when it wraps."""
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy as np
    import torch._inductor.config
    import triton.language as tl
    from torch._inductor import graph
    from torch._inductor.runtime import triton_helpers
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver, interpreter

    class Driver:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def is_active(self):
            return True

    driver.set_active(Driver())
    torch._inductor.config.cpu_backend = "triton"
    graph.GraphLowering.is_unspec_arg = lambda self, name: False

    binary_op = interpreter.InterpreterBuilder.binary_op
    bitwise = (np.bitwise_or, np.bitwise_and, np.bitwise_xor)

    def binary_op_bool(self, lhs, rhs, op):
        try:
            return binary_op(self, lhs, rhs, op)
        except TypeError:
            if op not in bitwise:
                raise
            out = op(np.asarray(lhs.data).astype(bool), np.asarray(rhs.data).astype(bool))
            return interpreter.TensorHandle(out, tl.int1)

    interpreter.InterpreterBuilder.binary_op = binary_op_bool

    def numpy_fn(fn, boolean=False):
        def call(*args, _semantic=None, **_):
            like = next(a for a in args if isinstance(a, tl.tensor))
            data = [a.handle.data if isinstance(a, tl.tensor) else np.asarray(a) for a in args]
            with np.errstate(all="ignore"):
                out = fn(*data)
            if boolean:
                return tl.tensor(interpreter.TensorHandle(out.astype(np.bool_), tl.int1), tl.int1)
            handle = interpreter.TensorHandle(out.astype(like.handle.data.dtype),
                                              like.handle.dtype)
            return tl.tensor(handle, like.type)
        return call

    for name, fn, boolean in [("nearbyint", np.rint, False), ("exp", np.exp, False),
                              ("erf", np.vectorize(math.erf), False),
                              ("pow", np.power, False), ("rsqrt", lambda x: 1 / np.sqrt(x), False),
                              ("isinf", np.isinf, True), ("isnan", np.isnan, True)]:
        setattr(triton_helpers.libdevice, name, numpy_fn(fn, boolean))


def main(argv=None) -> int:
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        print("benchmarks.triton_interpret needs triton (pip install triton==3.9.0)")
        return 2
    install_shims()
    from benchmarks import gpu_checks

    argv = list(sys.argv[1:] if argv is None else argv)
    return gpu_checks.main([*argv, "--device", "cpu"])


if __name__ == "__main__":
    sys.exit(main())
