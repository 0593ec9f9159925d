"""The pre-training loop: the pure train step driven over the data, with hooks for
re-fitting a time budget, logging, held-out evaluation, checkpoints, and stopping on a step
or a signal; then the final checkpoint, evaluation, Hugging Face export, summary and plot.

:func:`pretrain` takes config objects (:class:`PretrainConfig`, :class:`StepOptions`,
:class:`LoopOptions`) and a run directory; it returns the command's exit code (0 done or
stopped on request, 3 diverged, 128 + signal). A resumed run continues bit for bit: the step's
noise, the data position and the schedule all come from the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import checkpoint as ckpt
from . import (compile_cache, compiling, cuda_graph, distributed, flops, heldout, hf, model,
               plotting, pretrain, rundir, runtime)
from .budget import MIN_FIT_STEPS, Pacer, StepBudget
from .config import PretrainConfig
from .data import pretrain_data as pdata
from .data import tokenizer as toklib
from .rng import step_key
from .tree import flat_dict, tree_count, tree_map

EXIT_DIVERGED = 3
SHORT_RUN_STEPS = 100_000  # shorter runs use bias-corrected Adam and a 10% warmup
BUDGET_TIMED_STEPS = 3  # timed scratch steps after the warm-up call when fitting a budget
Log = Callable[[str], None]


# -- the recipe's defaults --------------------------------------------------------------------
def default_lr(batch_size: int) -> float:
    """The paper's 5e-4 at batch 128, scaled by sqrt(batch / 128) for other batch sizes."""
    return 5e-4 * math.sqrt(batch_size / 128)


