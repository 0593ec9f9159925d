"""Ablation studies: variants of one pre-training recipe at equal pre-training FLOPs, with the
same data, seeds and evaluation, read into one table, verdicts and a plot.

A variant overrides fields of the baseline's :class:`ModelConfig` and :class:`PretrainConfig`;
its step count is the baseline's FLOPs budget over its own FLOPs per step
(:func:`electra_fn.flops.electra_step_flops`), its warmup the baseline's fraction of that.
The runs themselves are :func:`electra_fn.train.pretrain_run` and
:func:`electra_fn.glue_run.run_glue`; this module plans them and reads their files.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoint as ckpt
from . import flops, rundir, runtime, train
from .config import ModelConfig, PretrainConfig
from .plotting import pyplot
from .reproduction import task_results

# Held-out metrics of the final evaluation (eval.jsonl), as (key, label).
HELD_OUT = (("gen_accuracy", "generator MLM accuracy"),
            ("disc_auc", "AUC, generator's replacements"),
            ("unigram/disc_auc", "AUC, unigram replacements"),
            ("uniform/disc_auc", "AUC, uniform replacements"))


@dataclass(frozen=True)
class Variant:
    """One arm of a study: a name, overrides of the model and of the recipe, and why."""

    name: str
    model: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    why: str = ""


def base_recipe(flags: dict, model: dict, vocab_size: int, special_ids: dict) -> PretrainConfig:
    """A study's baseline from a named configuration's flags (``preset``, ``batch_size``,
    ``seq_len``, ``steps``; ``lr``, ``warmup``, ``bias_correction`` optional, as
    ``experiments.pretrain_small`` resolves them), its model overrides, the tokenizer's
    vocabulary size and special ids."""
    batch = flags["batch_size"]
    cfg = PretrainConfig(
        model=ModelConfig.from_name(flags.get("preset", "small")).replace(
            vocab_size=vocab_size, **model),
        seq_len=flags["seq_len"], batch_size=batch, total_steps=flags["steps"],
        learning_rate=flags.get("lr") or train.default_lr(batch), seed=0, **special_ids)
    warmup, corrected = train.schedule_defaults(cfg.total_steps, flags.get("warmup"),
                                                flags.get("bias_correction"))
    return cfg.replace(warmup_steps=warmup, adam_bias_correction=corrected)


def variant_config(base: PretrainConfig, variant: Variant, seed: int) -> PretrainConfig:
    """``base`` with ``variant``'s overrides and ``seed``, its steps set so that its training
    FLOPs equal ``base``'s (at least 1 step) and its warmup the same fraction of them."""
    cfg = base.replace(model=base.model.replace(**variant.model), seed=seed, **variant.recipe)
    budget = flops.electra_step_flops(base)["total"] * base.total_steps
    steps = max(1, round(budget / flops.electra_step_flops(cfg)["total"]))
    warmup = min(steps, max(1, round(steps * base.warmup_steps / base.total_steps)))
    return cfg.replace(total_steps=steps, warmup_steps=warmup)


def run_dir(out: Path, variant: str, seed: int) -> Path:
    """Where one (variant, pre-training seed) lives: ``pretrain/`` and ``glue/`` inside."""
    return Path(out) / variant / f"seed{seed}"


def pretrain_variant(cfg: PretrainConfig, data, directory: Path, tokenizer, *,
                     step_opts: train.StepOptions, loop_opts: train.LoopOptions, run_info: dict,
                     log: train.Log = print) -> int:
    """Pre-train one (variant, seed) into ``directory``: done before (0), continued from its
    newest checkpoint, or started; the exit code of :func:`electra_fn.train.pretrain_run`. A
    checkpoint whose recipe differs from ``cfg`` is refused (the study was edited)."""
    if (directory / "summary.json").is_file():
        return 0
    t_start = time.time()
    directory.mkdir(parents=True, exist_ok=True)
    with rundir.owned(directory, log):
        has = bool(ckpt.list_checkpoints(directory / "checkpoints"))
        state, source = train.open_run(directory, "latest" if has else None, False, log)
        if state is None:
            cfg, run_info, _ = train.start_run(
                cfg, data, directory, step_opts=step_opts, budget=None,
                warmup=cfg.warmup_steps, bias_correction=cfg.adam_bias_correction,
                run_info=run_info, t_start=t_start, tokenizer=tokenizer, log=log)
        else:
            saved = PretrainConfig.from_dict(state["config"]["pretrain"])
            if saved != cfg:
                raise runtime.UserError(
                    f"{source}: its recipe differs from the study's for this variant (was the "
                    "study edited?); move the directory away to start it again")
            run_info = state["config"]["run"]
        log(train.describe(cfg, step_opts))
        return train.pretrain_run(cfg, data, directory, step_opts=step_opts, loop_opts=loop_opts,
                                  run_info=run_info, state=state, state_source=str(source),
                                  t_start=t_start, resume_hint="the same command", log=log)


