"""Fine-tune ELECTRA on GLUE tasks over several seeds; write results, a table and submissions.

    python -m experiments.finetune_glue --checkpoint runs/pretrain_small --glue-dir \\
        /work/shared/data/glue --tasks all --seeds 10 --out runs/glue_small

Per task: ``OUT/<task>.json`` (every seed's dev metrics, median/mean/std, wall time, config),
``OUT/results.md`` (our median main metric next to ELECTRA-Small-OWT's, with GLUE scores), and
``OUT/submission/<Task>.tsv`` (test predictions of the best-dev seed, GLUE submission format).
``--checkpoint DIR`` takes our pre-training output (``DIR/hf/discriminator``; a run stopped
before its export gives its newest ``DIR/checkpoints/step_N.pt``, or name one), an exported
``DIR/discriminator``, or a Hugging Face ELECTRA directory. Expected on a full ELECTRA-Small
checkpoint (1M steps): GLUE score ~80 (see results.md's reference column).

Bad inputs (missing task folder or checkpoint, malformed rows with --strict, a tokenizer that
does not match the checkpoint) and disk failures (full, read-only) exit with code 2 and a
one-line message naming the flag or file; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.finetune_glue",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="pre-training output dir (or one of its "
                   "checkpoints/step_N.pt), DIR/discriminator, or a "
                   "Hugging Face ELECTRA dir (config.json + weights + tokenizer)")
    p.add_argument("--tokenizer", help="tokenizer dir (tokenizer.model or vocab.txt); "
                   "default: the checkpoint's")
    p.add_argument("--glue-dir", required=True, help="folder with CoLA/, SST-2/, ...")
    p.add_argument("--tasks", default="all", help="comma-separated (sst2,cola,mrpc,stsb,qqp,"
                   "mnli,qnli,rte,wnli) or 'all' (the paper's eight, no WNLI)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--from-scratch", action="store_true",
                   help="random init of the checkpoint's (or --preset's) config")
    p.add_argument("--preset", default=None,
                   help="model preset for --from-scratch without --checkpoint (default small)")
    p.add_argument("--out", default="runs/glue", help="output dir (default runs/glue)")
    p.add_argument("--cache-dir", default=None, help="tokenised GLUE cache (default OUT/cache)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs for every task (default: 3; 10 for RTE and STS-B)")
    p.add_argument("--max-train-examples", type=int, default=None,
                   help="train on a fixed random subset of N training examples (before "
                   "MRPC/STS-B's order doubling; same subset for every seed) to fit a CPU "
                   "budget. Results are then NOT comparable to published numbers")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--layer-decay", type=float, default=0.8)
    p.add_argument("--no-extra-decay-factor", action="store_true",
                   help="drop the original's extra layer-decay factor (removed pooler)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--length-bucketing", action="store_true",
                   help="sort each chunk of training examples by length before batching (less "
                   "padding, faster; the original shuffles batches at random)")
    p.add_argument("--bias-correction", action="store_true",
                   help="bias-corrected Adam (torch.optim.AdamW's step) instead of the "
                        "original's uncorrected one")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bf16"),
                   help="auto (default): bf16 autocast with float32 master weights on CUDA "
                        "and on CPUs with native bf16, float32 elsewhere")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's). On a CPU shared with other "
                   "jobs, 1 can be several times faster than oversubscribed threads")
    p.add_argument("--compile", default="auto", choices=("auto", "eager", "static", "dynamic"),
                   help="auto (= eager): measured faster than compiling on CPU once compile "
                   "time counts, and compiling is unmeasured on GPU (minutes); static: one "
                   "graph per batch shape, widths padded to multiples of 8; dynamic: one "
                   "dynamic-shape graph")
    p.add_argument("--no-compile", action="store_true", help="same as --compile eager")
    p.add_argument("--strict", action="store_true", help="fail on malformed rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--batch-seeds", action="store_true",
                   help="train all seeds of a task together as one vmapped step (float32, "
                   "counter-based dropout; see electra_fn.finetune.train_seeds)")
    p.add_argument("--export-hf", action="store_true", help="export each task's best dev seed "
                   "to OUT/hf/<task> for transformers' AutoModelForSequenceClassification")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks instead of one-line errors")
    args = p.parse_args(argv)
    if args.checkpoint is None and not (args.from_scratch and args.tokenizer):
        p.error("--checkpoint is required (or --from-scratch with --tokenizer)")
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if args.max_train_examples is not None and args.max_train_examples < 1:
        p.error("--max-train-examples must be >= 1")
    return args


def _tasks(arg: str) -> tuple[list[str], bool]:
    from electra_fn.data.glue import get_task
    from electra_fn.finetune import PAPER_TASKS
    if arg.strip().lower() == "all":
        return list(PAPER_TASKS), True
    names = [get_task(t).name for t in arg.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--tasks {arg!r}: names no task")
    return names, False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from electra_fn import runtime  # after argparse: --help stays fast
    from electra_fn.hf import CheckpointError
    return runtime.guarded(lambda: run(args), debug=args.debug, errors=(CheckpointError,))


def run(args: argparse.Namespace) -> int:
    """The command after its flags: every input checked before any training, then the tasks;
    bad input raises (:func:`electra_fn.runtime.guarded` makes it one line)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from electra_fn.runtime import resolve_amp, resolve_device
    device = resolve_device(args.device)
    args.device = str(device)
    amp = resolve_amp(args.dtype, device)
    dtype_text = "bf16 autocast" if amp else "float32"

    from electra_fn import compiling
    from electra_fn import finetune as FT
    from electra_fn.config import FinetuneConfig
    from electra_fn.data.glue import task_dir

    tasks, all_tasks = _tasks(args.tasks)
    ft_cfg = FinetuneConfig(learning_rate=args.lr, layer_decay=args.layer_decay,
                            extra_decay_factor=not args.no_extra_decay_factor,
                            weight_decay=args.weight_decay, batch_size=args.batch_size,
                            adam_bias_correction=args.bias_correction,
                            length_bucketing=args.length_bucketing,
                            max_len=args.max_len, epochs=args.epochs, seed=args.first_seed)
    present = []
    for t in tasks:
        try:
            task_dir(args.glue_dir, t)
            present.append(t)
        except FileNotFoundError as e:
            if not all_tasks:
                raise
            print(f"{e}: skipped", file=sys.stderr)
    params, model_cfg, tokenizer, ckpt_info = FT.load_finetune_inputs(
        args.checkpoint, args.tokenizer, from_scratch=args.from_scratch, preset=args.preset)
    FT.max_len_for(model_cfg, ft_cfg)  # raises for a --max-len the model cannot take
    mode = (FT.default_compile_mode(args.device) if args.compile == "auto" else args.compile)
    mode = "eager" if args.no_compile else mode
    if mode != "eager" and (note := compiling.device_note(args.device)):
        print(f"note: --compile {mode}: {note}", file=sys.stderr)
    from electra_fn.glue_run import GlueOptions, run_glue

    seeds = tuple(range(args.first_seed, args.first_seed + args.seeds))
    init = "random init" if args.from_scratch else ckpt_info["checkpoint"]
    print(f"model {model_cfg.name}: {init}; tokenizer {ckpt_info['tokenizer']} (vocab "
          f"{tokenizer.vocab_size}); device {args.device}, {dtype_text}, {mode}; seeds "
          f"{list(seeds)}", file=sys.stderr)
    opts = GlueOptions(args.glue_dir, Path(args.out), seeds, args.device, amp, mode,
                       args.max_train_examples,
                       Path(args.cache_dir) if args.cache_dir else None, args.strict,
                       not args.no_progress,
                       "GLUE dev results" + (" (from scratch)" if args.from_scratch else ""),
                       args.export_hf, Path(ckpt_info["tokenizer"]).parent,
                       batch_seeds=args.batch_seeds)
    return run_glue(present, params, model_cfg, tokenizer, ckpt_info, ft_cfg, opts,
                    log=lambda msg: print(msg, file=sys.stderr))


if __name__ == "__main__":
    sys.exit(main())
