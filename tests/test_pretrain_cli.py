"""End to end: ``python -m experiments.pretrain_small`` on the fixture corpus with the tiny preset.

Runs are shared through module-scoped fixtures (one uninterrupted 6-step run, one stopped at
step 3 and resumed); of the bad-input cases one runs as a process and the others call
``main(argv)`` in-process, to keep the file fast on a CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import torch

from electra_fn import checkpoint as ckpt
from electra_fn import model, rundir, train
from electra_fn.budget import REFIT_AT_MIN, StepBudget, refit_point
from electra_fn.config import PretrainConfig
from electra_fn.tree import flat_dict

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "fixtures" / "corpus"
STEPS = 6
# Tiny tensors: extra intra-op threads only fight over a busy machine's cores.
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _args(out: Path, cache: Path, *extra, corpus=(CORPUS,), plot: bool = False) -> list[str]:
    args = [sys.executable, "-m", "experiments.pretrain_small", "--preset", "tiny",
            "--corpus", *map(str, corpus), "--batch-size", "2", "--seq-len", "32",
            "--vocab-size", "300", "--cache-dir", str(cache), "--out", str(out)]
    return args + ([] if plot else ["--no-plot"]) + list(map(str, extra))


def _cli(out: Path, cache: Path, *extra, **kw) -> subprocess.CompletedProcess:
    """The command line in-process (``main(argv)``); signals and exit codes of a real process
    are tested with subprocesses below."""
    return _main_in_process(_args(out, cache, *extra, **kw))


def _ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _rows(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _trees_equal(a, b) -> bool:
    fa, fb = flat_dict(a), flat_dict(b)
    return fa.keys() == fb.keys() and all(
        fa[k].dtype == fb[k].dtype and torch.equal(fa[k], fb[k]) for k in fa)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One tokenizer / data cache for the good runs (the first run trains the tokenizer)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    _ok(_cli(out, cache, "--steps", STEPS))
    return out


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, cache, full_run) -> tuple[Path, subprocess.CompletedProcess]:
    """The same run stopped after step 3 and resumed (the resumed leg also plots)."""
    out = tmp_path_factory.mktemp("resumed") / "run"
    r1 = _ok(_cli(out, cache, "--steps", STEPS, "--stop-at-step", 3))
    assert "stopped at step 3" in r1.stdout
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000003.pt"]
    assert not (out / "summary.json").exists()
    r2 = _ok(_cli(out, cache, "--steps", STEPS, "--resume", plot=True))
    assert "resuming at step 3" in r2.stdout
    return out, r2


# -- a complete run ------------------------------------------------------------------------
def test_run_writes_all_outputs(full_run):
    out = full_run
    config = orjson.loads((out / "config.json").read_bytes())
    cfg = PretrainConfig.from_dict(config["pretrain"])
    assert (cfg.total_steps, cfg.batch_size, cfg.seq_len) == (STEPS, 2, 32)
    assert cfg.model.name == "tiny" and cfg.model.vocab_size == 300

    rows = _rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        for k in ("loss", "gen_accuracy", "disc_replaced_accuracy", "disc_original_accuracy",
                  "tokens_per_s", "eta_s", "grad_norm", "lr"):
            assert isinstance(r[k], float) and r[k] == r[k], (k, r)  # present, not NaN
        assert 0 <= r["gen_accuracy"] <= 1 and r["tokens_per_s"] > 0 and r["eta_s"] >= 0
        assert r["skipped"] == 0
    assert rows[-1]["eta_s"] == 0

    evals = _rows(out / "eval.jsonl")
    # step 0, every ceil(STEPS / 4) steps inside the run, and the final step (no double
    # evaluation one step before the end)
    assert [e["step"] for e in evals] == [0, 2, 4, STEPS]
    for e in evals:
        assert {"gen_accuracy", "disc_accuracy", "disc_replaced_accuracy",
                "disc_original_accuracy", "gen_loss", "disc_loss"} <= set(e)
        for name in ("uniform", "unigram"):  # the fixed-proposal scores, every evaluation
            for k in ("disc_replaced_accuracy", "disc_original_accuracy", "disc_auc"):
                assert 0 <= e[f"{name}/{k}"] <= 1, (name, k, e)
            assert 0.05 < e[f"{name}/replaced_fraction"] < 0.2
        # the context diagnostics (electra_fn.diagnostics), every evaluation
        assert e["shuffle/logit_shift"] >= 0 and e["shuffle/logit_spread"] > 0
        assert 0 < e["state/token_spread"] < 2
        assert e["top1/replaced_fraction"] + e["not_top1/replaced_fraction"] == pytest.approx(
            e["replaced_fraction"], abs=1e-6)
        assert sum(e[f"freq{i}/replaced_fraction"] for i in range(4)) == pytest.approx(
            e["replaced_fraction"], abs=1e-6)

    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000006.pt"]
    state = ckpt.load_checkpoint(out / "checkpoints" / "step_00000006.pt")
    assert state["step"] == STEPS and int(state["opt_state"]["step"]) == STEPS
    assert PretrainConfig.from_dict(state["config"]["pretrain"]) == cfg
    assert not list((out / "checkpoints").glob(".tmp-*"))

    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["steps"] == STEPS
    assert summary["tokens_seen"] == STEPS * 2 * 32
    assert summary["held_out_final"]["disc_accuracy"] == pytest.approx(evals[-1]["disc_accuracy"])
    assert not (out / "curves.png").exists()  # --no-plot

    _check_hf_export(out / "hf", state["params"], cfg)


def _check_hf_export(hf_dir: Path, params: dict, cfg: PretrainConfig):
    """transformers loads both networks with no missing/unexpected keys and the same logits."""
    transformers = pytest.importorskip("transformers")
    ids = torch.tensor([[2, 10, 11, 12, 4, 13, 3, 0], [2, 20, 21, 4, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    for cls, sub in ((transformers.ElectraForPreTraining, "discriminator"),
                     (transformers.ElectraForMaskedLM, "generator")):
        net, info = cls.from_pretrained(str(hf_dir / sub), output_loading_info=True)
        assert info["missing_keys"] in ([], set()), (sub, info)
        assert info["unexpected_keys"] in ([], set()), (sub, info)
        assert not info.get("mismatched_keys"), (sub, info)
        net.eval()
        with torch.no_grad():
            got = net(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            if sub == "discriminator":
                want = model.discriminator_logits(params, ids, types, mask, cfg.model)
            else:
                want = model.generator_logits(params, ids, types, mask, cfg.model)
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)
    assert (hf_dir / "discriminator" / "tokenizer.model").is_file()
    # as a user of transformers would: the tokenizer, AutoModel and the fill-mask pipeline
    from electra_fn.data.tokenizer import load_tokenizer

    ours = load_tokenizer(str(hf_dir.parent / "tokenizer"))
    text = ("the lighthouse keeper lit the lamp", "and the ships passed safely")
    for sub in ("discriminator", "generator"):
        tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir / sub))
        a, b = (ours.encode(t) for t in text)
        assert tok(*text)["input_ids"] == [2, *a, 3, *b, 3], sub  # [CLS] a [SEP] b [SEP]
        assert transformers.AutoModel.from_pretrained(str(hf_dir / sub)) is not None
    fill = transformers.pipeline("fill-mask", model=str(hf_dir / "generator"))
    out = fill("the lighthouse [MASK] lit the lamp", top_k=3)
    assert len(out) == 3 and all(0 <= o["score"] <= 1 for o in out)


def test_resume_is_exact(full_run, resumed_run):
    out, _ = resumed_run
    a = ckpt.load_checkpoint(full_run / "checkpoints" / "step_00000006.pt")
    b = ckpt.load_checkpoint(out / "checkpoints" / "step_00000006.pt")
    assert _trees_equal(a["params"], b["params"]), "resumed params differ"
    assert _trees_equal(a["opt_state"], b["opt_state"]), "resumed optimizer state differs"
    assert (a["step"], a["data_position"]) == (b["step"], b["data_position"])
    drop = ("tokens_per_s", "elapsed_s", "eta_s")
    ra = [{k: v for k, v in r.items() if k not in drop} for r in _rows(full_run / "metrics.jsonl")]
    rb = [{k: v for k, v in r.items() if k not in drop} for r in _rows(out / "metrics.jsonl")]
    assert ra == rb, "the resumed run logged different metrics"
    assert _rows(full_run / "eval.jsonl") == _rows(out / "eval.jsonl")


def test_resume_from_a_checkpoint_without_schedule_state_is_exact(tmp_path, cache, full_run):
    """A checkpoint written before the schedule became optimizer state (no
    ``opt_state["schedule"]``) resumes with the schedule of its recorded config, exactly."""
    out = tmp_path / "run"
    _ok(_cli(out, cache, "--steps", STEPS, "--stop-at-step", 3))
    path = out / "checkpoints" / "step_00000003.pt"
    state = ckpt.load_checkpoint(path)
    assert "schedule" in state["opt_state"]
    old = {k: v for k, v in state["opt_state"].items() if k != "schedule"}
    path.unlink()
    ckpt.save_checkpoint(out / "checkpoints", params=state["params"], opt_state=old, step=3,
                         data_position=tuple(state["data_position"]), config=state["config"])
    _ok(_cli(out, cache, "--steps", STEPS, "--resume"))
    a = ckpt.load_checkpoint(full_run / "checkpoints" / "step_00000006.pt")
    b = ckpt.load_checkpoint(out / "checkpoints" / "step_00000006.pt")
    assert _trees_equal(a["params"], b["params"]), "resumed params differ"
    assert _trees_equal(a["opt_state"], b["opt_state"]), "resumed optimizer state differs"


def test_resume_keeps_the_cadence_it_was_given(tmp_path, cache):
    """--eval-every and --log-every given at the start hold after a plain --resume (the
    defaults, a quarter of the run, would otherwise take over); given again, they win."""
    out = tmp_path / "run"
    _ok(_cli(out, cache, "--steps", 12, "--eval-every", 2, "--log-every", 1,
             "--stop-at-step", 3))
    _ok(_main_in_process([a for a in _args(out, cache, "--resume", "--stop-at-step", 7)]))
    assert [r["step"] for r in _rows(out / "eval.jsonl")] == [0, 2, 4, 6]
    assert [r["step"] for r in _rows(out / "metrics.jsonl")] == list(range(1, 8))
    _ok(_main_in_process(_args(out, cache, "--resume", "--eval-every", 5)))
    assert [r["step"] for r in _rows(out / "eval.jsonl")] == [0, 2, 4, 6, 10, 12]


def test_wall_time_counts_across_resumes(tmp_path, cache):
    """A checkpoint records the run's elapsed time; the resumed run's metrics and summary go on
    from it rather than restarting at zero."""
    out = tmp_path / "run"
    _ok(_cli(out, cache, "--steps", 6, "--log-every", 1, "--stop-at-step", 3))
    path = out / "checkpoints" / "step_00000003.pt"
    state = ckpt.load_checkpoint(path)
    first = _rows(out / "metrics.jsonl")[-1]["elapsed_s"]
    assert state["extra"]["elapsed_s"] >= first > 0
    state["extra"]["elapsed_s"] = 1000.0  # as if the first part had taken 1,000 s
    path.unlink()
    ckpt.save_checkpoint(out / "checkpoints", params=state["params"],
                         opt_state=state["opt_state"], step=3, extra=state["extra"],
                         data_position=tuple(state["data_position"]), config=state["config"])
    _ok(_main_in_process(_args(out, cache, "--resume")))
    rows = _rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(r["elapsed_s"] > 1000 for r in rows[3:])
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert 1000 < summary["wall_time_s"] < 1000 + 600


def test_resume_keeps_the_step_it_ran(tmp_path, cache, monkeypatch):
    """A run recorded as compiled resumes compiled unless --no-compile says otherwise (the
    compiled and eager steps draw different noise, so switching silently would not continue
    the run exactly); one recorded as eager resumes eager unless --compile."""
    from experiments import pretrain_small

    out = tmp_path / "run"
    _ok(_cli(out, cache, "--steps", STEPS, "--stop-at-step", 3))
    path = out / "checkpoints" / "step_00000003.pt"
    state = ckpt.load_checkpoint(path)
    state["config"]["run"]["compile"] = True  # as a run started with --compile records it
    path.unlink()
    ckpt.save_checkpoint(out / "checkpoints", params=state["params"],
                         opt_state=state["opt_state"], step=3,
                         data_position=tuple(state["data_position"]), config=state["config"])
    asked = []
    real = train.make_step_fn

    def make_step_fn(cfg, opts, log=print):
        asked.append(opts.compile)  # the decision is under test, not the compile
        return real(cfg, dataclasses.replace(opts, compile=False), log)

    monkeypatch.setattr(train, "make_step_fn", make_step_fn)
    for extra, want in (((), True), (("--no-compile",), False), (("--compile",), True)):
        r = _main_in_process(_args(out, cache, "--resume", "--stop-at-step", 4, *extra))
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert asked[-1] is want, extra
        # back to the step-3 checkpoint for the next case
        for p in ckpt.list_checkpoints(out / "checkpoints"):
            if p.name != "step_00000003.pt":
                p.unlink()


def test_plot_is_written(resumed_run):
    out, r = resumed_run
    png = out / "curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in r.stdout


# -- bad input -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, full_run) -> dict:
    """Every bad-input case, started at once; ``{case: (result, context)}``."""
    root = tmp_path_factory.mktemp("bad")
    cases: dict[str, tuple[list[str], dict]] = {}

    def add(name, *extra, corpus=(CORPUS,), out=None, **ctx):
        out = out or root / name / "run"
        cases[name] = (_args(out, root / name / "cache", *extra, corpus=corpus, plot=False),
                       dict(ctx, out=out))

    missing = root / "no_such_dir" / "corpus.txt"
    add("missing", "--steps", 2, corpus=(missing,), path=missing)

    empty = root / "empty.txt"
    empty.write_bytes(b"")
    add("empty", "--steps", 2, corpus=(empty,), path=empty)

    bad_utf8 = root / "latin1.txt"
    bad_utf8.write_bytes("A first line.\nCaf\u00e9 au lait.\n".encode("latin-1"))
    add("non_utf8", "--steps", 2, corpus=(bad_utf8,), path=bad_utf8)

    def copy_run(name):
        dst = root / name / "run"
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(full_run), str(dst)], check=True)
        return dst

    corrupt_out = copy_run("corrupt")
    corrupt = corrupt_out / "checkpoints" / "step_00000006.pt"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    add("corrupt", "--resume", out=corrupt_out, path=corrupt, bytes=bytes(data))

    mismatch_out = copy_run("mismatch")
    add("mismatch", "--resume", "--seq-len", 16, out=mismatch_out,
        path=mismatch_out / "checkpoints" / "step_00000006.pt")
    # optimizer and data flags are checked too (nothing is written on these errors, so the
    # cases share the copy)
    add("mismatch_lr", "--resume", "--lr", 0.01, out=mismatch_out,
        path=mismatch_out / "checkpoints" / "step_00000006.pt")
    add("mismatch_corpus", "--resume", corpus=(bad_utf8,), out=mismatch_out,
        path=mismatch_out / "checkpoints" / "step_00000006.pt")
    # the recipe flags (masking, initialisation, loss weights, generator size) as well
    for flag, value in (("--masking", "distinct"), ("--init", "normal"),
                        ("--gen-weight", 0.5), ("--generator-multiplier", 0.25)):
        add(f"mismatch{flag}", "--resume", flag, value, out=mismatch_out,
            path=mismatch_out / "checkpoints" / "step_00000006.pt")

    existing_out = copy_run("existing")
    add("existing", "--steps", 2, out=existing_out, snapshot=_snapshot(existing_out))

    # One case runs as a real process (the exit status itself); the others call main() in
    # this process meanwhile, which skips ~4 s of importing torch per case.
    name = "corrupt"
    proc = subprocess.Popen(cases[name][0], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    results = {}
    for other, (args, ctx) in cases.items():
        if other != name:
            results[other] = (_main_in_process(args), ctx)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    results[name] = (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
                     cases[name][1])
    return results


def _main_in_process(args: list[str]) -> subprocess.CompletedProcess:
    """``main(argv)`` of the entry point with captured output, as a CompletedProcess."""
    from experiments import pretrain_small

    assert args[1:3] == ["-m", "experiments.pretrain_small"]
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = pretrain_small.main(args[3:])
    finally:
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def _bad(bad_runs, name):
    r, ctx = bad_runs[name]
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr, ctx


def test_zero_workers_is_refused(tmp_path):
    r = _main_in_process(_args(tmp_path / "run", tmp_path / "cache", "--num-proc", 0))
    assert r.returncode == 2 and "--num-proc 0: must be a positive number" in r.stderr


def test_cuda_graph_needs_cuda(tmp_path):
    r = _main_in_process(_args(tmp_path / "run", tmp_path / "cache", "--cuda-graph",
                               "--device", "cpu"))
    assert r.returncode == 2 and "--cuda-graph needs a CUDA device" in r.stderr, r.stderr


def test_step_mode_resolution():
    """The CUDA-graph step is the default for an eager step on CUDA; --compile or another
    device turn it off; asking for it where it cannot run is an error that says why. A
    compiled step on CUDA is noted with what it has been checked by."""
    from electra_fn import compiling, train
    from experiments.pretrain_small import UserError, resolve_graph

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_graph(None, False, cuda) is True
    assert resolve_graph(None, True, cuda) is False
    assert resolve_graph(None, False, cpu) is False
    assert resolve_graph(False, False, cuda) is False
    with pytest.raises(UserError, match="needs a CUDA device"):
        resolve_graph(True, False, cpu)
    with pytest.raises(UserError, match="choose one"):
        resolve_graph(True, True, cuda)
    said = []
    opts = train.step_options(cuda, None, True, False, log=said.append)
    assert opts.compile and said == [f"note: {compiling.CUDA_NOTE}"]
    assert "not yet on a GPU" in said[0] and "gpu_checks --checks compiled" in said[0]
    said.clear()
    train.step_options(cpu, None, True, False, log=said.append)
    train.step_options(cuda, None, False, True, log=said.append)
    assert said == [] and compiling.device_note("cuda:0") and not compiling.device_note("cpu")


def test_missing_corpus(bad_runs):
    err, ctx = _bad(bad_runs, "missing")
    assert str(ctx["path"]) in err


def test_empty_corpus_file(bad_runs):
    err, ctx = _bad(bad_runs, "empty")
    assert str(ctx["path"]) in err


def test_non_utf8_corpus(bad_runs):
    err, ctx = _bad(bad_runs, "non_utf8")
    assert str(ctx["path"]) in err and "line 2" in err


def test_resume_from_corrupted_checkpoint(bad_runs):
    err, ctx = _bad(bad_runs, "corrupt")
    assert str(ctx["path"]) in err
    assert ctx["path"].read_bytes() == ctx["bytes"], "the corrupted checkpoint was modified"


def test_resume_with_mismatched_flag(bad_runs):
    err, ctx = _bad(bad_runs, "mismatch")
    assert "seq_len" in err and "--seq-len 16" in err and str(ctx["path"]) in err


def test_resume_with_mismatched_lr_or_corpus(bad_runs):
    err, ctx = _bad(bad_runs, "mismatch_lr")
    assert "--lr 0.01 does not match" in err and "learning_rate=" in err
    assert str(ctx["path"]) in err
    err, ctx = _bad(bad_runs, "mismatch_corpus")
    assert "--corpus" in err and "latin1.txt" in err and "does not match" in err
    assert "corpus=" in err and str(CORPUS) in err


@pytest.mark.parametrize("flag,field", [("--masking", "masking="), ("--init", "init="),
                                        ("--gen-weight", "gen_weight="),
                                        ("--generator-multiplier", "generator_multiplier=")])
def test_resume_with_mismatched_recipe_flag(bad_runs, flag, field):
    err, ctx = _bad(bad_runs, f"mismatch{flag}")
    assert f"{flag} " in err and "does not match" in err and field in err
    assert str(ctx["path"]) in err


def test_new_run_over_existing_checkpoints(bad_runs):
    err, ctx = _bad(bad_runs, "existing")
    assert "--resume" in err and "--overwrite" in err
    assert _snapshot(ctx["out"]) == ctx["snapshot"], "files in --out were modified"


def test_overwrite_replaces_the_old_runs_checkpoints(tmp_path, cache, resumed_run):
    """--overwrite starts afresh: the new run's checkpoints are not pruned in favour of the
    old run's later-step ones (which --resume would otherwise pick up)."""
    out = tmp_path / "run"
    subprocess.run(["cp", "-a", str(resumed_run[0]), str(out)], check=True)
    assert len(ckpt.list_checkpoints(out / "checkpoints")) == 2  # steps 3 and 6
    r = _main_in_process(_args(out, cache, "--steps", 2, "--overwrite"))
    _ok(r)
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000002.pt"]
    assert [row["step"] for row in _rows(out / "metrics.jsonl")] == [1, 2]
    assert orjson.loads((out / "summary.json").read_bytes())["steps"] == 2


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_bf16_run_on_cpu(tmp_path, cache, full_run, monkeypatch, backend):
    """The compiled path (``--compile``: one graph, bf16 autocast, key handed over on the
    step's device), run on CPU: it says the first call compiles, trains, logs finite metrics,
    records the settings, and its float32 master weights are what it saves. The default suite
    traces it as one graph through AOT autograd (``aot_eager``); Inductor's cold C++ compile
    (a minute) runs with ``-m slow``."""
    from electra_fn import compiling

    real = compiling.compile
    monkeypatch.setattr(compiling, "compile", lambda fn, **kw: real(fn, backend=backend, **kw))
    out = tmp_path / "run"
    r = _ok(_cli(out, cache, "--steps", 3, "--compile", "--dtype", "bf16",
                 "--compile-cache", tmp_path / "cc"))
    assert "bf16 autocast, compiled" in r.stdout
    assert "compiled as one graph on its first call" in r.stdout
    # a miss is announced (never a silent compile); Inductor's artifacts are saved after it
    assert f"compile cache: miss ({tmp_path / 'cc'}" in r.stdout and "is cold" in r.stdout
    assert "compile cache: saved" in r.stdout or backend != "inductor"
    run = orjson.loads((out / "config.json").read_bytes())["run"]
    assert run["compile"] is True and run["amp"] == "torch.bfloat16"
    rows = _rows(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(row["loss"] == row["loss"] and row["skipped"] == 0 for row in rows)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))
    assert state["step"] == 3
    assert all(v.dtype == torch.float32 for v in flat_dict(state["params"]).values())
    assert orjson.loads((out / "summary.json").read_bytes())["steps"] == 3


