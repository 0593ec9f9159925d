"""experiments.context_probe: rows per evaluation, a summary, resumable by (variant, seed)."""

from __future__ import annotations

import orjson
import pytest

from experiments import context_probe


def test_probe_cli_writes_rows_and_summary_and_skips_finished_pairs(tmp_path, capsys):
    args = ["--task", "chain", "--steps", "4", "--eval-every", "2", "--seeds", "0,1",
            "--variants", "short-run,gen-delay-40%", "--out", str(tmp_path)]
    assert context_probe.main(args) == 0
    rows = [orjson.loads(x) for x in (tmp_path / "probe.jsonl").read_bytes().splitlines()]
    assert sorted({(r["variant"], r["seed"]) for r in rows}) == [
        ("gen-delay-40%", 0), ("gen-delay-40%", 1), ("short-run", 0), ("short-run", 1)]
    assert sorted({r["step"] for r in rows}) == [0, 2, 4]
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert {r["variant"] for r in summary["rows"]} == {"short-run", "gen-delay-40%"}
    assert all(r["seeds"] == 2 for r in summary["rows"])
    assert "| short-run | 2 | 4 |" in capsys.readouterr().out
    assert context_probe.main(args) == 0  # everything done: nothing is trained again
    again = (tmp_path / "probe.jsonl").read_bytes().splitlines()
    assert len(again) == len(rows)


def test_variant_config_scales_relative_settings_and_rejects_unknown_names():
    cfg = context_probe.variant_config("original", 500, 64, 32)
    assert (cfg.warmup_steps, cfg.total_steps, cfg.adam_bias_correction) == (1000, 100_000,
                                                                              False)
    assert context_probe.variant_config("gen-delay-20%", 500, 64, 32).gen_delay_steps == 100
    corrected = context_probe.variant_config("original-corrected", 500, 64, 32)
    assert corrected == cfg.replace(adam_bias_correction=True)  # the schedule alone
    assert context_probe.variant_config("lr-x0.25", 500, 64, 32).learning_rate == 5e-4
    heads = context_probe.variant_config("heads-1", 500, 64, 32).model
    assert (heads.discriminator.num_heads, heads.hidden_size) == (1, 64)
    with pytest.raises(SystemExit, match="unknown variant"):
        context_probe.variant_config("bigger", 500, 64, 32)
