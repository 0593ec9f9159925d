"""Pre-train ELECTRA-Small end to end.

    python -m experiments.pretrain_small                  # built-in corpus, ~15 min on a 2-core CPU
    python -m experiments.pretrain_small --config smoke    # the pipeline in seconds
    python -m experiments.pretrain_small --device cuda     # the paper's recipe (1M steps)
    python -m experiments.pretrain_small --resume          # continue the run in --out
    torchrun --nproc_per_node 2 -m experiments.pretrain_small  # data-parallel (docs/distributed.md)

Flags are resolved here (:func:`resolve`; named configurations: ``experiments/configs``); the
run is :func:`electra_fn.train.pretrain_run`, which writes its files into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

from electra_fn import checkpoint as ckpt
from electra_fn import compile_cache, distributed, rundir, runtime, train
from electra_fn.budget import StepBudget
from electra_fn.config import ModelConfig, PretrainConfig
from electra_fn.data import pretrain_data as pdata
from electra_fn.runtime import UserError
from experiments import configs

POSITIVE_FLAGS = ("steps", "batch_size", "seq_len", "lr", "time_budget", "save_every",
                  "max_bad_steps", "num_proc", "log_every", "eval_every", "stop_at_step",
                  "vocab_size", "generator_multiplier")
CPU_DEFAULT_BUDGET_S = 15 * 60
CPU_DEFAULT_BATCH = 16
# Flags that define a run: repeated on --resume they must agree with its checkpoint.
RECIPE_FLAGS = (
    ("preset", "run", "preset"), ("seq_len", "pretrain", "seq_len"), ("seed", "pretrain", "seed"),
    ("batch_size", "pretrain", "batch_size"), ("steps", "pretrain", "total_steps"),
    ("lr", "pretrain", "learning_rate"), ("warmup", "pretrain", "warmup_steps"),
    ("bias_correction", "pretrain", "adam_bias_correction"), ("init", "model", "init"),
    ("vocab_size", "model", "vocab_size"), ("masking", "pretrain", "masking"),
    ("generator_multiplier", "model", "generator_multiplier"), ("corpus", "run", "corpus"),
    ("gen_weight", "pretrain", "gen_weight"), ("disc_weight", "pretrain", "disc_weight"),
    ("valid", "run", "valid"), ("tokenizer", "run", "tokenizer"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.pretrain_small",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--config", help=f"a named run configuration ({', '.join(configs.names())}); "
      "flags given here win")
    a("--preset", help="model preset (default: small)")
    a("--corpus", nargs="+", help="files, dirs or globs (.txt/.gz/.xz); default: built-in")
    a("--valid", nargs="+", help="held-out corpus; default: 5%% of the documents")
    a("--steps", type=int, help="total optimizer steps")
    a("--time-budget", type=runtime.duration, help="wall time for the whole command (e.g. 15m); "
      "steps and schedule are fitted to it (default on CPU: 15m)")
    a("--batch-size", type=int)
    a("--seq-len", type=int)
    a("--lr", type=float, help="peak lr (default 5e-4 × sqrt(batch / 128))")
    a("--warmup", type=int, help="warmup steps (default 10000; 10%% under 100k steps)")
    a("--bias-correction", dest="bias_correction", action="store_true", default=None,
      help="bias-corrected Adam (default for runs under 100k steps)")
    a("--no-bias-correction", dest="bias_correction", action="store_false",
      help="the original's Adam without bias correction (default from 100k steps)")
    a("--vocab-size", type=int, help="vocabulary (default: the preset's, capped by the corpus)")
    a("--tokenizer", help="use this tokenizer (ours, or a WordPiece vocab.txt dir), not a new one")
    a("--generator-multiplier", type=float, help="generator width / discriminator's (Small 0.25)")
    a("--gen-weight", type=float, help="generator MLM loss weight (default 1)")
    a("--disc-weight", type=float, help="discriminator loss weight (default 50, the paper's)")
    a("--masking", choices=["original", "distinct"], help="positions drawn with replacement "
      "as the original (default), or distinct")
    a("--init", choices=["original", "normal"], help="the original's (truncated normal, Glorot "
      "where TF's default; the default) or normal(0, 0.02)")
    a("--out", default="runs/pretrain_small")
    a("--resume", nargs="?", const="latest", default=None,
      help="continue from the newest checkpoint in --out (or a given file)")
    a("--overwrite", action="store_true",
      help="allow starting a new run in an --out that already has checkpoints")
    a("--seed", type=int)
    a("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    a("--dtype", choices=["auto", "float32", "bf16"], default="auto",
      help="auto = bf16 autocast on CUDA and on CPUs with native bf16, float32 elsewhere; a "
           "resumed run keeps its own")
    a("--compile", dest="compile", action="store_true", default=None,
      help="torch.compile the train step as one graph (its first call compiles for minutes)")
    a("--no-compile", dest="compile", action="store_false")
    a("--compile-cache", help="compile-cache dir (default: the repo's compile_cache/, none: off)")
    a("--cuda-graph", dest="cuda_graph", action="store_true", default=None,
      help="capture the eager step as one CUDA graph (default on CUDA unless --compile)")
    a("--no-cuda-graph", dest="cuda_graph", action="store_false")
    a("--log-every", type=int)
    a("--eval-every", type=int)
    a("--save-every", type=runtime.duration, default=600.0,
      help="checkpoint interval in wall time (default 10m)")
    a("--max-bad-steps", type=int, default=20,
      help="stop after this many consecutive non-finite steps")
    a("--cache-dir", default=os.environ.get("ELECTRA_FN_CACHE",
                                            str(Path.home() / ".cache/electra_fn")))
    a("--num-proc", type=int, help="processes that tokenize a corpus not yet cached (default: "
      "one per 4M characters, up to the usable cores)")
    a("--no-plot", action="store_true")
    a("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    a("--stop-at-step", type=int, help="save and exit after this step, as if interrupted")
    return p


def resolve_graph(flag: bool | None, use_compile: bool, device) -> bool:
    """``--cuda-graph``: on by default for an eager step on CUDA."""
    if flag is None:
        return device.type == "cuda" and not use_compile
    if flag and device.type != "cuda":
        raise UserError(f"--cuda-graph needs a CUDA device (the run is on {device})")
    if flag and use_compile:
        raise UserError("--cuda-graph and --compile: choose one (the compiled step is one graph)")
    return flag


def resolve(flags: dict, device, saved: dict | None = None, source: str = "checkpoint") -> dict:
    """Flags, then the checkpoint's config (``saved``, on resume), then the device's defaults:
    the settings of the run. A resumed run keeps its recipe (a repeated flag must agree), its
    dtype and its kind of step; a new one gets the paper's batch on a GPU and a 15-minute
    budget of batch 16 on a CPU. Reads nothing but its arguments (and the CPU's flags, for the
    dtype)."""
    f = {k: v for k, v in flags.items() if v is not None}
    on_gpu = device.type == "cuda"
    for k in POSITIVE_FLAGS:  # zero, negative or non-finite values are refused, not replaced
        if k in f and not (math.isfinite(f[k]) and f[k] > 0):
            raise UserError(f"--{k.replace('_', '-')} {f[k]}: must be a positive number")
    use_compile = bool(f.get("compile"))
    graph = resolve_graph(f.get("cuda_graph"), use_compile, device)
    if saved is None:
        if "tokenizer" in f and "vocab_size" in f:
            raise UserError("--vocab-size and --tokenizer: the tokenizer fixes the vocabulary")
        batch = f.get("batch_size") or (128 if on_gpu else CPU_DEFAULT_BATCH)
        budget = f.get("time_budget")
        if budget is None and f.get("steps") is None and not on_gpu:
            budget = CPU_DEFAULT_BUDGET_S
        return {"new": True, "preset": f.get("preset", "small"), "corpus": f.get("corpus"),
                "valid": f.get("valid"), "seq_len": f.get("seq_len") or 128, "batch_size": batch,
                "seed": f.get("seed", 0), "lr": f.get("lr") or train.default_lr(batch),
                "steps": f.get("steps"), "budget_s": budget, "warmup": f.get("warmup"),
                "bias_correction": f.get("bias_correction"),
                "model": {k: f[k] for k in ("generator_multiplier", "init") if k in f},
                "recipe": {k: f[k] for k in ("gen_weight", "disc_weight", "masking") if k in f},
                "amp": runtime.resolve_amp(f.get("dtype", "auto"), device),
                "compile": use_compile, "cuda_graph": graph}
    cfg, run = PretrainConfig.from_dict(saved["pretrain"]), saved.get("run") or {}
    where = {"pretrain": cfg, "model": cfg.model}
    for flag, part, name in RECIPE_FLAGS:
        if flag not in f:
            continue
        given, have = f[flag], (run.get(name) if part == "run" else getattr(where[part], name))
        same = (math.isclose(given, have, rel_tol=1e-9) if isinstance(given, float)
                else [str(g) for g in given] == list(have or []) if isinstance(given, list)
                else given == have)
        if not same:
            shown = " ".join(map(str, given)) if isinstance(given, list) else given
            raise UserError(f"{source}: --{flag.replace('_', '-')} {shown} does not match the "
                            f"checkpoint's {name}={have}; a resumed run keeps its settings "
                            "(start a new run in another --out to change them)")
    if "compile" not in f and "cuda_graph" not in f:  # keep the step it ran (its noise)
        use_compile = bool(run.get("compile", False))
        graph = bool(run.get("cuda_graph", False)) and on_gpu
    return {"new": False, "cfg": cfg, "run": run, "corpus": run["corpus"], "valid": run["valid"],
            "amp": runtime.resolve_amp(f.get("dtype", "auto"), device, recorded=run.get("amp")),
            "compile": use_compile, "cuda_graph": graph}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.ExitStack() as held:  # the run directory's lock, released at the end
        return runtime.guarded(lambda: run(args, held), debug=args.debug,
                               errors=(ckpt.CheckpointCorrupt, rundir.RunDirBusy))


def run(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    t_start, log = time.time(), (lambda msg: print(msg, flush=True))
    flags = vars(args)
    if args.config:  # the named configuration's values under the flags given
        flags = configs.apply(args.config, flags, build_parser())
    device = runtime.resolve_device(flags["device"])
    world, device, log = held.enter_context(distributed.session(device, log))  # under torchrun
    out = Path(flags["out"])
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: not a directory")
    out.mkdir(parents=True, exist_ok=True)
    held.enter_context(distributed.lead_first(world, rundir.owned(out, log)))  # one per run dir
    state, resume_from = train.open_run(out, args.resume, args.overwrite, log)
    try:
        s = resolve(flags, device, state and state["config"], str(resume_from))
    except (KeyError, TypeError) as e:
        if state is None:
            raise
        raise UserError(f"{resume_from}: config does not describe a pre-training run ({e})")
    step_opts = train.step_options(device, s["amp"], s["compile"], s["cuda_graph"], world, log,
                                   compile_cache.resolve_dir(flags["compile_cache"]))
    corpus = s["corpus"] or [pdata.default_corpus_path()]
    if s["new"]:
        try:
            base = ModelConfig.from_name(s["preset"])
        except ValueError as e:
            raise UserError(f"--preset: {e}")
        tokenizer = train.run_tokenizer(out, corpus, vocab_size=flags["vocab_size"] or
                                        base.vocab_size, cache_dir=args.cache_dir,
                                        given=flags["tokenizer"], log=log)
    else:
        cfg = s["cfg"]
        if args.time_budget is not None:
            log(f"note: --time-budget is ignored on --resume: the run keeps its "
                f"{cfg.total_steps}-step schedule")
        tokenizer = train.run_tokenizer(out, corpus, vocab_size=cfg.model.vocab_size,
                                        source=str(resume_from))
    seq_len, seed = (s["seq_len"], s["seed"]) if s["new"] else (cfg.seq_len, cfg.seed)
    data = train.load_data(corpus, tokenizer, seq_len=seq_len, seed=seed,
                           cache_dir=str(Path(args.cache_dir)), valid=s["valid"],
                           num_proc=flags["num_proc"], log=log)
    distributed.ready(world)  # rank 0 has the data cached: the other ranks read it
    budget, step_fn, run_info = None, None, s.get("run")  # resumed: the run's own
    if s["new"]:
        budget = None if s["budget_s"] is None else StepBudget(s["budget_s"], cap=s["steps"])
        recipe = PretrainConfig(
            model=base.replace(vocab_size=tokenizer.vocab_size, **s["model"]), seq_len=seq_len,
            batch_size=s["batch_size"], total_steps=s["steps"] or 1_000_000, seed=seed,
            learning_rate=s["lr"], warmup_steps=0, **s["recipe"], **train.token_ids(tokenizer))
        run_info = {"preset": s["preset"], "config": args.config, "tokenizer": flags["tokenizer"],
                    "corpus": [str(c) for c in corpus], "valid": s["valid"],
                    "cadence": {"log_every": args.log_every, "eval_every": args.eval_every}}
        cfg, run_info, step_fn = train.start_run(
            recipe, data, out, step_opts=step_opts, budget=budget, warmup=s["warmup"],
            bias_correction=s["bias_correction"], run_info=run_info, t_start=t_start,
            tokenizer=tokenizer, log=log)
    log(train.describe(cfg, step_opts))
    kept = (run_info or {}).get("cadence") or {}  # a resumed run keeps the cadence it was given
    loop_opts = train.LoopOptions(args.log_every or kept.get("log_every"),
                                  args.eval_every or kept.get("eval_every"), args.save_every,
                                  args.max_bad_steps, args.stop_at_step, not args.no_plot, budget)
    return train.pretrain_run(
        cfg, data, out, step_opts=step_opts, loop_opts=loop_opts, run_info=run_info,
        state=state, state_source=str(resume_from), step_fn=step_fn, t_start=t_start,
        resume_hint=distributed.resume_command(world, "experiments.pretrain_small", out), log=log)


if __name__ == "__main__":
    sys.exit(main())
