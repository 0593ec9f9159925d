"""Ablation studies: equal-FLOPs planning, the verdict arithmetic, and ``experiments.ablate``
end to end on the smoke study (:mod:`electra_fn.study`)."""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import orjson
import pytest

from electra_fn import flops, study
from electra_fn.config import ModelConfig, PretrainConfig

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "glue"
BASE = PretrainConfig(model=ModelConfig.from_name("small", num_layers=4, vocab_size=8000),
                      batch_size=32, total_steps=1200, warmup_steps=120)


@pytest.mark.parametrize("variant", [
    study.Variant("gen-1", model={"generator_multiplier": 1.0}),
    study.Variant("gen-1/8", model={"generator_multiplier": 0.125}),
    study.Variant("mask-25", recipe={"mask_prob": 0.25}),
    study.Variant("heads-8", model={"num_heads": 8})])
def test_variants_spend_the_baselines_flops(variant):
    seed = random.randrange(100)
    cfg = study.variant_config(BASE, variant, seed)
    per_step = flops.electra_step_flops(cfg)["total"]
    budget = flops.electra_step_flops(BASE)["total"] * BASE.total_steps
    assert abs(per_step * cfg.total_steps - budget) <= per_step / 2  # the nearest step count
    assert cfg.seed == seed
    assert cfg.warmup_steps == round(cfg.total_steps * 0.1)
    for k, v in {**variant.model}.items():
        assert getattr(cfg.model, k) == v
    for k, v in variant.recipe.items():
        assert getattr(cfg, k) == v
    if variant.name == "gen-1":  # a full-size generator costs more per step: fewer steps
        assert cfg.total_steps < BASE.total_steps


def test_baseline_variant_is_the_base_recipe():
    cfg = study.variant_config(BASE, study.Variant("baseline"), 0)
    assert cfg == BASE.replace(seed=0)


def test_every_named_studys_variants_are_valid_at_the_baselines_flops():
    """A study edited with a variant its model cannot take (heads that do not divide the
    width) fails here, not hours into a background run."""
    from experiments import configs

    studies = [n for n in configs.names() if configs.part(n, "STUDY")]
    assert "cpu_tiny_ablate" in studies
    for name in studies:
        flags, spec = configs.load(name), configs.part(name, "STUDY")
        base = study.base_recipe(flags, spec.get("model", {}), 8000, {})
        assert spec["variants"][0].name == "baseline"
        for v in spec["variants"]:
            cfg = study.variant_config(base, v, 0)  # validates the model and the recipe
            budget = flops.electra_step_flops(base)["total"] * base.total_steps
            per_step = flops.electra_step_flops(cfg)["total"]
            assert abs(per_step * cfg.total_steps - budget) <= per_step / 2, (name, v.name)


def test_verdict_compares_the_difference_with_its_standard_error():
    base = study.mean_std([0.60, 0.61, 0.62])
    far = study.mean_std([0.70, 0.71, 0.72])
    near = study.mean_std([0.605, 0.615, 0.625])
    assert "exceeds the spread" in study.verdict("x", "AUC", far, base)
    assert "within the spread" in study.verdict("x", "AUC", near, base)
    assert "not measured" in study.verdict("x", "AUC", None, base)
    one = study.mean_std([0.9])
    assert "no spread" in study.verdict("x", "AUC", one, study.mean_std([0.6]))


def test_a_single_seed_is_judged_by_the_spread_pooled_over_variants():
    rows = [study.mean_std([0.60, 0.62]), study.mean_std([0.50, 0.56, 0.53]),
            study.mean_std([0.9]), None]
    pooled = study.pooled_spread(rows)  # variances 2e-4 (1 df) and 9e-4 (2 df)
    assert pooled["df"] == 3 and pooled["rows"] == 2
    assert abs(pooled["std"] - math.sqrt((2e-4 + 2 * 9e-4) / 3)) < 1e-12
    assert study.pooled_spread(rows[:1] + rows[2:]) is None  # one degree of freedom: too few
    base = study.mean_std([0.60, 0.61, 0.62])
    two_se = 2 * pooled["std"] * math.sqrt(1 + 1 / 3)
    near = study.verdict("x", "AUC", study.mean_std([0.61 + 0.9 * two_se]), base, pooled)
    assert "within the spread" in near and "pooled over the 2 variants" in near
    far = study.verdict("x", "AUC", study.mean_std([0.61 - 1.1 * two_se]), base, pooled)
    assert "exceeds the spread" in far
    # Both sides with seeds of their own: Welch's, the pooled spread unused.
    assert "pooled" not in study.verdict("x", "AUC", rows[1], base, pooled)


