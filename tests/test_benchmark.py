"""The throughput benchmark: the FLOP count of its Hugging Face peer, the peer itself, and an
end-to-end run. (The FLOP model of electra_fn.flops: tests/test_flops.py.)"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import torch
from torch.func import grad_and_value

from benchmarks import compile_time, hf_peer
from benchmarks import throughput as bench
from benchmarks.workload import synthetic_batch
from electra_fn import flops as flopslib
from electra_fn import rng as rnglib
from electra_fn.config import CLS_ID, PAD_ID, SEP_ID, ModelConfig, PretrainConfig
from electra_fn.model import init_params
from electra_fn.pretrain import electra_forward, init_opt_state, make_train_step, step_key

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


def _cfg(dropout: bool = True, **model_overrides) -> PretrainConfig:
    model = ModelConfig.from_name("tiny", **model_overrides)
    if not dropout:
        model = model.replace(hidden_dropout=0.0, attention_dropout=0.0)
    return PretrainConfig(model=model, batch_size=3, seq_len=32, total_steps=100,
                          warmup_steps=10)


def _noise_backends():
    backends = [("native", contextlib.nullcontext)]
    if hasattr(rnglib, "counter_based"):
        backends.append(("counter", rnglib.counter_based))
    return backends


# -- FLOP count of the HF peer (the FLOP model: tests/test_flops.py) ----------------------
def test_analytic_flops_match_flop_counter_for_the_hf_peer():
    cfg = _cfg()
    params = init_params(cfg.model, 0)
    batch = synthetic_batch(cfg, torch.device("cpu"))
    peer = hf_peer.HFPeer(cfg, params, torch.device("cpu"))
    counted, per_op = bench.counted_flops(lambda: peer.step(batch, step_key(0, 0)))
    fused = bench.uses_fused_attention(per_op)
    analytic = flopslib.train_step_flops(cfg.model, cfg.batch_size, cfg.seq_len, cfg.seq_len,
                                         attention_recompute=fused)["total"]
    assert abs(counted - analytic) <= 0.05 * analytic, (counted, analytic, per_op)


# -- the Hugging Face peer computes what we compute ---------------------------------------
@pytest.mark.parametrize("backend", _noise_backends(), ids=lambda b: b[0])
def test_hf_peer_loss_matches_ours_on_identical_weights_and_noise(backend):
    cfg = _cfg(dropout=False)
    params = init_params(cfg.model, 1)
    batch = synthetic_batch(cfg, torch.device("cpu"), seed=2)
    key = step_key(3, 7)
    peer = hf_peer.HFPeer(cfg, params, torch.device("cpu"), dropout=False)
    with backend[1]():
        ours, metrics = electra_forward(params, batch, key, cfg, train=False)
        noise = hf_peer.step_noise(key, cfg, cfg.batch_size, cfg.seq_len, torch.device("cpu"))
        theirs, their_metrics = peer.forward_loss(batch, noise)
    assert metrics["masked_tokens"] > 0
    torch.testing.assert_close(theirs.detach(), ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(their_metrics["gen_loss"], metrics["gen_loss"], rtol=1e-4,
                               atol=1e-4)
    torch.testing.assert_close(their_metrics["disc_loss"], metrics["disc_loss"], rtol=1e-4,
                               atol=1e-4)


def test_hf_peer_shares_embeddings_and_gets_our_gradients():
    cfg = _cfg(dropout=False)
    params = init_params(cfg.model, 4)
    batch = synthetic_batch(cfg, torch.device("cpu"), seed=5)
    key = step_key(0, 1)
    peer = hf_peer.HFPeer(cfg, params, torch.device("cpu"), dropout=False)
    gen, disc = peer.generator, peer.discriminator
    assert gen.electra.embeddings is disc.electra.embeddings
    assert gen.generator_lm_head.weight is disc.electra.embeddings.word_embeddings.weight
    grads, _ = grad_and_value(lambda p: electra_forward(p, batch, key, cfg, train=False),
                              has_aux=True)(params)
    noise = hf_peer.step_noise(key, cfg, cfg.batch_size, cfg.seq_len, torch.device("cpu"))
    loss, _ = peer.forward_loss(batch, noise)
    loss.backward()
    pairs = [
        (grads["embeddings"]["word"], disc.electra.embeddings.word_embeddings.weight.grad),
        (grads["embeddings"]["position"],
         disc.electra.embeddings.position_embeddings.weight.grad),
        (grads["generator"]["head"]["output_bias"], gen.generator_lm_head.bias.grad),
        (grads["discriminator"]["layers"][0]["ffn"]["in"]["weight"],
         disc.electra.encoder.layer[0].intermediate.dense.weight.grad),
        (grads["generator"]["layers"][-1]["attention"]["out"]["weight"],
         gen.electra.encoder.layer[-1].attention.output.dense.weight.grad),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(theirs, ours, rtol=1e-3, atol=1e-5)


def test_first_training_step_losses_agree():
    cfg = _cfg(dropout=False)
    params = init_params(cfg.model, 6)
    batch = synthetic_batch(cfg, torch.device("cpu"), seed=7)
    key = step_key(1, 0)
    _, _, metrics = make_train_step(cfg)(params, init_opt_state(params), batch, key)
    peer = hf_peer.HFPeer(cfg, params, torch.device("cpu"), dropout=False)
    their = peer.step(batch, key)
    torch.testing.assert_close(their["loss"], metrics["loss"], rtol=1e-4, atol=1e-4)


def test_synthetic_batch_looks_like_pretraining_data():
    cfg = PretrainConfig(model=ModelConfig.from_name("tiny"), batch_size=40, seq_len=32)
    b = synthetic_batch(cfg, torch.device("cpu"))
    ids, mask = b["input_ids"], b["attention_mask"]
    assert (ids[:, 0] == CLS_ID).all()
    assert ((ids == SEP_ID).sum(-1) == 2).all()
    assert (mask.sum(-1) < cfg.seq_len).sum() == 2  # every 20th row is padded
    assert ((ids == PAD_ID) == (mask == 0)).all()
    assert b["token_type_ids"].max() == 1


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="unknown variant"):
        bench.parse_args(["--variants", "ours-eager"])


# -- end to end ---------------------------------------------------------------------------
def test_benchmark_runs_end_to_end_on_tiny(tmp_path, capsys):
    """In-process (the by-path and -m entry points are checked below and in gpu_checks')."""
    out = tmp_path / "bench.json"
    variants = "ours-func-eager,ours-autograd-eager,hf-eager"
    bench.main(["--preset", "tiny", "--batch-size", "2", "--seq-len", "32", "--steps", "2",
                "--warmup", "1", "--rounds", "2", "--variants", variants, "--json", str(out),
                "--profile", "--trace-dir", str(tmp_path / "traces"), "--peak-seconds", "0.2",
                "--quiet"])
    assert "| variant | ms/step | tokens/s |" in capsys.readouterr().out
    r = orjson.loads(out.read_bytes())
    assert r["device"] == "cpu" and r["dtype"] == "float32"
    assert r["batch_size"] == 2 and r["seq_len"] == 32 and r["tokens_per_step"] == 64
    assert [row["variant"] for row in r["rows"]] == variants.split(",")
    assert r["failures"] == []
    for row in r["rows"]:
        for field in ("ms_per_step", "tokens_per_s", "tflops", "mfu", "first_call_s",
                      "vs_hf_eager", "final_loss"):
            assert isinstance(row[field], float) and row[field] > 0, (field, row)
        assert len(row["ms_per_step_rounds"]) == 2
        assert row["vs_hf_compile"] is None
    hf = next(row for row in r["rows"] if row["variant"] == "hf-eager")
    assert hf["vs_hf_eager"] == pytest.approx(1.0)
    assert hf["executed_flops_per_step"] > r["flops"]["ours"]["total"]
    assert r["fastest_ours"] in ("ours-func-eager", "ours-autograd-eager")
    for impl in ("ours", "hf"):
        assert r["flop_check"][impl]["rel_err"] < 0.05
    assert r["peak"]["measured_flops"] > 0
    assert {p["variant"] for p in r["profiles"]} == {r["fastest_ours"], "hf-eager"}
    for p in r["profiles"]:
        assert Path(p["trace"]).is_file() and p["top"]


def test_gpu_checks_script_runs_its_device_free_check_on_cpu(tmp_path, capsys):
    """benchmarks/gpu_checks.py (the device-session checks) on CPU: the HF-parity check passes
    with a tight tolerance and fails with a negative one, and an unknown check is rejected.
    (Its compile checks take many minutes on CPU; the device session runs them on the GPU.)"""
    args = ["--device", "cpu", "--preset", "tiny", "--layers", "1", "--batch-size", "2",
            "--seq-len", "32"]
    out = tmp_path / "checks.json"
    # as a process once (the exit code is the device session's signal), then in-process
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_checks", *args, "--checks",
                           "hf_parity", "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = orjson.loads(out.read_bytes())
    check = r["checks"]["hf_parity"]
    assert r["device"] == "cpu" and check["pass"] and check["relative_loss_diff"] <= 1e-4
    assert check["loss"] > 0 and "PASS hf_parity" in proc.stdout
    from benchmarks import gpu_checks

    assert gpu_checks.main(args + ["--checks", "hf_parity", "--parity-rtol", "-1"]) == 1
    assert "FAIL hf_parity" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        gpu_checks.main(args + ["--checks", "nope"])
    assert e.value.code == 2 and "unknown check" in capsys.readouterr().err


def test_time_limit_stops_building_variants_and_still_reports(tmp_path):
    """--time-limit: a variant that cannot be built in the time left becomes a 'not built'
    failure row; the run still writes its JSON (a lease-limited GPU run keeps what it did)."""
    out = tmp_path / "bench.json"
    limit = bench.BUILD_RESERVE_S  # less than the reserve is left before the first build
    r = bench.main(["--preset", "tiny", "--batch-size", "2", "--seq-len", "16", "--steps", "1",
                    "--rounds", "1", "--variants", "ours-func-eager,hf-eager",
                    "--no-flop-check", "--peak-seconds", "0.1", "--time-limit", str(limit),
                    "--json", str(out), "--quiet"])
    assert r["rows"] == [] and r["fastest_ours"] is None
    assert [f["variant"] for f in r["failures"]] == ["ours-func-eager", "hf-eager"]
    assert all(f["error"].startswith("not built:") for f in r["failures"])
    assert orjson.loads(out.read_bytes())["failures"] == r["failures"]


def test_compile_time_records_a_compile_cut_off_at_its_limit(tmp_path, monkeypatch):
    """A compile still running at --timeout is a result ("not finished after N s") written to
    the JSON, with the cache directory it compiled into; the exit status says it failed."""
    ct = compile_time
    seen = {}
    real_run = subprocess.run

    def run(cmd, env=None, **kw):  # the compile's child; git and uname (provenance) run
        if env is None:
            return real_run(cmd, **kw)
        seen["cache"] = env["TORCHINDUCTOR_CACHE_DIR"]
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(ct.subprocess, "run", run)
    out, cache = tmp_path / "ct.json", tmp_path / "inductor"
    rc = ct.main(["--which", "library", "--layers", "12", "--timeout", "7",
                  "--cache-dir", str(cache), "--json", str(out)])
    assert rc == 1
    assert seen["cache"] == str(cache)
    got = orjson.loads(out.read_bytes())
    assert got["args"]["cache_dir"] == str(cache) and got["args"]["layers"] == 12
    assert got["rows"] == [{"which": "library", "error": "not finished after --timeout 7 s",
                            "timed_out_s": 7.0}]
    with pytest.raises(SystemExit):
        ct.main(["--which", "library,bogus"])


def test_compile_time_compiles_once_per_dropout_rate(monkeypatch, capsys):
    """--dropout 0.1,0 compiles twice, each child building its model with that rate (hidden and
    attention); a rate outside [0, 1) is refused before any compile."""
    ct = compile_time
    rates = []

    def run(cmd, env=None, **kw):
        line = next(x for x in cmd[-1].splitlines() if x.startswith("which, preset"))
        rates.append(eval(line.split("=", 1)[1])[-1])  # noqa: S307 (our own repr)
        out = orjson.dumps({"which": "library", "dropout": rates[-1], "kernels": 7,
                            "first_call_s": 1.0, "to_first_step_s": 2.0, "step_ms": 3.0,
                            "loss": 4.0}).decode()
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr(ct.subprocess, "run", run)
    assert ct.main(["--which", "library", "--dropout", "0.1,0"]) == 0
    assert rates == [0.1, 0.0]
    printed = capsys.readouterr().out
    assert "dropout 0.1 first call" in printed and "dropout 0 first call" in printed
    with pytest.raises(SystemExit):
        ct.main(["--which", "library", "--dropout", "1.5"])
    assert rates == [0.1, 0.0]


# -- layout -------------------------------------------------------------------------------
@pytest.mark.parametrize("script", ["throughput"])  # the README's; the others run as -m
def test_benchmark_scripts_run_by_path_too(script):
    """``python benchmarks/<script>.py`` (not only ``python -m benchmarks.<script>``): its
    ``from benchmarks import ...`` resolves through the installed package."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--device" in proc.stdout


def test_benchmarks_leave_sys_path_alone():
    """No benchmark edits ``sys.path`` (itself or in code it runs in a subprocess)."""
    offenders = [p.name for p in (ROOT / "benchmarks").glob("*.py")
                 if "sys.path" in p.read_text()]
    assert offenders == []


@pytest.mark.slow
def test_fault_injection_survives_kills(tmp_path):
    """benchmarks/fault_injection.py: SIGKILLs at random moments, resumes, and the run ends
    bit-identical to an uninterrupted one."""
    from benchmarks import fault_injection

    r = fault_injection.main(["--kills", "3", "--steps", "200", "--json", str(tmp_path / "f.json")])
    assert r["kills"] == 3 and r["params_identical"] and r["opt_state_identical"]
    assert r["eval_identical"]


def test_variant_steps_times_every_variant_against_the_baseline(tmp_path):
    from benchmarks import variant_steps

    threads = torch.get_num_threads()
    out = tmp_path / "steps.json"
    rows = variant_steps.main(["--study", "smoke", "--variants", "baseline,gdes", "--rounds",
                               "2", "--steps", "1", "--dtype", "float32", "--json", str(out)])
    assert [r["variant"] for r in rows] == ["baseline", "gdes"]
    assert rows[0]["relative"] == 1.0 and rows[1]["ms_per_step"] > 0
    assert rows[0]["steps_at_equal_flops"] == rows[1]["steps_at_equal_flops"] == 30
    saved = orjson.loads(out.read_bytes())
    assert saved["rows"] == rows and saved["provenance"]["commit"]
    assert torch.get_num_threads() == threads  # the process's setting is given back


def test_triton_interpret_says_what_it_needs_without_triton(capsys):
    """benchmarks.triton_interpret is a diagnostic with an optional dependency: without triton
    it names the package to install and exits 2 before touching any configuration."""
    import importlib.util

    from benchmarks import triton_interpret
    if importlib.util.find_spec("triton") is not None:
        pytest.skip("triton is installed here")
    assert triton_interpret.main(["--checks", "compiled"]) == 2
    assert "pip install triton" in capsys.readouterr().out
