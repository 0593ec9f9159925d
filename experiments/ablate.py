"""Run an ablation study: every variant of a named configuration's recipe at the baseline's
pre-training FLOPs, with the same data, seeds and evaluation, then one table and one plot.

    python -m experiments.ablate --study cpu_ablate --glue-dir ../shared/data/glue
    python -m experiments.ablate --study cpu_ablate --glue-dir ../shared/data/glue \\
        --variants baseline,dropout-0 --seeds 0          # a subset first
    python -m experiments.ablate --study cpu_ablate --report-only

Resumable: run the same command again after an interruption; finished (variant, seed) runs
and GLUE tasks are kept, an unfinished one continues from its newest checkpoint. Processes
with disjoint ``--variants`` may run one study side by side (each run directory is owned by
one process, the caches are filled atomically); ``--jobs N`` does that for you, one worker
process per (variant, seed), N at a time, each with its log in its run directory. Seeds are the
outer loop (seed 0 of every variant first). Writes ``OUT/report.json``, ``OUT/results.md``,
``OUT/study.png`` and ``OUT/curves.png`` after every finished run (:mod:`electra_fn.study`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from electra_fn import finetune as FT
from electra_fn import glue_run, rundir, runtime, study, train
from electra_fn.config import FinetuneConfig
from electra_fn.runtime import UserError
from experiments import configs

CACHE = os.environ.get("ELECTRA_FN_CACHE", str(Path.home() / ".cache/electra_fn"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.ablate",
                                description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--study", default="cpu_ablate", help="a configuration with a STUDY "
      f"({', '.join(n for n in configs.names() if configs.part(n, 'STUDY'))})")
    a("--glue-dir", help="folder with SST-2/, CoLA/, ... (without it: pre-training only)")
    a("--out", help="output folder (default runs/ablate-STUDY)")
    a("--variants", help="comma-separated subset of the study's variants (default: all)")
    a("--seeds", help="comma-separated pre-training seeds (default: the study's)")
    a("--tasks", help="comma-separated GLUE tasks (default: the study's)")
    a("--ft-seeds", type=int, help="fine-tuning seeds 0..N-1 (default: the study's)")
    a("--max-train-examples", type=int, help="GLUE training subsample per task")
    a("--report-only", action="store_true", help="write the report from the runs done so far")
    a("--jobs", type=int, default=1, help="(variant, seed) runs at once, each in a worker "
      "process of its own (default 1: one after another in this process); on a CPU each "
      "worker gets cores / N threads unless OMP_NUM_THREADS is set")
    a("--no-report", action="store_true", help="leave the report to the caller (the workers "
      "of --jobs)")
    a("--device", default="auto")
    a("--dtype", default="auto", choices=("auto", "float32", "bf16"))
    a("--cache-dir", default=CACHE, help="tokenizer/data cache")
    a("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def pick(given: str | None, known: list[str], what: str) -> list[str]:
    """The comma-separated subset ``given`` of ``known`` (all of it if None), in given order."""
    if given is None:
        return list(known)
    chosen = [x.strip() for x in given.split(",") if x.strip()]
    if not chosen or any(x not in known for x in chosen):
        raise UserError(f"--{what} {given}: choose from {', '.join(known)}")
    return chosen


def ints(given: str, what: str) -> list[int]:
    """Comma-separated non-negative integers, or a :class:`UserError`."""
    try:
        values = [int(x) for x in given.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise UserError(f"--{what} {given}: expected comma-separated non-negative integers")
    return values


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return runtime.guarded(lambda: run(args), debug=args.debug, errors=(rundir.RunDirBusy,))


def run(args: argparse.Namespace) -> int:
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    spec, flags, glue = (configs.part(args.study, "STUDY"), configs.load(args.study),
                         configs.glue(args.study))
    if not spec:
        raise UserError(f"--study {args.study}: the configuration has no STUDY")
    all_variants = {v.name: v for v in spec["variants"]}
    variants = [all_variants[n] for n in pick(args.variants, list(all_variants), "variants")]
    seeds = list(spec["seeds"]) if args.seeds is None else ints(args.seeds, "seeds")
    tasks = [t.strip() for t in (args.tasks or glue["tasks"]).split(",") if t.strip()]
    out = Path(args.out or f"runs/ablate-{args.study}")
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: expected a positive number of workers")
    out.mkdir(parents=True, exist_ok=True)

    def report():  # every variant of the study, run or not
        write_report(out, list(all_variants.values()), sorted({*spec["seeds"], *seeds}), tasks,
                     args.study, log)

    if args.report_only:
        report()
        return 0
    if args.jobs > 1:
        return run_workers(args, flags, variants, seeds, tasks, out, report, log)
    return run_all(args, flags, spec, glue, variants, seeds, tasks, out, report, log)


def prepare(args, flags, out: Path, log):
    """The study's tokenizer and pre-training data, built into the caches on first use."""
    tokenizer = train.run_tokenizer(out, flags["corpus"], vocab_size=flags["vocab_size"],
                                    cache_dir=args.cache_dir, log=log)
    data = train.load_data(flags["corpus"], tokenizer, seq_len=flags["seq_len"], seed=0,
                           cache_dir=args.cache_dir, valid=flags.get("valid"), num_proc=None,
                           log=log)
    return tokenizer, data


