"""Kill a pre-training run at random moments (mid-step, mid-save, mid-export), resume it each
time, and check that it ends with exactly the parameters of an uninterrupted run.

    python -m benchmarks.fault_injection --kills 20 --json runs/fault_injection.json

A tiny run (the fixture corpus, float32, a checkpoint every ``--save-every`` seconds so that
kills land inside saves too) is run once without interruption as the reference; then the same
command is started, killed with SIGKILL after a random delay, and restarted (``--resume`` when a
checkpoint exists) until it finishes. Prints and writes the number of kills survived and
whether the final parameters, optimizer state and held-out evaluations are bit-identical.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from electra_fn import checkpoint as ckpt
from electra_fn.rundir import read_jsonl, write_json
from electra_fn.tree import flat_dict

REPO = Path(__file__).resolve().parents[1]


def command(out: Path, cache: Path, steps: int, save_every: float, resume: bool) -> list[str]:
    return ([sys.executable, "-m", "experiments.pretrain_small", "--preset", "tiny", "--corpus",
             str(REPO / "tests" / "fixtures" / "corpus"), "--vocab-size", "300", "--batch-size",
             "4", "--seq-len", "32", "--steps", str(steps), "--dtype", "float32", "--no-plot",
             "--save-every", str(save_every), "--cache-dir", str(cache), "--out", str(out)]
            + (["--resume"] if resume else []))


def same(a: dict, b: dict) -> bool:
    fa, fb = flat_dict(a), flat_dict(b)
    return fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--save-every", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0, help="of the kill delays")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    cache = work / "cache"
    subprocess.run(command(work / "warm", cache, 1, 1e6, False), cwd=REPO, env=env,
                   check=True, capture_output=True)  # tokenizer and data cache built once
    t = time.time()
    ref = work / "reference"
    subprocess.run(command(ref, cache, args.steps, 1e6, False), cwd=REPO, env=env, check=True,
                   capture_output=True)
    ref_s = time.time() - t  # a start's length: kills fall anywhere inside one
    # kills spread so that the run needs about all of them: from start-up (importing, loading
    # the checkpoint) to well into the steps and saves
    spread = 3.0 + 2.0 * max(ref_s - 3.0, 1.0) / max(args.kills, 1)
    out, kills, starts = work / "faulty", 0, 0
    while not (out / "summary.json").exists():
        resume = bool(ckpt.list_checkpoints(out / "checkpoints"))
        proc = subprocess.Popen(command(out, cache, args.steps, args.save_every, resume),
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        starts += 1
        if kills < args.kills:
            try:
                proc.wait(timeout=rng.uniform(0.5, spread))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        _, err = proc.communicate()
        if proc.returncode not in (0, -signal.SIGKILL):
            raise SystemExit(f"start {starts} failed (exit {proc.returncode}): {err[-2000:]}")
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(ref / "checkpoints"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))
    evals_same = read_jsonl(ref / "eval.jsonl") == read_jsonl(out / "eval.jsonl")
    result = {"kills": kills, "starts": starts, "steps": args.steps,
              "params_identical": same(a["params"], b["params"]),
              "opt_state_identical": same(a["opt_state"], b["opt_state"]),
              "eval_identical": evals_same, "args": {**vars(args), "json": str(args.json)}}
    print(f"{kills} kills over {starts} starts: parameters "
          f"{'bit-identical' if result['params_identical'] else 'DIFFERENT'}, optimizer state "
          f"{'bit-identical' if result['opt_state_identical'] else 'DIFFERENT'}, held-out "
          f"evaluations {'identical' if evals_same else 'DIFFERENT'}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