# -- interruption --------------------------------------------------------------------------
def _interrupted_run(out, cache, signals: int, *extra) -> tuple[int, str, str]:
    """Start a long run, send ``signals`` SIGINTs once it has logged a step; (rc, out, err)."""
    args = _args(out, cache, "--steps", 100_000, "--log-every", 1, *extra)
    p = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.time() + 180
        while not (metrics.exists() and metrics.read_bytes().strip()):
            assert p.poll() is None, f"exited early: {p.communicate()}"
            assert time.time() < deadline, "no metrics row within 180 s"
            time.sleep(0.2)
        for _ in range(signals):
            p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 130, f"exit {p.returncode}\n{stdout[-2000:]}\n{stderr[-2000:]}"
    return p.returncode, stdout, stderr


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path, cache, full_run):
    """... and the command it prints to continue keeps a --stop-at-step not yet reached."""
    out = tmp_path / "run"
    _, stdout, _ = _interrupted_run(out, cache, 1, "--stop-at-step", 90_000)
    assert "stopped by SIGINT" in stdout
    assert f"--out {out} --resume --stop-at-step 90000" in stdout
    last = ckpt.latest_checkpoint(out / "checkpoints")
    assert last is not None and str(last) in stdout
    state = ckpt.load_checkpoint(last)
    assert state["step"] >= 1 and int(state["opt_state"]["step"]) == state["step"]
    assert f"at step {state['step']}" in stdout
    assert not (out / "summary.json").exists()


