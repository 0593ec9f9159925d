"""Runtime helpers: device and dtype resolution, the capture flag, provenance."""

import subprocess

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
    assert runtime.fmt_time(59) == "0:59" and runtime.fmt_time(3725) == "1:02:05"


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
