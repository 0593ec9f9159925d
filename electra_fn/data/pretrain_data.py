"""Pre-training examples: corpus files → documents → sentences → [CLS] A [SEP] B [SEP] rows.

Follows ELECTRA's ``build_pretraining_dataset.py`` (ExampleBuilder): sentences are packed up to the
target length without crossing document ends; 10% of examples keep a single segment; 5% get a
random target length in [5, max_len]. The corpus format is one paragraph per line and a blank
line between documents; paragraphs are split into sentences here (the original expected one
sentence per line), so packing can cut between sentences instead of truncating long paragraphs.

Arrays are cached under ``cache_dir/data-<hash>/`` keyed by corpus content, tokenizer, settings
and ``PRETRAIN_DATA_VERSION``; a second call with equal inputs loads them instead of rebuilding.
``stats.json``, written last, holds each array file's sha256, checked on every load: an entry
that is incomplete, unreadable or altered is rebuilt, with a warning saying what was wrong.
Worker processes (``num_proc`` > 1) die with the process that started them (Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import torch

from electra_fn.config import PAD_ID
from electra_fn.rundir import naming, remove_stale_temp_dirs, temp_dir, write_json
# Corpus readers live in corpus.py (shared with the tokenizer); re-exported here.
from electra_fn.data.corpus import (expand_corpus_paths, file_sha256,  # noqa: F401
                                    read_documents, read_lines, split_sentences)

if TYPE_CHECKING:
    from electra_fn.data.tokenizer import Tokenizer

# Bump when the example-building algorithm or the cached layout changes (invalidates caches).
PRETRAIN_DATA_VERSION = 1
SINGLE_SEGMENT_PROB = 0.1  # original: random() < 0.1 → first_segment_target_length = 100000
RANDOM_LENGTH_PROB = 0.05  # original: random.random() < 0.05 → target = randint(5, max_length)
MIN_RANDOM_LENGTH = 5
# Automatic worker count: one per this many characters of corpus text (~0.7M tokens), up to the
# usable cores, so a small corpus stays in this process, where worker start-up costs more than
# it saves (benchmarks/data_pipeline.py, 2 cores: the 3 MB default corpus 1.3 s with one
# worker, 1.2 s with two; three Wikipedia shards, 30M characters,
# 5.8-6.3 s vs 4.3-5.7 s).
# The data do not depend on it.
_CHARS_PER_WORKER = 4_000_000


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_num_proc(num_chars: int, cpus: int | None = None) -> int:
    """Worker processes for tokenizing and packing a corpus of ``num_chars`` characters."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, min(cpus, num_chars // _CHARS_PER_WORKER))


def text_chars(docs) -> int:
    """Characters in a documents dataset's ``lines`` (Arrow compute, no Python loop)."""
    import pyarrow.compute as pc

    column = docs.data.column("lines")
    total = pc.sum(pc.utf8_length(pc.list_flatten(column))).as_py()
    return int(total or 0)


def default_corpus_path() -> str:
    """Path of the bundled default corpus (122 English Wikipedia articles, CC BY-SA 3.0)."""
    path = Path(__file__).resolve().parent.parent / "assets" / "wiki_small.txt.xz"
    if not path.is_file():
        raise FileNotFoundError(f"bundled default corpus missing: {path}")
    return str(path)


# ----------------------------------------------------------------------------- example builder


def _next_target_length(max_len: int, rng: np.random.Generator) -> int:
    # original: small chance for a random-length instead of a max_length-length example
    if rng.random() < RANDOM_LENGTH_PROB:
        return int(rng.integers(MIN_RANDOM_LENGTH, max_len + 1))
    return max_len