def test_glue_scores_pair_pretraining_and_finetuning_seeds():
    runs = [{"glue": {"sst2": [80.0, 82.0], "rte": [50.0, 54.0]}},
            {"glue": {"sst2": [70.0, 72.0], "rte": [60.0, 62.0]}},
            {"glue": {"sst2": [99.0, 99.0]}}]  # rte missing: left out
    assert study.glue_scores(runs, ["sst2", "rte"]) == [65.0, 68.0, 65.0, 67.0]


def test_glue_verdict_counts_pretraining_seeds_as_the_unit():
    runs = [{"glue": {"sst2": [80.0, 82.0], "rte": [50.0, 54.0]}},
            {"glue": {"sst2": [70.0, 72.0], "rte": [60.0, 62.0]}},
            {"glue": {"sst2": [99.0, 99.0]}}]  # rte missing: left out
    assert study.glue_seed_means(runs, ["sst2", "rte"]) == [66.5, 66.0]

    def row(seed_means, pairs):
        return {"glue": study.mean_std(pairs), "glue_seeds": study.mean_std(seed_means)}

    # One pre-training seed a side: judged on fine-tuning pairs, and says what that leaves out.
    one = study.glue_verdict("x", row([70.0], [69.0, 70.0, 71.0]), row([60.0], [59.0, 60, 61]))
    assert "exceeds the spread" in one and "one pre-training seed on a side" in one
    # Two a side: judged on the per-seed means (n = 2), whose spread swallows the difference.
    two = study.glue_verdict("x", row([70.0, 50.0], [69.0, 70, 71, 49, 50, 51]),
                             row([55.0, 45.0], [54.0, 55, 56, 44, 45, 46]))
    assert "over pre-training seeds" in two and "within the spread" in two
    # One against three, with a pooled spread: judged over pre-training seeds with it.
    pooled = study.pooled_spread([study.mean_std([55.0, 45.0, 50.0])])  # std 5, 2 df
    mixed = study.glue_verdict("x", row([70.0], [69.0, 70, 71]),
                               row([55.0, 45.0, 50.0], [54.0, 55, 56, 44, 45, 46, 49, 50, 51]),
                               pooled)
    assert "over pre-training seeds" in mixed and "pooled" in mixed
    assert "exceeds the spread" in mixed  # 20 against 2 s.e. 2 * 5 * sqrt(4 / 3) = 11.5
    assert "not measured" in study.glue_verdict("x", {}, row([60.0], [60.0, 61.0]))


