"""The analytic FLOP model of electra_fn.flops: its scale, its linearity, and agreement with
torch's FlopCounterMode on our training step (counted with the throughput benchmark's
helpers)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import throughput as bench
from benchmarks.workload import synthetic_batch
from electra_fn import flops as flopslib
from electra_fn.config import ModelConfig, PretrainConfig
from electra_fn.model import init_params
from electra_fn.pretrain import init_opt_state, make_train_step, step_key


def _cfg(dropout: bool = True, **model_overrides) -> PretrainConfig:
    model = ModelConfig.from_name("tiny", **model_overrides)
    if not dropout:
        model = model.replace(hidden_dropout=0.0, attention_dropout=0.0)
    return PretrainConfig(model=model, batch_size=3, seq_len=32, total_steps=100,
                          warmup_steps=10)


def test_small_step_flops_match_the_published_order_of_magnitude():
    f = flopslib.electra_step_flops(PretrainConfig())  # ELECTRA-Small, batch 128 x 128
    assert 1.0e12 < f["total"] < 1.3e12  # paper: 1.3e12 with elementwise ops and full logits
    assert 0.85 < f["discriminator_fraction"] < 0.9
    assert f["backward_total"] == 2 * f["forward_total"]
    fused = flopslib.electra_step_flops(PretrainConfig(), attention_recompute=True)
    assert fused["total"] > f["total"]


def test_flops_are_linear_in_batch_and_vocab_positions_only_touch_the_head():
    m = ModelConfig.from_name("small")
    one, two = (flopslib.train_step_flops(m, b, 128, 19)["total"] for b in (1, 2))
    assert two == 2 * one
    a = flopslib.forward_flops(m, 4, 128, 19)
    b = flopslib.forward_flops(m, 4, 128, 128)
    assert {k for k in a if a[k] != b[k]} == {"generator_head"}


@pytest.mark.parametrize("route", ["func", "autograd"])
@pytest.mark.parametrize("dropout", [True, False], ids=["dropout", "no-dropout"])
def test_analytic_flops_match_flop_counter_for_our_step(route, dropout):
    cfg = _cfg(dropout)
    params = init_params(cfg.model, 0)
    batch = synthetic_batch(cfg, torch.device("cpu"))
    step = make_train_step(cfg, grad_route=route)
    counted, per_op = bench.counted_flops(
        lambda: step(params, init_opt_state(params), batch, step_key(0, 0)))
    fused = bench.uses_fused_attention(per_op)
    analytic = flopslib.electra_step_flops(cfg, attention_recompute=fused)["total"]
    assert abs(counted - analytic) <= 0.05 * analytic, (counted, analytic, per_op)


def test_pretraining_compute_puts_a_run_on_the_papers_axis():
    """1M steps of the paper's config is 100% of its compute; 62,500 steps 6.25%; a smaller
    batch costs proportionally less."""
    paper = PretrainConfig()
    assert flopslib.pretraining_compute(paper, 1_000_000)["paper_fraction"] == pytest.approx(1.0)
    assert flopslib.pretraining_compute(paper, 62_500)["paper_fraction"] == pytest.approx(0.0625)
    small = flopslib.pretraining_compute(paper.replace(batch_size=16), 1000)
    assert small["flops"] == 1000 * small["flops_per_step"]
    assert small["paper_fraction"] == pytest.approx(1000 / 1e6 / 8, rel=1e-6)