def _split_segments(sentences: list[Sequence[int]], target_length: int, max_len: int,
                    rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """The original ``ExampleBuilder._create_example``: distribute sentences over A and B, trim."""
    if rng.random() < SINGLE_SEGMENT_PROB:
        first_target = 100000  # single segment, as in classification inputs
    else:
        first_target = (target_length - 3) // 2  # -3 for [CLS] and two [SEP]
    first: list[int] = []
    second: list[int] = []
    for sentence in sentences:
        # first segment if (1) it is empty, (2) the sentence fits under the target, or
        # (3) 50% of the time when it overshoots while B is still empty (evaluated lazily, as
        # in the original, so the 50% draw happens only when (1) and (2) fail)
        if (not first or len(first) + len(sentence) < first_target
                or (not second and len(first) < first_target and rng.random() < 0.5)):
            first += sentence
        else:
            second += sentence
    first = first[:max_len - 2]
    second = second[:max(0, max_len - len(first) - 3)]
    return first, second


def pack_document(sentences: Iterable[Sequence[int]], max_len: int,
                  rng: np.random.Generator) -> list[tuple[list[int], list[int]]]:
    """(segment A, segment B) pairs of one document, following the original ExampleBuilder.

    Sentences accumulate until their length reaches the target length or the document ends.
    The original carried the target length across documents; here each document draws its
    first target with the same 5% rule so a document's examples depend only on its own rng.
    """
    if max_len < MIN_RANDOM_LENGTH:
        raise ValueError(f"seq_len={max_len} must be at least {MIN_RANDOM_LENGTH}")
    pairs = []
    target_length = _next_target_length(max_len, rng)
    current: list[Sequence[int]] = []
    current_length = 0
    for sentence in sentences:
        if len(sentence) == 0:
            continue
        current.append(sentence)
        current_length += len(sentence)
        if current_length >= target_length:
            pairs.append(_split_segments(current, target_length, max_len, rng))
            current, current_length = [], 0
            target_length = _next_target_length(max_len, rng)
    if current:  # the document ends: flush, never continue into the next document
        pairs.append(_split_segments(current, target_length, max_len, rng))
    return pairs


def encode_pairs(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], max_len: int, *,
                 cls_id: int, sep_id: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] A [SEP] (B [SEP]) padded to max_len: ids int32 [N, L], token types int8 [N, L]."""
    ids_NxL = np.full((len(pairs), max_len), pad_id, dtype=np.int32)
    types_NxL = np.zeros((len(pairs), max_len), dtype=np.int8)
    for row, (first, second) in enumerate(pairs):
        tokens = [cls_id, *first, sep_id]
        n_first = len(tokens)
        if second:
            tokens += [*second, sep_id]
        if len(tokens) > max_len:
            raise ValueError(f"example of {len(tokens)} tokens exceeds seq_len={max_len}")
        ids_NxL[row, :len(tokens)] = tokens
        types_NxL[row, n_first:len(tokens)] = 1
    return ids_NxL, types_NxL


def document_rng(seed: int, stream: int, doc_index: int) -> np.random.Generator:
    """Generator of one document: a pure function of (seed, stream, document index)."""
    return np.random.default_rng([seed, stream, doc_index])


# ----------------------------------------------------------------------------- datasets pipeline

_TRAIN_STREAM, _VALID_FILES_STREAM, _HOLDOUT_STREAM = 0, 1, 2


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_TIE_FORKS_TO: list[int | None] = [None]  # the pid whose forks die with it, while building
_AT_FORK_REGISTERED = [False]


def _tie_to_parent() -> None:
    """In a child just forked inside :func:`_children_die_with_us`: the kernel kills it when
    its parent dies; if the parent is gone already, it exits now."""
    parent = _TIE_FORKS_TO[0]
    if parent is None:
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    _TIE_FORKS_TO[0] = os.getpid()  # its own forks die with it in turn


@contextlib.contextmanager
def _children_die_with_us():
    """Processes forked inside the block (``datasets``' workers and the manager process that
    feeds their progress) die with this process (Linux), so a killed or terminated run
    leaves none tokenizing on or idling; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        yield
        return
    if not _AT_FORK_REGISTERED[0]:
        os.register_at_fork(after_in_child=_tie_to_parent)
        _AT_FORK_REGISTERED[0] = True
    _TIE_FORKS_TO[0] = os.getpid()
    try:
        yield
    finally:
        _TIE_FORKS_TO[0] = None


def _documents_generator(paths: tuple[str, ...]):
    for doc_id, lines in enumerate(read_documents(paths)):
        yield {"doc_id": doc_id, "lines": lines}


