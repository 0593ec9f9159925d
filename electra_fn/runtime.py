"""Runtime helpers shared by the library and its command lines: the user-error type, device
and dtype resolution, autocast, the trace/capture flag, run provenance, and a small pool of
worker processes for command lines that run many independent jobs.

Nothing here touches model math; every other module may import it, and it imports none of
theirs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch


class UserError(Exception):
    """Bad input (a flag, a file, a field): reported as one clear line and exit code 2."""


EXIT_BAD_INPUT = 2


def guarded(fn, *, debug: bool = False, errors: tuple = ()) -> int:
    """``fn()``'s exit code, with a user-facing failure (bad input, a missing or unreadable
    file, a full or read-only disk, and ``errors``) reported as one line on stderr and exit
    code 2; a Ctrl-C that ``fn`` does not handle itself as one line and exit code 130;
    ``debug`` lets the traceback through instead. A SIGINT that the process inherited as ignored
    (a job started with ``&`` from a script) is restored, so ``kill -INT`` stops it as Ctrl-C."""
    if (signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            and threading.current_thread() is threading.main_thread()):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return fn()
    except (UserError, ValueError, OSError, *errors) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted (Ctrl-C); files already written are kept", file=sys.stderr)
        return 130

# -- device and dtype --------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ...; a
    :class:`UserError` for a malformed name or CUDA asked for where there is none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device name (auto, cpu, cuda, cuda:1, ...)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return dev


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16 on x86, BF16 on
    Arm), where bf16 autocast beats float32; elsewhere bf16 is emulated. Read from the kernel's
    CPU flags (Linux); False when unknown."""
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
    """The autocast dtype (None = float32) for ``--dtype`` (auto, float32, bf16). ``auto``: a
    resumed run keeps the dtype it started with (``recorded``, from its checkpoint) so it
    continues exactly; a new one gets bf16 on CUDA and on CPUs with native bf16."""
    if dtype == "bf16":
        return torch.bfloat16
    if dtype == "float32":
        return None
    if recorded is not None:
        return torch.bfloat16 if recorded == str(torch.bfloat16) else None
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def autocast(dtype: torch.dtype | None, device_type: str):
    """``torch.autocast`` to ``dtype`` on ``device_type``; a no-op for None or float32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def to_device(batch: dict, device: torch.device) -> dict:
    """Every tensor of ``batch`` on ``device`` (asynchronously where the copy allows)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# -- tracing and capture ----------------------------------------------------------------------
_CAPTURING = [False]


@contextlib.contextmanager
def capture_flag():
    """Marks a step being warmed up or captured as a CUDA graph (see :func:`capturing`)."""
    old = _CAPTURING[0]
    _CAPTURING[0] = True
    try:
        yield
    finally:
        _CAPTURING[0] = old


def capturing() -> bool:
    """True inside :func:`capture_flag` or while a CUDA stream captures: the step must not
    read device values on the host."""
    if _CAPTURING[0]:
        return True
    if torch.compiler.is_compiling():  # a compiled step is one graph already (and dynamo
        return False                    # cannot trace the stream query)
    return cuda_stream_capturing()


def cuda_stream_capturing() -> bool:
    """Whether the current CUDA stream is capturing (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def traced() -> bool:
    """Compiling or capturing: branch on device values with ``where``, never on the host."""
    return torch.compiler.is_compiling() or capturing()


# -- provenance -------------------------------------------------------------------------------
def git_describe(root: str | Path | None = None) -> str:
    """``git describe --always --dirty`` of the checkout holding this package (or ``root``);
    "unknown" outside a git checkout or without git."""
    where = Path(root) if root is not None else Path(__file__).resolve().parent
    if "site-packages" in where.parts:  # an installed copy: whatever checkout holds the venv
        return "unknown"                # did not make this code
    try:
        r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=where,
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def machine() -> dict:
    """Where a result was made: the CPU's model name, its cores, torch's threads and the first
    CUDA device's name (None without one). Runs of one study may land on different machines,
    whose kernels round differently."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu}