def test_a_second_sigint_aborts_at_once_and_leaves_checkpoints_whole(tmp_path, cache,
                                                                     full_run):
    """The first signal asks for a checkpoint at the end of the step; a second one (for a step
    that would take long, e.g. a first compile) aborts at once. Either way: exit 130 and every
    checkpoint on disk loads (saves are atomic; a save cut short leaves no temp file)."""
    out = tmp_path / "run"
    _, _, stderr = _interrupted_run(out, cache, signals=2)
    assert "send it again to abort now" in stderr
    ckpt_dir = out / "checkpoints"
    for path in ckpt.list_checkpoints(ckpt_dir):
        ckpt.load_checkpoint(path)  # raises on a torn file
    assert not list(ckpt_dir.glob(".tmp-*"))
    assert not (out / "summary.json").exists()


def test_budgeted_run_refits_its_steps_to_its_own_pace(tmp_path, cache, full_run,
                                                       monkeypatch):
    """The scratch steps the budget fit times run at full speed, the run's own steps slower
    (as on a machine still settling, the other way round): the run re-fits at ``refit_point``
    to fewer steps, again halfway to its new end, ends there, and its learning rate decays to
    0 there."""
    from experiments import pretrain_small

    made, slow = [], {"on": False}

    def make_step_fn(*a, **kw):
        fn = real(*a, **kw)
        made.append(fn)

        def step(*args):
            if slow["on"]:
                time.sleep(0.03)
            return fn(*args)
        return step

    def pretrain_run(*a, **kw):  # after the budget fit's scratch steps
        slow["on"] = True
        return real_run(*a, **kw)

    real, real_run = train.make_step_fn, train.pretrain_run
    monkeypatch.setattr(train, "make_step_fn", make_step_fn)
    monkeypatch.setattr(train, "pretrain_run", pretrain_run)
    monkeypatch.setattr(pretrain_small, "StepBudget",
                        functools.partial(StepBudget, finish_reserve_s=0.5))
    # a busy machine (as the load average says) is named beside the fit, not only in a refusal
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 1.0, 1.0))
    out = tmp_path / "run"
    r = _main_in_process(_args(out, cache, "--time-budget", "8s"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "note: the CPU looks busy (1-minute load average" in r.stdout
    config = orjson.loads((out / "config.json").read_bytes())
    fit = config["run"]["budget_refit"]
    fitted, refits = fit["fitted_steps"], fit["refits"]
    assert refits[0]["at"] == refit_point(fitted)
    assert refits[0]["steps"] < fitted, fit
    # the second re-fit comes halfway to the first one's end, if that is 20+ steps on (it is
    # unless the machine is so busy that the budget holds fewer than ~120 slowed steps)
    halfway = refits[0]["steps"] // 2
    second = halfway - refits[0]["at"] >= REFIT_AT_MIN
    assert len(refits) == 1 + second, fit
    if second:
        assert refits[1]["at"] == halfway
    assert all(x["s_per_step"] >= 0.03 for x in refits)
    total = refits[-1]["steps"]
    assert config["pretrain"]["total_steps"] == total
    for x, before in zip(refits, (3, refits[0]["at"])):
        assert (f"over steps {before + 1}-{x['at']} → {x['steps']} steps (fitted before the "
                f"run: {fitted};") in r.stdout
    # one step function: the run reuses the one the budget fit timed, and a re-fit changes
    # the schedule in the optimizer state (data), not the function (a compiled one would
    # otherwise compile again)
    assert len(made) == 1
    rows = _rows(out / "metrics.jsonl")
    assert rows[-1]["step"] == total
    assert orjson.loads((out / "summary.json").read_bytes())["steps"] == total
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))
    assert state["step"] == total
    assert state["config"]["pretrain"]["total_steps"] == total
    assert state["config"]["run"]["budget_refit"] == fit
    # the schedule was re-fitted: the last logged lr is near 0, not mid-way down the old one
    peak = config["pretrain"]["learning_rate"]
    assert rows[-1]["lr"] < 0.05 * peak