def _tokenize_batch(batch: dict[str, list], tokenizer: Tokenizer) -> dict[str, list]:
    per_doc = [[s for line in lines for s in split_sentences(line)] for lines in batch["lines"]]
    flat_ids = tokenizer.encode_batch([s for doc in per_doc for s in doc])
    sentences, start = [], 0
    for doc in per_doc:
        sentences.append(flat_ids[start:start + len(doc)])
        start += len(doc)
    return {"doc_id": batch["doc_id"], "sentences": sentences}


def _examples_batch(batch: dict[str, list], *, seq_len: int, seed: int, stream: int,
                    special: dict[str, int]) -> dict[str, Any]:
    ids, types = [], []
    for doc_id, sentences in zip(batch["doc_id"], batch["sentences"]):
        pairs = pack_document(sentences, seq_len, document_rng(seed, stream, doc_id))
        doc_ids, doc_types = encode_pairs(pairs, seq_len, **special)
        ids.append(doc_ids)
        types.append(doc_types)
    if not ids:
        return {"input_ids": [], "token_type_ids": []}
    return {"input_ids": np.concatenate(ids), "token_type_ids": np.concatenate(types)}


def _column_2d(dataset, name: str, seq_len: int, dtype) -> np.ndarray:
    chunks = [c.flatten().to_numpy(zero_copy_only=False)
              for c in dataset.data.column(name).chunks if len(c)]
    flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    return flat.astype(dtype).reshape(-1, seq_len)


def _build_split(docs, tokenizer: Tokenizer, *, seq_len: int, seed: int, stream: int,
                 num_proc: int, tag: str) -> tuple[np.ndarray, np.ndarray]:
    import datasets

    int_list = datasets.List(datasets.Value("int32")) if hasattr(datasets, "List") else \
        datasets.Sequence(datasets.Value("int32"))
    token_features = datasets.Features(
        {"doc_id": datasets.Value("int64"), "sentences": datasets.Sequence(int_list)})
    tokenized = docs.map(
        _tokenize_batch, batched=True, batch_size=64, fn_kwargs={"tokenizer": tokenizer},
        remove_columns=docs.column_names, features=token_features, num_proc=num_proc,
        new_fingerprint=f"tokenize-{tag}", desc=f"tokenize {tag}")
    special = {"cls_id": tokenizer.cls_id, "sep_id": tokenizer.sep_id, "pad_id": tokenizer.pad_id}
    example_features = datasets.Features({
        "input_ids": datasets.Sequence(datasets.Value("int32"), length=seq_len),
        "token_type_ids": datasets.Sequence(datasets.Value("int8"), length=seq_len)})
    examples = tokenized.map(
        _examples_batch, batched=True, batch_size=64,
        fn_kwargs={"seq_len": seq_len, "seed": seed, "stream": stream, "special": special},
        remove_columns=tokenized.column_names, features=example_features, num_proc=num_proc,
        new_fingerprint=f"examples-{tag}", desc=f"build examples {tag}")
    return (_column_2d(examples, "input_ids", seq_len, np.int32),
            _column_2d(examples, "token_type_ids", seq_len, np.int8))


@dataclass
class PretrainData:
    """Packed pre-training examples; ids int32 [N, L], token types int8 [N, L]."""

    train_ids: np.ndarray
    train_token_types: np.ndarray
    valid_ids: np.ndarray
    valid_token_types: np.ndarray
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


_ARRAYS = ("train_ids", "train_token_types", "valid_ids", "valid_token_types")


def _split_stats(prefix: str, ids: np.ndarray, documents: int, pad_id: int) -> dict[str, Any]:
    tokens = int((ids != pad_id).sum())
    return {f"{prefix}_documents": documents, f"{prefix}_examples": int(ids.shape[0]),
            f"{prefix}_tokens": tokens,
            f"{prefix}_mean_fill": tokens / ids.size if ids.size else 0.0}


