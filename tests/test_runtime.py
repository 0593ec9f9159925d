"""Runtime helpers: device and dtype resolution, the capture flag, provenance, the worker
pool."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from electra_fn import runtime


_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}
"""


@pytest.mark.parametrize("extra, native", [("avx512_bf16 avx512_vnni", True),
                                           ("amx_bf16 amx_tile", True),
                                           ("avx512_vnni", False), ("", False)])
def test_cpu_native_bf16_read_from_cpu_flags(tmp_path, extra, native):
    f = tmp_path / "cpuinfo"
    f.write_text(_CPUINFO.format(extra=extra))
    assert runtime.cpu_has_native_bf16(str(f)) is native
    # Arm lists its extensions under "Features"
    f.write_text("processor : 0\nFeatures : fp asimd " + ("bf16 i8mm" if native else "sve"))
    assert runtime.cpu_has_native_bf16(str(f)) is native
    assert runtime.cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_dtype_auto_resolution(monkeypatch):
    """--dtype auto: bf16 on CUDA and on CPUs with native bf16, float32 on other CPUs; a resumed
    run keeps the dtype recorded in its checkpoint; explicit choices always win."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda native=native: native)
        assert runtime.resolve_amp("auto", cpu) is (torch.bfloat16 if native else None)
        assert runtime.resolve_amp("auto", cuda) is torch.bfloat16
        assert runtime.resolve_amp("float32", cuda) is None
        assert runtime.resolve_amp("bf16", cpu) is torch.bfloat16
        # resume: the recorded dtype, whatever this machine would pick for a new run
        assert runtime.resolve_amp("auto", cpu, recorded="None") is None
        assert runtime.resolve_amp("auto", cpu, recorded="torch.bfloat16") is torch.bfloat16
        assert runtime.resolve_amp("float32", cpu, recorded="torch.bfloat16") is None


def test_resolve_device_names_the_bad_flag():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(runtime.UserError, match="--device gpu0: not a device name"):
        runtime.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(runtime.UserError, match="CUDA is not available"):
            runtime.resolve_device("cuda")


def test_capture_flag_is_scoped():
    assert not runtime.capturing() and not runtime.traced()
    with runtime.capture_flag():
        assert runtime.capturing() and runtime.traced()
        with runtime.capture_flag():
            assert runtime.capturing()
        assert runtime.capturing()
    assert not runtime.capturing()


def test_autocast_is_a_no_op_for_float32():
    x = torch.randn(3, 3)
    for dtype in (None, torch.float32):
        with runtime.autocast(dtype, "cpu"):
            assert (x @ x).dtype == torch.float32
    with runtime.autocast(torch.bfloat16, "cpu"):
        assert (x @ x).dtype == torch.bfloat16


def test_provenance_names_the_commit_and_versions(tmp_path):
    p = runtime.provenance()
    assert p["versions"]["torch"] == torch.__version__.split("+")[0] or \
        p["versions"]["torch"] == torch.__version__
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=runtime.__file__.rsplit("/", 2)[0])
    if head.returncode == 0:  # a git checkout: the described commit is HEAD's
        assert p["commit"].split("-dirty")[0].endswith(head.stdout.strip()[:7]) or \
            head.stdout.strip()[:7] in p["commit"]
    assert runtime.git_describe(tmp_path) == "unknown"  # not a checkout
    m = p["machine"]  # runs of one study may land on different CPUs: each says which
    assert m["cpu"] and m["cores"] == os.cpu_count() and m["threads"] == torch.get_num_threads()
    assert m["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    assert runtime.fmt_time(59) == "0:59" and runtime.fmt_time(3725) == "1:02:05"


def test_cpu_contention_is_named_only_when_other_processes_load_the_cores():
    assert runtime.cpu_contention(2, load=(2.3, 2.0, 1.5), cores=2) is None  # ours alone
    busy = runtime.cpu_contention(2, load=(3.1, 3.0, 2.0), cores=2)
    assert "load average 3.1 on 2 cores" in busy and "2 thread(s)" in busy
    assert "OMP_NUM_THREADS" in busy
    assert runtime.cpu_contention(1, load=(1.8, 1.0, 1.0), cores=4) is not None


def test_guarded_turns_a_ctrl_c_into_one_line_and_exit_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    assert runtime.guarded(interrupted) == 130
    assert capsys.readouterr().err.startswith("interrupted")
    with pytest.raises(KeyboardInterrupt):
        runtime.guarded(interrupted, debug=True)


def test_guarded_restores_an_inherited_ignored_sigint():
    """A process started with SIGINT ignored (``&`` from a script) still stops on SIGINT inside
    ``guarded``: one line and exit 130, not a run that ignores ``kill -INT``."""
    import signal
    import sys

    code = ("import os, signal, time\n"
            "from electra_fn import runtime\n"
            "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
            "def fn():\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(30)\n"
            "    return 0\n"
            "raise SystemExit(runtime.guarded(fn))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert r.returncode == 130, r.stderr[-2000:]
    assert "interrupted (Ctrl-C)" in r.stderr


# -- run_jobs: the worker pool of ``experiments.ablate --jobs`` -----------------------------

_SLEEPER = """import sys, time
print("start", time.time(), flush=True)
time.sleep(float(sys.argv[1]))
print("end", time.time(), flush=True)
sys.exit(int(sys.argv[2]))"""


def _job(tmp_path, name, seconds=0.4, code=0):
    cmd = [sys.executable, "-c", _SLEEPER, str(seconds), str(code)]
    return runtime.Job(name, cmd, tmp_path / name / "worker.log")


def _interval(log_file):
    times = dict(line.split() for line in log_file.read_text().splitlines())
    return float(times["start"]), float(times["end"])


def test_run_jobs_runs_at_most_n_at_once_and_reports_each(tmp_path):
    jobs = [_job(tmp_path, f"j{i}") for i in range(4)]
    finished, lines = [], []
    assert runtime.run_jobs(jobs, 2, log=lines.append, on_finished=finished.append,
                            status=lambda job: f"busy {job.name}", status_every_s=0.1,
                            poll_s=0.05) == 0
    assert sorted(j.name for j in finished) == ["j0", "j1", "j2", "j3"]
    assert "j0: busy j0; j1: busy j1" in lines  # a status line names every running job
    spans = [_interval(j.log_file) for j in jobs]
    for start, _ in spans:  # at every start, at most two jobs are running
        assert sum(s <= start < e for s, e in spans) <= 2
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # two did overlap
    assert spans[2][0] >= min(spans[0][1], spans[1][1])  # the third waited for a free slot
    assert any("finished j3: exit 0" in line for line in lines)


def test_run_jobs_starts_nothing_after_a_failure(tmp_path):
    jobs = [_job(tmp_path, "ok", 0.1), _job(tmp_path, "bad", 0.1, code=3),
            _job(tmp_path, "later", 0.1)]
    finished, lines = [], []
    assert runtime.run_jobs(jobs, 1, log=lines.append, on_finished=finished.append,
                            poll_s=0.05) == 3
    assert [j.name for j in finished] == ["ok"]
    assert not jobs[2].log_file.exists()
    assert any("bad failed (exit 3)" in line and "worker.log" in line for line in lines)
    assert lines[-1] == "not started: later"


def test_run_jobs_passes_a_sigint_to_its_workers_and_stops(tmp_path):
    waiter = ("import sys, time\nprint('ready', flush=True)\ntry:\n    time.sleep(60)\n"
              "except KeyboardInterrupt:\n    print('stopped cleanly', flush=True)\n"
              "    sys.exit(130)")
    jobs = [runtime.Job(n, [sys.executable, "-c", waiter], tmp_path / n / "worker.log")
            for n in ("a", "b", "c")]

    def interrupt_when_ready():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                j.log_file.exists() and "ready" in j.log_file.read_text() for j in jobs[:2]):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_ready, daemon=True).start()
    lines = []
    start = time.monotonic()
    assert runtime.run_jobs(jobs, 2, log=lines.append, poll_s=0.05) == 130
    assert time.monotonic() - start < 30  # the workers stopped, not slept out
    for j in jobs[:2]:
        assert "stopped cleanly" in j.log_file.read_text()
    assert not jobs[2].log_file.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