def test_a_budget_too_short_to_train_is_refused_before_anything_is_written(tmp_path, cache,
                                                                            monkeypatch):
    """A budget that the setup and the reserved evaluations already fill (as on a busy
    machine) exits 2 naming the least budget that trains, instead of a run that overruns it
    with one step at learning rate 0; the output folder gets no config or checkpoint."""
    from experiments import pretrain_small

    monkeypatch.setattr(pretrain_small, "StepBudget",
                        functools.partial(StepBudget, finish_reserve_s=3600.0))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    out = tmp_path / "run"
    r = _main_in_process(_args(out, cache, "--time-budget", "10s"))
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "the time budget (0:10) is too short to train" in r.stderr
    assert "the CPU looks busy" not in r.stderr  # only this process's own load
    least = re.search(r"give at least (\d+):(\d\d):(\d\d) \(or --steps N\)", r.stderr)
    assert least and int(least[1]) * 3600 + int(least[2]) * 60 + int(least[3]) >= 3600
    assert not (out / "config.json").exists() and not (out / "checkpoints").exists()


def test_a_refusal_on_a_busy_cpu_says_that_other_processes_slow_the_steps(tmp_path, cache,
                                                                           monkeypatch):
    """Threads that share cores with other processes can make CPU steps many times slower;
    the refusal says so, with the load it saw, rather than leaving the user to guess."""
    from experiments import pretrain_small

    monkeypatch.setattr(pretrain_small, "StepBudget",
                        functools.partial(StepBudget, finish_reserve_s=3600.0))
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 1.0, 1.0))  # above any thread count
    r = _main_in_process(_args(tmp_path / "run", cache, "--time-budget", "10s"))
    assert r.returncode == 2
    assert "too short to train" in r.stderr and "the CPU looks busy" in r.stderr
    assert "load average 64.0" in r.stderr


