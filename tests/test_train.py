"""The pre-training loop in the library: defaults, hooks, and a whole run in-process."""

from __future__ import annotations

from pathlib import Path

import torch

from electra_fn import checkpoint as ckpt
from electra_fn import rundir, train
from electra_fn.config import ModelConfig, PretrainConfig
from electra_fn.data import pretrain_data as pdata
from electra_fn.data import tokenizer as toklib
from electra_fn.train import default_lr, schedule_defaults
from electra_fn.tree import flat_dict

CORPUS = Path(__file__).resolve().parent / "fixtures" / "corpus"


def test_schedule_defaults():
    assert schedule_defaults(1_000_000) == (10_000, False)  # the paper's recipe
    assert schedule_defaults(100_000) == (10_000, False)
    assert schedule_defaults(573) == (57, True)  # a short CPU run: 10% warmup, corrected Adam
    assert schedule_defaults(5) == (1, True)
    assert schedule_defaults(573, warmup=1000, bias_correction=False) == (573, False)
    assert schedule_defaults(2_000_000, warmup=0, bias_correction=True) == (0, True)
    assert default_lr(128) == 5e-4 and abs(default_lr(32) - 2.5e-4) < 1e-12


class _Bar:
    total = 0

    def update(self, n): pass
    def write(self, s): pass
    def close(self): pass
    def refresh(self): pass
    def set_postfix_str(self, *a, **k): pass


def _toy_run(total: int) -> train.Run:
    cfg = PretrainConfig(model=ModelConfig.from_name("tiny"), total_steps=total)
    return train.Run(cfg, {"w": torch.zeros(())}, {}, 0, (0, 0), Path("."), {}, {}, 1, 1,
                     print, _Bar())


def test_loop_calls_hooks_after_each_step_and_stops_on_an_exit_code():
    """Hooks run in order after every step with that step's metrics; the first exit code a
    hook returns ends the loop; the pausing hooks' time is reported."""
    def step_fn(params, opt, batch, key):
        return {"w": params["w"] + batch["x"]}, opt, {"x": batch["x"]}

    def batches():
        i = 0
        while True:
            i += 1
            yield (0, i), {"x": torch.tensor(float(i))}

    seen, paused = [], []
    run = _toy_run(10)
    first = lambda r, m: seen.append(("a", r.step, float(m["x"])))  # noqa: E731
    second = lambda r, m: seen.append(("b", r.step)) or (7 if r.step == 4 else None)  # noqa: E731
    code = train.loop(run, step_fn, batches(), train.StepOptions(), [first, second],
                      pausing=(second,), on_pause=paused.append)
    assert code == 7 and run.step == 4 and run.position == (0, 4)
    assert float(run.params["w"]) == 1 + 2 + 3 + 4
    assert seen[:4] == [("a", 1, 1.0), ("b", 1), ("a", 2, 2.0), ("b", 2)]
    assert len(paused) == 4
    run = _toy_run(3)
    assert train.loop(run, step_fn, batches(), train.StepOptions(), [first]) is None
    assert run.step == 3


def test_cadence_gives_three_inner_evaluations_and_about_100_rows():
    assert train.cadence(1000, train.LoopOptions()) == (10, 250)
    assert train.cadence(6, train.LoopOptions()) == (1, 2)
    assert train.cadence(1000, train.LoopOptions(log_every=7, eval_every=9)) == (7, 9)


def _trees_equal(a, b) -> bool:
    fa, fb = flat_dict(a), flat_dict(b)
    return fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def _tiny_run(tmp_path: Path, total_steps: int, **recipe) -> tuple:
    """(tokenizer, data, config) of a tiny run on the fixture corpus: seq 32, batch 2."""
    tok = toklib.train_tokenizer([str(CORPUS)], 300, str(tmp_path / "cache"), log=lambda m: None)
    data = pdata.build_pretraining_data([str(CORPUS)], tok, seq_len=32, seed=0,
                                        cache_dir=str(tmp_path / "cache"), valid_fraction=0.05,
                                        log=lambda m: None)
    mcfg = ModelConfig.from_name("tiny").replace(vocab_size=tok.vocab_size)
    return tok, data, PretrainConfig(model=mcfg, seq_len=32, batch_size=2,
                                     total_steps=total_steps, **recipe)


def _run_dir(path: Path, tok) -> Path:
    """``path`` holding the run's tokenizer (as a started run has it)."""
    (path / "tokenizer").mkdir(parents=True)
    tok.save(str(path / "tokenizer"))
    return path