def _load_cached(path: Path, key: str) -> PretrainData:
    """The arrays cached in ``path``, each file checked against its sha256 in ``stats.json``;
    a ``ValueError`` saying what is wrong otherwise (missing, not JSON, no checksums, another
    key, a file missing or altered)."""
    try:
        stats = orjson.loads((path / "stats.json").read_bytes())
    except FileNotFoundError:
        raise ValueError("stats.json is missing") from None
    except orjson.JSONDecodeError:
        raise ValueError("stats.json is not valid JSON") from None
    sums = stats.pop("sha256", None) if isinstance(stats, dict) else None
    if not isinstance(sums, dict) or set(sums) != set(_ARRAYS):
        raise ValueError("stats.json holds no checksums of the arrays")
    if stats.get("key") != key:
        raise ValueError(f"stats.json is for data key {stats.get('key')}, not {key}")
    arrays = {}
    for name in _ARRAYS:
        file = path / f"{name}.npy"
        if not file.is_file() or file_sha256(str(file)) != sums[name]:
            raise ValueError(f"{file.name} is {'altered' if file.is_file() else 'missing'} "
                             "(checksum mismatch)")
        arrays[name] = np.load(file)
    return PretrainData(**arrays, stats=stats)


def _discard(path: Path) -> None:
    """Remove a bad cache entry: renamed out of the way first, so no reader sees it half
    deleted (gone already, e.g. removed by a concurrent run: nothing to do)."""
    aside = temp_dir(path.parent, f"{path.name}.bad")
    try:
        os.replace(path, aside / "entry")
    except FileNotFoundError:
        pass
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _save_atomic(data: PretrainData, path: Path) -> None:
    """Write the arrays, then ``stats.json`` with their checksums, to a temporary directory
    renamed to ``path``; an ``OSError`` names ``path``."""
    with naming(path):
        tmp = temp_dir(path.parent, path.name)
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the cache is ordinary shared data
            sums = {}
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(data, name))
                sums[name] = file_sha256(str(tmp / f"{name}.npy"))
            write_json(tmp / "stats.json", {**data.stats, "sha256": sums})
            try:
                os.replace(tmp, path)
            except OSError:
                if not (path / "stats.json").is_file():  # a concurrent writer won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def build_pretraining_data(corpus: str | Sequence[str], tokenizer: Tokenizer, *, seq_len: int,
                           seed: int, cache_dir: str, valid: str | Sequence[str] | None = None,
                           valid_fraction: float = 0.02, num_proc: int | None = None,
                           log: Callable[[str], None] = print) -> PretrainData:
    """Tokenize and pack a corpus into train/valid examples, cached on disk.

    Without ``valid`` files, about ``valid_fraction`` of the documents (at least one, chosen from
    ``seed``) are held out whole, so train and valid never share a document. ``num_proc``
    worker processes tokenize and pack (default :func:`auto_num_proc`); the result and its
    cache key do not depend on it.
    """
    if seed < 0:
        raise ValueError(f"seed={seed} must be non-negative")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction={valid_fraction} must be in [0, 1)")
    corpus_paths = expand_corpus_paths(corpus)
    valid_paths = expand_corpus_paths(valid) if valid is not None else None
    key = {
        "version": PRETRAIN_DATA_VERSION,
        "corpus": [file_sha256(p) for p in corpus_paths],
        "tokenizer": tokenizer.fingerprint,
        "seq_len": seq_len,
        "seed": seed,
        "valid": ({"files": [file_sha256(p) for p in valid_paths]} if valid_paths is not None
                  else {"fraction": valid_fraction}),
    }
    digest = hashlib.sha256(orjson.dumps(key, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    os.makedirs(cache_dir, exist_ok=True)
    final = Path(cache_dir) / f"data-{digest}"
    if final.exists():
        try:
            data = _load_cached(final, digest)
            log(f"reusing cached pre-training data {final}")
            return data
        except (OSError, ValueError) as e:
            log(f"warning: cached pre-training data {final}: {e}; rebuilding it")
            _discard(final)

    import datasets

    for stale in remove_stale_temp_dirs(cache_dir):
        log(f"note: removed {stale}, left by an interrupted cache build")
    work_dir = str(temp_dir(cache_dir, "datasets-work"))
    bars_were_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        features = datasets.Features({"doc_id": datasets.Value("int64"),
                                      "lines": datasets.Sequence(datasets.Value("string"))})

        def load(paths: list[str], name: str):
            # a tuple: datasets would shard a list across generator calls (restarting doc ids)
            try:
                return datasets.Dataset.from_generator(
                    _documents_generator, features=features, gen_kwargs={"paths": tuple(paths)},
                    cache_dir=os.path.join(work_dir, name))
            except datasets.exceptions.DatasetGenerationError as e:
                if isinstance(e.__cause__, ValueError):  # our corpus errors, unwrapped
                    raise e.__cause__ from None
                raise

        docs = load(corpus_paths, "corpus")
        if valid_paths is not None:
            train_docs, valid_docs = docs, load(valid_paths, "valid")
            valid_stream = _VALID_FILES_STREAM
        else:
            n = len(docs)
            if n < 2:
                raise ValueError(f"cannot hold out a validation document: {corpus_paths} holds "
                                 f"{n} document(s); pass valid= files instead")
            n_valid = min(n - 1, max(1, round(valid_fraction * n)))
            held = np.sort(document_rng(seed, _HOLDOUT_STREAM, 0).choice(n, n_valid, replace=False))
            keep = np.setdiff1d(np.arange(n), held)
            train_docs, valid_docs = docs.select(keep), docs.select(held)
            valid_stream = _TRAIN_STREAM  # same documents' stream; indices are corpus indices
        if num_proc is None:
            num_proc = auto_num_proc(text_chars(docs))
        elif num_proc < 1:
            raise ValueError(f"num_proc={num_proc} must be >= 1")
        log(f"building pre-training data: {len(train_docs)} train / {len(valid_docs)} valid "
            f"documents, seq_len={seq_len}, num_proc={num_proc}")
        common = {"seq_len": seq_len, "seed": seed, "num_proc": num_proc}
        with _children_die_with_us():
            train = _build_split(train_docs, tokenizer, stream=_TRAIN_STREAM, tag="train",
                                 **common)
            valid_arrays = _build_split(valid_docs, tokenizer, stream=valid_stream,
                                        tag="valid", **common)
        stats = {**_split_stats("train", train[0], len(train_docs), tokenizer.pad_id),
                 **_split_stats("valid", valid_arrays[0], len(valid_docs), tokenizer.pad_id),
                 "seq_len": seq_len, "key": digest}
        data = PretrainData(train[0], train[1], valid_arrays[0], valid_arrays[1], stats)
    finally:
        if bars_were_enabled:
            datasets.enable_progress_bars()
        shutil.rmtree(work_dir, ignore_errors=True)
    where = f"cached at {final}"
    try:
        _save_atomic(data, final)
    except OSError as e:  # the data are built; only the next run's shortcut is lost
        where = f"not cached ({e}; the next run rebuilds them)"
    log(f"pre-training data: {stats['train_examples']} train / {stats['valid_examples']} valid "
        f"examples, mean fill {stats['train_mean_fill']:.3f}, {where}")
    return data


# ----------------------------------------------------------------------------- batching


def full_batches_per_epoch(num_examples: int, batch_size: int) -> int:
    """Whole batches per epoch (the remainder is dropped each epoch)."""
    return num_examples // batch_size


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batches(ids: np.ndarray, token_types: np.ndarray, batch_size: int, seed: int,
            start: tuple[int, int] = (0, 0), *, pad_id: int = PAD_ID
            ) -> Iterator[tuple[tuple[int, int], dict[str, torch.Tensor]]]:
    """Endless shuffled batches; yields (position after this batch, batch).

    Restarting with ``start=`` a yielded position continues exactly where that batch left off.
    """
    n_steps = full_batches_per_epoch(len(ids), batch_size)
    if n_steps == 0:
        raise ValueError(f"{len(ids)} examples are fewer than one batch of {batch_size}")
    epoch, index = start
    if index >= n_steps:
        epoch, index = epoch + 1, 0
    while True:
        order = epoch_order(len(ids), seed, epoch)
        for step in range(index, n_steps):
            rows = order[step * batch_size:(step + 1) * batch_size]
            input_ids_BxL = torch.from_numpy(ids[rows].astype(np.int64))
            batch = {
                "input_ids": input_ids_BxL,
                "token_type_ids": torch.from_numpy(token_types[rows].astype(np.int64)),
                "attention_mask": (input_ids_BxL != pad_id).long(),
            }
            position = (epoch, step + 1) if step + 1 < n_steps else (epoch + 1, 0)
            yield position, batch
        epoch, index = epoch + 1, 0
