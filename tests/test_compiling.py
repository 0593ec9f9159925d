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