# -- the resolver and named configurations ---------------------------------------------------
def _flags(**given) -> dict:
    from experiments import pretrain_small
    return {**vars(pretrain_small.build_parser().parse_args([])), **given}


def test_resolve_new_run_defaults_by_device(monkeypatch):
    """A new run: a 15-minute budget at batch 16 on a CPU, the paper's batch 128 and no budget
    on a GPU; flags win; the lr follows the batch."""
    from electra_fn import runtime
    from experiments.pretrain_small import resolve

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    cpu = resolve(_flags(), torch.device("cpu"))
    assert (cpu["new"], cpu["batch_size"], cpu["budget_s"], cpu["steps"]) == (True, 16, 900, None)
    assert cpu["amp"] is None and cpu["cuda_graph"] is False
    assert cpu["lr"] == pytest.approx(5e-4 * (16 / 128) ** 0.5)
    gpu = resolve(_flags(), torch.device("cuda"))
    assert (gpu["batch_size"], gpu["budget_s"], gpu["cuda_graph"]) == (128, None, True)
    assert gpu["amp"] is torch.bfloat16
    steps = resolve(_flags(steps=40, batch_size=4, lr=1e-3, masking="distinct"),
                    torch.device("cpu"))
    assert (steps["budget_s"], steps["batch_size"], steps["lr"]) == (None, 4, 1e-3)
    assert steps["recipe"] == {"masking": "distinct"}


