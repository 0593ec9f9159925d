"""Pre-training data: the default corpus, the original packing, caching, batching. (Reading
corpus files and splitting sentences, electra_fn.data.corpus: tests/test_corpus.py.)"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from electra_fn.config import CLS_ID, PAD_ID, SEP_ID
from electra_fn.data.corpus import expand_corpus_paths, read_documents, split_sentences
from electra_fn.data.pretrain_data import (PretrainData, batches, build_pretraining_data,
                                           default_corpus_path, document_rng, encode_pairs,
                                           pack_document, full_batches_per_epoch)

SPECIAL = {"cls_id": CLS_ID, "sep_id": SEP_ID, "pad_id": PAD_ID}


class Log(list):
    def __call__(self, message: str) -> None:
        self.append(message)

    def has(self, fragment: str) -> bool:
        return any(fragment in m for m in self)


# ----------------------------------------------------------------------------- the corpus asset


def test_default_corpus_asset():
    path = default_corpus_path()
    assert path.endswith("wiki_small.txt.xz") and os.path.isfile(path)
    first = next(read_documents([path]))
    assert first[0].startswith("Anarchism is a political philosophy")
    assert (Path(path).parent / "ATTRIBUTION.md").is_file()


# ----------------------------------------------------------------------------- packing


def _document(sentence_lengths: list[int], doc: int = 0) -> list[list[int]]:
    """Sentences of consecutive ids, offset by document, so order and origin can be checked."""
    base, out = 10 + doc * 1_000_000, []
    for n in sentence_lengths:
        out.append(list(range(base, base + n)))
        base += n
    return out


def _check_row(ids: np.ndarray, types: np.ndarray, seq_len: int) -> tuple[list[int], list[int]]:
    """Assert the layout [CLS] A [SEP] (B [SEP]) [PAD]...; return A and B."""
    assert ids.shape == types.shape == (seq_len,)
    n = int((ids != PAD_ID).sum())
    assert (ids[n:] == PAD_ID).all() and (ids[:n] != PAD_ID).all()  # padding only at the end
    assert ids[0] == CLS_ID and ids[n - 1] == SEP_ID
    seps = np.flatnonzero(ids[:n] == SEP_ID)
    assert len(seps) in (1, 2) and (ids[:n] != CLS_ID).sum() == n - 1
    first_end = seps[0] + 1
    assert (types[:first_end] == 0).all() and (types[first_end:n] == 1).all()
    assert (types[n:] == 0).all()
    a, b = ids[1:seps[0]].tolist(), ids[first_end:n - 1].tolist()
    assert len(a) > 0 and (len(seps) == 1) == (len(b) == 0)
    return a, b


sentence_lengths = st.lists(st.integers(0, 60), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(st.lists(sentence_lengths, min_size=1, max_size=4), st.integers(5, 96),
       st.integers(0, 2**31))
def test_packing_invariants(docs_lengths, seq_len, seed):
    for doc, lengths in enumerate(docs_lengths):
        sentences = _document(lengths, doc)
        pairs = pack_document(sentences, seq_len, document_rng(seed, 0, doc))
        ids, types = encode_pairs(pairs, seq_len, **SPECIAL)
        assert ids.dtype == np.int32 and types.dtype == np.int8
        assert len(pairs) <= sum(1 for n in lengths if n)
        previous_max = -1
        for row in range(len(pairs)):
            a, b = _check_row(ids[row], types[row], seq_len)
            tokens = a + b
            # never crossing a document; each segment in order; examples in document order
            assert all(t // 1_000_000 == doc for t in (x - 10 for x in tokens))
            assert a == sorted(a) and b == sorted(b) and len(set(tokens)) == len(tokens)
            assert min(tokens) > previous_max
            previous_max = max(tokens)
        if all(n < seq_len // 8 for n in lengths):  # nothing trimmed: every token is kept
            kept = sorted(t for row in ids for t in row.tolist() if t >= 10)
            assert kept == [t for s in sentences for t in s]


def test_packing_is_deterministic_and_seed_dependent():
    sentences = _document([7, 3, 12, 40, 5, 9, 22, 1, 17] * 20)
    run = lambda seed: pack_document(sentences, 64, document_rng(seed, 0, 3))  # noqa: E731
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_single_segment_and_random_length_rates():
    # many short sentences: B is always possible, so an empty B means the 10% single-segment draw
    rng_lengths = np.random.default_rng(0)
    single = short = total = 0
    for doc in range(40):
        sentences = _document(rng_lengths.integers(1, 5, size=1500).tolist(), doc)
        pairs = pack_document(sentences, 64, document_rng(7, 0, doc))[:-1]  # skip the tail flush
        total += len(pairs)
        single += sum(1 for _, b in pairs if not b)
        short += sum(1 for a, b in pairs if len(a) + len(b) + 3 < 60)
    assert total > 2000
    assert 0.06 < single / total < 0.14
    assert 0.02 < short / total < 0.08  # the 5% random target lengths in [5, 64]


def test_target_length_and_trimming():
    # one huge sentence is trimmed to seq_len - 2 and becomes a single segment
    pairs = pack_document([list(range(10, 500))], 32, document_rng(0, 0, 0))
    assert len(pairs) == 1 and len(pairs[0][0]) == 30 and pairs[0][1] == []
    with pytest.raises(ValueError, match="seq_len"):
        pack_document([[10]], 4, document_rng(0, 0, 0))
    assert pack_document([[], []], 16, document_rng(0, 0, 0)) == []
    ids, types = encode_pairs([], 16, **SPECIAL)
    assert ids.shape == (0, 16) and types.shape == (0, 16)


# ----------------------------------------------------------------------------- pipeline


class TagTokenizer:
    """Word-level test tokenizer: 'W<doc>x<pos>' → id 10 + doc·10⁶ + pos (tags the document)."""

    kind = "test"
    vocab_size = 10**8
    pad_id, unk_id, cls_id, sep_id, mask_id = 0, 1, 2, 3, 4
    fingerprint = "tag-tokenizer-v1"

    def encode_batch(self, texts):
        out = []
        for text in texts:
            ids = []
            for word in text.split():
                doc, pos = word.strip(".").lstrip("W").split("x")
                ids.append(10 + int(doc) * 1_000_000 + int(pos))
            out.append(ids)
        return out


def _write_tagged_corpus(path: Path, n_docs: int, first_doc: int = 0, seed: int = 0) -> None:
    """Documents of paragraphs of sentences 'W<doc>x<pos> ... .'; blank line between documents."""
    rng = np.random.default_rng(seed)
    docs = []
    for doc in range(first_doc, first_doc + n_docs):
        pos, paragraphs = 0, []
        for _ in range(rng.integers(1, 6)):
            sentences = []
            for _ in range(rng.integers(1, 8)):
                n = int(rng.integers(1, 25))
                sentences.append(" ".join(f"W{doc}x{pos + i}" for i in range(n)) + ".")
                pos += n
            paragraphs.append(" ".join(sentences))
        docs.append("\n".join(paragraphs))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")


def _documents_of(ids: np.ndarray) -> set[int]:
    tokens = ids[ids >= 10]
    return set(((tokens - 10) // 1_000_000).tolist())


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    root = tmp_path_factory.mktemp("tagged")
    _write_tagged_corpus(root / "corpus" / "part0.txt", 30, 0, seed=1)
    _write_tagged_corpus(root / "corpus" / "part1.txt", 30, 30, seed=2)
    log = Log()
    data = build_pretraining_data([str(root / "corpus")], TagTokenizer(), seq_len=48, seed=5,
                                  cache_dir=str(root / "cache"), valid_fraction=0.1, log=log)
    return root, data, log


def test_pipeline_rows_and_document_boundaries(tagged):
    _, data, log = tagged
    assert isinstance(data, PretrainData) and log.has("building pre-training data")
    assert data.train_ids.dtype == np.int32 and data.train_token_types.dtype == np.int8
    assert data.train_ids.shape[1] == 48 and data.valid_ids.shape[1] == 48
    for ids, types in [(data.train_ids, data.train_token_types),
                       (data.valid_ids, data.valid_token_types)]:
        for row in range(len(ids)):
            _check_row(ids[row], types[row], 48)
            assert len(_documents_of(ids[row])) == 1  # never crosses a document end
    train_docs, valid_docs = _documents_of(data.train_ids), _documents_of(data.valid_ids)
    assert not train_docs & valid_docs
    assert train_docs | valid_docs == set(range(60))
    assert len(valid_docs) == 6
    stats = data.stats
    assert stats["train_documents"] == 54 and stats["valid_documents"] == 6
    assert stats["train_examples"] == len(data.train_ids)
    assert stats["train_tokens"] == int((data.train_ids != PAD_ID).sum())
    assert 0.5 < stats["train_mean_fill"] <= 1.0


def test_pipeline_matches_the_pure_packing(tagged):
    root, data, _ = tagged
    tok = TagTokenizer()
    expected_ids = []
    for doc_index, lines in enumerate(read_documents(expand_corpus_paths([str(root / "corpus")]))):
        if doc_index in _documents_of(data.valid_ids):
            continue
        sentences = tok.encode_batch([s for line in lines for s in split_sentences(line)])
        pairs = pack_document(sentences, 48, document_rng(5, 0, doc_index))
        expected_ids.append(encode_pairs(pairs, 48, **SPECIAL)[0])
    np.testing.assert_array_equal(data.train_ids, np.concatenate(expected_ids))


def test_pipeline_cache_is_reused(tagged, tmp_path):
    root, data, _ = tagged
    cache = root / "cache"
    (entry,) = cache.glob("data-*")
    mtime = (entry / "train_ids.npy").stat().st_mtime_ns
    shutil.copytree(root / "corpus", tmp_path / "renamed")  # same content, other path
    log = Log()
    again = build_pretraining_data([str(tmp_path / "renamed")], TagTokenizer(), seq_len=48, seed=5,
                                   cache_dir=str(cache), valid_fraction=0.1, log=log)
    assert log.has("reusing cached pre-training data") and not log.has("building")
    assert (entry / "train_ids.npy").stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again.train_ids, data.train_ids)
    np.testing.assert_array_equal(again.valid_token_types, data.valid_token_types)
    assert again.stats == data.stats
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no datasets work files left


def _flip_one_id(entry: Path) -> None:
    """Another valid token id in one example: in range, so only a checksum can tell."""
    path = entry / "train_ids.npy"
    ids = np.load(path)
    ids[0, 1] = ids[0, 2]
    np.save(path, ids)


def _stats_without_checksums(entry: Path) -> None:  # as written before there were any
    import orjson
    stats = orjson.loads((entry / "stats.json").read_bytes())
    del stats["sha256"]
    (entry / "stats.json").write_bytes(orjson.dumps(stats))


CACHE_CORRUPTIONS = {
    "an id changed in range": (_flip_one_id, "train_ids.npy is altered"),
    "a truncated array": (lambda e: (e / "valid_ids.npy").write_bytes(
        (e / "valid_ids.npy").read_bytes()[:100]), "valid_ids.npy is altered"),
    "a missing array": (lambda e: (e / "train_token_types.npy").unlink(),
                        "train_token_types.npy is missing"),
    "stats.json not JSON": (lambda e: (e / "stats.json").write_bytes(b'{"train_'),
                            "stats.json is not valid JSON"),
    "stats.json not an object": (lambda e: (e / "stats.json").write_bytes(b"[1, 2]"),
                                 "stats.json holds no checksums"),
    "stats.json missing": (lambda e: (e / "stats.json").unlink(), "stats.json is missing"),
    "no checksums (an old entry)": (_stats_without_checksums, "stats.json holds no checksums"),
}


@pytest.mark.parametrize("corruption", list(CACHE_CORRUPTIONS))
def test_a_corrupt_cache_entry_is_rebuilt_with_a_warning(tagged, tmp_path, corruption):
    """Each kind of damage to a cached entry is detected on load (the ids' checksum catches an
    in-range change), logged with what was wrong, and the entry rebuilt: the data come back
    equal to the first build's, and the next call reuses the repaired entry."""
    root, data, _ = tagged
    cache = tmp_path / "cache"
    shutil.copytree(root / "cache", cache)
    (entry,) = cache.glob("data-*")
    damage, said = CACHE_CORRUPTIONS[corruption]
    damage(entry)
    log = Log()
    kwargs = {"seq_len": 48, "seed": 5, "cache_dir": str(cache), "valid_fraction": 0.1}
    again = build_pretraining_data([str(root / "corpus")], TagTokenizer(), log=log, **kwargs)
    warning = next(m for m in log if m.startswith("warning: "))
    assert str(entry) in warning and said in warning and "rebuilding it" in warning
    assert log.has("building pre-training data") and not log.has("reusing")
    for name in ("train_ids", "train_token_types", "valid_ids", "valid_token_types"):
        np.testing.assert_array_equal(getattr(again, name), getattr(data, name))
    assert again.stats == data.stats
    log = Log()
    build_pretraining_data([str(root / "corpus")], TagTokenizer(), log=log, **kwargs)
    assert log.has("reusing cached pre-training data") and not log.has("warning")
    assert [p.name for p in cache.iterdir()] == [entry.name]  # nothing set aside is left


