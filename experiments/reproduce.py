"""Reproduce ELECTRA-Small at a chosen scale: pre-train, fine-tune GLUE from the checkpoint and
from scratch with the same seeds, and compare them on the paper's compute axis.

    python -m experiments.reproduce --config cpu_reproduce --glue-dir ../shared/data/glue
    python -m experiments.reproduce --config smoke --glue-dir tests/fixtures/glue \\
        --tasks sst2,stsb --seeds 2 --epochs 1 --out runs/reproduce-smoke

Stages, each resumable (run the same command again after an interruption): pre-training with
the named configuration (``python -m experiments.pretrain_small --config NAME``, continued with
``--resume``) into ``OUT/pretrain``; GLUE from it into ``OUT/glue_pretrained`` and from random
initialisation into ``OUT/glue_scratch`` (finished tasks are kept); then ``OUT/report.json``,
``OUT/results.md`` and ``OUT/compute.png`` (:mod:`electra_fn.reproduction`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from electra_fn import checkpoint as ckpt
from electra_fn import finetune as FT
from electra_fn import glue_run, reproduction, rundir, runtime
from electra_fn.config import FinetuneConfig
from experiments import configs

TASKS = "cola,sst2,mrpc,stsb,rte,wnli"  # the paper's small tasks; WNLI reported apart


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.reproduce",
                                description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--config", default="cpu_reproduce",
      help=f"pre-training configuration ({', '.join(configs.names())}); its GLUE settings are "
           "the defaults below")
    a("--glue-dir", required=True, help="folder with CoLA/, SST-2/, ...")
    a("--out", default=None, help="output folder (default runs/reproduce-CONFIG)")
    a("--tasks", default=None, help=f"comma-separated GLUE tasks (default {TASKS})")
    a("--seeds", type=int, default=None, help="fine-tuning seeds 0..N-1 (default 3)")
    a("--epochs", type=int, default=None, help="epochs for every task (default: the task's)")
    a("--max-train-examples", type=int, default=None,
      help="train each task on a fixed random subset of this many examples")
    a("--device", default="auto")
    a("--dtype", default="auto", choices=("auto", "float32", "bf16"))
    a("--cache-dir", default=None, help="tokenizer/data cache of the pre-training run")
    a("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    a("--batch-seeds", action="store_true", help="fine-tune each task's seeds together, one "
      "vmapped step (the configuration's default if it says so)")
    return p


def pretrain(name: str, out: Path, device: str, cache_dir: str | None) -> int:
    """The pre-training stage in its own process: done, continued, or started."""
    if (out / "summary.json").exists():
        print(f"pre-training: done before ({out})", file=sys.stderr)
        return 0
    cmd = [sys.executable, "-m", "experiments.pretrain_small", "--config", name, "--out",
           str(out), "--device", device] + (["--cache-dir", cache_dir] if cache_dir else [])
    if ckpt.list_checkpoints(out / "checkpoints"):
        cmd = [sys.executable, "-m", "experiments.pretrain_small", "--out", str(out), "--resume",
               "--device", device] + (["--cache-dir", cache_dir] if cache_dir else [])
    print("pre-training: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return runtime.guarded(lambda: run(args), debug=args.debug)


def run(args: argparse.Namespace) -> int:
    glue = configs.glue(args.config)
    out = Path(args.out or f"runs/reproduce-{args.config}")
    tasks = [t.strip() for t in (args.tasks or glue.get("tasks", TASKS)).split(",") if t.strip()]
    seeds = args.seeds or glue.get("seeds", 3)
    limit = args.max_train_examples or glue.get("max_train_examples")
    device = runtime.resolve_device(args.device)
    code = pretrain(args.config, out / "pretrain", str(device), args.cache_dir)
    if code != 0:
        print(f"pre-training stopped (exit {code}); run the same command again to continue",
              file=sys.stderr)
        return code
    params, model_cfg, tokenizer, info = FT.load_finetune_inputs(out / "pretrain")
    ft_cfg = FinetuneConfig(epochs=args.epochs or glue.get("epochs"))
    amp = runtime.resolve_amp(args.dtype, device)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    dirs = {"pretrained": out / "glue_pretrained", "scratch": out / "glue_scratch"}
    for kind, init in (("pretrained", params), ("scratch", None)):
        opts = glue_run.GlueOptions(args.glue_dir, dirs[kind], tuple(range(seeds)), str(device),
                                    amp, "eager", limit, out / "glue_cache", progress=False,
                                    title=f"GLUE dev, {kind}", skip_done=True,
                                    batch_seeds=args.batch_seeds or glue.get("batch_seeds", False))
        log(f"fine-tuning {kind}: {', '.join(tasks)}, seeds 0-{seeds - 1}"
            + (f", {limit} training examples per task" if limit else ""))
        code = glue_run.run_glue(tasks, init, model_cfg, tokenizer,
                                 {**info, "from_scratch": init is None}, ft_cfg, opts, log=log)
        if code:
            return code
    summary = rundir.read_json(out / "pretrain" / "summary.json")
    report = reproduction.compare(summary, reproduction.task_results(dirs["pretrained"]),
                                  reproduction.task_results(dirs["scratch"]), tasks)
    report["command"] = {"config": args.config, "tasks": tasks, "seeds": seeds,
                         "max_train_examples": limit, "epochs": ft_cfg.epochs,
                         "provenance": runtime.provenance()}
    rundir.write_json(out / "report.json", report)
    (out / "results.md").write_text(reproduction.markdown(report), encoding="utf-8")
    drawn = reproduction.plot(report, out / "compute.png")
    print(reproduction.markdown(report))
    log(f"wrote {out / 'results.md'}, {out / 'report.json'}" + (f", {drawn}" if drawn else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
