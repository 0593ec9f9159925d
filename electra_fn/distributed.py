"""Data parallelism on ``torch.distributed``, launched by ``torchrun``: this process's place
in the job, the process groups, a rank's rows of the global batch, and sums over the ranks.

Every rank runs the same pure step on its rows of the global batch (``cfg.batch_size`` stays
the global one), draws its rows of the global batch's noise (:func:`electra_fn.rng.batch_rows`),
and sums gradients and loss terms over the ranks (:func:`all_reduce_sum`), so every rank
applies the update one process would on the whole batch. Rank 0 alone writes files. Every
collective has a timeout: a rank that dies or hangs ends the job with :class:`PeerLost`.
See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

# Seconds a collective waits for the other ranks (a checkpoint rank 0 writes while the others
# wait must fit in it); the environment variable overrides it.
TIMEOUT_ENV = "ELECTRA_FN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
# The other ranks wait this long while rank 0 builds the tokenizer and the data cache.
SETUP_TIMEOUT_S = 6 * 3600.0
BUCKET_BYTES = 32 * 2**20  # gradients are summed in flat buffers of at most this size


class PeerLost(ConnectionError):
    """A collective failed: another rank died, or hung past the timeout; the job stops."""


@dataclasses.dataclass(frozen=True)
class World:
    """This process's rank among ``size`` (``local_rank`` on its machine), the collectives'
    timeout, and the process groups for host-side agreement and for the setup wait (None:
    not yet initialized; the default group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    control: Any = None
    setup: Any = None

    @property
    def lead(self) -> bool:
        return self.rank == 0


def world_from_env(env: dict | None = None) -> World | None:
    """The world ``torchrun`` describes in ``env`` (RANK, WORLD_SIZE, LOCAL_RANK, and the
    timeout in ``ELECTRA_FN_DIST_TIMEOUT`` seconds), or None for a process it did not launch."""
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
        timeout_s = float(env.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError as e:
        raise ValueError(f"torchrun environment: {e}") from None
    if not (size >= 1 and 0 <= rank < size and local >= 0 and timeout_s > 0):
        raise ValueError(f"torchrun environment: RANK={rank} WORLD_SIZE={size} "
                         f"LOCAL_RANK={local} {TIMEOUT_ENV}={timeout_s}")
    return World(rank, size, local, timeout_s)


def resume_command(world: World | None, module: str, out, env: dict | None = None) -> str:
    """The command that resumes the run in ``out`` as this job was started: ``python -m`` for
    one process, ``torchrun --nproc_per_node N -m`` under torchrun (N from its
    LOCAL_WORLD_SIZE; a job on several machines also needs its rendezvous flags again)."""
    launch = "python -m"
    if world is not None:
        env = os.environ if env is None else env
        per_node = int(env.get("LOCAL_WORLD_SIZE", world.size))
        nodes = "" if per_node >= world.size else " --nnodes ... --rdzv-endpoint ..."
        launch = f"torchrun{nodes} --nproc_per_node {per_node} -m"
    return f"{launch} {module} --out {out} --resume"


def is_lead(world: World | None) -> bool:
    """Whether this process writes the run's files: a single process, or rank 0."""
    return world is None or world.lead


def rank_device(device: torch.device, world: World | None) -> torch.device:
    """The rank's device: ``cuda`` without an index becomes ``cuda:LOCAL_RANK``."""
    if world is None or device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", world.local_rank)


def init(world: World, device: torch.device) -> World:
    """Join the job: the default group on NCCL (CUDA) or gloo (CPU) with ``world``'s timeout,
    a gloo group for host-side agreement, and a gloo group with the long setup timeout."""
    timeout = datetime.timedelta(seconds=world.timeout_s)
    kw = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kw["device_id"] = device
    with collective(world, "joining the job"):
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                                rank=world.rank, world_size=world.size, **kw)
        control = dist.new_group(backend="gloo", timeout=timeout) if device.type == "cuda" \
            else None
        setup = dist.new_group(backend="gloo",
                               timeout=datetime.timedelta(seconds=SETUP_TIMEOUT_S))
    return dataclasses.replace(world, control=control, setup=setup)


@contextlib.contextmanager
def session(device: torch.device, log: Callable[[str], None]):
    """Under ``torchrun``: (the joined :class:`World`, the rank's device, a log only rank 0
    prints), leaving the job on exit; otherwise (None, ``device``, ``log``)."""
    world = world_from_env()
    if world is None:
        yield None, device, log
        return
    device = rank_device(device, world)
    world = init(world, device)
    try:
        yield world, device, (log if world.lead else (lambda msg: None))
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def collective(world: World, what: str):
    """A block of collectives whose failure (a rank died, or hung past the timeout) becomes a
    :class:`PeerLost` that says so."""
    try:
        yield
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise PeerLost(f"rank {world.rank} of {world.size}: {what} failed: another rank died "
                       f"or did not answer within {world.timeout_s:g} s ({first}); the job "
                       "stops. Checkpoints already written are intact: resume from the newest"
                       ) from e


# -- the batch ----------------------------------------------------------------------------------
def shard_rows(batch_size: int, world: World | None) -> tuple[int, int]:
    """(first row, rows) of the global batch that ``world``'s rank takes; a ValueError when
    the ranks cannot split it evenly."""
    if world is None:
        return 0, batch_size
    if batch_size % world.size:
        raise ValueError(f"batch size {batch_size} does not split over {world.size} ranks: "
                         "choose a multiple of the world size")
    rows = batch_size // world.size
    return world.rank * rows, rows


def batch_slice(batch: dict, world: World | None) -> dict:
    """The rank's rows of every [B, ...] tensor of the global ``batch``."""
    start, rows = shard_rows(next(iter(batch.values())).shape[0], world)
    return {k: v[start:start + rows] for k, v in batch.items()}


def sliced(batches: Iterator, world: World | None) -> Iterator:
    """``(position, batch)`` pairs with each global batch cut to the rank's rows: the data
    position counts global batches, so a resume may change the world size."""
    for position, batch in batches:
        yield position, batch_slice(batch, world)


# -- sums over the ranks ----------------------------------------------------------------------
def buckets(tensors: list[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> list[list[int]]:
    """Indices of ``tensors`` grouped into runs of one dtype and device of at most
    ``bucket_bytes`` each (a larger tensor is a bucket alone), in order."""
    out: list[list[int]] = []
    size, kind = 0, None
    for i, t in enumerate(tensors):
        n = t.numel() * t.element_size()
        if out and kind == (t.dtype, t.device) and size + n <= bucket_bytes:
            out[-1].append(i)
            size += n
        else:
            out.append([i])
            size, kind = n, (t.dtype, t.device)
    return out


def all_reduce_sum(tensors: list[torch.Tensor], world: World | None,
                   bucket_bytes: int = BUCKET_BYTES) -> list[torch.Tensor]:
    """Each tensor summed over the ranks (new tensors; the inputs are unchanged), reduced in
    flat buckets (:func:`buckets`) launched together; unchanged without a process group."""
    if world is None or not dist.is_initialized():
        return list(tensors)
    groups = buckets(tensors, bucket_bytes)
    flats = [torch.cat([tensors[i].reshape(-1) for i in g]) for g in groups]
    with collective(world, "summing gradients over the ranks"):
        works = [dist.all_reduce(f, async_op=True) for f in flats]
        for w in works:
            w.wait()
    out: list[torch.Tensor] = [torch.empty(0)] * len(tensors)
    for g, flat in zip(groups, flats):
        parts = torch.split(flat, [tensors[i].numel() for i in g])
        for i, part in zip(g, parts):
            out[i] = part.view_as(tensors[i])
    return out


def agree_max(values: list[int], world: World | None) -> list[int]:
    """The element-wise maximum of ``values`` over the ranks, on the host (a rank offers 0
    where it has no say: rank 0's choices and any rank's stop request reach every rank)."""
    if world is None or not dist.is_initialized():
        return [int(v) for v in values]
    t = torch.tensor([int(v) for v in values], dtype=torch.int64)
    with collective(world, "agreeing with the other ranks"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=world.control)
    return [int(v) for v in t.tolist()]


def lead_value(value: int, world: World | None) -> int:
    """Rank 0's ``value`` (a non-negative int) on every rank."""
    return agree_max([value if is_lead(world) else 0], world)[0]


@contextlib.contextmanager
def lead_first(world: World | None, lead_context=None):
    """Rank 0 enters ``lead_context`` (e.g. the run directory's lock) and sets the run up
    first (tokenizer, data cache); the other ranks wait here until it calls :func:`ready`."""
    if is_lead(world):
        with (lead_context if lead_context is not None else contextlib.nullcontext()):
            yield
        return
    if dist.is_initialized():
        with collective(world, "waiting for rank 0 to set the run up"):
            dist.barrier(group=world.setup)
    yield


def ready(world: World | None) -> None:
    """Rank 0 has set the run up: the ranks waiting in :func:`lead_first` go on."""
    if world is not None and world.lead and dist.is_initialized():
        with collective(world, "releasing the other ranks"):
            dist.barrier(group=world.setup)
