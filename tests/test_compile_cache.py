"""electra_fn.compile_cache: the key's contract, the file layout, misses that never raise, the
size guard, and a save → load round trip between two fresh processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import torch

from electra_fn import compile_cache, pretrain
from electra_fn.config import ModelConfig, PretrainConfig

REPO = Path(__file__).resolve().parents[1]


def _cfg(**overrides) -> PretrainConfig:
    model = ModelConfig.from_name("tiny").replace(**overrides.pop("model", {}))
    recipe = dict(seq_len=32, batch_size=4, total_steps=100, warmup_steps=10)
    return PretrainConfig(model=model, **{**recipe, **overrides})


def _key(cfg=None, *, amp=None, route="func", world=1, device="cpu", mode=None):
    graph = compile_cache.step_graph_config(cfg or _cfg(), amp=amp, grad_route=route,
                                            world_size=world)
    return compile_cache.cache_key(graph, device, mode)


def test_key_is_stable_and_ignores_the_schedule():
    assert _key() == _key()
    assert len(_key().digest) == 16
    for changed in (dict(total_steps=5000), dict(learning_rate=1e-3), dict(warmup_steps=0),
                    dict(seed=7), dict(adam_bias_correction=True)):
        assert _key(_cfg(**changed)).digest == _key().digest, changed
    # the model's display name shapes no graph
    assert _key(_cfg(model=dict(name="renamed"))).digest == _key().digest


def test_key_changes_with_what_shapes_the_graph(monkeypatch):
    base = _key().digest
    others = [_key(_cfg(batch_size=8)), _key(_cfg(seq_len=64)),
              _key(_cfg(model=dict(num_layers=3))), _key(_cfg(model=dict(vocab_size=999))),
              _key(_cfg(disc_weight=10.0)), _key(amp=torch.bfloat16), _key(route="autograd"),
              _key(world=2), _key(mode="max-autotune")]
    digests = [k.digest for k in others]
    assert base not in digests and len(set(digests)) == len(digests)
    monkeypatch.setattr(compile_cache, "device_kind", lambda device: "NVIDIA H200 sm90")
    gpu = _key(device="cuda")
    assert gpu.digest != base and gpu.device_type == "cuda"


def test_layout_and_device_kind(tmp_path):
    key = _key()
    assert key.device_kind.startswith("cpu ") and key.device_type == "cpu"
    path = key.path(tmp_path)
    assert path == (tmp_path / compile_cache.slug(torch.__version__)
                    / compile_cache.slug(key.device_kind) / f"{key.digest}.bin")
    assert compile_cache.slug("NVIDIA H200 sm90") == "nvidia-h200-sm90"
    assert compile_cache.slug("2.13.0+cu128") == "2.13.0+cu128"


def test_resolve_dir():
    assert compile_cache.resolve_dir("none") is None and compile_cache.resolve_dir("None") is None
    assert compile_cache.resolve_dir("/x/y") == Path("/x/y")
    assert compile_cache.resolve_dir(None) == compile_cache.default_dir() == REPO / "compile_cache"


def test_bad_files_are_misses_with_one_warning(tmp_path):
    key, logs = _key(), []
    assert compile_cache.load(tmp_path, key, logs.append) is False
    assert len(logs) == 1 and logs[0].startswith("compile cache: miss") and "cold" in logs[0]

    path = compile_cache.write(tmp_path, key, b"these are not torch's artifacts", {}, logs.append)
    assert path == key.path(tmp_path) and path.with_suffix(".json").exists()
    side = orjson.loads(path.with_suffix(".json").read_bytes())
    assert side["digest"] == key.digest and side["bytes"] == path.stat().st_size

    def one_warning(expect: str) -> None:
        logs.clear()
        assert compile_cache.load(tmp_path, key, logs.append) is False
        assert len(logs) == 1 and logs[0].startswith("warning: compile cache:"), logs
        assert expect in logs[0] and "a miss" in logs[0], logs[0]

    one_warning("torch read no artifacts")       # intact file, not artifacts
    path.write_bytes(path.read_bytes()[:-3])     # truncated
    one_warning("truncated or corrupt")
    other = _key(_cfg(batch_size=8))             # another key's sidecar
    path.with_suffix(".json").write_bytes(orjson.dumps({"digest": other.digest}))
    one_warning("another key")
    path.with_suffix(".json").write_bytes(b"{not json")
    one_warning("not valid JSON")
    path.with_suffix(".json").unlink()
    one_warning("FileNotFoundError")


def test_size_guard(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "MAX_FILE_BYTES", 1000)
    key, logs = _key(), []
    assert compile_cache.write(tmp_path, key, os.urandom(4000), {}, logs.append) is None
    assert "over the" in logs[0] and not key.path(tmp_path).exists()
    # a file that grew past the limit is not loaded either
    assert compile_cache.write(tmp_path, key, bytes(4000), {}, logs.append) is not None
    monkeypatch.setattr(compile_cache, "MAX_FILE_BYTES", 10)
    logs.clear()
    assert compile_cache.load(tmp_path, key, logs.append) is False
    assert "over the 10-byte limit" in logs[0]


def test_warm_start_saves_after_the_first_call_of_a_miss_only(tmp_path, monkeypatch):
    saved, logs = [], []
    monkeypatch.setattr(compile_cache, "save", lambda root, key, meta, log: saved.append(meta))
    fn = compile_cache.warm_start(lambda x: x + 1, tmp_path, _key(), logs.append, {"a": 1})
    assert [fn(1), fn(2)] == [2, 3]
    assert len(saved) == 1 and saved[0]["a"] == 1 and "compile_s" in saved[0]
    assert any(m.startswith("compile: first call") and "cold" in m for m in logs)
    logs.clear()
    fn = compile_cache.warm_start(lambda x: x, None, _key(), logs.append)
    assert fn(5) == 5 and len(saved) == 1 and logs[0].startswith("compile cache: off")


# A compiled matmul: an Inductor graph with an extern kernel only (no C++ to build), so a cold
# compile takes seconds. The warm side is a fresh process with an empty Inductor cache.
CHILD = r"""
import sys, orjson, torch
from torch._dynamo.utils import counters
from electra_fn import compile_cache, compiling
key = compile_cache.cache_key({"test": "matmul"}, "cpu")
logs = []
fn = compile_cache.warm_start(compiling.compile(lambda x, w: x @ w), sys.argv[1], key,
                              logs.append)
