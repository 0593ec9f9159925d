"""The GLUE fine-tuning runner: every task over several seeds, with a table and submissions.

Shaped like the pre-training loop (:func:`electra_fn.train.pretrain_run`): config objects in
(:class:`FinetuneConfig`, :class:`GlueOptions`), a run directory out (``<task>.json`` written
atomically with the commit and versions, ``results.md``, ``submission/``), an exit code back.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import finetune as FT
from . import hf, rundir, runtime
from .config import FinetuneConfig, ModelConfig
from .data.glue import get_task, load_task
from .metrics import main_metric

Log = Callable[[str], None]


@dataclass(frozen=True)
class GlueOptions:
    """Where and how the runs go: data, output, seeds, the step's device, dtype and compile
    mode, the training subsample, row strictness, the progress bar, and whether the best seed's
    model is exported for ``transformers``."""

    glue_dir: str
    out: Path
    seeds: tuple[int, ...] = (0,)
    device: str = "cpu"
    amp: torch.dtype | None = None
    compile_mode: str = "eager"
    max_train_examples: int | None = None
    cache_dir: Path | None = None
    strict: bool = False
    progress: bool = True
    title: str = "GLUE dev results"
    export_hf: bool = False  # the best dev seed's model to out/hf/<task> for transformers
    tokenizer_dir: Path | None = None  # exported beside it
    skip_done: bool = False  # keep a task whose <task>.json holds these seeds (a resumed run)
    batch_seeds: bool = False  # train the seeds together, one vmapped step (FT.run_seeds)


def progress_bar(desc: str, total_rows: int, disable: bool):
    """A tqdm bar over training examples and the ``progress`` callback of :func:`FT.train`."""
    from tqdm import tqdm
    bar = tqdm(total=total_rows, desc=desc, unit="ex", unit_scale=True, dynamic_ncols=True,
               disable=disable, mininterval=1.0, file=sys.stderr)

    def progress(step: int, total_steps: int, rows: int, metrics: dict) -> None:
        bar.update(rows)
        if step % 10 == 0 or step == total_steps:  # .item() syncs: only at log intervals
            bar.set_postfix(loss=f"{metrics['loss'].item():.4f}", step=f"{step}/{total_steps}",
                            refresh=False)
    return bar, progress


def report_skipped(splits, log: Log) -> None:
    for s in splits.values():
        if s.skipped:
            first = ", ".join(f"line {n} ({why})" for n, why in s.skipped[:3])
            log(f"warning: {s.path}: skipped {len(s.skipped)} malformed row(s): {first}"
                f"{', ...' if len(s.skipped) > 3 else ''}")


def write_table(out: Path, title: str) -> None:
    """``results.md`` from every ``<task>.json`` in ``out`` (earlier runs' tasks included)."""
    medians, num_seeds, sizes = FT.collect_results(out)
    (out / "results.md").write_text(FT.results_markdown(medians, num_seeds, title, sizes),
                                    encoding="utf-8")


class _Stop:
    code: int | None = None


@contextlib.contextmanager
def _diverged_as(log: Log):
    """Turns a diverged fine-tuning into one logged line and exit code 3."""
    stop = _Stop()
    try:
        yield stop
    except FT.FinetuneDiverged as e:
        log(f"error: {e}; no results written for this task")
        stop.code = 3


def done_before(path: Path, opts: GlueOptions) -> bool:
    """Whether ``path`` holds a finished task with these seeds and this training subsample."""
    try:
        r = rundir.read_json(path)
    except (OSError, ValueError):
        return False
    return ([s["seed"] for s in r.get("seeds", [])] == list(opts.seeds)
            and (r.get("data") or {}).get("max_train_examples") == opts.max_train_examples)


def tasks_to_run(tasks: list[str], opts: GlueOptions) -> list[str]:
    """``tasks`` less those :func:`done_before` in ``opts.out`` when ``opts.skip_done``."""
    if not opts.skip_done:
        return list(tasks)
    return [t for t in tasks if not done_before(opts.out / f"{get_task(t).name}.json", opts)]


def run_glue(tasks: list[str], params, model_cfg: ModelConfig, tokenizer, ckpt_info: dict,
             ft_cfg: FinetuneConfig, opts: GlueOptions, log: Log = print) -> int:
    """Fine-tune ``params`` (None: random init) on each task for every seed; returns the exit
    code (2 for a task whose data cannot be read)."""
    if opts.batch_seeds and opts.amp not in (None, torch.float32):
        log("error: batched seeds train in float32 (bf16 autocast under torch.func.vmap fails "
            "in the backward); pass --dtype float32 with --batch-seeds")
        return runtime.EXIT_BAD_INPUT
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = opts.cache_dir or out / "cache"
    max_len = FT.max_len_for(model_cfg, ft_cfg)
    dtype_text = "bf16 autocast" if opts.amp else "float32"
    done = []
    for task in tasks:
        spec = get_task(task)
        if opts.skip_done and done_before(out / f"{spec.name}.json", opts):
            log(f"{spec.name}: done before ({out / f'{spec.name}.json'}), kept")
            continue
        try:
            splits = load_task(opts.glue_dir, spec, tokenizer, max_len=max_len,
                               cache_dir=cache_dir, tokenizer_id=tokenizer.fingerprint,
                               strict=opts.strict)
        except (FileNotFoundError, NotADirectoryError, ValueError) as e:
            log(f"error: {e}")
            return runtime.EXIT_BAD_INPUT
        report_skipped(splits, log)
        if "train" not in splits:
            log(f"train split missing for {spec.name}: skipped")
            continue
        if not any(s in splits for s in spec.dev_splits):
            log(f"dev split missing for {spec.name}: skipped")
            continue
        full_train = len(splits["train"])
        splits["train"] = FT.subsample(splits["train"], opts.max_train_examples)
        epochs = ft_cfg.num_epochs(spec.num_epochs)
        t_task = time.perf_counter()
        runs, best_params = [], None
        main = main_metric(spec.name)
        for group in ([list(opts.seeds)] if opts.batch_seeds else [[s] for s in opts.seeds]):
            name = f"{spec.name} seed{'s' if len(group) > 1 else ''} " + ",".join(map(str, group))
            bar, progress = progress_bar(name, epochs * len(splits["train"]) * len(group),
                                         not opts.progress)
            with bar, _diverged_as(log) as stop:
                if opts.batch_seeds:
                    trained = FT.run_seeds(params, model_cfg, splits, spec, ft_cfg, group,
                                        device=opts.device, amp_dtype=opts.amp,
                                        progress=progress, keep_params=opts.export_hf)
                else:
                    trained = [FT.run_seed(params, model_cfg, splits, spec,
                                        ft_cfg.replace(seed=group[0]), group[0],
                                        compile_mode=opts.compile_mode, device=opts.device,
                                        amp_dtype=opts.amp, progress=progress,
                                        keep_params=opts.export_hf)]
            if stop.code is not None:  # no scores written as if they were valid
                return stop.code
            for run in trained:
                params_now = run.pop("params", None)
                log(f"{spec.name} seed {run['seed']}: {main} {100 * run['metrics'][main]:.2f} "
                    f"({run['wall_s']:.0f} s)")
                runs.append(run)
                if FT.best_seed_index([r["metrics"] for r in runs], spec) == len(runs) - 1:
                    best_params = params_now  # only the best seed's parameters are kept
        result = FT.aggregate_results(spec.name, runs)
        best = FT.best_seed_index([r["metrics"] for r in runs], spec)
        if opts.export_hf:
            path = hf.save_hf_classifier(best_params, model_cfg, spec.num_labels,
                                         out / "hf" / spec.name, opts.tokenizer_dir,
                                         id2label=list(spec.labels) or None)
            result["hf_export"] = {"seed": runs[best]["seed"], "path": str(path)}
            log(f"{spec.name}: seed {runs[best]['seed']}'s model exported for transformers "
                f"to {path}")
        submission = FT.write_submission(out / "submission", spec, runs[best], splits)
        n_train = len(splits["train"])
        result.update(
            wall_s=time.perf_counter() - t_task,
            submission={"seed": runs[best]["seed"], "chosen_by": "best dev " + result[
                "main_metric"], "files": submission},
            data={"train_examples_used": n_train, "train_examples_total": full_train,
                  "max_train_examples": opts.max_train_examples,
                  "skipped_rows": {s: {"count": len(v.skipped), "first_lines":
                                       [n for n, _ in v.skipped[:5]]}
                                   for s, v in splits.items()}},
            config={"finetune": ft_cfg.to_dict(), "model": model_cfg.to_dict(), **ckpt_info,
                    "device": opts.device, "dtype": dtype_text, "compile": opts.compile_mode,
                    "seeds": list(opts.seeds), "batch_seeds": opts.batch_seeds,
                    "epochs": epochs, "max_len": max_len},
            provenance=runtime.provenance(),
            seconds_per_1000_examples_per_epoch=1000 * sum(r["train_s"] for r in runs)
            / (len(runs) * epochs * n_train))
        rundir.write_json(out / f"{spec.name}.json", result)
        done.append(spec.name)
        write_table(out, opts.title)
        log(f"{spec.name}: median {result['main_metric']} {100 * result['main_median']:.2f} "
            f"over {len(runs)} seed(s); submission from seed {runs[best]['seed']} (best dev)")
    write_table(out, opts.title)
    log(f"wrote {out / 'results.md'} ({len(done)} task(s) run now); submissions in "
        f"{out / 'submission'}")
    return 0