def test_pretrain_run_stopped_and_resumed_equals_a_straight_run(tmp_path):
    """In-process, through the library alone: a run stopped after step 3 and resumed from its
    checkpoint ends with exactly the parameters and optimizer state of an uninterrupted one,
    and its logs hold each step once."""
    tok, data, cfg = _tiny_run(tmp_path, 6, warmup_steps=1, learning_rate=1e-3)
    quiet = dict(step_opts=train.StepOptions(), run_info={}, log=lambda m: None)
    outs = {}
    for name, stops in (("straight", [None]), ("resumed", [3, None])):
        out = _run_dir(tmp_path / name, tok)
        state = None
        for stop in stops:
            opts = train.LoopOptions(stop_at_step=stop, plot=False)
            assert train.pretrain_run(cfg, data, out, loop_opts=opts, state=state, **quiet) == 0
            state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))
        outs[name] = (state, out)
    (a, out_a), (b, out_b) = outs["straight"], outs["resumed"]
    assert a["step"] == b["step"] == 6
    assert _trees_equal(a["params"], b["params"]) and _trees_equal(a["opt_state"], b["opt_state"])
    steps = [r["step"] for r in rundir.read_jsonl(out_b / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    summary = rundir.read_json(out_b / "summary.json")
    assert summary["steps"] == 6 and "commit" in summary["provenance"]
    assert summary["compute"]["flops"] == 6 * summary["compute"]["flops_per_step"] > 0
    assert (out_b / "hf" / "discriminator" / "config.json").is_file()


def test_a_run_resumed_from_its_final_checkpoint_logs_the_final_evaluation_once(tmp_path):
    """The summary of a finished run was lost (a crash or a full disk after the final save):
    resuming from the final checkpoint writes it again, with one evaluation row per step."""
    tok, data, cfg = _tiny_run(tmp_path, 4, warmup_steps=1)
    quiet = dict(step_opts=train.StepOptions(), run_info={}, log=lambda m: None,
                 loop_opts=train.LoopOptions(plot=False))
    out = _run_dir(tmp_path / "run", tok)
    assert train.pretrain_run(cfg, data, out, **quiet) == 0
    rows_before = rundir.read_jsonl(out / "eval.jsonl")
    (out / "summary.json").unlink()
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))
    assert state["step"] == 4
    assert train.pretrain_run(cfg, data, out, state=state, **quiet) == 0
    rows = rundir.read_jsonl(out / "eval.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in rows_before]
    assert [r["step"] for r in rows].count(4) == 1
    assert rundir.read_json(out / "summary.json")["steps"] == 4


def test_no_checkpoint_is_written_during_a_non_finite_streak(tmp_path):
    """Steps 3-5 report non-finite (skipped) updates: the periodic saves of those steps are
    not written (so keep-2 pruning cannot drop the checkpoints from before the streak), and
    saving resumes once a step is finite again."""
    tok, data, cfg = _tiny_run(tmp_path, 7, warmup_steps=1)
    real = train.make_step_fn(cfg, train.StepOptions())
    calls = {"n": 0}

    def step_fn(params, opt, batch, key):
        calls["n"] += 1
        p, o, m = real(params, opt, batch, key)
        if 3 <= calls["n"] <= 5:  # as the step does for a non-finite loss: no update
            return params, opt, {**m, "skipped": torch.ones(())}
        return p, o, m

    out = _run_dir(tmp_path / "run", tok)
    said = []
    opts = train.LoopOptions(save_every_s=0.0, plot=False, max_bad_steps=10)
    assert train.pretrain_run(cfg, data, out, step_opts=train.StepOptions(), loop_opts=opts,
                              run_info={}, step_fn=step_fn, log=said.append) == 0
    written = [m for m in said if m.startswith("checkpoint (periodic): ")]
    refused = [m for m in said if "not written" in m]
    assert [int(m.rsplit("_", 1)[1].split(".")[0]) for m in written] == [1, 2, 6, 7]
    assert len(refused) == 3 and "streak of 3 non-finite" in refused[-1]


def test_export_warnings_become_notes_in_the_log(tmp_path, monkeypatch):
    """A warning from the export (e.g. no `tokenizers` package for the transformers tokenizer
    files) reaches the user as one logged note, not a Python warning with a source line."""
    import warnings

    from electra_fn import hf

    tok, data, cfg = _tiny_run(tmp_path, 1, warmup_steps=0)

    def save_hf(*a, **kw):
        warnings.warn("no tokenizers here")
        return {}

    monkeypatch.setattr(hf, "save_hf", save_hf)
    out = _run_dir(tmp_path / "run", tok)
    said = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping the run would fail the test
        assert train.pretrain_run(cfg, data, out, step_opts=train.StepOptions(),
                                  loop_opts=train.LoopOptions(plot=False), run_info={},
                                  log=said.append) == 0
    assert "note: no tokenizers here" in said


def test_a_second_signal_during_the_signal_save_waits_for_the_save(tmp_path, monkeypatch,
                                                                    capsys):
    """SIGINT during step 2 asks for a checkpoint; a second SIGINT arrives while that
    checkpoint's bytes are being flushed. The save is not cut short: it completes (the only
    checkpoint of the run, whole), then the run aborts with exit 130, and it resumes."""
    import os
    import signal

    import pytest

    tok, data, cfg = _tiny_run(tmp_path, 4, warmup_steps=1)
    real_step, calls = train.make_step_fn(cfg, train.StepOptions()), {"n": 0}

    def step_fn(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the first: stop after this step
        return real_step(*args)

    real_fsync = os.fsync

    def fsync(fd):
        if "/.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            os.kill(os.getpid(), signal.SIGINT)  # the second, mid-save
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = _run_dir(tmp_path / "run", tok)
    run = dict(step_opts=train.StepOptions(), loop_opts=train.LoopOptions(plot=False),
               run_info={}, log=lambda m: None)
    with pytest.raises(SystemExit) as stop:
        train.pretrain_run(cfg, data, out, step_fn=step_fn, **run)
    monkeypatch.undo()
    assert stop.value.code == 130 and calls["n"] == 2
    assert "aborting once the checkpoint being written is complete" in capsys.readouterr().err
    (saved,) = ckpt.list_checkpoints(out / "checkpoints")
    state = ckpt.load_checkpoint(saved)
    assert state["step"] == 2 and not list((out / "checkpoints").glob(".tmp-*"))
    assert train.pretrain_run(cfg, data, out, state=state, **run) == 0
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))["step"] == 4
