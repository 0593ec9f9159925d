"""Checkpoints: round trip, pruning, atomic saves under crashes, corruption detection."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from electra_fn import checkpoint as ckpt
from electra_fn import model, pretrain
from electra_fn.config import CLS_ID, SEP_ID, ModelConfig, PretrainConfig
from electra_fn.tree import flat_dict

TINY = ModelConfig.from_name("tiny", vocab_size=100, max_position_embeddings=32)
CFG = PretrainConfig(model=TINY, seq_len=32, batch_size=2, total_steps=100, warmup_steps=0,
                     learning_rate=1e-3)


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (2, 32), generator=g)
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
            "attention_mask": torch.ones_like(ids)}


def _init():
    params = model.init_params(CFG.model, 0)
    return params, pretrain.init_opt_state(params, CFG)


def _trees_equal(a, b) -> bool:
    fa, fb = flat_dict(a), flat_dict(b)
    return fa.keys() == fb.keys() and all(
        fa[k].dtype == fb[k].dtype and torch.equal(fa[k], fb[k]) for k in fa)


def _state_after_a_step():
    params, opt = _init()
    params, opt, _ = pretrain.make_train_step(CFG)(params, opt, _batch(),
                                                   pretrain.step_key(0, 0))
    return params, opt


def _save(directory, step, params, opt, **kw):
    return ckpt.save_checkpoint(directory, params=params, opt_state=opt, step=step,
                                data_position=(step // 10, step % 10),
                                config={"pretrain": CFG.to_dict(), "run": {"seed": 0}}, **kw)


def test_checkpoint_round_trip(tmp_path):
    params, opt = _state_after_a_step()
    path = _save(tmp_path, 1234, params, opt)
    assert path == tmp_path / "step_00001234.pt" and path.is_file()
    got = ckpt.load_checkpoint(path)
    assert _trees_equal(got["params"], params)
    assert _trees_equal(got["opt_state"], opt)
    assert got["opt_state"]["step"].dtype == torch.int64 and got["opt_state"]["step"].ndim == 0
    assert got["step"] == 1234 and got["data_position"] == (123, 4)
    assert got["config"]["pretrain"] == CFG.to_dict()
    assert PretrainConfig.from_dict(got["config"]["pretrain"]) == CFG
    # The structure is the model's (lists of layers come back as lists).
    assert isinstance(got["params"]["generator"]["layers"], list)
    assert ckpt.latest_checkpoint(tmp_path) == path


def test_checkpoint_keep_prunes_older(tmp_path):
    params, opt = _init()
    for s in (1, 2, 3):
        _save(tmp_path, s, params, opt, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002.pt",
                                                                   "step_00000003.pt"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000003.pt"
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None


class _OsWith:
    """The ``os`` module with one function replaced (patched into electra_fn.checkpoint only)."""

    def __init__(self, **replaced):
        self._replaced = replaced

    def __getattr__(self, name):
        return self._replaced[name] if name in self._replaced else getattr(os, name)


def _boom(exc):
    def fail(*_a, **_k):
        raise exc
    return fail


@pytest.mark.parametrize("crash", ["torch.save", "fsync", "os.replace"])
def test_checkpoint_save_is_atomic(tmp_path, monkeypatch, crash):
    params, opt = _init()
    good = _save(tmp_path, 1, params, opt)
    good_bytes = good.read_bytes()
    new_params, new_opt = _state_after_a_step()
    if crash == "torch.save":
        monkeypatch.setattr(ckpt.torch, "save", _boom(OSError("disk full")))
    elif crash == "fsync":  # after the body has been written to the temporary file
        monkeypatch.setattr(ckpt, "os", _OsWith(fsync=_boom(KeyboardInterrupt())))
    else:
        monkeypatch.setattr(ckpt, "os", _OsWith(replace=_boom(OSError("crash in rename"))))
    with pytest.raises((OSError, KeyboardInterrupt)):
        _save(tmp_path, 2, new_params, new_opt)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name], "partial/temporary file left"
    assert good.read_bytes() == good_bytes
    got = ckpt.load_checkpoint(good)
    assert got["step"] == 1 and _trees_equal(got["params"], params)
    assert ckpt.latest_checkpoint(tmp_path) == good


def test_a_full_disk_makes_room_by_removing_older_checkpoints_the_newest_stays(
        tmp_path, disk_full_at):
    """A save that finds no room beside the kept checkpoints removes the older ones and tries
    again beside the newest alone (room for two checkpoints, not three)."""
    params, opt = _init()
    _save(tmp_path, 1, params, opt)
    newest = _save(tmp_path, 2, params, opt)
    said = []
    failed = disk_full_at("/.tmp-", times=1)
    path = _save(tmp_path, 3, params, opt, log=said.append)
    assert len(failed) == 1 and "removed step_00000001.pt (the newest stays)" in said[0]
    assert ckpt.list_checkpoints(tmp_path) == [newest, path]
    assert ckpt.load_checkpoint(path)["step"] == 3 and ckpt.load_checkpoint(newest)["step"] == 2


def test_a_full_disk_names_the_checkpoint_and_the_room_it_needs(tmp_path, disk_full_at):
    params, opt = _init()
    newest = _save(tmp_path, 1, params, opt)
    disk_full_at("/.tmp-")
    with pytest.raises(OSError, match=r"No space left on device; a checkpoint needs \d+\.\d MB "
                       r"free beside the newest checkpoint: '.*step_00000002\.pt'"):
        _save(tmp_path, 2, params, opt)
    assert sorted(tmp_path.iterdir()) == [newest]  # no temporary file left
    assert ckpt.load_checkpoint(newest)["step"] == 1


def test_temporary_files_are_not_checkpoints(tmp_path):
    (tmp_path / ".tmp-abc.pt").write_bytes(b"partial")
    (tmp_path / "step_12.pt").write_bytes(b"short name")
    assert ckpt.list_checkpoints(tmp_path) == []


@pytest.mark.parametrize("where", ["start", "middle", "footer"])
def test_flipped_byte_is_detected(tmp_path, where):
    params, opt = _init()
    path = _save(tmp_path, 5, params, opt)
    data = bytearray(path.read_bytes())
    i = {"start": 0, "middle": len(data) // 2, "footer": len(data) - 20}[where]
    data[i] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointCorrupt, match=re.escape(str(path))):
        ckpt.load_checkpoint(path)


@pytest.mark.parametrize("keep_fraction", [0.0, 0.5, 0.999])
def test_truncated_file_is_detected(tmp_path, keep_fraction):
    params, opt = _init()
    path = _save(tmp_path, 5, params, opt)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep_fraction)])
    with pytest.raises(ckpt.CheckpointCorrupt, match=re.escape(str(path))):
        ckpt.load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="step_00000009.pt"):
        ckpt.load_checkpoint(tmp_path / "step_00000009.pt")


def test_not_a_checkpoint_is_corrupt(tmp_path):
    path = Path(tmp_path) / "step_00000001.pt"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(ckpt.CheckpointCorrupt, match=re.escape(str(path))):
        ckpt.load_checkpoint(path)
