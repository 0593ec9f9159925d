"""Data parallelism (electra_fn.distributed) on the CPU with gloo: the pure pieces in-process;
two ranks spawned by the test for the step, and ``torchrun`` for the command line.

Two ranks on the whole batch's halves equal one process on the whole batch (float32
tolerance: the sums run in another order); a stopped and resumed two-rank run equals an
uninterrupted one bit for bit; rank 0 alone writes; a rank that dies or hangs ends the job
with one clear line, its checkpoints intact.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import torch
import torch.multiprocessing as mp

from electra_fn import checkpoint as ckpt
from electra_fn import distributed, model, pretrain
from electra_fn import rng as rnglib
from electra_fn.config import ModelConfig, PretrainConfig
from electra_fn.tree import flat_dict

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "fixtures" / "corpus"
STEPS = 6
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


# -- pure pieces ----------------------------------------------------------------------------
def test_world_from_env():
    assert distributed.world_from_env({}) is None
    w = distributed.world_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                                    distributed.TIMEOUT_ENV: "7"})
    assert (w.rank, w.size, w.local_rank, w.timeout_s, w.lead) == (1, 4, 1, 7.0, False)
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"},
                {"RANK": "0", "WORLD_SIZE": "2", distributed.TIMEOUT_ENV: "0"}):
        with pytest.raises(ValueError, match="torchrun environment"):
            distributed.world_from_env(bad)
    assert distributed.rank_device(torch.device("cuda"), w) == torch.device("cuda", 1)
    assert distributed.rank_device(torch.device("cpu"), w) == torch.device("cpu")


def test_batch_slices_cover_the_global_batch_and_refuse_an_uneven_split():
    batch = {"input_ids": torch.arange(24).reshape(6, 4), "attention_mask": torch.ones(6, 4)}
    worlds = [distributed.World(r, 3) for r in range(3)]
    parts = [distributed.batch_slice(batch, w) for w in worlds]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])
    assert distributed.shard_rows(6, worlds[2]) == (4, 2)
    assert distributed.shard_rows(6, None) == (0, 6)
    with pytest.raises(ValueError, match="does not split over 4 ranks"):
        distributed.shard_rows(6, distributed.World(0, 4))
    pos = [p for p, _ in distributed.sliced(iter([((0, 1), batch)]), worlds[1])]
    assert pos == [(0, 1)]


def test_buckets_group_by_dtype_and_size_in_order():
    ts = [torch.zeros(4), torch.zeros(4), torch.zeros(4, dtype=torch.int64), torch.zeros(100),
          torch.zeros(2)]
    assert distributed.buckets(ts, bucket_bytes=32) == [[0, 1], [2], [3], [4]]
    assert distributed.buckets(ts) == [[0, 1], [2], [3, 4]]
    assert distributed.all_reduce_sum(ts, None)[3] is ts[3]  # no process group: unchanged


@pytest.mark.parametrize("counter", [False, True])
def test_batch_rows_are_the_rows_of_the_global_draw(counter):
    key = rnglib.key(5)
    with rnglib.counter_based() if counter else contextlib.nullcontext():
        whole = rnglib.uniform(key, (6, 3, 2))
        parts = []
        for start in (0, 2, 4):
            with rnglib.batch_rows(start, 6):
                parts.append(rnglib.uniform(key, (2, 3, 2)))
                g = rnglib.gumbel(key, (2, 3, 2))
        assert torch.equal(torch.cat(parts), whole)
        assert torch.equal(g, -torch.log(-torch.log(whole[4:])))
    with rnglib.batch_rows(5, 6), pytest.raises(ValueError, match="rows 5:7"):
        rnglib.uniform(key, (2, 3))


# -- two ranks, spawned -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step_setup():
    mcfg = ModelConfig.from_name("tiny")  # dropout on: its noise is sliced too
    cfg = PretrainConfig(model=mcfg, seq_len=16, batch_size=4, total_steps=10, warmup_steps=1,
                         learning_rate=1e-3)
    batches = []
    for i in range(3):
        g = torch.Generator().manual_seed(i)
        mask_BxL = (torch.arange(16) < torch.tensor([[16], [9], [13], [5]])).long()
        ids_BxL = torch.randint(5, mcfg.vocab_size, (4, 16), generator=g) * mask_BxL
        batches.append({"input_ids": ids_BxL, "attention_mask": mask_BxL,
                        "token_type_ids": torch.zeros_like(ids_BxL)})
    return cfg, batches


def _steps(cfg, batches, route, world):
    params = model.init_params(cfg.model, 0)
    opt = pretrain.init_opt_state(params, cfg)
    step = pretrain.make_train_step(cfg, grad_route=route, world=world)
    for i, b in enumerate(batches):
        params, opt, m = step(params, opt, distributed.batch_slice(b, world),
                              pretrain.step_key(0, i))
    return params, m


def _rank_env(rank: int, size: int, port: int) -> dict:
    return dict(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _all_routes(world) -> dict:
    cfg, batches = _step_setup()
    return {route: _steps(cfg, batches, route, world) for route in pretrain.GRAD_ROUTES}


def _rank_worker(rank: int, size: int, port: int, out: str):
    os.environ.update(_rank_env(rank, size, port))
    torch.set_num_threads(1)
    with distributed.session(torch.device("cpu"), print) as (world, _, _):
        got = _all_routes(world)
    if rank == 0:
        torch.save(got, out)


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' thread count: the same reduction order in kernels
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_two_ranks_equal_one_process_on_the_whole_batch(tmp_path, monkeypatch):
    """k = 3 steps (dropout, masking and sampling noise included): two ranks, each on half of
    every batch, end with one process's parameters and metrics on the whole batches, on both
    gradient routes; a world of one rank is the single process bit for bit."""
    mp.spawn(_rank_worker, args=(2, _free_port(), str(tmp_path / "two.pt")), nprocs=2)
    two = torch.load(tmp_path / "two.pt")
    for k, v in _rank_env(0, 1, _free_port()).items():
        monkeypatch.setenv(k, v)
    with _one_thread():
        one = _all_routes(None)
        with distributed.session(torch.device("cpu"), print) as (world, _, _):
            solo = _all_routes(world)
    for route in pretrain.GRAD_ROUTES:
        (p1, m1), (p2, m2), (ps, _) = one[route], two[route], solo[route]
        f1, f2, fs = flat_dict(p1), flat_dict(p2), flat_dict(ps)
        for k in f1:
            torch.testing.assert_close(f2[k], f1[k], rtol=1e-5, atol=1e-6, msg=k)
            assert torch.equal(fs[k], f1[k]), k
        assert m1.keys() == m2.keys()
        for k in m1:
            torch.testing.assert_close(m2[k], m1[k], rtol=1e-5, atol=1e-6, msg=k)


# -- the command line under torchrun --------------------------------------------------------
def _args(out: Path, cache: Path, *extra) -> list[str]:
    return ["--preset", "tiny", "--corpus", str(CORPUS), "--batch-size", "4", "--seq-len", "32",
            "--vocab-size", "300", "--cache-dir", str(cache), "--out", str(out), "--no-plot",
            *map(str, extra)]


def _torchrun(nproc: int, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "experiments.pretrain_small", *args]
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _in_process(args: list[str]) -> subprocess.CompletedProcess:
    from experiments import pretrain_small

    out, err = io.StringIO(), io.StringIO()
    with _one_thread(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = pretrain_small.main(args)
    assert rc == 0, err.getvalue()[-3000:]
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def _rows(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


def _final(out: Path) -> dict:
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, cache) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("two") / "run"
    return out, _torchrun(2, _args(out, cache, "--steps", STEPS))


def test_rank0_alone_writes_the_runs_files(two_rank_run):
    out, r = two_rank_run
    assert r.stdout.count("done: 6 steps") == 1 and r.stdout.count("held-out at step 2") == 1
    assert [row["step"] for row in _rows(out / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert [row["step"] for row in _rows(out / "eval.jsonl")] == [0, 2, 4, STEPS]
    config = orjson.loads((out / "config.json").read_bytes())
    assert config["run"]["world_size"] == 2
    assert orjson.loads((out / "summary.json").read_bytes())["world_size"] == 2
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000006.pt"]
    assert not list(out.rglob(".tmp*")) and not list(out.rglob("*.lock*"))


def test_stopped_and_resumed_under_torchrun_equals_an_uninterrupted_run(tmp_path, cache,
                                                                        two_rank_run):
    out = tmp_path / "run"
    _torchrun(2, _args(out, cache, "--steps", STEPS, "--stop-at-step", 3))
    r = _torchrun(2, _args(out, cache, "--steps", STEPS, "--resume"))
    assert r.stdout.count("resuming at step 3") == 1
    a, b = _final(two_rank_run[0]), _final(out)
    fa, fb = flat_dict(a["params"]), flat_dict(b["params"])
    assert a["step"] == b["step"] == STEPS and all(torch.equal(fa[k], fb[k]) for k in fa)
    fa, fb = flat_dict(a["opt_state"]), flat_dict(b["opt_state"])
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert [row["step"] for row in _rows(out / "metrics.jsonl")] == list(range(1, STEPS + 1))


def test_one_process_and_a_resume_on_one_rank_match_the_two_rank_run(tmp_path, cache,
                                                                     two_rank_run):
    """The same run on one process, and the two-rank run resumed at step 3 by one process
    (the world size may change: the data position counts global batches), end where the
    two-rank run did, up to float32 rounding."""
    two = flat_dict(_final(two_rank_run[0])["params"])
    one_out, mixed = tmp_path / "one", tmp_path / "mixed"
    _in_process(_args(one_out, cache, "--steps", STEPS))
    _torchrun(2, _args(mixed, cache, "--steps", STEPS, "--stop-at-step", 3))
    r = _in_process(_args(mixed, cache, "--steps", STEPS, "--resume"))
    assert "had 2 data-parallel rank(s), now 1" in r.stdout
    for out in (one_out, mixed):
        got = flat_dict(_final(out)["params"])
        for k in two:  # a few Adam steps: rounding in a near-zero gradient moves a weight ~lr
            torch.testing.assert_close(got[k], two[k], rtol=0, atol=1e-4, msg=k)


def test_batch_that_does_not_split_is_refused_before_anything_is_written(tmp_path, cache):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "experiments.pretrain_small", *_args(out, cache, "--steps", 2)]
    cmd[cmd.index("--batch-size") + 1] = "3"
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode != 0 and "batch size 3 does not split over 2 ranks" in r.stderr
    assert not (out / "config.json").exists()


# -- failures -------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_a_rank_that_dies_or_hangs_ends_the_job_with_a_clear_error(tmp_path, cache, fault,
                                                                   two_rank_run):
    """Two ranks launched by hand (no torchrun to tear the job down): rank 1 is killed, or
    stopped, after a checkpoint; rank 0 exits with one clear line within the timeout, and
    every checkpoint on disk loads."""
    out, port = tmp_path / "run", _free_port()
    procs = []
    for rank in range(2):
        env = dict(ENV, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   **{distributed.TIMEOUT_ENV: "4"})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "experiments.pretrain_small",
             *_args(out, cache, "--steps", 100_000, "--save-every", "1s")],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.time() + 180
        while not ckpt.list_checkpoints(out / "checkpoints"):
            assert procs[0].poll() is None, procs[0].communicate()
            assert time.time() < deadline, "no checkpoint within 180 s"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        t = time.time()
        _, err = procs[0].communicate(timeout=60)
        waited = time.time() - t
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == 2 and "Traceback" not in err, err[-3000:]
    assert "rank 0 of 2:" in err and "another rank died or did not answer within 4 s" in err
    assert waited < 30
    paths = ckpt.list_checkpoints(out / "checkpoints")
    assert paths and all(ckpt.load_checkpoint(p)["step"] >= 1 for p in paths)
    assert not (out / "summary.json").exists()


def test_resume_command_repeats_how_the_job_was_launched():
    assert (distributed.resume_command(None, "experiments.pretrain_small", "runs/x")
            == "python -m experiments.pretrain_small --out runs/x --resume")
    world = distributed.World(rank=1, size=4, local_rank=1)
    one_node = distributed.resume_command(world, "m", "o", env={"LOCAL_WORLD_SIZE": "4"})
    assert one_node == "torchrun --nproc_per_node 4 -m m --out o --resume"
    two_nodes = distributed.resume_command(world, "m", "o", env={"LOCAL_WORLD_SIZE": "2"})
    assert two_nodes.startswith("torchrun --nnodes ") and "--nproc_per_node 2 -m m" in two_nodes
