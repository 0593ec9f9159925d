"""Pre-train ELECTRA-Small end to end.

    python -m experiments.pretrain_small                  # built-in corpus, ~15 min on a 2-core CPU
    python -m experiments.pretrain_small --device cuda     # the paper's recipe (1M steps)
    python -m experiments.pretrain_small --resume          # continue the run in --out

Without arguments on a CPU the run is budgeted to about 15 minutes of wall time: the number of
steps is measured and fitted to ``--time-budget`` and the learning-rate schedule is scaled to
it; the step runs eagerly, in bf16 autocast where the CPU has native bf16. On a GPU the
defaults are the paper's (batch 128, sequence 128, 1M steps, bf16 autocast), with the eager
step captured as one CUDA graph and replayed (``--no-cuda-graph`` runs it op by op);
``--compile`` compiles it as one graph instead, whose cold compile has taken over six
minutes on an H200 (README, "Pre-training").
The held-out evaluations also score the discriminator on replacements drawn from two fixed
distributions (uniform, and the training data's token frequencies). Writes into ``--out``:
``config.json``, ``metrics.jsonl``, ``eval.jsonl``, ``checkpoints/``, ``tokenizer/``,
``hf/{discriminator,generator}`` (Hugging Face layout), ``summary.json`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import torch

from electra_fn import checkpoint as ckpt
from electra_fn import compiling, cuda_graph, diagnostics, hf, model, pretrain
from electra_fn.config import ModelConfig, PretrainConfig
from electra_fn.data import pretrain_data as pdata
from electra_fn.data import tokenizer as toklib
from electra_fn.tree import tree_count, tree_map

EXIT_BAD_INPUT = 2
CPU_DEFAULT_BUDGET_S = 15 * 60
CPU_DEFAULT_BATCH = 16
EVAL_BATCHES = 8
# One held-out batch (generator + discriminator forward, a discriminator forward per fixed
# proposal, two more for the shuffled-context check) in training steps: 11 s for 8 batches
# against ~1.15 s/step (2-core CPU, bf16).
EVAL_BATCH_STEPS = 1.2
BUDGET_TIMED_STEPS = 3  # timed steps after the warm-up call when fitting a --time-budget
BUDGET_MARGIN = 0.05  # share of the fitted time kept back for a machine that slows down
# A budgeted run re-fits its step count from the pace of its own steps (the three scratch
# steps timed before the run can be off by a third on a machine still settling): a tenth of
# the way in (no earlier than step 20), from steps 4 on; and halfway, from the steps since.
REFIT_AT_MIN = 20
FINISH_RESERVE_S = 25.0  # the final save, Hugging Face export and plot
# Runs shorter than this use bias-corrected Adam and a 10% warmup (see main()).
SHORT_RUN_STEPS = 100_000


def default_lr(batch_size: int) -> float:
    """The paper's 5e-4 at batch 128, scaled by sqrt(batch / 128) for other batch sizes."""
    return 5e-4 * math.sqrt(batch_size / 128)