def progress(directory: Path, tasks: list[str]) -> str:
    """One (variant, seed)'s stage in a few words, read from its files while it runs:
    pre-training's last logged step and ETA, or the GLUE tasks finished."""
    directory = Path(directory)
    if (directory / "pretrain/summary.json").is_file():
        done = [t for t in tasks if t in task_results(directory / "glue")]
        return f"GLUE, {len(done)} of {len(tasks)} tasks done"
    try:
        last = rundir.read_jsonl(directory / "pretrain/metrics.jsonl", lambda _msg: None)[-1]
    except (OSError, IndexError, ValueError):
        return "starting"
    eta = f", about {runtime.fmt_time(last['eta_s'])} left" if last.get("eta_s") else ""
    return f"pre-training step {last['step']:,}{eta}"


# -- reading the runs ---------------------------------------------------------------------
def mean_std(values: list[float]) -> dict:
    """Mean, sample std (0 for one value) and count."""
    return {"mean": statistics.fmean(values), "n": len(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def read_run(directory: Path) -> dict | None:
    """One finished (variant, seed): held-out metrics at the end, steps, FLOPs, wall time and
    the median pace from ``metrics.jsonl`` (None where that log was not kept, as in a record);
    per GLUE task the fine-tuning seeds' values (×100). None while its pre-training has not
    finished."""
    pre = directory / "pretrain"
    if not (pre / "summary.json").is_file():
        return None
    summary = rundir.read_json(pre / "summary.json")
    log = pre / "metrics.jsonl"
    rows = rundir.read_jsonl(log, lambda _msg: None) if log.is_file() else []
    paces = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    cfg = PretrainConfig.from_dict(rundir.read_json(pre / "config.json")["pretrain"])
    tokens_per_step = cfg.batch_size * cfg.seq_len
    final = summary["held_out_final"]
    return {"steps": summary["steps"], "flops": summary["compute"]["flops"],
            "wall_time_s": summary["wall_time_s"],
            "step_s": tokens_per_step / statistics.median(paces) if paces else None,
            "held_out": {k: final.get(k) for k, _ in HELD_OUT},
            "glue": {t: r["values"] for t, r in task_results(directory / "glue").items()}}


def read_curve(directory: Path) -> list[dict]:
    """The held-out evaluations of one (variant, seed) so far, finished or not: per evaluation
    the share of the run's FLOPs budget spent (step / total steps) and the :data:`HELD_OUT`
    metrics; empty before its first evaluation."""
    pre = directory / "pretrain"
    if not (pre / "eval.jsonl").is_file() or not (pre / "config.json").is_file():
        return []
    total = rundir.read_json(pre / "config.json")["pretrain"]["total_steps"]
    return [{"step": r["step"], "budget": r["step"] / total,
             **{k: r[k] for k, _ in HELD_OUT if r.get(k) is not None}}
            for r in rundir.read_jsonl(pre / "eval.jsonl", lambda _msg: None) if "step" in r]


def glue_scores(runs: list[dict], tasks: list[str]) -> list[float]:
    """The task average of every (pre-training seed, fine-tuning seed) pair that has all
    ``tasks``: the sample whose mean and spread a variant's GLUE cell shows."""
    scores = []
    for r in runs:
        if not all(t in r["glue"] for t in tasks):
            continue
        for values in zip(*(r["glue"][t] for t in tasks)):
            scores.append(statistics.fmean(values))
    return scores


def glue_seed_means(runs: list[dict], tasks: list[str]) -> list[float]:
    """Per pre-training seed that has all ``tasks``, its task average over its fine-tuning
    seeds: the unit a pre-training change is replicated in."""
    return [statistics.fmean(scores) for r in runs if (scores := glue_scores([r], tasks))]


def pooled_spread(rows: list[dict | None]) -> dict | None:
    """The seed-to-seed std pooled over every row (a :func:`mean_std`) with two or more values,
    weighted by its degrees of freedom, and those degrees; None below two degrees."""
    rows = [r for r in rows if r and r["n"] > 1]
    df = sum(r["n"] - 1 for r in rows)
    if df < 2:
        return None
    return {"std": math.sqrt(sum((r["n"] - 1) * r["std"] ** 2 for r in rows) / df), "df": df,
            "rows": len(rows)}


def glue_verdict(name: str, row: dict, base: dict, pooled: dict | None = None) -> str:
    """The GLUE sentence of :func:`verdict`: over pre-training seeds when both sides have two
    or more, or when one has a single seed and ``pooled`` (:func:`pooled_spread` of the
    pre-training seeds' means) stands in; else over (pre-training, fine-tuning) seed pairs,
    saying that this spread leaves out the pre-training seeds'."""
    a, b = row.get("glue_seeds"), base.get("glue_seeds")
    if a and b and (min(a["n"], b["n"]) > 1 or pooled):
        return verdict(name, "GLUE average over pre-training seeds", a, b, pooled)
    pairs, base_pairs = row.get("glue"), base.get("glue")
    text = verdict(name, "GLUE average", pairs, base_pairs)
    if pairs and base_pairs and pairs["n"] > 1 and base_pairs["n"] > 1:  # it was judged
        text += (" Fine-tuning seeds only: with one pre-training seed on a side, the spread "
                 "between pre-training seeds is not in it.")
    return text


def verdict(name: str, label: str, a: dict | None, base: dict | None,
            pooled: dict | None = None) -> str:
    """A sentence on whether ``a`` differs from the baseline by more than twice the standard
    error of the difference: Welch's when both sides have two or more values; with one value on
    a side, from ``pooled`` (:func:`pooled_spread`, named in the sentence) if given; else no
    spread is known."""
    if a is None or base is None:
        return f"{name}: {label} not measured (yet) for it or the baseline."
    diff = a["mean"] - base["mean"]
    n_a, n_b = a["n"], base["n"]
    if min(n_a, n_b) > 1:
        se, note = math.sqrt(a["std"] ** 2 / n_a + base["std"] ** 2 / n_b), ""
    elif pooled:
        se = pooled["std"] * math.sqrt(1 / n_a + 1 / n_b)
        note = (f"; seed spread {pooled['std']:.2g} pooled over the {pooled['rows']} variants "
                f"with two or more seeds, {pooled['df']} degrees of freedom")
    else:
        return (f"{name}: {label} {diff:+.3g} against the baseline, from {n_a} and "
                f"{n_b} value(s): no spread to judge it by.")
    beyond = abs(diff) > 2 * se
    return (f"{name}: {label} {diff:+.3g} against the baseline (2 s.e. {2 * se:.2g}, n = "
            f"{n_a} / {n_b}{note}): {'exceeds' if beyond else 'within'} the spread.")


def summarise(out: Path, variants: list[Variant], seeds: list[int], tasks: list[str]) -> dict:
    """The study's report from its run directories: per variant the runs found, their cost and
    pace, each held-out metric and the GLUE average as mean ± std, the held-out curves of every
    seed begun (:func:`read_curve`), and the verdicts against the first variant (the
    baseline)."""
    report: dict = {"tasks": tasks, "variants": {}}
    for v in variants:
        runs = [r for s in seeds if (r := read_run(run_dir(out, v.name, s))) is not None]
        row: dict = {"why": v.why, "model": v.model, "recipe": v.recipe, "seeds_done": len(runs)}
        if runs:
            row["steps"] = runs[0]["steps"]
            row["flops"] = runs[0]["flops"]
            row["wall_time_s"] = mean_std([r["wall_time_s"] for r in runs])
            paces = [r["step_s"] for r in runs if r["step_s"]]
            row["step_s"] = mean_std(paces) if paces else None
            # the run's length at its median pace: unlike the wall time, blind to pauses,
            # resumes and evaluations
            row["pace_time_s"] = mean_std([r["step_s"] * r["steps"] for r in runs
                                           if r["step_s"]]) if paces else None
            for key, _ in HELD_OUT:
                vals = [r["held_out"][key] for r in runs if r["held_out"].get(key) is not None]
                row[key] = mean_std(vals) if vals else None
            scores, seed_means = glue_scores(runs, tasks), glue_seed_means(runs, tasks)
            row["glue"] = mean_std(scores) if scores else None
            row["glue_seeds"] = mean_std(seed_means) if seed_means else None
            row["glue_tasks"] = {t: mean_std([x for r in runs for x in r["glue"].get(t, [])])
                                 for t in tasks if any(t in r["glue"] for r in runs)}
        row["curves"] = {str(s): c for s in seeds if (c := read_curve(run_dir(out, v.name, s)))}
        report["variants"][v.name] = row
    base_name = variants[0].name
    base = report["variants"][base_name]
    rows = list(report["variants"].values())
    pooled = {key: pooled_spread([r.get(key) for r in rows])
              for key in [k for k, _ in HELD_OUT[:3]] + ["glue_seeds"]}
    report["pooled_spread"] = pooled
    for v in variants[1:]:
        row = report["variants"][v.name]
        if not row["seeds_done"]:
            row["verdicts"] = [f"{v.name}: not run yet."]
            continue
        row["verdicts"] = [verdict(v.name, label, row.get(key), base.get(key), pooled[key])
                           for key, label in HELD_OUT[:3]]
        row["verdicts"].append(glue_verdict(v.name, row, base, pooled["glue_seeds"]))
    report["baseline"] = base_name
    return report


def _cell(x: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if x is None:
        return "–"
    spread = f" ± {scale * x['std']:.{digits}f}" if x["n"] > 1 else ""
    return f"{scale * x['mean']:.{digits}f}{spread}"


def markdown(report: dict, title: str) -> str:
    """``results.md`` of a :func:`summarise` report: one table, then the verdicts."""
    tasks = report["tasks"]
    lines = [f"# {title}", "",
             "Every variant spends the baseline's pre-training FLOPs (steps adjusted); held-out "
             "metrics are mean ± std over pre-training seeds, GLUE (dev, "
             f"{', '.join(tasks)}) the task average, mean ± std over every pre-training × "
             "fine-tuning seed pair. Time: steps at the run's median seconds per step ('at "
             "pace') and as the wall clock saw it, pauses and other processes included.", "",
             "| variant | seeds | steps | s/step | min at pace | wall (min) | gen acc | AUC gen "
             "| AUC unigram | AUC uniform | GLUE avg | " + " | ".join(tasks) + " |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(tasks)]
    for name, r in report["variants"].items():
        if not r["seeds_done"]:
            lines.append(f"| {name} | 0 |" + " – |" * (9 + len(tasks)))
            continue
        per_task = [_cell(r["glue_tasks"].get(t), digits=1) for t in tasks]
        lines.append(
            f"| {name} | {r['seeds_done']} | {r['steps']:,} | {_cell(r['step_s'], digits=2)} | "
            f"{_cell(r['pace_time_s'], 1 / 60, 1)} | {_cell(r['wall_time_s'], 1 / 60, 1)} | "
            + " | ".join(
                _cell(r.get(k)) for k, _ in HELD_OUT) + f" | {_cell(r['glue'], digits=1)} | "
            + " | ".join(per_task) + " |")
    lines += ["", "Against the baseline (a difference counts when it exceeds twice the standard "
              "error of the difference):", ""]
    for name, r in report["variants"].items():
        for sentence in r.get("verdicts", []):
            lines.append(f"- {sentence}")
    lines += ["", "Variants:", ""]
    for name, r in report["variants"].items():
        changes = ", ".join(f"{k}={v}" for k, v in {**r["model"], **r["recipe"]}.items())
        lines.append(f"- **{name}** ({changes or 'the recipe as it is'}): {r['why']}")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path | None:
    """Points with ± std per variant for the discriminator's AUCs (generator's and unigram
    replacements), the generator's accuracy and the GLUE average; None without matplotlib or
    without finished runs."""
    plt = pyplot()
    names = [n for n, r in report["variants"].items() if r["seeds_done"]]
    if plt is None or not names:
        return None
    from matplotlib.ticker import MaxNLocator

    panels = [("disc_auc", "AUC, generator's replacements"),
              ("unigram/disc_auc", "AUC, unigram replacements"),
              ("gen_accuracy", "generator MLM accuracy"), ("glue", "GLUE dev average")]
    fig, axes = plt.subplots(1, len(panels), sharey=True,
                             figsize=(3.5 * len(panels), 0.35 * len(names) + 1.5))
    for ax, (key, label) in zip(axes, panels):
        cells = [report["variants"][n].get(key) for n in names]
        means = [c["mean"] if c else float("nan") for c in cells]
        stds = [c["std"] if c else 0.0 for c in cells]
        ax.errorbar(means, range(len(names)), xerr=stds, fmt="o", color="C0", capsize=3)
        base = report["variants"][report["baseline"]].get(key)
        if base:
            ax.axvline(base["mean"], color="C3", lw=1, ls="--")
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.15, y=0.3)
        ax.set_title(label, fontsize=9)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(report: dict, path: Path) -> Path | None:
    """The discriminator's held-out AUCs (generator's and unigram replacements) against the
    share of the FLOPs budget spent, one line per (variant, seed), unfinished runs included;
    None without matplotlib or without evaluations."""
    plt = pyplot()
    curves = {n: r["curves"] for n, r in report["variants"].items() if r.get("curves")}
    if plt is None or not curves:
        return None
    panels = HELD_OUT[1:3]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
    for i, (name, by_seed) in enumerate(curves.items()):
        style = {"color": f"C{i % 10}", "ls": "-" if i < 10 else "--"}
        for j, rows in enumerate(by_seed.values()):
            for ax, (key, _) in zip(axes, panels):
                xy = [(r["budget"], r[key]) for r in rows if key in r]
                ax.plot(*zip(*xy), marker=".", lw=1.2, alpha=0.85,
                        label=name if j == 0 else None, **style)
    for ax, (_, label) in zip(axes, panels):
        ax.set_xlabel("share of the pre-training FLOPs budget")
        ax.set_title(f"held-out {label}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