def worker_command(args, out: Path, variant: str, seed: int) -> list[str]:
    """The command line of the ``--jobs`` worker for one (variant, seed): this run's options."""
    cmd = [sys.executable, "-m", "experiments.ablate", "--study", args.study, "--out", str(out),
           "--variants", variant, "--seeds", str(seed), "--no-report", "--device", args.device,
           "--dtype", args.dtype, "--cache-dir", args.cache_dir]
    for flag, value in (("--glue-dir", args.glue_dir), ("--tasks", args.tasks),
                        ("--ft-seeds", args.ft_seeds),
                        ("--max-train-examples", args.max_train_examples)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + (["--debug"] if args.debug else [])


def run_workers(args, flags, variants, seeds, tasks, out: Path, report, log) -> int:
    """Every (seed, variant) in a worker process, ``args.jobs`` at once, the caches filled
    first (here, once); each worker's stage every 5 minutes, the report after each finished
    run and at the end."""
    prepare(args, flags, out, log)
    jobs = [runtime.Job(f"{v.name} seed {seed}", worker_command(args, out, v.name, seed),
                        study.run_dir(out, v.name, seed) / "worker.log")
            for seed in seeds for v in variants]
    env = dict(os.environ)
    if runtime.resolve_device(args.device).type == "cpu" and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    log(f"{len(jobs)} runs, {args.jobs} at once" + (
        f", {env['OMP_NUM_THREADS']} thread(s) each" if "OMP_NUM_THREADS" in env else ""))
    code = runtime.run_jobs(jobs, args.jobs, env=env, log=log, on_finished=lambda _: report(),
                            status=lambda job: study.progress(job.log_file.parent, tasks))
    report()
    return code


def run_all(args, flags, spec, glue, variants, seeds, tasks, out, report, log) -> int:
    """Every (seed, variant): pre-training, then GLUE from its checkpoint; the report after each."""
    device = runtime.resolve_device(args.device)
    amp = runtime.resolve_amp(args.dtype, device)
    tokenizer, data = prepare(args, flags, out, log)
    base = study.base_recipe(flags, spec.get("model", {}), tokenizer.vocab_size,
                             train.token_ids(tokenizer))
    # On CUDA the eager step captured as a CUDA graph, as pre-training's default there.
    step_opts = train.StepOptions(device, amp, cuda_graph=device.type == "cuda")
    loop_opts = train.LoopOptions(plot=False)
    ft_seeds = tuple(range(args.ft_seeds or glue.get("seeds", 3)))
    limit = args.max_train_examples or glue.get("max_train_examples")
    for seed in seeds:
        for v in variants:
            directory = study.run_dir(out, v.name, seed)
            cfg = study.variant_config(base, v, seed)
            log(f"== {v.name}, seed {seed}: {cfg.total_steps} steps ({directory})")
            run_info = {"study": args.study, "variant": v.name, "corpus": flags["corpus"],
                        "valid": flags.get("valid")}
            code = study.pretrain_variant(cfg, data, directory / "pretrain", tokenizer,
                                          step_opts=step_opts, loop_opts=loop_opts,
                                          run_info=run_info, log=log)
            if code:
                log(f"stopped in {v.name}, seed {seed} (exit {code}); run the same command "
                    "again to continue")
                return code
            if args.glue_dir:
                opts = glue_run.GlueOptions(args.glue_dir, directory / "glue", ft_seeds,
                                            str(device), amp, "eager", limit, out / "glue_cache",
                                            progress=False, title=f"GLUE dev, {v.name}",
                                            skip_done=True)
                todo = glue_run.tasks_to_run(tasks, opts)
                if not todo:
                    log(f"GLUE: {', '.join(tasks)} done before ({opts.out}), kept")
                else:
                    try:
                        FT.resolve_checkpoint(directory / "pretrain")
                    except FileNotFoundError:
                        raise UserError(
                            f"{v.name}, seed {seed}: GLUE ({', '.join(todo)}) needs the "
                            f"pre-trained model, but {directory / 'pretrain'} holds only its "
                            "logs (no hf/discriminator, no checkpoints/: a run copied from a "
                            "record, or made on another machine). Move that folder aside and "
                            "run the same command to pre-train it again.") from None
                    params, model_cfg, tok, info = FT.load_finetune_inputs(directory / "pretrain")
                    code = glue_run.run_glue(todo, params, model_cfg, tok, info,
                                             FinetuneConfig(), opts, log=log)
                    if code:
                        return code
            if not args.no_report:
                report()
    return 0


def write_report(out: Path, variants, seeds, tasks, name: str, log) -> None:
    report = study.summarise(out, variants, seeds, tasks)
    report["provenance"] = runtime.provenance()
    rundir.write_json(out / "report.json", report)
    text = study.markdown(report, f"Ablation study {name}")
    rundir.write_atomic(out / "results.md", text.encode())
    drawn = [p for p in (study.plot(report, out / "study.png"),
                         study.plot_curves(report, out / "curves.png")) if p]
    log(f"report: {out / 'results.md'}" + "".join(f", {p}" for p in drawn))


if __name__ == "__main__":
    sys.exit(main())