def provenance() -> dict:
    """What made a result: the commit, the versions of torch, transformers and datasets (None
    for a package that is not installed) and :func:`machine`."""
    versions = {}
    for name in ("torch", "transformers", "datasets"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"commit": git_describe(), "versions": versions, "machine": machine()}


def duration(text: str) -> float:
    """Seconds in ``900``, ``900s``, ``15m`` or ``2h``; a ``ValueError`` otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise ValueError(f"{text!r}: use e.g. 900, 900s, 15m, 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def fmt_time(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    s = max(0, int(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def cpu_contention(threads: int, load: tuple[float, ...] | None = None,
                   cores: int | None = None) -> str | None:
    """A sentence for an error about slow CPU steps when other processes seem to compete for
    the cores (the 1-minute load average exceeds this process's ``threads`` by ¾ of a core or
    more; ``load`` and ``cores`` default to the machine's), else None."""
    if load is None:
        if not hasattr(os, "getloadavg"):
            return None
        load = os.getloadavg()
    cores = cores or os.cpu_count() or 1
    if load[0] - threads < 0.75:
        return None
    return (f"the CPU looks busy (1-minute load average {load[0]:.1f} on {cores} cores, "
            f"this process runs {threads} thread(s)); threads that share cores with other "
            "processes wait for each other, so a step can take many times longer: stop the "
            "other processes, or set OMP_NUM_THREADS to the cores left free")


# -- worker processes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One worker process: a name for the log, its command line and the file for its output."""

    name: str
    command: list
    log_file: Path


def run_jobs(jobs: list[Job], parallel: int, *, env: dict | None = None, log=print,
             on_finished=None, status=None, status_every_s: float = 300.0,
             poll_s: float = 0.5) -> int:
    """Run ``jobs`` as subprocesses, in order, at most ``parallel`` at once, each writing its
    stdout and stderr to its ``log_file`` (appended), and ``on_finished(job)`` after each that
    exits 0; every ``status_every_s`` one line per running job, ``status(job)``. After a
    failure no further job starts; the running ones finish. SIGINT/SIGTERM are passed on to the
    running workers (each stops in its own way) and no further job starts. Returns 0, the first
    failure's exit code, or 128 + signal when stopped by one."""
    pending, running, failed, stop = list(jobs), {}, 0, []
    next_status = time.monotonic() + status_every_s

    def forward(signum, _frame):
        stop.append(signum)
        log(f"{signal.Signals(signum).name}: passed on to {len(running)} running worker(s); "
            "no further job starts")
        for proc, *_ in running.values():
            proc.send_signal(signum)

    on_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)} if on_main \
        else {}
    try:
        while running or (pending and not failed and not stop):
            while pending and len(running) < parallel and not failed and not stop:
                job = pending.pop(0)
                job.log_file.parent.mkdir(parents=True, exist_ok=True)
                out = open(job.log_file, "ab")
                # A session of its own: a terminal's Ctrl-C reaches the workers once, through us.
                proc = subprocess.Popen(job.command, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
                running[job.name] = (proc, out, time.monotonic(), job)
                log(f"started {job.name} (log {job.log_file})")
            time.sleep(poll_s)
            if status is not None and running and time.monotonic() >= next_status:
                next_status = time.monotonic() + status_every_s
                log("; ".join(f"{name}: {status(job)}" for name, (*_, job) in running.items()))
            for name, (proc, out, start, job) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                out.close()
                del running[name]
                left = len(pending) if not (failed or stop or code) else 0
                log(f"finished {name}: exit {code} in {fmt_time(time.monotonic() - start)}; "
                    f"{len(running)} running, {left} to start")
                if code == 0:
                    if on_finished is not None:
                        on_finished(job)
                elif not failed and not stop:
                    failed = code
                    log(f"{name} failed (exit {code}); see {job.log_file}; no further job "
                        "starts")
    finally:
        for proc, out, *_ in running.values():  # only after an exception: stop, reap, close
            proc.send_signal(signal.SIGINT)
            proc.wait()
            out.close()
        for s, h in old.items():
            signal.signal(s, h)
    if pending:
        log("not started: " + ", ".join(j.name for j in pending))
    return 128 + stop[0] if stop else failed