out = fn(torch.arange(12.).reshape(3, 4), torch.arange(8.).reshape(4, 2))
print(orjson.dumps({"logs": logs, "out": out.tolist(),
                    "hits": counters["inductor"]["fxgraph_cache_hit"]}).decode())
"""


def test_round_trip_into_a_fresh_process(tmp_path):
    """A fresh process with an empty Inductor cache compiles, misses and saves; a second fresh
    process with another empty Inductor cache loads the file, hits torch's graph cache and
    computes the same. (Both sides are fresh processes: torch keeps what a process compiled
    earlier, so a cold side inside the test session would depend on the tests before it.)"""
    x, w = torch.arange(12.).reshape(3, 4), torch.arange(8.).reshape(4, 2)
    key = compile_cache.cache_key({"test": "matmul"}, "cpu")

    def child(inductor_dir: str) -> dict:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / inductor_dir),
                   PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "cc")], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return orjson.loads(r.stdout.strip().splitlines()[-1])

    cold = child("inductor-cold")
    assert cold["logs"][0].startswith("compile cache: miss"), cold["logs"]
    assert any(m.startswith("compile cache: saved") for m in cold["logs"]), cold["logs"]
    side = orjson.loads(key.path(tmp_path / "cc").with_suffix(".json").read_bytes())
    assert side["compile_s"] >= 0 and side["artifacts"].get("inductor", 0) >= 1
    warm = child("inductor-warm")
    assert warm["logs"][0].startswith(f"compile cache: hit ({key.path(tmp_path / 'cc')})")
    assert warm["hits"] == 1 and not any("saved" in m for m in warm["logs"])
    assert warm["out"] == cold["out"] == (x @ w).tolist()


def test_a_runs_compiled_step_looks_up_its_key(tmp_path):
    """``train.make_step_fn`` keys a compiled step by its graph (the route compiled steps take)
    and says what a miss costs before compiling (nothing is compiled here: no call)."""
    from electra_fn import train

    cfg, logs = _cfg(), []
    opts = train.StepOptions(compile=True, compile_cache=tmp_path)
    train.make_step_fn(cfg, opts, logs.append)
    want = _key(cfg, route=pretrain.grad_route_for(True)).path(tmp_path)
    assert any(m.startswith(f"compile cache: miss ({want} not found)") for m in logs), logs
    logs.clear()
    train.make_step_fn(cfg, train.StepOptions(compile=True), logs.append)
    assert any(m.startswith("compile cache: off") for m in logs), logs