def test_a_cache_that_cannot_be_written_is_a_warning_not_a_failure(tagged, tmp_path,
                                                                  disk_full_at):
    root, data, _ = tagged
    disk_full_at("stats.json")  # the entry's last file
    log = Log()
    again = build_pretraining_data([str(root / "corpus")], TagTokenizer(), seq_len=48, seed=5,
                                   cache_dir=str(tmp_path / "cache"), valid_fraction=0.1,
                                   log=log)
    np.testing.assert_array_equal(again.train_ids, data.train_ids)
    assert log.has("not cached ([Errno 28] No space left on device: ")
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written entry


def test_pipeline_seed_changes_data_and_num_proc_does_not(tagged, tmp_path):
    root, data, _ = tagged
    kwargs = {"seq_len": 48, "valid_fraction": 0.1, "log": Log()}
    other_seed = build_pretraining_data([str(root / "corpus")], TagTokenizer(), seed=6,
                                        cache_dir=str(tmp_path / "a"), **kwargs)
    assert _documents_of(other_seed.valid_ids) != _documents_of(data.valid_ids)
    two_procs = build_pretraining_data([str(root / "corpus")], TagTokenizer(), seed=5,
                                       cache_dir=str(tmp_path / "b"), num_proc=2, **kwargs)
    np.testing.assert_array_equal(two_procs.train_ids, data.train_ids)
    np.testing.assert_array_equal(two_procs.valid_ids, data.valid_ids)