def test_resolve_resume_keeps_the_checkpoint_recipe_and_step():
    """On resume the checkpoint decides: its config, its dtype, its kind of step; a repeated
    flag that agrees is fine, one that differs is refused naming the field."""
    from electra_fn.runtime import UserError
    from experiments.pretrain_small import resolve

    cfg = PretrainConfig(model=model.ModelConfig.from_name("tiny"), batch_size=8, seed=5)
    saved = {"pretrain": cfg.to_dict(), "run": {"preset": "tiny", "corpus": ["a.txt"],
                                                "valid": None, "amp": "None", "compile": True}}
    s = resolve(_flags(batch_size=8, dtype="auto"), torch.device("cpu"), saved, "ck.pt")
    assert s["new"] is False and s["cfg"] == cfg and s["amp"] is None
    assert s["compile"] is True and s["corpus"] == ["a.txt"]
    assert resolve(_flags(compile=False), torch.device("cpu"), saved)["compile"] is False
    with pytest.raises(UserError, match=r"ck.pt: --batch-size 16 does not match the "
                                        r"checkpoint's batch_size=8"):
        resolve(_flags(batch_size=16), torch.device("cpu"), saved, "ck.pt")
    with pytest.raises(UserError, match="--corpus b.txt does not match"):
        resolve(_flags(corpus=["b.txt"]), torch.device("cpu"), saved, "ck.pt")


