"""A run directory's files: atomic JSON, append-only JSONL logs, and their truncation on resume.

A crash at any moment leaves every JSON file whole (written to a temporary name, then renamed);
a JSONL log may end in a half-written row, which :func:`read_jsonl` reports with its file and
line.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (numpy values allowed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``; a ``ValueError`` naming the file when it is not JSON."""
    try:
        return orjson.loads(Path(path).read_bytes())
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row to the JSONL log ``path``."""
    with open(path, "ab") as f:
        f.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def _rows(path: Path) -> list[tuple[bytes, dict]]:
    out = []
    for i, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((line, orjson.loads(line)))
        except orjson.JSONDecodeError as e:
            raise ValueError(f"{path}, line {i}: not a JSON row ({e})") from None
    return out


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL log (blank lines skipped); a ``ValueError`` naming the file and line
    of a row that is not JSON."""
    return [row for _, row in _rows(Path(path))]


def truncate_jsonl(path: str | os.PathLike, step: int) -> None:
    """Drop the rows of ``path`` logged after ``step`` (a resumed run logs them again), keeping
    the others byte for byte, atomically; nothing to do when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return
    keep = [line for line, row in _rows(path) if row["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line in keep))
    os.replace(tmp, path)