def schedule_defaults(total_steps: int, warmup: int | None = None,
                      bias_correction: bool | None = None) -> tuple[int, bool]:
    """(warmup steps, bias-corrected Adam?) for a run of ``total_steps``; explicit values win.

    The original Adam has no bias correction; for its first ~1/(1-b2) steps the update is
    several times the corrected one, which the paper's 10k-step warmup absorbs and a short run
    cannot (its discriminator collapses; records/2026-11-29_discriminator-context). So runs
    shorter than ``SHORT_RUN_STEPS`` use the corrected step and a 10% warmup."""
    short = total_steps < SHORT_RUN_STEPS
    if warmup is None:
        warmup = max(1, total_steps // 10) if short else 10_000
    if bias_correction is None:
        bias_correction = short
    return min(warmup, total_steps), bias_correction


# -- the step ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepOptions:
    """How the train step runs: where, in which dtype (None = float32), as what, on which
    data-parallel rank (``world``, None for a single process), and the folder of portable
    compile caches a compiled step starts from (:mod:`electra_fn.compile_cache`; None: none)."""

    device: torch.device = torch.device("cpu")
    amp: torch.dtype | None = None
    compile: bool = False
    cuda_graph: bool = False
    world: distributed.World | None = None
    compile_cache: Path | None = None

    @property
    def mode(self) -> str:
        return "compiled" if self.compile else "CUDA graph" if self.cuda_graph else "eager"


def step_options(device: torch.device, amp: torch.dtype | None, compile: bool,
                 cuda_graph: bool, world: distributed.World | None = None,
                 log: Log = print, compile_cache: Path | None = None) -> StepOptions:
    """The :class:`StepOptions` of a run; a data-parallel one runs the eager step (the CUDA
    graph, a default, is turned off with a note; ``compile`` is refused). A compiled step on
    CUDA gets :data:`electra_fn.compiling.CUDA_NOTE`, what it has been checked by."""
    if world is not None and compile:
        raise runtime.UserError("--compile under torchrun: data-parallel runs use the eager "
                                "step (run without --compile)")
    if compile and (note := compiling.device_note(device)):
        log(f"note: {note}")
    if world is not None and cuda_graph:
        log("note: data-parallel runs use the eager step (no CUDA graph)")
        cuda_graph = False
    return StepOptions(device, amp, compile, cuda_graph, world, compile_cache)


def make_step_fn(cfg: PretrainConfig, opts: StepOptions, log: Log = print) -> Callable:
    """The run's train step: compiled, captured as a CUDA graph (if the capture fails, ``log``
    says so and the same step runs uncaptured, drawing the same noise) or eager; on a
    data-parallel rank, the eager step over its rows of the batch."""
    if opts.world is not None:
        distributed.shard_rows(cfg.batch_size, opts.world)  # a clear error before any step
    route = pretrain.grad_route_for(opts.compile)
    step_fn = pretrain.make_train_step(cfg, amp_dtype=opts.amp, device_type=opts.device.type,
                                       grad_route=route, world=opts.world)
    if opts.compile:
        log("compile: the train step is compiled as one graph on its first call, which takes "
            "minutes (no progress is shown meanwhile)")
        key = compile_cache.cache_key(compile_cache.step_graph_config(
            cfg, amp=opts.amp, grad_route=route, world_size=world_size(opts)), opts.device)
        return compile_cache.warm_start(compiling.compile(step_fn), opts.compile_cache, key,
                                        log, {"commit": runtime.git_describe()})
    if opts.cuda_graph:
        def capture_failed(e: BaseException) -> None:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            log(f"warning: the CUDA graph capture failed ({type(e).__name__}: {first}); the "
                "step runs uncaptured (the same numbers, slower)")
        return cuda_graph.graph_step(step_fn, device=opts.device, on_capture_error=capture_failed)
    return step_fn


def step_key_for(seed: int, step: int, opts: StepOptions) -> torch.Tensor:
    """The step's key where the step wants it: a compiled step hashes its noise on the device;
    an eager step seeds the native generator from the key's value, so the key stays on the CPU
    (no device sync), and a CUDA-graph step fills its key buffer from it."""
    key = step_key(seed, step)
    return key.to(opts.device, non_blocking=True) if opts.compile else key


def time_steps(cfg: PretrainConfig, data, opts: StepOptions, log: Log = print
               ) -> tuple[list[float], Callable]:
    """Seconds of ``BUDGET_TIMED_STEPS + 1`` calls of the run's step on a scratch copy (the
    first warms up or compiles), and the step itself: the run reuses it, since a change of
    schedule is data in the optimizer state (a compiled step is not compiled again)."""
    params = tree_map(lambda x: x.to(opts.device), model.init_params(cfg.model, cfg.seed))
    opt = pretrain.init_opt_state(params, cfg)
    step_fn = make_step_fn(cfg, opts, log)
    it = distributed.sliced(pdata.batches(data.train_ids, data.train_token_types,
                                          cfg.batch_size, cfg.seed, pad_id=cfg.pad_id),
                            opts.world)
    times = []
    for i in range(BUDGET_TIMED_STEPS + 1):
        _, b = next(it)
        t = time.time()
        params, opt, m = step_fn(params, opt, runtime.to_device(b, opts.device),
                                 step_key_for(0, i, opts))
        float(m["loss"])  # the device has finished the step
        times.append(time.time() - t)
    return times, step_fn


def fit_to_budget(cfg: PretrainConfig, data, opts: StepOptions, budget: StepBudget,
                  t_start: float, log: Log = print) -> tuple[int, Callable]:
    """The step count that fits ``budget`` (counted from ``t_start``), from timed scratch
    steps (:func:`time_steps`), and the timed step function for the run to reuse."""
    times, step_fn = time_steps(cfg, data, opts, log)
    spent = time.time() - t_start
    total, step_s = budget.fit(times, spent - sum(times), heldout.EVAL_BATCHES)
    total = distributed.lead_value(total, opts.world)  # rank 0's fit, on every rank
    busy = runtime.cpu_contention(torch.get_num_threads()) if opts.device.type == "cpu" else None
    if total < (min(MIN_FIT_STEPS, budget.cap) if budget.cap else MIN_FIT_STEPS):
        # nothing is written yet: refuse rather than overrun the budget or learn nothing
        rest = budget.reserved_s(step_s, heldout.EVAL_BATCHES)
        need = budget.shortest_s(times, spent - sum(times), heldout.EVAL_BATCHES)
        raise runtime.UserError(
            f"the time budget ({runtime.fmt_time(budget.budget_s)}) is too short to train: "
            f"setup and timing took {runtime.fmt_time(spent)}, and at {step_s:.2f} s/step the "
            f"held-out evaluations and the finish need about {runtime.fmt_time(rest)} more; "
            f"give at least {runtime.fmt_time(need)} (or --steps N)"
            + (f". Note: {busy}" if busy else ""))
    log(f"budget: {runtime.fmt_time(budget.budget_s)} in all; {runtime.fmt_time(spent)} spent "
        f"on setup and timing; {step_s:.2f} s/step measured → {total} steps "
        f"({total * cfg.batch_size * cfg.seq_len / 1e6:.2f}M tokens) fit in the time left, "
        f"with a {budget.margin:.0%} margin for a machine that slows down")
    if busy:
        log(f"note: {busy}")
    return total, step_fn


def load_data(corpus: list[str], tokenizer, *, seq_len: int, seed: int, cache_dir: str,
              valid: list[str] | None, num_proc: int | None, log: Log = print):
    """The packed pre-training data (built or read from the cache), logged; a
    :class:`UserError` when the held-out split is empty."""
    data = pdata.build_pretraining_data(corpus, tokenizer, seq_len=seq_len, seed=seed,
                                        cache_dir=cache_dir, valid=valid, valid_fraction=0.05,
                                        num_proc=num_proc, log=log)
    st = data.stats
    log(f"data: {st['train_examples']} train / {st['valid_examples']} held-out examples of "
        f"{seq_len} tokens ({st['train_documents']} / {st['valid_documents']} documents)")
    if st["valid_examples"] == 0:
        raise runtime.UserError("the held-out split is empty; pass --valid or a larger corpus")
    return data


def open_run(out: Path, resume: str | None, overwrite: bool, log: Log = print
             ) -> tuple[dict | None, Path | None]:
    """(the loaded checkpoint, its path) to resume from (``resume``: "latest", the newest
    intact one, or a file), or (None, None) for a new run; a :class:`UserError` for nothing to
    resume, a checkpoint of another kind, or a new run over checkpoints without ``overwrite``.
    Temporary files of interrupted saves are removed (the caller owns ``out``)."""
    ckpt_dir = out / "checkpoints"
    for stale in ckpt.remove_stale_temporaries(ckpt_dir):
        log(f"note: removed {stale.name}, left by an interrupted save")
    if not resume:
        if ckpt.list_checkpoints(ckpt_dir) and not overwrite:
            raise runtime.UserError(f"{out} already holds checkpoints; pass --resume to continue "
                                    "that run or --overwrite to start a new one there (or "
                                    "choose another --out)")
        return None, None
    if resume == "latest":
        found = ckpt.load_latest_intact(ckpt_dir, log)
        if found is None:
            raise runtime.UserError(f"--resume: no checkpoint found in {ckpt_dir}")
        state, path = found
    else:
        path = Path(resume)
        state = ckpt.load_checkpoint(path)
    if "pretrain" not in state["config"]:
        raise runtime.UserError(f"{path}: config does not describe a pre-training run")
    return state, path


def token_ids(tokenizer) -> dict[str, int]:
    """The tokenizer's special-token ids as :class:`PretrainConfig` fields."""
    return {"pad_id": tokenizer.pad_id, "cls_id": tokenizer.cls_id, "sep_id": tokenizer.sep_id,
            "mask_id": tokenizer.mask_id}


def run_tokenizer(out: Path, corpus: list[str], *, vocab_size: int, cache_dir: str | None = None,
                  source: str | None = None, given: str | None = None, log: Log = print):
    """The run's tokenizer: for a new run ``given`` (a directory with our tokenizer or a
    WordPiece ``vocab.txt``) or one trained (or reused from ``cache_dir``) on ``corpus``, not
    yet saved (:func:`start_run` saves it once the run can start); on resume (``cache_dir``
    None) the one in ``out/tokenizer``, checked against the checkpoint's ``vocab_size`` (read
    from ``source``)."""
    if given is not None:
        tokenizer = toklib.load_tokenizer(str(given))
        log(f"tokenizer: {given} ({type(tokenizer).__name__}, vocabulary "
            f"{tokenizer.vocab_size})")
        return tokenizer
    if cache_dir is not None:
        log(f"tokenizer: training/reusing a sentencepiece vocabulary on {len(corpus)} file(s)")
        return toklib.train_tokenizer(corpus, vocab_size, str(cache_dir), log=log)
    tokenizer = toklib.load_tokenizer(str(out / "tokenizer"))
    if tokenizer.vocab_size != vocab_size:
        raise runtime.UserError(f"{out / 'tokenizer'}: vocabulary {tokenizer.vocab_size} does "
                                f"not match the checkpoint {source} (vocab_size={vocab_size})")
    return tokenizer


def start_run(recipe: PretrainConfig, data, out: Path, *, step_opts: StepOptions,
              budget: StepBudget | None, warmup: int | None, bias_correction: bool | None,
              run_info: dict, t_start: float, tokenizer=None, log: Log = print
              ) -> tuple[PretrainConfig, dict, Callable | None]:
    """A new run in ``out``: the step count fitted to ``budget`` (if any), the schedule's
    defaults for it; then, and only then, an earlier run's logs and checkpoints go, the
    ``tokenizer`` is saved and ``config.json`` written with the run's provenance and the
    identity of its data (``data_key``: corpus and tokenizer content). Returns (config, run
    info, the step timed by the fit or None)."""
    total, step_fn = recipe.total_steps, None
    distributed.shard_rows(recipe.batch_size, step_opts.world)  # before anything is written
    if budget is not None:
        total, step_fn = fit_to_budget(recipe, data, step_opts, budget, t_start, log)
    warmup, bias_correction = schedule_defaults(total, warmup, bias_correction)
    cfg = recipe.replace(total_steps=total, warmup_steps=warmup,
                         adam_bias_correction=bias_correction)
    run_info = {**run_info, "device": str(step_opts.device), "amp": str(step_opts.amp),
                "compile": step_opts.compile, "cuda_graph": step_opts.cuda_graph,
                "time_budget_s": budget.budget_s if budget else None,
                "world_size": world_size(step_opts), "data_key": data.stats.get("key"),
                **runtime.provenance()}
    if not distributed.is_lead(step_opts.world):  # rank 0 writes the run's files
        return cfg, run_info, step_fn
    for name in ("metrics.jsonl", "eval.jsonl"):
        (out / name).unlink(missing_ok=True)
    for old in ckpt.list_checkpoints(out / "checkpoints"):  # --overwrite: the old run's go
        old.unlink()
    if tokenizer is not None:
        tokenizer.save(str(out / "tokenizer"))
    rundir.write_json(out / "config.json", {"pretrain": cfg.to_dict(), "run": run_info,
                                            "data": data.stats})
    return cfg, run_info, step_fn


def world_size(opts: StepOptions) -> int:
    """The number of data-parallel ranks of the run (1: a single process)."""
    return 1 if opts.world is None else opts.world.size


def describe(cfg: PretrainConfig, opts: StepOptions) -> str:
    """The one-line description of a run printed before it trains."""
    return (f"model: {cfg.model.name} (generator ×{cfg.model.generator_multiplier:g}), vocab "
            f"{cfg.model.vocab_size}; batch {cfg.batch_size} × seq {cfg.seq_len}; "
            f"{cfg.total_steps} steps, warmup {cfg.warmup_steps}, peak lr "
            f"{cfg.learning_rate:.3g}{', bias-corrected Adam' if cfg.adam_bias_correction else ''}"
            f"; device {opts.device}, {'bf16 autocast' if opts.amp else 'float32'}, {opts.mode}"
            + (f"; data-parallel over {world_size(opts)} ranks of "
               f"{cfg.batch_size // world_size(opts)} rows" if opts.world is not None else ""))


# -- the loop ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoopOptions:
    """How the loop reports and saves: row and evaluation cadence (None: about 100 rows and
    three inner evaluations), checkpoint interval, divergence guard, an optional stop step,
    the plot, and the wall-time budget whose step count the run re-fits from its own pace."""

    log_every: int | None = None
    eval_every: int | None = None
    save_every_s: float = 600.0
    max_bad_steps: int = 20
    stop_at_step: int | None = None
    plot: bool = True
    budget: StepBudget | None = None


def cadence(total_steps: int, opts: LoopOptions) -> tuple[int, int]:
    """(log every, evaluate every): three evaluations inside the run and one at its end."""
    return (opts.log_every or max(1, min(50, total_steps // 100 or 1)),
            opts.eval_every or max(1, -(-total_steps // 4)))


@dataclass
class Run:
    """The loop's state, handed to every hook: the config (a re-fit changes its step count),
    the parameters and optimizer state, the step and data position, and the run's files."""

    cfg: PretrainConfig
    params: dict
    opt: dict
    step: int
    position: tuple[int, int]
    out: Path
    run_info: dict
    data_stats: dict
    log_every: int
    eval_every: int
    log: Log
    progress: object  # a tqdm bar
    extra: dict = field(default_factory=dict)
    save_guard: Callable = contextlib.nullcontext  # a save runs inside it (SignalStop.deferring)
    writer: bool = True  # False on data-parallel ranks other than 0: they write no files
    clock0: float = 0.0  # the run's time origin: elapsed time counts from it across resumes

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def config_blob(self) -> dict:
        return {"pretrain": self.cfg.to_dict(), "run": self.run_info}

    def save(self, reason: str) -> Path | None:
        """A checkpoint, unless the run is in a streak of non-finite (skipped) steps: then the
        newest checkpoint, from before the streak, is kept rather than pruned."""
        bad = self.extra.get("consecutive_bad")
        if bad is not None and float(bad) > 0:
            self.log(f"checkpoint ({reason}) not written: step {self.step} ends a streak of "
                     f"{int(bad)} non-finite step(s); the newest checkpoint is kept")
            return None
        if not self.writer:
            return None
        with self.save_guard():
            path = ckpt.save_checkpoint(self.ckpt_dir, params=self.params, opt_state=self.opt,
                                        step=self.step, data_position=self.position,
                                        config=self.config_blob(), log=self.log,
                                        extra={"elapsed_s": time.time() - self.clock0})
        self.log(f"checkpoint ({reason}): {path}")
        return path


Hook = Callable[[Run, dict], "int | None"]  # after each step; an exit code stops the loop


def loop(run: Run, step_fn: Callable, batches, step_opts: StepOptions, hooks: list[Hook],
         pausing: tuple[Hook, ...] = (), on_pause: Callable[[float], None] | None = None
         ) -> int | None:
    """Step until ``run.cfg.total_steps`` or until a hook returns an exit code (returned).
    The time spent in the ``pausing`` hooks (evaluations, saves) goes to ``on_pause``."""
    while run.step < run.cfg.total_steps:
        run.position, batch = next(batches)
        run.params, run.opt, m = step_fn(run.params, run.opt,
                                         runtime.to_device(batch, step_opts.device),
                                         step_key_for(run.cfg.seed, run.step, step_opts))
        run.step += 1
        for hook in hooks:
            t = time.time()
            code = hook(run, m)
            if on_pause is not None and hook in pausing:
                on_pause(time.time() - t)
            if code is not None:
                return code
    return None


class BudgetRefit:
    """Re-fits the step count twice from the run's own pace (:class:`electra_fn.budget.Pacer`);
    the schedule is data in the optimizer state, so the step is not rebuilt."""

    def __init__(self, pacer: Pacer, device: torch.device):
        self.pacer, self.device = pacer, device
        self.fitted_steps: int | None = None

    def pause(self, seconds: float) -> None:
        self.pacer = self.pacer.pause(seconds)

    def __call__(self, run: Run, m: dict) -> None:
        if not self.pacer.wants_clock(run.step):
            return None
        float(m["loss"])  # the device has finished the step
        if self.fitted_steps is None:
            self.fitted_steps = run.cfg.total_steps
        before = self.pacer
        self.pacer, total = self.pacer.observe(run.step, time.time(), run.cfg.total_steps,
                                               run.eval_every)
        if total is None:
            return None
        refit = self.pacer.refits[-1]
        if total != run.cfg.total_steps:
            set_total_steps(run, total, self.device)
            if len(self.pacer.refits) == 1:  # later re-fits keep the evaluation steps
                run.log_every, run.eval_every = run.extra["cadence"](total)
        run.run_info = {**run.run_info, "budget_refit": {"fitted_steps": self.fitted_steps,
                                                         "refits": list(self.pacer.refits)}}
        rundir.write_json(run.out / "config.json", {**run.config_blob(), "data": run.data_stats})
        run.progress.write(f"budget: {refit['s_per_step']:.2f} s/step over steps "
                           f"{before.pace_from + 1}-{run.step} → {total} steps (fitted before "
                           f"the run: {self.fitted_steps}; the lr decays to 0 at the new end)")
        return None


def set_total_steps(run: Run, total: int, device: torch.device) -> None:
    """Re-fit ``run`` to ``total`` steps: its config, the schedule in its optimizer state (the
    lr decays to 0 at the new end) and its progress bar."""
    run.cfg = run.cfg.replace(total_steps=total)
    run.opt = {**run.opt, "schedule": pretrain.schedule_state(run.cfg, device)}
    run.progress.total = total
    run.progress.refresh()


class Agreement:
    """Data-parallel ranks agree after every step, in one small all-reduce on the host: on
    rank 0's step count and cadence (its budget re-fits) and on a stop signal any rank got.
    :meth:`stop`, the last hook, acts on the agreed signal (:class:`SignalStop`)."""

    def __init__(self, world: distributed.World, signals: "SignalStop", device: torch.device):
        self.world, self.signals, self.device = world, signals, device
        self.signum = 0

    def __call__(self, run: Run, m: dict) -> None:
        mine = [run.cfg.total_steps, run.log_every, run.eval_every] if self.world.lead \
            else [0, 0, 0]
        total, log_every, eval_every, self.signum = distributed.agree_max(
            mine + [self.signals.signum or 0], self.world)
        if total != run.cfg.total_steps:
            set_total_steps(run, total, self.device)
        run.log_every, run.eval_every = log_every, eval_every

    def stop(self, run: Run, m: dict) -> int | None:
        if not self.signum:  # a signal that came after the agreement counts at the next step
            return None
        self.signals.signum = self.signum
        return self.signals(run, m)


class MetricsLog:
    """Averages the step metrics over ``run.log_every`` steps into ``metrics.jsonl`` (with
    tokens/s, elapsed time and ETA), shows them on the progress bar, and stops the run after
    ``max_bad_steps`` consecutive non-finite (skipped) steps."""

    def __init__(self, max_bad_steps: int, t_start: float, device: torch.device):
        self.max_bad_steps, self.t_start = max_bad_steps, t_start
        self.consecutive_bad = torch.zeros((), device=device)
        self.acc: dict[str, torch.Tensor] = {}
        self.window_t, self.window_steps = time.time(), 0

    def __call__(self, run: Run, m: dict) -> int | None:
        self.window_steps += 1
        self.consecutive_bad = (self.consecutive_bad + m["skipped"]) * m["skipped"]
        run.extra["consecutive_bad"] = self.consecutive_bad
        for k, v in m.items():
            self.acc[k] = self.acc[k] + v if k in self.acc else v
        if run.step % run.log_every == 0 or run.step == run.cfg.total_steps:
            n = self.window_steps
            row = {k: float(v) / n for k, v in self.acc.items()}  # host sync here
            now = time.time()
            tokens = row.pop("tokens") * n
            row["skipped"] = row["skipped"] * n
            rate = tokens / max(now - self.window_t, 1e-9)
            eta = (run.cfg.total_steps - run.step) * (now - self.window_t) / n
            row.update(step=run.step, tokens_per_s=rate, elapsed_s=now - self.t_start,
                       eta_s=eta)
            if run.writer:
                rundir.append_jsonl(run.out / "metrics.jsonl", row)
            run.progress.set_postfix_str(
                f"loss {row['loss']:.2f} gen {row['gen_accuracy']:.3f} disc+ "
                f"{row['disc_replaced_accuracy']:.3f} disc- {row['disc_original_accuracy']:.3f}"
                f" {rate:,.0f} tok/s", refresh=False)
            if row["skipped"]:
                run.log(f"step {run.step}: {int(row['skipped'])} update(s) skipped (non-finite "
                        "loss or gradient)")
            if float(self.consecutive_bad) >= self.max_bad_steps:
                run.progress.close()
                run.log(f"error: {int(self.consecutive_bad)} consecutive non-finite steps at "
                        f"step {run.step}; stopping. The last good checkpoint is intact in "
                        f"{run.ckpt_dir}; try a lower --lr or float32")
                return EXIT_DIVERGED
            self.acc, self.window_t, self.window_steps = {}, now, 0
        run.progress.update(1)
        return None


class Evaluation:
    """Held-out evaluation every ``run.eval_every`` steps (the final one is the run's end)."""

    def __init__(self, evaluate: Callable[[dict], dict]):
        self.evaluate = evaluate

    def __call__(self, run: Run, m: dict) -> None:
        if run.step % run.eval_every == 0 and run.step < run.cfg.total_steps:
            e = self.evaluate(run.params)  # on every rank: they stay in step
            if run.writer:
                rundir.append_jsonl(run.out / "eval.jsonl", {"step": run.step, **e})
                run.progress.write(heldout.eval_line(run.step, e))


class PeriodicSave:
    """A checkpoint every ``every_s`` seconds of wall time."""

    def __init__(self, every_s: float):
        self.every_s, self.last = every_s, time.time()

    def __call__(self, run: Run, m: dict) -> None:
        if time.time() - self.last >= self.every_s:
            run.save("periodic")
            self.last = time.time()


def stop_at(step: int) -> Hook:
    """Save and exit 0 after ``step``, as if interrupted (continue with a resume)."""
    def hook(run: Run, m: dict) -> int | None:
        if run.step < step:
            return None
        run.progress.close()
        run.save("--stop-at-step")
        run.log(f"stopped at step {run.step} (--stop-at-step); continue with --resume")
        return 0
    return hook


class SignalStop:
    """SIGINT/SIGTERM stop the run after the current step with a checkpoint (exit 128 +
    signal); a second signal aborts at once, except inside :meth:`deferring` (a checkpoint
    being written), which it ends first, so a save it interrupts is still whole. A context
    manager: the old handlers come back on exit."""

    def __init__(self, resume_hint: str):
        self.signum: int | None = None
        self.resume_hint = resume_hint
        self.saving, self.abort = False, None

    def _handler(self, signum, _frame):
        if self.signum is not None:
            if self.saving:
                self.abort = signum
                print(f"\n{signal.Signals(signum).name}: aborting once the checkpoint being "
                      "written is complete", file=sys.stderr, flush=True)
                return
            raise SystemExit(128 + signum)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              "(send it again to abort now)", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def deferring(self):
        """A block (a checkpoint save) that a second signal does not cut short: the abort it
        asks for (SystemExit 128 + signal) comes when the block has finished."""
        self.saving = True
        try:
            yield
        finally:
            self.saving = False
        if self.abort is not None:
            raise SystemExit(128 + self.abort)

    def __enter__(self):
        self.old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)

    def __call__(self, run: Run, m: dict) -> int | None:
        if self.signum is None:
            return None
        name = signal.Signals(self.signum).name
        run.progress.close()
        run.save(f"signal {name}")
        run.log(f"stopped by {name} at step {run.step}; continue with: {self.resume_hint}")
        return 128 + self.signum


# -- a whole run ---------------------------------------------------------------------------
def check_params_structure(ref: dict, got: dict, source) -> None:
    """A :class:`UserError` naming the first tensor of ``got`` missing from, shaped unlike,
    or not in ``ref`` (a checkpoint from another model)."""
    a, b = flat_dict(ref), flat_dict(got)
    for name in a:
        if name not in b:
            raise runtime.UserError(f"{source}: params tensor {name!r} missing")
        if tuple(a[name].shape) != tuple(b[name].shape):
            raise runtime.UserError(f"{source}: params tensor {name!r} has shape "
                                    f"{tuple(b[name].shape)}, the config needs "
                                    f"{tuple(a[name].shape)}")
    extra = sorted(set(b) - set(a))
    if extra:
        raise runtime.UserError(f"{source}: unexpected params tensor(s) {extra[:3]}")


def pretrain_run(cfg: PretrainConfig, data, out: Path, *, step_opts: StepOptions,
                 loop_opts: LoopOptions, run_info: dict, state: dict | None = None,
                 state_source: str = "checkpoint", step_fn: Callable | None = None,
                 t_start: float | None = None, resume_hint: str = "--resume",
                 log: Log = print) -> int:
    """Pre-train from ``state`` (a loaded checkpoint, read from ``state_source``) or from
    scratch into ``out``; returns the exit code. ``step_fn``: the step already built (by
    :func:`time_steps`); ``t_start``: when the command started (the budget counts from it)."""
    from tqdm import tqdm

    t_start = time.time() if t_start is None else t_start
    # elapsed time and the summary's wall time go on from the checkpoint's (the time between
    # a crash's last checkpoint and the crash is not counted)
    clock0 = t_start - float(((state or {}).get("extra") or {}).get("elapsed_s", 0.0))
    world, writer = step_opts.world, distributed.is_lead(step_opts.world)
    if state is None:
        params = model.init_params(cfg.model, cfg.seed)
        opt = pretrain.init_opt_state(params, cfg)
        step, position = 0, (0, 0)
    else:
        params, opt = state["params"], state["opt_state"]
        step, position = state["step"], state["data_position"]
        if "schedule" not in opt:  # a checkpoint from before the schedule was optimizer state
            opt = {**opt, "schedule": pretrain.schedule_state(cfg)}
        check_params_structure(model.init_params(cfg.model, 0), params, state_source)
        recorded = run_info.get("data_key")
        if recorded is not None and recorded != data.stats.get("key"):
            raise runtime.UserError(
                f"{state_source}: the corpus or tokenizer differs from the run's own (data key "
                f"{recorded}, now {data.stats.get('key')}); resume with the inputs it started "
                "with, or start a new run")
        log(f"resuming at step {step} (data epoch {position[0]}, batch {position[1]})")
        if run_info.get("world_size", 1) != world_size(step_opts):
            log(f"note: the run had {run_info.get('world_size', 1)} data-parallel rank(s), now "
                f"{world_size(step_opts)}: the same global batches and noise, split anew")
            run_info = {**run_info, "world_size": world_size(step_opts)}
        for name in ("metrics.jsonl", "eval.jsonl"):
            if writer:
                rundir.truncate_jsonl(out / name, step, log)
    device = step_opts.device
    if loop_opts.plot and not plotting.available():
        log(f"note: {plotting.PLOT_MISSING}")
    params = tree_map(lambda x: x.to(device), params)
    opt = tree_map(lambda x: x.to(device), opt)
    log(f"parameters: {tree_count(params) / 1e6:.2f}M (generator + discriminator + shared "
        "embeddings)")
    if step_fn is None:
        step_fn = make_step_fn(cfg, step_opts, log)
    evaluate = heldout.make_evaluator(cfg, data, device, amp_dtype=step_opts.amp)

    eval_path = out / "eval.jsonl"
    eval_s = None
    if step == 0:
        t = time.time()
        e = evaluate(params)
        eval_s = time.time() - t
        if writer:
            rundir.append_jsonl(eval_path, {"step": 0, **e})
        log(heldout.eval_line(0, e))

    log_every, eval_every = cadence(cfg.total_steps, loop_opts)
    progress = tqdm(total=cfg.total_steps, initial=step, desc="pre-training", unit="step",
                    dynamic_ncols=True, mininterval=1.0, file=sys.stdout, disable=not writer)
    run = Run(cfg, params, opt, step, position, out, run_info, data.stats, log_every,
              eval_every, log, progress,
              extra={"cadence": lambda total: cadence(total, loop_opts)}, writer=writer,
              clock0=clock0)
    # Only a fresh budgeted run re-fits: a resumed one keeps the schedule it recorded.
    refit = (BudgetRefit(Pacer.start(loop_opts.budget, t_start, eval_s, cfg.total_steps),
                         device)
             if state is None and loop_opts.budget is not None and eval_s is not None and writer
             else None)
    evaluation, saving = Evaluation(evaluate), PeriodicSave(loop_opts.save_every_s)
    if loop_opts.stop_at_step is not None and run.step < loop_opts.stop_at_step:
        resume_hint += f" --stop-at-step {loop_opts.stop_at_step}"  # a stop not yet reached
    signals = SignalStop(resume_hint)
    run.save_guard = signals.deferring
    agreement = Agreement(world, signals, device) if world is not None else None
    hooks: list[Hook] = ([refit] if refit else []) + ([agreement] if agreement else []) + [
        MetricsLog(loop_opts.max_bad_steps, clock0, device), evaluation, saving]
    if loop_opts.stop_at_step is not None:
        hooks.append(stop_at(loop_opts.stop_at_step))
    hooks.append(agreement.stop if agreement else signals)
    batches = distributed.sliced(pdata.batches(data.train_ids, data.train_token_types,
                                               cfg.batch_size, cfg.seed, start=position,
                                               pad_id=cfg.pad_id), world)
    with signals:
        code = loop(run, step_fn, batches, step_opts, hooks, pausing=(evaluation, saving),
                    on_pause=refit.pause if refit else None)
        if code is not None:
            return code
        progress.close()
        run.save("final")
    return finish(run, evaluate, device, loop_opts.plot, clock0)


def finish(run: Run, evaluate: Callable[[dict], dict], device: torch.device, plot: bool,
           t_start: float) -> int:
    """The final evaluation, Hugging Face export, ``summary.json``, plot and report (rank 0's
    work: the other data-parallel ranks are done)."""
    if not run.writer:
        return 0
    out, log = run.out, run.log
    final = evaluate(run.params)
    # A run resumed from its final checkpoint (its summary never written) evaluated this step
    # before: one row per step.
    rundir.truncate_jsonl(out / "eval.jsonl", run.step - 1)
    rundir.append_jsonl(out / "eval.jsonl", {"step": run.step, **final})
    evals = rundir.read_jsonl(out / "eval.jsonl", log)
    first = evals[0]
    cpu_params = tree_map(lambda x: x.detach().to("cpu"), run.params)
    with warnings.catch_warnings(record=True) as said:  # e.g. no `tokenizers`: a note, not a
        warnings.simplefilter("always")                  # warning with a source line
        written = hf.save_hf(cpu_params, run.cfg.model, out / "hf",
                             tokenizer_dir=out / "tokenizer")
    for w in said:
        log(f"note: {w.message}")
    wall = time.time() - t_start
    summary = {"steps": run.step, "wall_time_s": wall, "device": str(device),
               "world_size": run.run_info.get("world_size", 1),
               "tokens_seen": run.step * run.cfg.batch_size * run.cfg.seq_len,
               "compute": flops.pretraining_compute(run.cfg, run.step),
               "held_out_first": first, "held_out_final": final,
               "hf_export": {k: str(v) for k, v in written.items()},
               "provenance": runtime.provenance()}
    rundir.write_json(out / "summary.json", summary)
    rows = rundir.read_jsonl(out / "metrics.jsonl", log)
    drawn = plotting.plot_curves(out, rows, evals, log) if plot else None
    log("")
    log(f"done: {run.step} steps in {runtime.fmt_time(wall)} on {device}")
    for line in heldout.final_table(first, {"step": run.step, **final}):
        log(line)
    log(f"Hugging Face export: {out / 'hf'}; metrics: {out / 'metrics.jsonl'}"
        + (f"; plot: {drawn}" if drawn else ""))
    return 0
