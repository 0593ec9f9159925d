"""Warm starts of compiled steps from portable compile caches (issue 17, item 3).

After a cold compile, ``torch.compiler.save_cache_artifacts()`` serialises what this process
put into torch's compile caches (AOTAutograd's and Inductor's FX graphs, with the Triton kernels
bundled on CUDA); ``load_cache_artifacts`` in a later process, before its first compiled call,
fills the local caches from them so the compile becomes a cache hit. The C++ kernels of a CPU
graph are not part of the artifacts and are built again.

Layout: ``<root>/<torch version>/<device kind>/<digest>.bin`` (the artifacts, zlib-compressed,
at most :data:`MAX_FILE_BYTES` so a file can travel back from a GPU session and be committed)
and ``<digest>.json`` beside it (what the key was made of, when, size, sha256, and the seconds
of the cold compile it saves). A file that is missing, corrupt or made for another key is a
miss with a one-line warning, never an error.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import orjson
import torch

from . import compiling, rundir
from .config import PretrainConfig

Log = Callable[[str], None]
MAX_FILE_BYTES = 16 * 2**20  # what one file back from a GPU session may weigh
# Recipe fields the compiled step reads as data (``opt_state["schedule"]``,
# pretrain.schedule_state) or not at all (the seed: the step's key is an input).
SCHEDULE_FIELDS = ("total_steps", "warmup_steps", "learning_rate", "adam_bias_correction", "seed")
# How long a cold compile took, said on a miss (a compile never runs unannounced).
COLD_COMPILE = {
    "cpu": "the 12-layer ELECTRA-Small step took 384 s on a 2-core CPU "
           "(records/2026-11-27_cpu-compile-time)",
    "cuda": "the 12-layer ELECTRA-Small step had not finished after 375 s on an H200 "
            "(records/2026-11-27_h200-session2)",
}


@dataclass(frozen=True)
class CacheKey:
    """Which cache file serves a compiled step: ``digest`` hashes ``made_of`` (JSON)."""

    digest: str
    torch_version: str
    device_kind: str
    device_type: str  # torch.device(...).type: cpu, cuda, ...
    made_of: str

    def path(self, root: str | Path) -> Path:
        """The artifacts' file under ``root``; its JSON sidecar has the suffix ``.json``."""
        return Path(root) / slug(self.torch_version) / slug(self.device_kind) / f"{self.digest}.bin"


def slug(text: str) -> str:
    """``text`` as a file name: lower case, runs of other than ``[a-z0-9.+]`` as one ``-``."""
    return re.sub(r"[^a-z0-9.+]+", "-", text.lower()).strip("-") or "-"