def schedule_defaults(total_steps: int, warmup: int | None = None,
                      bias_correction: bool | None = None) -> tuple[int, bool]:
    """(warmup steps, bias-corrected Adam?) for a run of ``total_steps``; explicit values win.

    The original Adam has no bias correction: for the first ~1/(1-b2) = 1000 steps its update
    m/sqrt(v) is up to ~3x (4.5x at step 50) the bias-corrected one. The paper's 10k-step
    warmup absorbs that; a short run cannot, and its discriminator collapses (every token
    gets the same final state) without recovering. Measured on the default CPU run with
    ``experiments.collapse_probe`` (batch 16, peak lr 2e-4, warmup 60): uncorrected, the
    states stay collapsed; corrected, they dip and recover by step 75, step for step like
    ``transformers`` + ``torch.optim.AdamW``. So runs shorter than 100k steps use the
    corrected step and a 10% warmup; longer runs keep the original (10k warmup, uncorrected).
    """
    short = total_steps < SHORT_RUN_STEPS
    if warmup is None:
        warmup = max(1, total_steps // 10) if short else 10_000
    if bias_correction is None:
        bias_correction = short
    return min(warmup, total_steps), bias_correction


class UserError(Exception):
    """Bad input: reported as one clear line and exit code 2."""


# -- arguments ----------------------------------------------------------------------------
def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"--time-budget {text!r}: use e.g. 900, 900s, 15m, 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.pretrain_small",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="model preset (default: small)")
    p.add_argument("--corpus", nargs="+", default=None,
                   help="files, directories or globs (.txt/.gz/.xz); default: built-in corpus")
    p.add_argument("--valid", nargs="+", default=None,
                   help="held-out corpus; default: 5%% of the corpus documents")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps")
    p.add_argument("--time-budget", type=parse_duration, default=None,
                   help="wall-time budget for the whole command (e.g. 15m); the step count and "
                        "schedule are fitted to it (default on CPU: 15m)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 5e-4 at batch 128, scaled by "
                        "sqrt(batch / 128) for other batch sizes)")
    p.add_argument("--warmup", type=int, default=None,
                   help="warmup steps (default: 10000; 10%% of the steps for runs shorter than "
                        "100k steps)")
    p.add_argument("--bias-correction", dest="bias_correction", action="store_true",
                   default=None,
                   help="bias-corrected Adam (torch.optim.AdamW's step; default for runs "
                        "shorter than 100k steps)")
    p.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="the original's Adam without bias correction (default for runs of "
                        "100k steps or more)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="tokenizer vocabulary (default: the preset's, capped by the corpus)")
    p.add_argument("--generator-multiplier", type=float, default=None,
                   help="generator width relative to the discriminator (default: the "
                        "preset's; the paper's Small 0.25)")
    p.add_argument("--gen-weight", type=float, default=None,
                   help="weight of the generator's MLM loss (default 1)")
    p.add_argument("--disc-weight", type=float, default=None,
                   help="weight of the discriminator's loss (default 50, the paper's)")
    p.add_argument("--masking", choices=["original", "distinct"], default=None,
                   help="masked positions: the original's (drawn with replacement, the "
                        "default) or distinct ones")
    p.add_argument("--init", choices=["original", "normal"], default=None,
                   help="initialisation: the original's (truncated normal, Glorot where TF's "
                        "default; the default) or an untruncated normal(0, 0.02)")
    p.add_argument("--out", default="runs/pretrain_small")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest checkpoint in --out (or a given file)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow starting a new run in an --out that already has checkpoints")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["auto", "float32", "bf16"], default="auto",
                   help="auto = bf16 autocast on CUDA and on CPUs with native bf16 "
                        "(AVX512-BF16/AMX), float32 elsewhere; a resumed run keeps its own")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile the train step as one graph (opt-in: its first call "
                        "compiles for minutes; over six on an H200)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--cuda-graph", dest="cuda_graph", action="store_true", default=None,
                   help="capture the eager step as one CUDA graph and replay it (default on "
                        "CUDA unless --compile; seconds to capture, no compile)")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false")
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--save-every", type=parse_duration, default=parse_duration("10m"),
                   help="checkpoint interval in wall time (default 10m)")
    p.add_argument("--max-bad-steps", type=int, default=20,
                   help="stop after this many consecutive non-finite steps")
    p.add_argument("--cache-dir", default=os.environ.get("ELECTRA_FN_CACHE",
                                                         str(Path.home() / ".cache/electra_fn")))
    p.add_argument("--num-proc", type=int, default=None,
                   help="processes that tokenize and pack a corpus not yet cached (default: "
                        "one per 4M characters of text, up to the usable cores)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="save a checkpoint and exit after this step, as if interrupted")
    return p


# -- helpers ------------------------------------------------------------------------------
def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    os.replace(tmp, path)


def append_jsonl(path: Path, obj) -> None:
    with open(path, "ab") as f:
        f.write(orjson.dumps(obj) + b"\n")


def fmt_time(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16 on x86, BF16 on
    Arm): there bf16 autocast runs a step ~1.6x faster than float32; elsewhere it would be
    emulated and slower. Read from the kernel's CPU flags (Linux); False when unknown."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_amp(dtype: str, device: torch.device, recorded: str | None = None):
    """The autocast dtype (None = float32) for ``--dtype``. ``auto``: a resumed run keeps the
    dtype it was started with (``recorded``, from its checkpoint) so it continues exactly;
    a new one gets bf16 on CUDA and on CPUs with native bf16, float32 elsewhere."""
    if dtype == "bf16":
        return torch.bfloat16
    if dtype == "float32":
        return None
    if recorded is not None:
        return torch.bfloat16 if recorded == str(torch.bfloat16) else None
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def make_step_fn(cfg: PretrainConfig, device: torch.device, amp, use_compile: bool,
                 use_graph: bool = False, log=print):
    """The run's train step: its gradient route for the device and mode; compiled, captured
    as a CUDA graph (:mod:`electra_fn.cuda_graph`; if the capture fails, ``log`` says so and
    the same step runs uncaptured, drawing the same noise) or eager."""
    step_fn = pretrain.make_train_step(cfg, amp_dtype=amp, device_type=device.type,
                                       grad_route=pretrain.grad_route_for(use_compile))
    if use_compile:
        return compiling.compile(step_fn)
    if use_graph:
        def capture_failed(e: BaseException) -> None:
            log(f"warning: the CUDA graph capture failed ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); the step runs "
                "uncaptured (the same numbers, slower)")
        return cuda_graph.graph_step(step_fn, device=device, on_capture_error=capture_failed)
    return step_fn


def step_mode(use_compile: bool, use_graph: bool) -> str:
    return "compiled" if use_compile else "CUDA graph" if use_graph else "eager"


def resolve_graph(flag: bool | None, use_compile: bool, device: torch.device) -> bool:
    """``--cuda-graph``: on by default for an eager step on CUDA."""
    if flag is None:
        return device.type == "cuda" and not use_compile
    if flag and device.type != "cuda":
        raise UserError(f"--cuda-graph needs a CUDA device (the run is on {device})")
    if flag and use_compile:
        raise UserError("--cuda-graph and --compile: choose one (the compiled step is already "
                        "one graph)")
    return flag


def step_key_for(seed: int, step: int, device: torch.device, compiled: bool) -> torch.Tensor:
    """The step's key where the step wants it: a compiled step hashes its counter-based noise
    on the device (no CPU ops in the graph); an eager step seeds the native generator from
    the key's value, so it stays on the CPU (no device sync), and a CUDA-graph step writes
    its value into the graph's key buffer (a fill, no copy)."""
    key = pretrain.step_key(seed, step)
    return key.to(device, non_blocking=True) if compiled else key


def evaluate(eval_step, params, valid_batches, seed: int, device,
             cfg: PretrainConfig | None = None) -> dict:
    """Token-weighted held-out metrics over fixed batches with fixed noise (comparable over time).

    Keys ``"{name}/..."`` (the fixed-proposal metrics, the AUC breakdown) are weighted by
    their own replaced fraction, the others by the generator's; metrics of groups without a
    replaced fraction (the shuffled-context check) by tokens."""
    sums: dict[str, float] = {}
    totals: dict[str, float] = {}
    for i, batch in enumerate(valid_batches):
        m = eval_step(params, to_device(batch, device), pretrain.step_key(seed + 1_000_003, i))
        m = {k: float(v) for k, v in m.items()}
        tokens = m["tokens"]
        for k, v in m.items():
            prefix, _, name = k.rpartition("/")
            if name in ("masked_tokens", "tokens"):
                continue
            fraction = m.get(f"{prefix}/replaced_fraction" if prefix else "replaced_fraction")
            replaced = tokens * fraction if fraction is not None else None
            if name in ("gen_loss", "gen_accuracy"):
                w = m["masked_tokens"]
            elif name in ("disc_replaced_accuracy", "disc_auc"):
                w = replaced
            elif name == "disc_original_accuracy":
                w = tokens - replaced
            else:
                w = tokens
            sums[k] = sums.get(k, 0.0) + v * w
            totals[k] = totals.get(k, 0.0) + w
    # A group that never occurred (e.g. a frequency bucket beyond the vocabulary) is left out.
    out = {k: sums[k] / totals[k] for k in sums if totals[k] > 0}
    gen_w, disc_w = (cfg.gen_weight, cfg.disc_weight) if cfg else (1.0, 50.0)
    out["loss"] = gen_w * out["gen_loss"] + disc_w * out["disc_loss"]
    return out


def eval_line(step: int, e: dict) -> str:
    """The one-line held-out report printed at each evaluation."""
    line = (f"held-out at step {step}: gen acc {e['gen_accuracy']:.3f}, disc acc "
            f"{e['disc_accuracy']:.3f} (replaced {e['disc_replaced_accuracy']:.3f}, original "
            f"{e['disc_original_accuracy']:.3f}), disc AUC {e['disc_auc']:.3f}")
    fixed = [f"{name} {e[f'{name}/disc_replaced_accuracy']:.3f}/"
             f"{e[f'{name}/disc_original_accuracy']:.3f}"
             for name in PROPOSALS if f"{name}/disc_replaced_accuracy" in e]
    if fixed:
        line += "; fixed replacements (replaced/original acc): " + ", ".join(fixed)
    if "shuffle/logit_shift" in e:
        line += (f"; shuffled-context logit shift {e['shuffle/logit_shift']:.3f} "
                 f"(spread {e['shuffle/logit_spread']:.3f}); state spread "
                 f"{e['state/token_spread']:.3f}")
    return line


# Fixed replacement distributions the held-out evaluation also scores the discriminator on.
PROPOSALS = ("uniform", "unigram")
# The AUC breakdown of electra_fn.diagnostics.breakdown_metrics, with labels.
CONTEXT_GROUPS = (("top1", "generator's top-1 samples"), ("not_top1", "other samples"),
                  ("freq0", "replacing token rank < 100"), ("freq1", "rank 100-999"),
                  ("freq2", "rank 1,000-9,999"), ("freq3", "rank >= 10,000"))


def token_counts(data: pdata.PretrainData, vocab_size: int) -> torch.Tensor:
    """How often each token id occurs in the training split [V]."""
    counts = np.bincount(np.asarray(data.train_ids).reshape(-1).astype(np.int64),
                         minlength=vocab_size)[:vocab_size]
    return torch.from_numpy(counts)


def make_proposals(counts_V: torch.Tensor) -> dict[str, torch.Tensor]:
    """``uniform`` and ``unigram`` (from ``counts_V``, the training split's
    :func:`token_counts`) log-weights."""
    V = counts_V.shape[0]
    return {"uniform": pretrain.proposal_logits("uniform", V),
            "unigram": pretrain.proposal_logits("unigram", V, counts_V)}


def make_valid_batches(data: pdata.PretrainData, batch_size: int) -> list[dict]:
    ids, types = data.valid_ids, data.valid_token_types
    n = min(len(ids), EVAL_BATCHES * batch_size)
    out = []
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        x = torch.from_numpy(ids[rows].astype("int64"))
        out.append({"input_ids": x, "token_type_ids": torch.from_numpy(types[rows].astype("int64")),
                    "attention_mask": (x != 0).long()})
    return out


PLOT_MISSING = ("matplotlib is not installed, so curves.png is not drawn (pip install "
                "'electra-fn[plot]' to get it; the metrics are in metrics.jsonl and eval.jsonl)")


def plot_curves(out: Path, rows: list[dict], evals: list[dict], log=print) -> Path | None:
    """Draw curves.png from the training and held-out rows; None (and a logged note) when
    matplotlib, an optional dependency, is not installed or there is nothing to draw."""
    try:
        import matplotlib
    except ImportError:
        log(f"note: {PLOT_MISSING}")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return None
    fixed = [n for n in PROPOSALS if evals and all(f"{n}/disc_auc" in e for e in evals)]
    groups = [(g, lab) for g, lab in CONTEXT_GROUPS
              if evals and all(f"{g}/disc_auc" in e for e in evals)
              and any(e.get(f"{g}/replaced_fraction", 1.0) > 0 for e in evals)]
    n_axes = 3 + bool(fixed) + bool(groups)
    fig, axes = plt.subplots(1, n_axes, figsize=(5 * n_axes, 4))
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r["gen_loss"] for r in rows], label="generator MLM loss")
    axes[0].plot(steps, [r["disc_loss"] * 50 for r in rows], label="50 × discriminator loss")
    axes[0].set_xlabel("step"), axes[0].set_title("training loss"), axes[0].legend()
    axes[1].plot(steps, [r["gen_accuracy"] for r in rows], label="generator accuracy")
    axes[1].plot(steps, [r["disc_replaced_accuracy"] for r in rows], label="disc. on replaced")
    axes[1].plot(steps, [r["disc_original_accuracy"] for r in rows], label="disc. on original")
    axes[1].set_xlabel("step"), axes[1].set_title("training accuracy"), axes[1].legend()
    if evals:
        es = [e["step"] for e in evals]
        for k, lab in (("gen_accuracy", "generator accuracy"),
                       ("disc_replaced_accuracy", "disc. on replaced"),
                       ("disc_original_accuracy", "disc. on original"),
                       ("disc_accuracy", "disc. overall"),
                       ("disc_auc", "disc. ROC AUC")):
            if all(k in e for e in evals):
                axes[2].plot(es, [e[k] for e in evals], marker="o", label=lab)
        axes[2].set_xlabel("step"), axes[2].set_title("held-out accuracy"), axes[2].legend()
    if fixed:
        es = [e["step"] for e in evals]
        axes[3].plot(es, [e["disc_auc"] for e in evals], marker="o", color="0.5",
                     label="AUC, generator's samples")
        for n in fixed:
            line, = axes[3].plot(es, [e[f"{n}/disc_auc"] for e in evals], marker="o",
                                 label=f"AUC, {n} replacements")
            axes[3].plot(es, [e[f"{n}/disc_replaced_accuracy"] for e in evals], marker="x",
                         linestyle="--", color=line.get_color(), label=f"on replaced, {n}")
        axes[3].set_xlabel("step"), axes[3].set_title("held-out discriminator, fixed proposals")
        axes[3].legend()
    if groups:
        ax = axes[-1]
        es = [e["step"] for e in evals]
        for g, lab in groups:
            ax.plot(es, [e[f"{g}/disc_auc"] for e in evals], marker="o", label=f"AUC, {lab}")
        if all("shuffle/logit_shift" in e for e in evals):
            ax.plot(es, [e["shuffle/logit_shift"] for e in evals], marker="s", color="k",
                    linestyle="--", label="shuffled-context logit shift")
            ax.plot(es, [e["shuffle/logit_spread"] for e in evals], marker="s", color="k",
                    linestyle=":", label="logit spread (its scale)")
        if all("state/token_spread" in e for e in evals):
            ax.plot(es, [e["state/token_spread"] for e in evals], marker="^", color="0.4",
                    linestyle=":", label="final-state spread across tokens")
        ax.set_xlabel("step"), ax.set_ylabel("AUC; logits")
        ax.set_title("does the discriminator use context?")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the run ------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """``--device``: auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ...; a UserError
    for a malformed name or CUDA asked for where there is none (shared with finetune_glue)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device name (auto, cpu, cuda, cuda:1, ...)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return dev


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (UserError, FileNotFoundError, ValueError, ckpt.CheckpointCorrupt,
            hf.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def run(args: argparse.Namespace) -> int:
    t_start = time.time()
    if args.num_proc is not None and args.num_proc < 1:
        raise UserError(f"--num-proc {args.num_proc}: must be at least 1")
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    amp = resolve_amp(args.dtype, device)
    use_compile = bool(args.compile)
    if use_compile:
        try:
            compiling.check_device(device)
        except ValueError as e:
            raise UserError(f"--compile: {e}")
    use_graph = resolve_graph(args.cuda_graph, use_compile, device)
    out = Path(args.out)
    ckpt_dir = out / "checkpoints"
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        log(f"note: {PLOT_MISSING}")  # said up front, not only after the run

    resume_from = None
    if args.resume:
        resume_from = (ckpt.latest_checkpoint(ckpt_dir) if args.resume == "latest"
                       else Path(args.resume))
        if resume_from is None:
            raise UserError(f"--resume: no checkpoint found in {ckpt_dir}")
    elif ckpt.list_checkpoints(ckpt_dir) and not args.overwrite:
        raise UserError(f"{out} already holds checkpoints; pass --resume to continue that run "
                        "or --overwrite to start a new one there (or choose another --out)")
    out.mkdir(parents=True, exist_ok=True)

    # --- tokenizer and data --------------------------------------------------------------
    corpus = args.corpus or [pdata.default_corpus_path()]
    state = None
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from)
        saved = state["config"]
        try:
            cfg = PretrainConfig.from_dict(saved["pretrain"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{resume_from}: config does not describe a pre-training run ({e})")
        # flags that define the run may be repeated on --resume, but must agree with it
        run = saved.get("run") or {}
        amp = resolve_amp(args.dtype, device, recorded=run.get("amp"))
        if args.compile is None and args.cuda_graph is None:
            # keep the step it ran: the eager step draws other noise than the compiled and
            # the CUDA-graph step
            use_compile = bool(run.get("compile", False))
            use_graph = bool(run.get("cuda_graph", False)) and device.type == "cuda"
        for flag, field, have in (
                ("preset", "preset", run.get("preset")),
                ("seq_len", "seq_len", cfg.seq_len),
                ("batch_size", "batch_size", cfg.batch_size),
                ("steps", "total_steps", cfg.total_steps),
                ("seed", "seed", cfg.seed),
                ("lr", "learning_rate", cfg.learning_rate),
                ("warmup", "warmup_steps", cfg.warmup_steps),
                ("bias_correction", "adam_bias_correction", cfg.adam_bias_correction),
                ("vocab_size", "vocab_size", cfg.model.vocab_size),
                ("generator_multiplier", "generator_multiplier",
                 cfg.model.generator_multiplier),
                ("gen_weight", "gen_weight", cfg.gen_weight),
                ("disc_weight", "disc_weight", cfg.disc_weight),
                ("masking", "masking", cfg.masking),
                ("init", "init", cfg.model.init),
                ("corpus", "corpus", run.get("corpus")),
                ("valid", "valid", run.get("valid"))):
            given = getattr(args, flag)
            if given is None:
                continue
            same = (math.isclose(given, have, rel_tol=1e-9) if isinstance(given, float)
                    else [str(g) for g in given] == list(have or []) if isinstance(given, list)
                    else given == have)
            if not same:
                shown = " ".join(map(str, given)) if isinstance(given, list) else given
                raise UserError(f"{resume_from}: --{flag.replace('_', '-')} {shown} does not "
                                f"match the checkpoint's {field}={have}; a resumed run keeps "
                                "its settings (start a new run in another --out to change them)")
        if args.time_budget is not None:
            log(f"note: --time-budget is ignored on --resume: the run keeps its "
                f"{cfg.total_steps}-step schedule")
        corpus = saved["run"]["corpus"]
        tokenizer = toklib.load_tokenizer(str(out / "tokenizer"))
        if tokenizer.vocab_size != cfg.model.vocab_size:
            raise UserError(f"{out / 'tokenizer'}: vocabulary {tokenizer.vocab_size} does not "
                            f"match the checkpoint {resume_from} (vocab_size="
                            f"{cfg.model.vocab_size})")
        valid_spec = saved["run"]["valid"]
    else:
        preset = args.preset or "small"
        try:
            base = ModelConfig.from_name(preset)
        except ValueError as e:
            raise UserError(f"--preset: {e}")
        log(f"tokenizer: training/reusing a sentencepiece vocabulary on {len(corpus)} file(s)")
        tokenizer = toklib.train_tokenizer(corpus, args.vocab_size or base.vocab_size,
                                           str(Path(args.cache_dir)), log=log)
        tokenizer.save(str(out / "tokenizer"))
        valid_spec = args.valid
        cfg = None
    seq_len = cfg.seq_len if cfg else (args.seq_len or 128)
    seed = cfg.seed if cfg else (args.seed if args.seed is not None else 0)
    data = pdata.build_pretraining_data(corpus, tokenizer, seq_len=seq_len, seed=seed,
                                        cache_dir=str(Path(args.cache_dir)), valid=valid_spec,
                                        valid_fraction=0.05, num_proc=args.num_proc,
                                        log=log)
    st = data.stats
    log(f"data: {st['train_examples']} train / {st['valid_examples']} held-out examples of "
        f"{seq_len} tokens ({st['train_documents']} / {st['valid_documents']} documents)")
    if st["valid_examples"] == 0:
        raise UserError("the held-out split is empty; pass --valid or a larger corpus")
    if use_compile:
        log("compile: the train step is compiled as one graph on its first call, which takes "
            "minutes (no progress is shown meanwhile)")

    # --- config and step budget ----------------------------------------------------------
    fitted_fn = None
    if cfg is None:
        mcfg = base.replace(vocab_size=tokenizer.vocab_size)
        if args.generator_multiplier is not None:
            mcfg = mcfg.replace(generator_multiplier=args.generator_multiplier)
        if args.init is not None:
            mcfg = mcfg.replace(init=args.init)
        recipe = {k: getattr(args, k) for k in ("gen_weight", "disc_weight", "masking")
                   if getattr(args, k) is not None}
        batch = args.batch_size or (128 if on_gpu else CPU_DEFAULT_BATCH)
        budget = args.time_budget
        if budget is None and args.steps is None and not on_gpu:
            budget = CPU_DEFAULT_BUDGET_S
        provisional = PretrainConfig(model=mcfg, seq_len=seq_len, batch_size=batch,
                                     total_steps=args.steps or 1_000_000, seed=seed,
                                     learning_rate=args.lr or default_lr(batch),
                                     warmup_steps=0, **recipe)
        total = provisional.total_steps
        if budget is not None:
            # The scratch steps run the step the run will use: the schedule (length, warmup,
            # lr, bias correction) is data in the optimizer state, so a compiled step compiles
            # once.
            total, fitted_fn = fit_steps_to_budget(provisional, data, device, amp, use_compile,
                                                   budget, time.time() - t_start, log,
                                                   use_graph=use_graph)
            if args.steps:
                total = min(total, args.steps)
        warmup, bias_correction = schedule_defaults(total, args.warmup, args.bias_correction)
        provisional = provisional.replace(adam_bias_correction=bias_correction)
        cfg = provisional.replace(total_steps=total, warmup_steps=min(warmup, total))
        run_info = {"preset": preset, "corpus": [str(c) for c in corpus], "valid": valid_spec,
                    "device": str(device), "amp": str(amp), "compile": use_compile,
                    "cuda_graph": use_graph,
                    "time_budget_s": budget, "torch": str(torch.__version__)}
        write_json(out / "config.json", {"pretrain": cfg.to_dict(), "run": run_info,
                                          "data": st})
        for f in ("metrics.jsonl", "eval.jsonl"):
            (out / f).unlink(missing_ok=True)
        # --overwrite: drop the old run's checkpoints, or keep-2 pruning (by step) would delete
        # this run's lower-step ones and --resume would pick up the old run.
        for old in ckpt.list_checkpoints(ckpt_dir):
            old.unlink()
    else:
        run_info = state["config"]["run"]
    dtype_text = "bf16 autocast" if amp else "float32"
    if amp and device.type == "cpu" and args.dtype == "auto" and state is None:
        dtype_text += " (this CPU has native bf16; --dtype float32 to train in float32)"
    log(f"model: {cfg.model.name} (generator ×{cfg.model.generator_multiplier:g}), vocab "
        f"{cfg.model.vocab_size}; batch {cfg.batch_size} × seq {cfg.seq_len}; "
        f"{cfg.total_steps} steps, warmup {cfg.warmup_steps}, peak lr {cfg.learning_rate:.3g}"
        f"{', bias-corrected Adam' if cfg.adam_bias_correction else ''}; "
        f"device {device}, {dtype_text}, "
        f"{step_mode(use_compile, use_graph)}")
    return train(cfg, run_info, data, tokenizer, out, device, amp, use_compile, state, args,
                 t_start, log, step_fn=fitted_fn, use_graph=use_graph)


def fit_steps_to_budget(cfg: PretrainConfig, data, device, amp, use_compile: bool,
                        budget_s: float, spent_s: float, log, use_graph: bool = False):
    """Time a few real steps on a scratch copy and fit the step count to the time left.

    Returns (steps, the step function timed): the run reuses it (a compiled one is not
    compiled again) when its settings differ only in the schedule, which is data."""
    params = tree_map(lambda x: x.to(device), model.init_params(cfg.model, cfg.seed))
    opt = pretrain.init_opt_state(params, cfg)
    step_fn = make_step_fn(cfg, device, amp, use_compile, use_graph=use_graph, log=log)
    it = pdata.batches(data.train_ids, data.train_token_types, cfg.batch_size, cfg.seed)
    times = []
    for i in range(BUDGET_TIMED_STEPS + 1):  # the first call warms up (or compiles)
        _, b = next(it)
        t = time.time()
        params, opt, m = step_fn(params, opt, to_device(b, device),
                                 step_key_for(0, i, device, use_compile))
        float(m["loss"])  # sync
        times.append(time.time() - t)
    total, step_s = steps_for_budget(times, budget_s, spent_s)
    log(f"budget: {fmt_time(budget_s)} in all; {fmt_time(spent_s + sum(times))} spent on setup "
        f"and timing; {step_s:.2f} s/step measured → {total} steps "
        f"({total * cfg.batch_size * cfg.seq_len / 1e6:.2f}M tokens) fit in the time left, "
        f"with a {BUDGET_MARGIN:.0%} margin for a machine that slows down")
    return total, step_fn


def steps_for_budget(times: list[float], budget_s: float, spent_s: float,
                     eval_batches: int = EVAL_BATCHES, margin: float | None = None
                     ) -> tuple[int, float]:
    """(steps, seconds per step) that fit ``budget_s`` given the timed calls ``times`` (the
    first one a warm-up or compile) and ``spent_s`` already used. The pace is the median of the
    timed steps (the fastest one was too optimistic on a busy machine); six held-out
    evaluations (``EVAL_BATCH_STEPS`` of a step per batch) and 25 s of saving and export are
    reserved, and ``margin`` of what is left is kept back. The run reuses the timed step, so a
    compile (the first call) is paid once, here."""
    margin = BUDGET_MARGIN if margin is None else margin
    step_s = statistics.median(times[1:])
    evals_s = 6 * eval_batches * step_s * EVAL_BATCH_STEPS
    reserve = FINISH_RESERVE_S + evals_s
    left = (budget_s - spent_s - sum(times) - reserve) * (1.0 - margin)
    return max(1, int(left / step_s)), step_s


def refit_point(total_steps: int) -> int | None:
    """The step at which a budgeted run first re-fits its step count, or None for a run too
    short to time its pace (the point would fall past halfway). The second re-fit is halfway
    to the re-fitted end, when that is at least ``REFIT_AT_MIN`` steps later."""
    at = max(REFIT_AT_MIN, total_steps // 10)
    return at if at <= total_steps // 2 else None


def refit_steps(step: int, step_s: float, budget_s: float, elapsed_s: float,
                evals_left: int, eval_s: float, cap: int | None = None,
                margin: float | None = None) -> int:
    """The run's total step count re-fitted at ``step``: the steps that fit what is left of
    ``budget_s`` after ``elapsed_s`` at the measured ``step_s``, keeping back ``evals_left``
    evaluations of ``eval_s`` (measured at step 0), the finishing reserve and the margin;
    never fewer than ``step + 1``, never more than ``cap``."""
    margin = BUDGET_MARGIN if margin is None else margin
    left = (budget_s - elapsed_s - FINISH_RESERVE_S - evals_left * eval_s) * (1.0 - margin)
    total = step + max(1, int(left / step_s))
    return min(total, cap) if cap else total


def train(cfg: PretrainConfig, run_info: dict, data, tokenizer, out: Path, device, amp,
          use_compile: bool, state: dict | None, args, t_start: float, log,
          step_fn=None, use_graph: bool = False) -> int:
    from tqdm import tqdm

    if state is None:
        params = model.init_params(cfg.model, cfg.seed)
        opt = pretrain.init_opt_state(params, cfg)
        step, position = 0, (0, 0)
    else:
        params, opt = state["params"], state["opt_state"]
        step, position = state["step"], state["data_position"]
        if "schedule" not in opt:  # a checkpoint from before the schedule was optimizer state
            opt = {**opt, "schedule": pretrain.schedule_state(cfg)}
        ref = model.init_params(cfg.model, 0)
        _check_same_structure(ref, params, "params", args.resume)
        log(f"resuming at step {step} (data epoch {position[0]}, batch {position[1]})")
        for name in ("metrics.jsonl", "eval.jsonl"):  # drop rows logged after the checkpoint
            path = out / name
            if path.exists():
                keep = [x for x in path.read_bytes().splitlines()
                        if x.strip() and orjson.loads(x)["step"] <= step]
                tmp = path.with_name(name + ".tmp")
                tmp.write_bytes(b"".join(x + b"\n" for x in keep))
                os.replace(tmp, path)
    params = tree_map(lambda x: x.to(device), params)
    opt = tree_map(lambda x: x.to(device), opt)
    n_params = tree_count(params)
    log(f"parameters: {n_params / 1e6:.2f}M (generator + discriminator + shared embeddings)")

    if step_fn is None:
        step_fn = make_step_fn(cfg, device, amp, use_compile, use_graph=use_graph, log=log)
    counts_V = token_counts(data, cfg.model.vocab_size)
    eval_fn = pretrain.make_eval_step(cfg, amp_dtype=amp, device_type=device.type,
                                      proposals=make_proposals(counts_V),
                                      extra_metrics=diagnostics.context_metrics(
                                          cfg, diagnostics.frequency_rank_V(counts_V)))
    valid_batches = make_valid_batches(data, cfg.batch_size)
    metrics_path, eval_path = out / "metrics.jsonl", out / "eval.jsonl"
    config_blob = {"pretrain": cfg.to_dict(), "run": run_info}

    def save(reason: str) -> Path:
        path = ckpt.save_checkpoint(ckpt_dir, params=params, opt_state=opt, step=step,
                                    data_position=position, config=config_blob)
        log(f"checkpoint ({reason}): {path}")
        return path

    ckpt_dir = out / "checkpoints"
    stop = {"signal": None}

    def on_signal(signum, _frame):
        # The first signal stops at the end of the current step, with a checkpoint. A second
        # one aborts at once (e.g. during a long first compile, before anything is trained);
        # the last checkpoint on disk is intact (saves are atomic).
        if stop["signal"] is not None:
            raise SystemExit(128 + signum)
        stop["signal"] = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              "(send it again to abort now)", file=sys.stderr, flush=True)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    eval_s = None
    if step == 0:
        t_eval = time.time()
        e = evaluate(eval_fn, params, valid_batches, cfg.seed, device, cfg)
        eval_s = time.time() - t_eval
        append_jsonl(eval_path, {"step": 0, **e})
        log(eval_line(0, e))

    def cadence(total: int) -> tuple[int, int]:
        # three evaluations inside the run (a quarter apart) and the final one at the last step
        return (args.log_every or max(1, min(50, total // 100 or 1)),
                args.eval_every or max(1, -(-total // 4)))

    log_every, eval_every = cadence(cfg.total_steps)
    # A fresh budgeted run re-fits its step count from its own pace, twice (the schedule is data
    # in the optimizer state: a compiled step is not compiled again; a resumed run keeps the
    # schedule its checkpoint recorded, so resume stays exact).
    budget_s = run_info.get("time_budget_s")
    refit_at = (refit_point(cfg.total_steps)
                if state is None and budget_s and eval_s is not None else None)
    pace_from, pace_t0, paused = 3, None, 0.0  # the pace is timed from the end of step 3
    refits: list[dict] = []
    fitted_steps = cfg.total_steps
    it = pdata.batches(data.train_ids, data.train_token_types, cfg.batch_size, cfg.seed,
                       start=position)
    bar = tqdm(total=cfg.total_steps, initial=step, desc="pre-training", unit="step",
               dynamic_ncols=True, mininterval=1.0, file=sys.stdout)
    consecutive_bad = torch.zeros((), device=device)
    window_t, window_steps, window_tokens = time.time(), 0, 0.0
    acc: dict[str, torch.Tensor] = {}
    last_save = time.time()
    exit_code = 0
    try:
        while step < cfg.total_steps:
            position, batch = next(it)
            batch = to_device(batch, device)
            params, opt, m = step_fn(params, opt, batch,
                                     step_key_for(cfg.seed, step, device, use_compile))
            step += 1
            window_steps += 1
            if refit_at is not None and (step == refit_at or step == pace_from
                                         and pace_t0 is None):
                float(m["loss"])  # the device has finished the step
                now = time.time()
                if step == refit_at:
                    step_s = (now - pace_t0 - paused) / (step - pace_from)
                    # inner evaluations at multiples of eval_every after this step, + the final
                    evals_left = (cfg.total_steps - 1) // eval_every - step // eval_every + 1
                    total = refit_steps(step, step_s, budget_s, now - t_start,
                                        evals_left, eval_s, cap=args.steps)
                    refits.append({"at": step, "s_per_step": step_s, "steps": total})
                    if total != cfg.total_steps:
                        cfg = cfg.replace(total_steps=total)
                        opt = {**opt, "schedule": pretrain.schedule_state(cfg, device)}
                        if len(refits) == 1:  # later ones keep the evaluation steps
                            log_every, eval_every = cadence(total)
                        bar.total = total
                        bar.refresh()
                    run_info = {**run_info, "budget_refit": {"fitted_steps": fitted_steps,
                                                             "refits": refits}}
                    config_blob = {"pretrain": cfg.to_dict(), "run": run_info}
                    write_json(out / "config.json", {**config_blob, "data": data.stats})
                    bar.write(f"budget: {step_s:.2f} s/step over steps {pace_from + 1}-{step} → "
                              f"{total} steps (fitted before the run: {fitted_steps}; the lr "
                              f"decays to 0 at the new end)")
                    halfway = total // 2
                    refit_at = (halfway if len(refits) == 1 and halfway - step >= REFIT_AT_MIN
                                else None)
                    pace_from = step
                pace_t0, paused = time.time(), 0.0
            consecutive_bad = (consecutive_bad + m["skipped"]) * m["skipped"]
            for k, v in m.items():
                acc[k] = acc[k] + v if k in acc else v
            if step % log_every == 0 or step == cfg.total_steps:
                row = {k: float(v) / window_steps for k, v in acc.items()}  # host sync here
                now = time.time()
                tokens = row.pop("tokens") * window_steps
                row["skipped"] = row["skipped"] * window_steps
                rate = tokens / max(now - window_t, 1e-9)
                eta = (cfg.total_steps - step) * (now - window_t) / window_steps
                row.update(step=step, tokens_per_s=rate, elapsed_s=now - t_start, eta_s=eta)
                append_jsonl(metrics_path, row)
                bar.set_postfix_str(
                    f"loss {row['loss']:.2f} gen {row['gen_accuracy']:.3f} disc+ "
                    f"{row['disc_replaced_accuracy']:.3f} disc- {row['disc_original_accuracy']:.3f}"
                    f" {rate:,.0f} tok/s", refresh=False)
                if row["skipped"]:
                    log(f"step {step}: {int(row['skipped'])} update(s) skipped (non-finite loss "
                        "or gradient)")
                if float(consecutive_bad) >= args.max_bad_steps:
                    bar.close()
                    log(f"error: {int(consecutive_bad)} consecutive non-finite steps at step "
                        f"{step}; stopping. The last good checkpoint is intact in {ckpt_dir}; "
                        "try a lower --lr or float32")
                    return 3
                acc, window_t, window_steps = {}, now, 0
            bar.update(1)
            t_pause = time.time()
            if step % eval_every == 0 and step < cfg.total_steps:
                e = evaluate(eval_fn, params, valid_batches, cfg.seed, device, cfg)
                append_jsonl(eval_path, {"step": step, **e})
                bar.write(eval_line(step, e))
            if time.time() - last_save >= args.save_every:
                save("periodic")
                last_save = time.time()
            paused += time.time() - t_pause
            if args.stop_at_step is not None and step >= args.stop_at_step:
                bar.close()
                save("--stop-at-step")
                log(f"stopped at step {step} (--stop-at-step); continue with --resume")
                return 0
            if stop["signal"] is not None:
                bar.close()
                save(f"signal {signal.Signals(stop['signal']).name}")
                log(f"stopped by {signal.Signals(stop['signal']).name} at step {step}; continue "
                    f"with: python -m experiments.pretrain_small --out {out} --resume")
                exit_code = 128 + stop["signal"]
                return exit_code
        bar.close()
        save("final")
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)

    final = evaluate(eval_fn, params, valid_batches, cfg.seed, device, cfg)
    append_jsonl(eval_path, {"step": step, **final})
    evals = [orjson.loads(x) for x in eval_path.read_bytes().splitlines() if x.strip()]
    first = evals[0]
    tok_files = {}
    tok_dir = out / "tokenizer"
    for f in tok_dir.iterdir():
        if f.is_file():
            tok_files[f.name] = f.read_bytes()
    cpu_params = tree_map(lambda x: x.detach().to("cpu"), params)
    written = hf.save_hf(cpu_params, cfg.model, out / "hf", extra_files=tok_files)
    wall = time.time() - t_start
    summary = {"steps": step, "wall_time_s": wall, "device": str(device),
               "tokens_seen": step * cfg.batch_size * cfg.seq_len,
               "held_out_first": first, "held_out_final": final,
               "hf_export": {k: str(v) for k, v in written.items()}}
    write_json(out / "summary.json", summary)
    rows = [orjson.loads(x) for x in metrics_path.read_bytes().splitlines() if x.strip()]
    plot = None if args.no_plot else plot_curves(out, rows, evals, log)
    log("")
    log(f"done: {step} steps in {fmt_time(wall)} on {device}")
    log(f"{'held-out':<34}{'step ' + str(first['step']):>12}{'step ' + str(step):>12}")
    shown = [("gen_accuracy", "generator MLM accuracy"),
             ("disc_accuracy", "discriminator accuracy"),
             ("disc_replaced_accuracy", "  on replaced tokens"),
             ("disc_original_accuracy", "  on original tokens"),
             ("disc_auc", "discriminator ROC AUC"),
             ("gen_loss", "generator loss"), ("disc_loss", "discriminator loss")]
    for n in PROPOSALS:
        shown += [(f"{n}/disc_auc", f"{n} replacements: ROC AUC"),
                  (f"{n}/disc_replaced_accuracy", f"{n} replacements: replaced"),
                  (f"{n}/disc_original_accuracy", f"{n} replacements: original")]
    shown += [(f"{g}/disc_auc", f"AUC, {lab}") for g, lab in CONTEXT_GROUPS]
    shown += [("shuffle/logit_shift", "shuffled-context logit shift"),
              ("shuffle/logit_spread", "  logit spread (scale)"),
              ("state/token_spread", "final-state spread across tokens")]
    for k, lab in shown:
        if k in first and k in final:  # a run resumed from an older release lacks some
            log(f"{lab:<34}{first[k]:>12.4f}{final[k]:>12.4f}")
    log(f"Hugging Face export: {out / 'hf'}; metrics: {metrics_path}"
        + (f"; plot: {plot}" if plot else ""))
    return exit_code


def _check_same_structure(ref, got, what: str, source) -> None:
    from electra_fn.tree import flat_dict

    a, b = flat_dict(ref), flat_dict(got)
    for name in a:
        if name not in b:
            raise UserError(f"{source}: {what} tensor {name!r} missing")
        if tuple(a[name].shape) != tuple(b[name].shape):
            raise UserError(f"{source}: {what} tensor {name!r} has shape {tuple(b[name].shape)},"
                            f" the config needs {tuple(a[name].shape)}")
    extra = sorted(set(b) - set(a))
    if extra:
        raise UserError(f"{source}: unexpected {what} tensor(s) {extra[:3]}")


if __name__ == "__main__":
    sys.exit(main())
