"""A run directory's files: atomic JSON, append-only JSONL logs, and their truncation on resume.

A crash or a full disk at any moment leaves every JSON file whole (written to a temporary name,
then renamed); a JSONL log may end in a half-written row (a crash mid-append; a full disk's
half row is cut off again), which the readers skip with a warning; a bad row elsewhere is an
error naming its file and line. Write failures are ``OSError``s naming the file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson


@contextlib.contextmanager
def naming(path: str | os.PathLike):
    """Re-raises an ``OSError`` (a full or read-only disk, ...) as one naming ``path``, the file
    the user knows, rather than a temporary name or none (a failed ``write`` names no file)."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, flush it to disk, then rename it over ``path``: a
    crash or a full disk leaves the old file or the new one, never half of either (an
    ``OSError`` names ``path``; the temporary file goes)."""
    path = Path(path)
    with naming(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary shared files
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (numpy values allowed)."""
    write_atomic(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def read_json(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``; a ``ValueError`` naming the file when it is not JSON."""
    try:
        return orjson.loads(Path(path).read_bytes())
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row to the JSONL log ``path``, whole or not at all: a failed write (a full
    disk) cuts the file back to its earlier rows where the OS lets it, then raises an
    ``OSError`` naming ``path``."""
    line = orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    with naming(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                with contextlib.suppress(OSError):  # a half row would be read as a bad one
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)


def _rows(path: Path, warn: Callable[[str], None] | None = None) -> list[tuple[bytes, dict]]:
    lines = path.read_bytes().splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append((line, orjson.loads(line)))
        except orjson.JSONDecodeError as e:
            if i == last:  # a row cut short by a crash or a full disk: dropped, not fatal
                (warn or print)(f"warning: {path}, line {i + 1}: an incomplete last row "
                                "(a crash or a full disk while writing it), skipped")
                continue
            raise ValueError(f"{path}, line {i + 1}: not a JSON row ({e})") from None
    return out


def read_jsonl(path: str | os.PathLike, warn: Callable[[str], None] | None = None
               ) -> list[dict]:
    """The rows of a JSONL log (blank lines skipped, an incomplete last row skipped with a
    warning); a ``ValueError`` naming the file and line of any other row that is not JSON."""
    return [row for _, row in _rows(Path(path), warn)]


def truncate_jsonl(path: str | os.PathLike, step: int,
                   warn: Callable[[str], None] | None = None) -> None:
    """Drop the rows of ``path`` logged after ``step`` (a resumed run logs them again) and an
    incomplete last row, keeping the others byte for byte, atomically; nothing to do when the
    file does not exist."""
    path = Path(path)
    if not path.exists():
        return
    keep = [line for line, row in _rows(path, warn) if row["step"] <= step]
    write_atomic(path, b"".join(line + b"\n" for line in keep))


class RunDirBusy(Exception):
    """Another live process owns the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def temp_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new directory in ``parent`` for writing ``name`` before it is renamed into place; its
    name carries this process's host and pid, so :func:`remove_stale_temp_dirs` can tell one
    left by a dead process from one still being written."""
    return Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-{socket.gethostname()}-"
                                                    f"{os.getpid()}-"))


def remove_stale_temp_dirs(parent: str | os.PathLike) -> list[Path]:
    """Remove the :func:`temp_dir` directories in ``parent`` whose process (on this host) is
    gone: the leftovers of a killed export or cache build. Returns what was removed."""
    parent, host = Path(parent), socket.gethostname()
    if not parent.is_dir():
        return []
    removed = []
    for p in parent.iterdir():
        match = _TEMP_DIR.fullmatch(p.name)
        if (match and p.is_dir() and match["host"] == host
                and not _alive(int(match["pid"]))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


_TEMP_DIR = re.compile(r"\..+\.tmp-(?P<host>.+)-(?P<pid>\d+)-[^-]+")


@contextlib.contextmanager
def owned(directory: str | os.PathLike, log: Callable[[str], None] = print):
    """Own ``directory`` for a run: ``directory/.lock`` holds this process's pid and host while
    the ``with`` block runs. A lock left by a dead process on this host is taken over (with a
    message); a live owner, or one on another host, raises :class:`RunDirBusy`."""
    path = Path(directory) / ".lock"
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                other = {}
            if not other:  # being written this instant: look again
                time.sleep(0.05)
                continue
            if other.get("host") == me["host"] and not _alive(int(other.get("pid", -1))):
                log(f"note: {path} was left by process {other.get('pid')}, which is gone; "
                    "taking the run directory over")
                path.unlink(missing_ok=True)
                continue
            raise RunDirBusy(f"{directory} is in use by process {other.get('pid')} on "
                             f"{other.get('host')} ({path}); wait for it, or remove the lock "
                             "if that process is gone")
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(me))
        break
    else:
        raise RunDirBusy(f"{path}: could not take the lock (unreadable; remove it if no run "
                         "is using the directory)")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if orjson.loads(path.read_bytes()).get("pid") == me["pid"]:
                path.unlink()