def test_auto_num_proc():
    from electra_fn.data.pretrain_data import text_chars, auto_num_proc, usable_cpus
    M = 1_000_000
    assert auto_num_proc(0, cpus=16) == 1 and auto_num_proc(8 * M - 1, cpus=16) == 1
    assert auto_num_proc(8 * M, cpus=16) == 2 and auto_num_proc(36 * M, cpus=16) == 9
    assert auto_num_proc(10**10, cpus=16) == 16 and auto_num_proc(10**10, cpus=1) == 1
    assert usable_cpus() >= 1
    import datasets
    docs = datasets.Dataset.from_dict({"lines": [["ab", "cdé"], [], ["x"]]})
    assert text_chars(docs) == 6  # characters, not bytes


def test_pipeline_rejects_zero_workers(tmp_path):
    _write_tagged_corpus(tmp_path / "train.txt", 4, 0)
    with pytest.raises(ValueError, match="num_proc=0"):
        build_pretraining_data([str(tmp_path / "train.txt")], TagTokenizer(), seq_len=48, seed=0,
                               cache_dir=str(tmp_path / "c"), num_proc=0, log=Log())


def test_pipeline_with_valid_files(tmp_path):
    _write_tagged_corpus(tmp_path / "train.txt", 8, 0)
    _write_tagged_corpus(tmp_path / "valid.txt.gz", 3, 100)
    raw = (tmp_path / "valid.txt.gz").read_bytes()
    (tmp_path / "valid.txt.gz").write_bytes(gzip.compress(raw))
    data = build_pretraining_data([str(tmp_path / "train.txt")], TagTokenizer(), seq_len=32,
                                  seed=0, cache_dir=str(tmp_path / "cache"),
                                  valid=[str(tmp_path / "valid.txt.gz")], log=Log())
    assert _documents_of(data.train_ids) == set(range(8))
    assert _documents_of(data.valid_ids) == {100, 101, 102}
    assert data.stats["valid_documents"] == 3