def test_progress_reads_a_runs_stage_from_its_files(tmp_path):
    run = tmp_path / "gen-1/4/seed0"
    assert study.progress(run, ["sst2", "rte"]) == "starting"
    (run / "pretrain").mkdir(parents=True)
    rows = [{"step": 50, "eta_s": 4000.0}, {"step": 1250, "eta_s": 3725.0}]
    (run / "pretrain/metrics.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    assert study.progress(run, ["sst2", "rte"]) == "pre-training step 1,250, about 1:02:05 left"
    (run / "pretrain/summary.json").write_text("{}")
    (run / "glue").mkdir()
    result = {"task": "rte", "main_metric": "accuracy", "summary": {"accuracy": {
        "values": [0.5, 0.52]}}, "train_examples": 100}
    (run / "glue/rte.json").write_bytes(orjson.dumps(result))
    assert study.progress(run, ["sst2", "rte"]) == "GLUE, 1 of 2 tasks done"


def test_ablate_runs_variants_resumes_and_reports(tmp_path, monkeypatch, capsys):
    from experiments import ablate

    monkeypatch.chdir(REPO)  # the smoke configuration's corpus path is relative to the repo
    out = tmp_path / "out"
    args = ["--study", "smoke", "--glue-dir", str(FIXTURES), "--variants", "baseline,gdes",
            "--seeds", "0", "--tasks", "sst2", "--out", str(out), "--cache-dir",
            str(tmp_path / "cache"), "--device", "cpu", "--dtype", "float32"]
    assert ablate.main(args) == 0, capsys.readouterr().err[-3000:]
    report = orjson.loads((out / "report.json").read_bytes())
    rows = report["variants"]
    assert set(rows) == {"baseline", "dropout-0", "gdes"}  # every variant, run or not
    assert rows["dropout-0"]["seeds_done"] == 0
    for name in ("baseline", "gdes"):
        r = rows[name]
        assert r["seeds_done"] == 1 and r["steps"] == 30  # GDES costs no FLOPs: same steps
        assert 0.0 <= r["disc_auc"]["mean"] <= 1.0
        assert r["glue"]["n"] == 2  # one pre-training seed x two fine-tuning seeds
        assert r["pace_time_s"]["mean"] == pytest.approx(r["steps"] * r["step_s"]["mean"])
        curve = r["curves"]["0"]  # every held-out evaluation, as a share of the budget
        assert curve[0]["step"] == 0 and curve[-1]["budget"] == 1.0
        assert curve[-1]["disc_auc"] == r["disc_auc"]["mean"]
    assert rows["dropout-0"]["curves"] == {}
    assert (out / "curves.png").is_file() == (out / "study.png").is_file()
    gdes_cfg = orjson.loads((out / "gdes/seed0/pretrain/config.json").read_bytes())
    assert gdes_cfg["pretrain"]["model"]["embedding_sharing"] == "gdes"
    assert gdes_cfg["run"]["variant"] == "gdes"
    md = (out / "results.md").read_text()
    assert "| gdes | 1 | 30 |" in md and "dropout-0: not run yet." in md
    # A second run finds both done and trains nothing.
    summary = out / "baseline/seed0/pretrain/summary.json"
    before = summary.stat().st_mtime_ns
    capsys.readouterr()
    assert ablate.main(args) == 0
    assert summary.stat().st_mtime_ns == before
    assert "done before" in capsys.readouterr().err
    # --jobs 2: one worker process per (variant, seed); the finished baseline is kept, the
    # worker trains dropout-0 with this command's options, and the report counts it.
    capsys.readouterr()
    assert ablate.main(args[:4] + ["--variants", "baseline,dropout-0", "--jobs", "2"]
                       + args[6:]) == 0, capsys.readouterr().err[-3000:]
    assert summary.stat().st_mtime_ns == before
    err = capsys.readouterr().err
    assert "2 runs, 2 at once" in err and "finished dropout-0 seed 0: exit 0" in err
    assert "done before" in (out / "baseline/seed0/worker.log").read_text()
    worker = orjson.loads((out / "dropout-0/seed0/pretrain/config.json").read_bytes())
    here = orjson.loads((out / "baseline/seed0/pretrain/config.json").read_bytes())
    assert (worker["run"]["amp"], worker["run"]["device"]) == (here["run"]["amp"], "cpu")
    assert worker["pretrain"]["model"]["hidden_dropout"] == 0
    rows = orjson.loads((out / "report.json").read_bytes())["variants"]
    assert rows["dropout-0"]["seeds_done"] == 1 and rows["dropout-0"]["glue"]["n"] == 2
    # A run copied into a record keeps no step log: the report still reads it, pace unknown.
    (out / "gdes/seed0/pretrain/metrics.jsonl").unlink()
    assert ablate.main(args[:4] + ["--report-only"] + args[6:]) == 0
    rows = orjson.loads((out / "report.json").read_bytes())["variants"]
    assert rows["gdes"]["seeds_done"] == 1 and rows["gdes"]["step_s"] is None
    assert rows["baseline"]["step_s"]["mean"] > 0
    # A run whose weights are gone (copied back from a record): finished GLUE tasks are kept
    # without the model; a task still to do is a clear error naming the folder.
    for gone in ("hf", "checkpoints"):
        shutil.rmtree(out / "gdes/seed0/pretrain" / gone, ignore_errors=True)
    capsys.readouterr()
    assert ablate.main(args) == 0
    assert "GLUE: sst2 done before" in capsys.readouterr().err
    assert ablate.main(args[:-4] + ["--tasks", "rte"] + args[-4:]) == 2
    err = capsys.readouterr().err
    assert "gdes, seed 0: GLUE (rte) needs the pre-trained model" in err
    assert str(out / "gdes/seed0/pretrain") in err and "holds only its logs" in err
    # An unknown variant is a clear error, and so is a number of jobs below 1.
    assert ablate.main(args[:4] + ["--variants", "nope"] + args[6:]) == 2
    assert ablate.main(args + ["--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--variants nope: choose from baseline, dropout-0, gdes" in err
    assert "--jobs 0: expected a positive number" in err
