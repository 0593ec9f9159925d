"""Atomic checkpoints and exact resume.

A checkpoint is one file, ``step_00001234.pt``, holding the parameters, the optimizer state,
the step, the data position and the run's config. It is written to a temporary file in the
same directory, flushed to disk and renamed over the final name, so a crash mid-save never
leaves a partial checkpoint and never touches the previous one; older ones are pruned only
after that. A save needs room for one more checkpoint beside the newest: when the disk is too
full for it beside all kept ones, the older ones go first (the newest stays). The only random
state of a
run is its seed: masking, dropout and sampling noise are functions of (seed, step) and the
data order of (seed, epoch), so (seed, step, data position) resume a run exactly.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .rundir import naming
from .tree import flat_dict, unflat_dict

FORMAT_VERSION = 1
# Every file ends with sha256(body) + this tag, so flipped or truncated bytes are detected.
_FOOTER_TAG = b"ELECTRA1"
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


class CheckpointCorrupt(RuntimeError):
    """A checkpoint file that cannot be read back (names the file)."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def _to_cpu(tree: Any) -> dict:
    return {k: v.detach().to("cpu").clone() if isinstance(v, torch.Tensor) else v
            for k, v in flat_dict(tree).items()}


def _write_durably(directory: Path, final: Path, body: bytes) -> None:
    """``body`` and its checksum footer to a temporary file, fsynced, renamed over ``final``."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.write(hashlib.sha256(body).digest() + _FOOTER_TAG)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    except OSError:
        pass


def _no_room(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def _room_after_removing(directory: Path, older: list[Path], need: int) -> bool:
    """Whether removing ``older`` frees enough for ``need`` bytes (the file system's free space
    as it reports it; True when it reports none)."""
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):
        return True
    freed = sum(p.stat().st_size for p in older if p.exists())
    return st.f_bavail * st.f_frsize + freed >= need


def _retry_beside_newest(directory: Path, final: Path, body: bytes, first: OSError,
                         log: Callable[[str], None]) -> None:
    """After a full disk (``first``): the checkpoints older than the newest go, if that makes
    room (as the file system reports it), and the save is tried once more; an ``OSError``
    saying the room a checkpoint needs otherwise."""
    need = len(body) + 40
    older = [p for p in list_checkpoints(directory)[:-1] if p != final]
    short = OSError(first.errno, f"{first.strerror}; a checkpoint needs {need / 1e6:.1f} MB "
                                 "free beside the newest checkpoint")
    if not older or not _room_after_removing(directory, older, need):
        raise short from first
    for old in older:
        old.unlink(missing_ok=True)
    log(f"note: no room for a checkpoint beside {len(older) + 1}; removed "
        f"{', '.join(p.name for p in older)} (the newest stays)")
    try:
        _write_durably(directory, final, body)
    except OSError as e:
        if _no_room(e):
            raise short from e
        raise


def save_checkpoint(directory: str | os.PathLike, *, params: dict, opt_state: dict, step: int,
                    data_position: tuple[int, int], config: dict, extra: dict | None = None,
                    keep: int = 2, log: Callable[[str], None] | None = None) -> Path:
    """Atomically write ``directory/step_XXXXXXXX.pt``; keep the newest ``keep`` files. On a
    full disk the older checkpoints go (with a note to ``log``) and the save is tried again
    beside the newest alone; failing that, an ``OSError`` names the file and the room needed,
    and the newest checkpoint written before is still there."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "data_position": [int(data_position[0]), int(data_position[1])],
        "config": config,
        "params": _to_cpu(params),
        "opt_state": _to_cpu(opt_state),
        "extra": extra or {},
    }
    final = directory / checkpoint_name(step)
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    with naming(final):
        try:
            _write_durably(directory, final, body)
        except OSError as e:
            if not _no_room(e):
                raise
            _retry_beside_newest(directory, final, body, e, log or print)
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
    return final


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step in a checkpoint file's name (``step_00001200.pt`` -> 1200); None otherwise."""
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoint files in ``directory``, oldest first (temporary files ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of saves that a crash interrupted (call it only while
    owning the directory: another process's save in progress would go too)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.name.startswith(".tmp-") and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_latest_intact(directory: str | os.PathLike, log=print) -> tuple[dict, Path] | None:
    """The newest checkpoint in ``directory`` that loads, and its path; a corrupt newer one is
    passed over with a message naming it (the newest is what a resume wants, the intact one
    is what it can have). None when there is none; CheckpointCorrupt when none is intact."""
    found = list_checkpoints(directory)
    for path in reversed(found):
        try:
            return load_checkpoint(path), path
        except CheckpointCorrupt as e:
            log(f"warning: {e}; trying the one before it")
    if found:
        raise CheckpointCorrupt(f"{directory}: no intact checkpoint (tried "
                                f"{', '.join(str(p) for p in reversed(found))})")
    return None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """Read a checkpoint back into trees; raises CheckpointCorrupt naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    data = path.read_bytes()
    body, digest, tag = data[:-40], data[-40:-8], data[-8:]
    if tag != _FOOTER_TAG:
        raise CheckpointCorrupt(f"{path}: truncated or not an electra-fn checkpoint "
                                "(no checksum footer)")
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointCorrupt(f"{path}: checksum mismatch (the file is corrupted)")
    try:
        payload = torch.load(io.BytesIO(body), map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, bad magic, unpickling error ...
        raise CheckpointCorrupt(f"{path}: cannot read checkpoint ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
    required = ("format_version", "step", "data_position", "config", "params", "opt_state")
    if not isinstance(payload, dict) or any(k not in payload for k in required):
        raise CheckpointCorrupt(f"{path}: not an electra-fn checkpoint (missing fields)")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointCorrupt(f"{path}: format_version={payload['format_version']}, "
                                f"expected {FORMAT_VERSION}")
    payload["params"] = unflat_dict(payload["params"])
    payload["opt_state"] = unflat_dict(payload["opt_state"])
    payload["data_position"] = tuple(payload["data_position"])
    return payload