def test_pipeline_reports_corpus_errors(tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no text found in .*blank.txt"):
        build_pretraining_data([str(tmp_path / "blank.txt")], TagTokenizer(), seq_len=32, seed=0,
                               cache_dir=str(tmp_path / "cache"), log=Log())
    (tmp_path / "bad.txt").write_bytes(b"W0x0 W0x1.\n\xfe\n")
    with pytest.raises(ValueError, match=r"bad\.txt line 2: not valid UTF-8"):
        build_pretraining_data([str(tmp_path / "bad.txt")], TagTokenizer(), seq_len=32, seed=0,
                               cache_dir=str(tmp_path / "cache"), log=Log())
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # work files removed


def test_pipeline_needs_two_documents_to_hold_one_out(tmp_path):
    _write_tagged_corpus(tmp_path / "one.txt", 1)
    with pytest.raises(ValueError, match="hold out"):
        build_pretraining_data([str(tmp_path / "one.txt")], TagTokenizer(), seq_len=32, seed=0,
                               cache_dir=str(tmp_path / "cache"), log=Log())


# ----------------------------------------------------------------------------- batching


def _toy_examples(n: int = 23, seq_len: int = 6) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((n, seq_len), dtype=np.int32)
    ids[:, 0] = CLS_ID
    ids[:, 1] = np.arange(n) + 10
    ids[:, 2] = SEP_ID
    return ids, np.zeros_like(ids, dtype=np.int8)


def test_batches_cover_each_epoch_once_and_drop_the_remainder():
    ids, types = _toy_examples()
    stream = batches(ids, types, batch_size=5, seed=3)
    assert full_batches_per_epoch(len(ids), 5) == 4
    seen = {0: [], 1: []}
    positions = []
    for _ in range(8):
        position, batch = next(stream)
        positions.append(position)
        epoch = len(positions[:-1]) // 4
        assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (5, 6)
        assert batch["token_type_ids"].dtype == torch.long
        assert torch.equal(batch["attention_mask"], (batch["input_ids"] != PAD_ID).long())
        seen[epoch] += batch["input_ids"][:, 1].tolist()
    assert positions == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0)]
    for epoch in (0, 1):
        assert len(set(seen[epoch])) == 20  # no repeats, 3 dropped
    assert seen[0] != seen[1]  # a fresh permutation per epoch


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 7), st.integers(0, 25), st.integers(0, 1000))
def test_batches_resume_exactly(batch_size, stop_after, seed):
    ids, types = _toy_examples()
    reference = batches(ids, types, batch_size, seed)
    expected = [next(reference) for _ in range(stop_after + 5)]
    position = expected[stop_after - 1][0] if stop_after else (0, 0)
    resumed = batches(ids, types, batch_size, seed, start=position)
    for want in expected[stop_after:]:
        got = next(resumed)
        assert got[0] == want[0]
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert torch.equal(got[1][key], want[1][key])