def device_kind(device: torch.device | str) -> str:
    """What compiled code depends on: the CUDA device's name and capability (``NVIDIA H200
    sm90``), or ``cpu`` and the vector ISA torch dispatches to (``cpu AVX512``)."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} sm{major}{minor}"
    if device.type == "cpu":
        return f"cpu {torch.backends.cpu.get_cpu_capability()}"
    return device.type


def step_graph_config(cfg: PretrainConfig, *, amp: torch.dtype | None, grad_route: str,
                      world_size: int = 1) -> dict:
    """What shapes the compiled pre-training step's graph: the model and the recipe without
    :data:`SCHEDULE_FIELDS` (or the model's display name), the autocast dtype, the gradient
    route and the data-parallel world size."""
    recipe = cfg.to_dict()
    for name in SCHEDULE_FIELDS:
        recipe.pop(name, None)
    recipe["model"] = {k: v for k, v in recipe["model"].items() if k != "name"}
    return {"recipe": recipe, "amp": str(amp), "grad_route": grad_route,
            "world_size": world_size}


def cache_key(graph: dict, device: torch.device | str, mode: str | None = None) -> CacheKey:
    """The key of a compiled function: equal for equal torch and Python versions, device kind,
    ``graph`` (what determines the traced graph, e.g. :func:`step_graph_config`) and Inductor
    options (``compiling.inductor_options(mode)``); different when any of them differs."""
    kind = device_kind(device)
    made_of = orjson.dumps({
        "torch": torch.__version__, "python": "%d.%d" % sys.version_info[:2], "device": kind,
        "graph": graph, "inductor": compiling.inductor_options(mode)},
        option=orjson.OPT_SORT_KEYS).decode()
    digest = hashlib.sha256(made_of.encode()).hexdigest()[:16]
    return CacheKey(digest, torch.__version__, kind, torch.device(device).type, made_of)


def default_dir() -> Path | None:
    """The repository's committed ``compile_cache/`` (beside the ``electra_fn`` package), when
    the package runs from a checkout that has it; otherwise None (no cache)."""
    folder = Path(__file__).resolve().parents[1] / "compile_cache"
    return folder if folder.is_dir() else None


def resolve_dir(flag: str | None) -> Path | None:
    """``--compile-cache``: None: :func:`default_dir`; ``none``: no cache; else that folder."""
    if flag is None:
        return default_dir()
    return None if flag.strip().lower() == "none" else Path(flag)


def cold_hint(key: CacheKey) -> str:
    """What a miss costs, from the measured cold compiles (:data:`COLD_COMPILE`)."""
    return f"the compile is cold; {COLD_COMPILE.get(key.device_type, 'it may take minutes')}"


def sidecar_problem(meta: dict, data: bytes, key: CacheKey) -> str | None:
    """Why the file ``data`` with sidecar ``meta`` cannot serve ``key``; None when it can."""
    if meta.get("digest") != key.digest or meta.get("made_of") != orjson.loads(key.made_of):
        return "made for another key"
    if len(data) > MAX_FILE_BYTES:
        return f"{len(data)} bytes, over the {MAX_FILE_BYTES}-byte limit"
    if meta.get("bytes") != len(data) or meta.get("sha256") != hashlib.sha256(data).hexdigest():
        return "size or sha256 differ from its sidecar (truncated or corrupt)"
    return None


def load(root: str | Path, key: CacheKey, log: Log = print) -> bool:
    """Load ``key``'s artifacts from ``root`` into torch's caches before the first compiled
    call: True on a hit; on a miss (absent, corrupt or mismatched file) False and a log line
    saying the compile is cold. Never raises for a bad file."""
    path = key.path(root)
    if not path.exists():
        log(f"compile cache: miss ({path} not found): {cold_hint(key)}")
        return False
    try:
        data = path.read_bytes()
        problem = sidecar_problem(rundir.read_json(path.with_suffix(".json")), data, key)
        if problem is None and torch.compiler.load_cache_artifacts(zlib.decompress(data)) is None:
            problem = "torch read no artifacts from it"
    except Exception as e:  # noqa: BLE001 - a bad file of any kind is a miss, not a failed run
        text = str(e).strip()
        problem = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
    if problem is not None:
        log(f"warning: compile cache: {path} unusable ({problem}); a miss: {cold_hint(key)}")
        return False
    log(f"compile cache: hit ({path})" + (
        "; the C++ kernels are built again (records/2026-11-29_compile-cache-cpu)"
        if key.device_type == "cpu" else ""))
    return True


def write(root: str | Path, key: CacheKey, artifacts: bytes, meta: dict,
          log: Log = print) -> Path | None:
    """Write serialised ``artifacts`` as ``key``'s file under ``root`` (atomically, the sidecar
    last, with ``meta`` merged into it); None and a warning when the compressed file would
    exceed :data:`MAX_FILE_BYTES` or the folder cannot be written."""
    path = key.path(root)
    data = zlib.compress(artifacts, 6)
    if len(data) > MAX_FILE_BYTES:
        log(f"warning: compile cache: not saved: {path} would be {len(data) / 2**20:.1f} MiB "
            f"compressed, over the {MAX_FILE_BYTES // 2**20} MiB a file may weigh")
        return None
    sidecar = {"digest": key.digest, "torch": key.torch_version, "device_kind": key.device_kind,
               "made_of": orjson.loads(key.made_of),
               "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "bytes": len(data), "uncompressed_bytes": len(artifacts), "encoding": "zlib",
               "sha256": hashlib.sha256(data).hexdigest(), **meta}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_atomic(path, data)
        rundir.write_json(path.with_suffix(".json"), sidecar)
    except OSError as e:
        log(f"warning: compile cache: not saved ({e})")
        return None
    log(f"compile cache: saved {path} ({len(data) / 2**20:.2f} MiB)")
    return path


def save(root: str | Path, key: CacheKey, meta: dict, log: Log = print) -> Path | None:
    """After the first compiled call: write what this process compiled (:func:`write`); None
    with a note when torch recorded nothing (a non-Inductor backend, caches disabled)."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None or not saved[0]:
        log("compile cache: nothing to save (torch recorded no compile artifacts)")
        return None
    counts = {kind: len(names) for kind, names in getattr(saved[1], "artifacts", {}).items()}
    return write(root, key, saved[0], {"artifacts": counts, **meta}, log)


def warm_start(compiled_fn: Callable, root: str | Path | None, key: CacheKey,
               log: Log = print, meta: dict | None = None) -> Callable:
    """``compiled_fn`` after loading ``key``'s artifacts from ``root`` (None: no cache); its
    first call is timed and logged, and on a miss its artifacts are saved (``meta`` goes into
    the sidecar). The calls and their results are ``compiled_fn``'s own."""
    if root is None:
        log(f"compile cache: off: {cold_hint(key)}")
        hit = False
    else:
        hit = load(root, key, log)
    first = True

    def call(*args, **kwargs):
        nonlocal first
        if not first:
            return compiled_fn(*args, **kwargs)
        t0 = time.perf_counter()
        out = compiled_fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        first = False
        log(f"compile: first call {seconds:.1f} s ({'warm start' if hit else 'cold'})")
        if root is not None and not hit:
            save(root, key, {"compile_s": round(seconds, 1), **(meta or {})}, log)
        return out

    return call
