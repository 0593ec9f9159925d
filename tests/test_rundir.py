"""Run-directory files: atomic JSON, JSONL logs and their truncation on resume."""

import orjson
import pytest

from electra_fn import rundir


def test_write_json_is_atomic_and_readable(tmp_path):
    path = tmp_path / "config.json"
    rundir.write_json(path, {"a": 1, "b": [1.5, None]})
    assert rundir.read_json(path) == {"a": 1, "b": [1.5, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary left
    path.write_bytes(b"{half")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        rundir.read_json(path)


def test_truncate_jsonl_keeps_earlier_rows_byte_for_byte(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3, 4):
        rundir.append_jsonl(path, {"step": step, "loss": 1.0 / step})
    before = path.read_bytes().splitlines()
    rundir.truncate_jsonl(path, 2)
    assert path.read_bytes().splitlines() == before[:2]
    assert [r["step"] for r in rundir.read_jsonl(path)] == [1, 2]
    rundir.truncate_jsonl(tmp_path / "missing.jsonl", 2)  # nothing to do


def test_read_jsonl_names_the_file_and_line_of_a_bad_row(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_bytes(orjson.dumps({"step": 0}) + b"\n\n" + b'{"step": 1, "lo\n'
                     + orjson.dumps({"step": 2}) + b"\n")
    with pytest.raises(ValueError, match=r"eval.jsonl, line 3: not a JSON row"):
        rundir.read_jsonl(path)


def test_an_incomplete_last_row_is_skipped_with_a_warning_and_dropped_on_resume(tmp_path):
    """A full disk or a crash mid-append leaves half a row at the end: reading skips it (with
    a warning naming file and line) and a resume's truncation drops it, so the resume works."""
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3):
        rundir.append_jsonl(path, {"step": step, "loss": 0.5})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"step": 4, "lo')
    said = []
    assert [r["step"] for r in rundir.read_jsonl(path, said.append)] == [1, 2, 3]
    assert "metrics.jsonl, line 4: an incomplete last row" in said[0]
    rundir.truncate_jsonl(path, 3, said.append)
    assert path.read_bytes() == whole


def test_a_full_disk_mid_append_cuts_the_half_row_and_names_the_file(tmp_path, disk_full_at):
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2):
        rundir.append_jsonl(path, {"step": step, "loss": 0.5})
    whole = path.read_bytes()
    failed = disk_full_at("metrics.jsonl")
    with pytest.raises(OSError, match=r"No space left on device: '.*metrics\.jsonl'"):
        rundir.append_jsonl(path, {"step": 3, "loss": 0.5})
    assert failed == [str(path)]  # half the row reached the file, and was cut off again
    assert path.read_bytes() == whole


def test_a_full_disk_leaves_the_old_json_file_whole_and_no_temporary(tmp_path, disk_full_at):
    path = tmp_path / "config.json"
    rundir.write_json(path, {"a": 1})
    disk_full_at("config.json")
    with pytest.raises(OSError, match=r"No space left on device: '.*config\.json'"):
        rundir.write_json(path, {"a": 2})
    assert rundir.read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_stale_temp_dirs_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    mine = rundir.temp_dir(tmp_path, "hf")  # this process: alive, kept
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    host = mine.name.split(".tmp-", 1)[1].rsplit("-", 2)[0]
    dead = tmp_path / f".data-1.tmp-{host}-{dead_pid}-abc123"
    other_host = tmp_path / f".data-2.tmp-elsewhere-{dead_pid}-abc123"
    unrelated = tmp_path / ".data-3.tmp-x"  # not ours: no host and pid
    for d in (dead, other_host, unrelated):
        d.mkdir()
        (d / "half.npy").write_bytes(b"x")
    assert rundir.remove_stale_temp_dirs(tmp_path) == [dead]
    assert not dead.exists()
    assert mine.is_dir() and other_host.is_dir() and unrelated.is_dir()
    assert rundir.remove_stale_temp_dirs(tmp_path / "missing") == []