def test_named_configs_load_and_flags_win(tmp_path, cache):
    from electra_fn.runtime import UserError
    from experiments import configs

    assert {"smoke", "cpu_default", "paper_gpu"} <= set(configs.names())
    parser_dests = set(_flags())
    for name in configs.names():
        flags = configs.load(name)
        assert set(flags) <= parser_dests, (name, set(flags) - parser_dests)
        doc = __import__(f"experiments.configs.{name}", fromlist=["x"]).__doc__
        # its command: pre-training or a reproduction (--config), or a study (--study)
        assert (f"--config {name}" in doc or f"--study {name}" in doc) and "Expected" in doc
    with pytest.raises(UserError, match="--config nope: unknown"):
        configs.load("nope")
    # the smoke config, with --steps and --corpus given on the command line winning
    out = tmp_path / "run"
    r = _main_in_process([sys.executable, "-m", "experiments.pretrain_small", "--config",
                          "smoke", "--corpus", str(CORPUS), "--steps", "3", "--cache-dir",
                          str(cache), "--out", str(out), "--no-plot"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    config = orjson.loads((out / "config.json").read_bytes())
    assert config["pretrain"]["total_steps"] == 3 and config["run"]["config"] == "smoke"
    assert config["pretrain"]["batch_size"] == 4 and config["run"]["preset"] == "tiny"
    assert config["run"]["commit"] and config["run"]["versions"]["torch"]


def test_pretraining_with_a_wordpiece_vocabulary_uses_its_special_ids(tmp_path, cache):
    """--tokenizer with a BERT-style vocab.txt ([CLS] 101, [SEP] 102, [MASK] 103): the run
    records those ids, never masks them, and exports a tokenizer transformers reads."""
    pytest.importorskip("tokenizers")
    import re as re_

    words = sorted({w for f in CORPUS.rglob("*.txt")
                    for w in re_.findall(r"[a-z]+", f.read_text(encoding="utf-8").lower())})
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]",
                                                                "[MASK]"] + words[:400]
    tok_dir = tmp_path / "wordpiece"
    tok_dir.mkdir()
    (tok_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    args = [a for a in _args(out, cache, "--steps", 3, "--tokenizer", tok_dir)]
    i = args.index("--vocab-size")
    del args[i:i + 2]  # the tokenizer fixes the vocabulary
    r = _ok(_main_in_process(args))
    assert "WordPieceTokenizer" in r.stdout
    config = orjson.loads((out / "config.json").read_bytes())
    p = config["pretrain"]
    assert (p["pad_id"], p["cls_id"], p["sep_id"], p["mask_id"]) == (0, 101, 102, 103)
    assert p["model"]["vocab_size"] == len(vocab) and config["run"]["tokenizer"] == str(tok_dir)
    assert [row["step"] for row in _rows(out / "metrics.jsonl")] == [1, 2, 3]
    # a resumed run keeps its tokenizer: another --tokenizer is refused
    bad = _main_in_process(args[:i] + args[i:] + ["--resume", "--tokenizer", str(tmp_path)])
    assert bad.returncode == 2 and "--tokenizer" in bad.stderr, bad.stderr
    both = _main_in_process(_args(tmp_path / "other", cache, "--tokenizer", tok_dir))
    assert both.returncode == 2 and "the tokenizer fixes the vocabulary" in both.stderr


def test_two_runs_on_one_out_the_second_is_refused(tmp_path, cache, full_run):
    """Two real processes on one --out: while the first runs, the second exits 2 naming the
    owner, and touches nothing (the first run's files and lock stay as they were)."""
    out = tmp_path / "run"
    first = subprocess.Popen(_args(out, cache, "--steps", 100_000, "--log-every", 1), cwd=REPO,
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (out / "metrics.jsonl").exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.2)
        before = (out / "config.json").read_bytes()
        second = subprocess.run(_args(out, cache, "--steps", 5, "--seed", 9, "--overwrite"),
                                cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        assert f"is in use by process {first.pid}" in second.stderr
        assert (out / "config.json").read_bytes() == before and first.poll() is None
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 130 and not (out / ".lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, cache, full_run):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    out = tmp_path / "run"
    out.mkdir()
    import socket
    (out / ".lock").write_bytes(orjson.dumps({"pid": int(gone.stdout), "host":
                                              socket.gethostname()}))
    r = _ok(_cli(out, cache, "--steps", 2))
    assert f"left by process {int(gone.stdout)}, which is gone" in r.stdout
    assert not (out / ".lock").exists()


def test_a_failed_overwrite_start_touches_nothing(tmp_path, cache, full_run):
    """--overwrite with inputs that cannot start (an empty held-out file) exits 2 and leaves
    the old run's tokenizer, config and checkpoints exactly as they were."""
    out = tmp_path / "run"
    subprocess.run(["cp", "-a", str(full_run), str(out)], check=True)
    before = _snapshot(out)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    r = _main_in_process(_args(out, cache, "--steps", 4, "--overwrite", "--valid", empty,
                               "--seed", 7))
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k != ".lock"} == before


def test_resume_with_an_edited_corpus_is_refused(tmp_path, cache):
    """The run's data identity (corpus and tokenizer content) is in its checkpoint: a corpus
    edited between a stop and --resume is refused, not silently rebuilt into other data."""
    corpus = tmp_path / "corpus"
    subprocess.run(["cp", "-a", str(CORPUS), str(corpus)], check=True)
    out = tmp_path / "run"
    _ok(_cli(out, cache, "--steps", 6, "--stop-at-step", 2, corpus=(corpus,)))
    victim = sorted(corpus.rglob("*.txt"))[0]
    victim.write_text(victim.read_text(encoding="utf-8") + "\nA new paragraph appears.\n",
                      encoding="utf-8")
    r = _main_in_process(_args(out, cache, "--resume", corpus=(corpus,)))
    assert r.returncode == 2 and "the corpus or tokenizer differs" in r.stderr, r.stderr[-2000:]


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, cache, full_run,
                                                          resumed_run):
    """The newest checkpoint corrupt (a flipped byte), an older one intact: --resume says so,
    continues from the older one, and still ends exactly where the uninterrupted run did;
    a temporary file of an interrupted save is removed on the way."""
    out = tmp_path / "run"
    subprocess.run(["cp", "-a", str(resumed_run[0]), str(out)], check=True)
    newest = out / "checkpoints" / "step_00000006.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 3] ^= 0x01
    newest.write_bytes(bytes(data))
    (out / "checkpoints" / ".tmp-interrupted.pt").write_bytes(b"half a save")
    r = _ok(_cli(out, cache, "--steps", STEPS, "--resume"))
    assert f"warning: {newest}" in r.stdout and "trying the one before it" in r.stdout
    assert "resuming at step 3" in r.stdout and ".tmp-interrupted.pt" in r.stdout
    assert not (out / "checkpoints" / ".tmp-interrupted.pt").exists()
    a = ckpt.load_checkpoint(full_run / "checkpoints" / "step_00000006.pt")
    b = ckpt.load_checkpoint(newest)
    assert _trees_equal(a["params"], b["params"])


@pytest.mark.parametrize("target, after, named", [
    ("metrics.jsonl", 2, "metrics.jsonl"),  # the third row, half written
    ("checkpoints/.tmp-", 1, "step_00000002.pt"),  # the second checkpoint
    ("config.json", 0, "config.json"),  # before the first step
    ("summary.json", 0, "summary.json"),  # after the last checkpoint
])
def test_a_full_disk_is_one_line_naming_the_file_and_the_run_goes_on(
        tmp_path, cache, full_run, disk_full_at, monkeypatch, target, after, named):
    """ENOSPC where the bytes reach the OS (conftest's ``disk_full_at``) while writing each
    kind of run file: exit 2 with one line naming the file, every checkpoint on disk whole, no
    half row in the logs; the same command with --resume (or, before any checkpoint, again)
    then finishes the run, and its metrics rows are those of an uninterrupted run."""
    out = tmp_path / "run"
    args = ("--steps", STEPS, "--save-every", "0.001", "--log-every", 1)
    failed = disk_full_at(target, after)
    r = _main_in_process(_args(out, cache, *args))
    assert r.returncode == 2 and failed, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "No space left on device" in r.stderr and named in r.stderr
    monkeypatch.undo()
    kept = ckpt.list_checkpoints(out / "checkpoints")
    assert [ckpt.load_checkpoint(p)["step"] for p in kept] == {
        "metrics.jsonl": [1, 2], "checkpoints/.tmp-": [1], "config.json": [],
        "summary.json": [5, 6]}[target]
    assert not list((out / "checkpoints").glob(".tmp-*")) and not list(out.glob(".*.tmp-*"))
    said = []
    if kept:
        rundir.read_jsonl(out / "metrics.jsonl", said.append)
    assert not said  # no half row
    again = _ok(_cli(out, cache, *args, *(["--resume"] if kept else [])))
    assert (out / "summary.json").is_file() and not again.stderr.strip()
    steps = [row["step"] for row in rundir.read_jsonl(out / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1))


def test_debug_shows_the_traceback_of_a_full_disk(tmp_path, cache, full_run, disk_full_at):
    disk_full_at("config.json")
    with pytest.raises(OSError, match="config.json"):
        _main_in_process(_args(tmp_path / "run", cache, "--steps", STEPS, "--debug"))


def _in_small_filesystems(sizes_k: dict[str, int], script: str, tmp_path: Path
                          ) -> subprocess.CompletedProcess:
    """``script`` (bash) with a fresh tmpfs of ``sizes_k[name]`` KiB mounted at
    ``tmp_path/name`` for each name, in a user and mount namespace of its own (no root needed
    where the kernel allows such namespaces; the test is skipped where it does not). The
    mounts vanish with the script: it copies out what the test should see."""
    probe = subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no user and mount namespaces here for a small real file system")
    mounts = "".join(f"mkdir -p {tmp_path / n} && mount -t tmpfs -o size={k}k tmpfs "
                     f"{tmp_path / n} || exit 97\n" for n, k in sizes_k.items())
    return subprocess.run(["unshare", "-r", "-m", "bash", "-c", mounts + script], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=600)


def test_a_real_full_disk_room_for_two_checkpoints_not_three(tmp_path, cache, full_run):
    """Real tmpfs file systems (1.3 MB checkpoints): with room for two checkpoints but not
    three, saves remove the older one first (with a note) and the run goes on; with room for
    one, the second save exits 2 with one line naming its file and the room it needs, and the
    first checkpoint stays whole. Both runs, resumed with room, end bit for bit where an
    uninterrupted run does."""
    import shlex

    runs = {"two": (3200, ["--stop-at-step", 4]), "one": (2000, [])}
    script = ""
    for name, (_, extra) in runs.items():
        args = _args(tmp_path / name / "run", cache, "--steps", STEPS, "--save-every", "0.001",
                     *extra)
        script += (f"{shlex.join(args)} > {tmp_path}/{name}.out 2> {tmp_path}/{name}.err; "
                   f"echo $? > {tmp_path}/{name}.rc; cp -a {tmp_path / name / 'run'} "
                   f"{tmp_path}/{name}-copy\n")
    r = _in_small_filesystems({n: k for n, (k, _) in runs.items()}, script, tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    text = {n: ((tmp_path / f"{n}.out").read_text(), (tmp_path / f"{n}.err").read_text(),
                int((tmp_path / f"{n}.rc").read_text())) for n in runs}
    out, err, rc = text["two"]
    assert rc == 0 and "stopped at step 4" in out, out[-2000:] + err[-2000:]
    assert "note: no room for a checkpoint beside 2; removed step_00000002.pt" in out
    out, err, rc = text["one"]
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "No space left on device; a checkpoint needs 1.3 MB free beside the newest " \
           "checkpoint" in err and "step_00000002.pt" in err
    final = ckpt.load_checkpoint(full_run / "checkpoints" / "step_00000006.pt")["params"]
    for name, step in (("two", 4), ("one", 1)):
        copy = tmp_path / f"{name}-copy"
        kept = ckpt.list_checkpoints(copy / "checkpoints")
        assert ckpt.load_checkpoint(kept[-1])["step"] == step
        assert not list((copy / "checkpoints").glob(".tmp-*"))
        _ok(_cli(copy, cache, "--steps", STEPS, "--resume"))
        resumed = ckpt.load_checkpoint(copy / "checkpoints" / "step_00000006.pt")["params"]
        assert _trees_equal(resumed, final)


def test_a_real_full_disk_while_appending_a_metrics_row(tmp_path, cache, full_run):
    """A run stopped at step 2, resumed on a real tmpfs left with two free pages: once the
    metrics rows need a third page the append fails; exit 2 with one line naming
    ``metrics.jsonl``, no half row, the checkpoint whole; resumed with room, the run ends with
    every row once."""
    import shlex

    steps, stopped = 40, tmp_path / "stopped"
    _ok(_cli(stopped, cache, "--steps", steps, "--log-every", 1, "--stop-at-step", 2))
    run = tmp_path / "small" / "run"
    args = _args(run, cache, "--steps", steps, "--log-every", 1, "--resume")
    script = (f"cp -a {stopped} {run} && (dd if=/dev/zero of={run.parent}/filler bs=4k "
              f"2> /dev/null; truncate -s -8k {run.parent}/filler) && "
              f"{shlex.join(args)} > {tmp_path}/out 2> {tmp_path}/err; echo $? > {tmp_path}/rc; "
              f"cp -a {run} {tmp_path}/copy")
    r = _in_small_filesystems({"small": 2048}, script, tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert int((tmp_path / "rc").read_text()) == 2, out[-2000:] + err[-2000:]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "No space left on device" in err and "metrics.jsonl" in err
    copy = tmp_path / "copy"
    said = []
    rows = rundir.read_jsonl(copy / "metrics.jsonl", said.append)
    assert not said and 10 < rows[-1]["step"] < steps  # failed mid-run, no half row
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(copy / "checkpoints"))["step"] == 2
    _ok(_cli(copy, cache, "--steps", steps, "--log-every", 1, "--resume"))
    assert [r["step"] for r in rundir.read_jsonl(copy / "metrics.jsonl")] == \
        list(range(1, steps + 1))