def test_batches_need_one_full_batch():
    ids, types = _toy_examples(n=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(batches(ids, types, batch_size=4, seed=0))


def test_data_pipeline_benchmark_runs_and_checks(tmp_path, capsys):
    """benchmarks/data_pipeline.py on the fixture corpus: one row per worker count, identical
    data checked, JSON written; a zero count is refused."""
    import importlib.util

    import orjson

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "data_pipeline.py"
    spec = importlib.util.spec_from_file_location("electra_data_pipeline_benchmark", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    corpus = str(Path(__file__).resolve().parent / "fixtures" / "corpus")
    out = tmp_path / "r.json"
    args = ["--corpus", corpus, "--vocab-size", "300", "--seq-len", "32",
            "--cache-dir", str(tmp_path / "cache"), "--num-proc", "1,2", "--json", str(out)]
    assert bench.main(args) == 0
    report = orjson.loads(out.read_bytes())
    assert [r["num_proc"] for r in report["rows"]] == [1, 2]
    assert all(r["wall_s"] > 0 and r["tokens_per_s"] > 0 for r in report["rows"])
    assert report["meta"]["stats"]["train_examples"] > 0
    assert "2 worker(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        bench.main(args[:-4] + ["--num-proc", "1,0"])
    assert e.value.code == 2


_SLOW_BUILD = """
import os, sys, time
from electra_fn.data.pretrain_data import build_pretraining_data

class SlowTokenizer:
    vocab_size, pad_id, unk_id, cls_id, sep_id, mask_id = 100, 0, 1, 2, 3, 4
    fingerprint = "slow-tokenizer"

    def encode_batch(self, texts):
        open(os.path.join(sys.argv[2], f"worker-{os.getpid()}"), "w").close()
        time.sleep(600)  # a long tokenization, for the parent to be killed meanwhile
        return [[5] for _ in texts]

build_pretraining_data([sys.argv[1]], SlowTokenizer(), seq_len=32, seed=0,
                       cache_dir=sys.argv[3], num_proc=2, log=lambda m: None)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # dead, not yet reaped
    except (FileNotFoundError, ProcessLookupError):
        return True


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc (Linux)")
def test_worker_processes_die_with_a_killed_parent(tmp_path):
    """Two worker processes are tokenizing (slowly) when the process that started them is
    SIGKILLed: they, and every other process it forked (``datasets``' manager), die with it
    instead of working on for minutes or idling on."""
    import signal
    import subprocess
    import sys
    import time

    _write_tagged_corpus(tmp_path / "corpus.txt", 40, 0)
    markers = tmp_path / "markers"
    markers.mkdir()
    repo = Path(__file__).resolve().parents[1]
    with open(tmp_path / "stderr", "wb") as err:
        parent = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD,
                                   str(tmp_path / "corpus.txt"), str(markers),
                                   str(tmp_path / "cache")], cwd=repo,
                                  env=dict(os.environ, PYTHONPATH=str(repo)),
                                  stdout=subprocess.DEVNULL, stderr=err)
    children: list[int] = []
    try:
        deadline = time.time() + 120
        while len(list(markers.iterdir())) < 2:
            assert parent.poll() is None, (tmp_path / "stderr").read_text()[-2000:]
            assert time.time() < deadline, "no two workers tokenizing within 120 s"
            time.sleep(0.2)
        workers = [int(p.name.split("-")[1]) for p in markers.iterdir()]
        children = _children(parent.pid)
        assert set(workers) < set(children)  # and the manager process
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.time() + 10
        while not all(_gone(pid) for pid in children) and time.time() < deadline:
            time.sleep(0.1)
        assert all(_gone(pid) for pid in children), f"{children} outlived their parent"
    finally:
        for pid in children:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
