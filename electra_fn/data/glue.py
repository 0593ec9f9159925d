"""GLUE: task specs, TSV readers, pair encoding, cached tokenisation, bucketed batches, submissions.

Files are the layout GLUE's download script produces (``glue_dir/<Task>/{train,dev,test}.tsv``,
MNLI with ``dev_matched``/``dev_mismatched``/``test_matched``/``test_mismatched``). They are read
as UTF-8 with an optional BOM (MRPC has one), split on "\\n" and "\\t" only: no CSV quoting, since
MRPC and SST-2 hold unbalanced quotes that a CSV reader would merge across lines. Malformed rows
are never dropped silently: they are listed in ``Split.skipped`` (or raise with ``strict=True``).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import orjson
import torch

from electra_fn.config import PAD_ID

# Bump when the parsing or encoding changes: it is part of every cache key.
CODE_VERSION = "glue-v1"


# ---------------------------------------------------------------------------------------------
# Task specifications
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where the fields of one kind of file live; column indices may be negative (from the end)."""

    num_columns: tuple[int, ...]  # allowed column counts (MNLI train 12, dev 16)
    text_a: int
    text_b: int | None
    label: int | None  # None: unlabelled (test files)
    guid: int | None  # column used as example id; None: "<split>-<line number>"
    has_header: bool


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE task: file layout, label strings, and the ELECTRA fine-tuning defaults."""

    name: str
    dir_name: str
    is_regression: bool
    labels: tuple[str, ...]  # label strings as written in the files, index = class id
    labelled: Layout  # train and dev files
    test: Layout
    num_epochs: int = 3  # ELECTRA: 3, but 10 for RTE and STS-B (configure_finetuning.py)
    double_unordered: bool = False  # MRPC, STS-B: train on both sentence orders
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    # Regression trains on score / target_scale (the original's STS: (label - 0) / 5) and
    # predicts on the score's own scale.
    target_scale: float = 1.0
    # The scores a regression task allows (the original's STS asserts 0 <= score <= 5).
    score_range: tuple[float, float] | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train",) + self.dev_splits + self.test_splits

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.labelled.text_b is not None

    def layout(self, split: str) -> Layout:
        if split not in self.splits:
            raise ValueError(f"{self.name} has no split {split!r}; splits: {self.splits}")
        return self.test if split in self.test_splits else self.labelled


_BINARY = ("0", "1")
_ENTAIL = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        # CoLA train/dev: no header; source, label, original mark, sentence. test: index, sentence.
        TaskSpec("cola", "CoLA", False, _BINARY,
                 Layout((4,), 3, None, 1, None, has_header=False),
                 Layout((2,), 1, None, None, 0, has_header=True)),
        # SST-2 train/dev: sentence, label. test: index, sentence.
        TaskSpec("sst2", "SST-2", False, _BINARY,
                 Layout((2,), 0, None, 1, None, has_header=True),
                 Layout((2,), 1, None, None, 0, has_header=True)),
        # MRPC: (BOM)Quality, #1 ID, #2 ID, #1 String, #2 String. test: index instead of Quality.
        TaskSpec("mrpc", "MRPC", False, _BINARY,
                 Layout((5,), 3, 4, 0, None, has_header=True),
                 Layout((5,), 3, 4, None, 0, has_header=True),
                 double_unordered=True),
        # STS-B: index genre filename year old_index source1 source2 sentence1 sentence2 score.
        TaskSpec("stsb", "STS-B", True, (),
                 Layout((10,), 7, 8, 9, 0, has_header=True),
                 Layout((9,), 7, 8, None, 0, has_header=True),
                 num_epochs=10, double_unordered=True, target_scale=5.0,
                 score_range=(0.0, 5.0)),
        # RTE/WNLI/QNLI: index, sentence1|question, sentence2|sentence, label.
        TaskSpec("rte", "RTE", False, _ENTAIL,
                 Layout((4,), 1, 2, 3, 0, has_header=True),
                 Layout((3,), 1, 2, None, 0, has_header=True),
                 num_epochs=10),
        TaskSpec("wnli", "WNLI", False, _BINARY,
                 Layout((4,), 1, 2, 3, 0, has_header=True),
                 Layout((3,), 1, 2, None, 0, has_header=True)),
        TaskSpec("qnli", "QNLI", False, _ENTAIL,
                 Layout((4,), 1, 2, 3, 0, has_header=True),
                 Layout((3,), 1, 2, None, 0, has_header=True)),
        # MNLI: index promptID pairID genre s1_binary_parse s2_binary_parse s1_parse s2_parse
        # sentence1 sentence2 [label1 (train) | label1..label5 (dev)] gold_label; test has 10.
        TaskSpec("mnli", "MNLI", False, ("contradiction", "entailment", "neutral"),
                 Layout((12, 16), 8, 9, -1, 0, has_header=True),
                 Layout((10,), 8, 9, None, 0, has_header=True),
                 dev_splits=("dev_matched", "dev_mismatched"),
                 test_splits=("test_matched", "test_mismatched")),
        # QQP: id qid1 qid2 question1 question2 is_duplicate. test: id, question1, question2.
        TaskSpec("qqp", "QQP", False, _BINARY,
                 Layout((6,), 3, 4, 5, 0, has_header=True),
                 Layout((3,), 1, 2, None, 0, has_header=True)),
    )
}

# GLUE leaderboard submission file names.
_SUBMISSION_NAMES = {
    ("cola", "test"): "CoLA.tsv", ("sst2", "test"): "SST-2.tsv", ("mrpc", "test"): "MRPC.tsv",
    ("stsb", "test"): "STS-B.tsv", ("rte", "test"): "RTE.tsv", ("wnli", "test"): "WNLI.tsv",
    ("qnli", "test"): "QNLI.tsv", ("qqp", "test"): "QQP.tsv",
    ("mnli", "test_matched"): "MNLI-m.tsv", ("mnli", "test_mismatched"): "MNLI-mm.tsv",
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Look a task up by its short name ('rte') or its folder name ('RTE', 'STS-B')."""
    if isinstance(task, TaskSpec):
        return task
    key = task.strip().lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(TASKS)}")
    return TASKS[key]


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    guid: str
    text_a: str
    text_b: str | None
    label: int | float | None  # class index, score (regression), or None (unlabelled test)


@dataclass(frozen=True)
class Split:
    task: str
    split: str
    path: Path
    examples: list[Example]
    skipped: list[tuple[int, str]]  # (1-based line number in the file, reason)


class MissingSplitError(FileNotFoundError):
    """The task folder exists but this split's file does not (e.g. QNLI train here)."""

    def __init__(self, task: str, split: str, path: Path):
        super().__init__(f"{split} split missing for {task}: {path} not found")
        self.task, self.split, self.path = task, split, path


def task_dir(glue_dir: str | os.PathLike, task: str | TaskSpec) -> Path:
    """The task's folder; FileNotFoundError naming it when it is absent."""
    spec = get_task(task)
    folder = Path(glue_dir) / spec.dir_name
    if not folder.is_dir():
        raise FileNotFoundError(f"GLUE task folder for {spec.name} not found: {folder}")
    return folder


def split_path(glue_dir: str | os.PathLike, task: str | TaskSpec, split: str) -> Path:
    spec = get_task(task)
    spec.layout(split)
    return Path(glue_dir) / spec.dir_name / f"{split}.tsv"


def available_splits(glue_dir: str | os.PathLike, task: str | TaskSpec) -> tuple[str, ...]:
    """Splits of the task whose file exists, in the order train, dev…, test…."""
    spec = get_task(task)
    folder = task_dir(glue_dir, spec)
    return tuple(s for s in spec.splits if (folder / f"{s}.tsv").is_file())


def _parse_row(spec: TaskSpec, layout: Layout, fields: list[str]) -> tuple[str | None, object]:
    """(None, (text_a, text_b, label)) for a good row, else (reason, None)."""
    if len(fields) not in layout.num_columns:
        want = " or ".join(map(str, layout.num_columns))
        return f"expected {want} columns, found {len(fields)}", None
    text_a = fields[layout.text_a]
    text_b = None if layout.text_b is None else fields[layout.text_b]
    label: int | float | None = None
    if layout.label is not None:
        raw = fields[layout.label].strip()
        if spec.is_regression:
            try:
                label = float(raw)
            except ValueError:
                return f"unparsable score {raw!r}", None
            if not math.isfinite(label):
                return f"non-finite score {raw!r}", None
            low, high = spec.score_range or (-math.inf, math.inf)
            if not low <= label <= high:
                return f"score {raw} outside [{low:g}, {high:g}]", None
        elif raw in spec.labels:
            label = spec.labels.index(raw)
        else:
            return f"label {raw!r} not in {spec.labels}", None
    return None, (text_a, text_b, label)


def read_split(glue_dir: str | os.PathLike, task: str | TaskSpec, split: str, *,
               strict: bool = False) -> Split:
    """Parse one split file; malformed rows go to ``skipped`` (or raise ValueError if strict)."""
    spec = get_task(task)
    layout = spec.layout(split)
    path = task_dir(glue_dir, spec) / f"{split}.tsv"
    if not path.is_file():
        raise MissingSplitError(spec.name, split, path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None
    # Split on "\n" only: str.splitlines would also break at U+2028, U+0085, form feeds...
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last row (CoLA dev.tsv has none)
    examples, skipped = [], []
    for line_no, line in enumerate(lines, start=1):
        if line.endswith("\r"):
            line = line[:-1]
        fields = line.split("\t")
        reason, parsed = _parse_row(spec, layout, fields)
        if layout.has_header and line_no == 1 and _is_header(layout, fields, reason):
            continue
        if reason is not None:
            if strict:
                raise ValueError(f"{path}:{line_no}: {reason}")
            skipped.append((line_no, reason))
            continue
        text_a, text_b, label = parsed
        guid = f"{split}-{line_no}" if layout.guid is None else fields[layout.guid]
        examples.append(Example(guid, text_a, text_b, label))
    if not examples:
        first = f"; first: line {skipped[0][0]} ({skipped[0][1]})" if skipped else ""
        raise ValueError(f"{path}: no usable rows ({len(skipped)} malformed{first})")
    return Split(spec.name, split, path, examples, skipped)


def _is_header(layout: Layout, fields: list[str], reason: str | None) -> bool:
    """Whether a split's first line is its header: it does not parse as a row, or its index
    column is not a number. A file that lost its header keeps its first row."""
    if reason is not None:
        return True
    return layout.guid is not None and not fields[layout.guid].strip().isdigit()


def augment_both_orders(examples: Sequence[Example]) -> list[Example]:
    """Examples followed by copies with the two segments swapped (ELECTRA's double_unordered)."""
    swapped = []
    for ex in examples:
        if ex.text_b is None:
            raise ValueError(f"example {ex.guid} has one segment; cannot swap the order")
        swapped.append(Example(f"{ex.guid}-swapped", ex.text_b, ex.text_a, ex.label))
    return list(examples) + swapped


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------
class Tokenizer(Protocol):
    cls_id: int
    sep_id: int
    pad_id: int
    vocab_size: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...


def truncate_pair(ids_a: Sequence[int], ids_b: Sequence[int],
                  max_tokens: int) -> tuple[list[int], list[int]]:
    """Longest-first truncation: drop the last token of the longer segment (b on ties) until the
    pair fits, as BERT/ELECTRA's ``_truncate_seq_pair``."""
    a, b = list(ids_a), list(ids_b)
    excess = len(a) + len(b) - max_tokens
    while excess > 0:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
        excess -= 1
    return a, b


def encode_examples(examples: Sequence[Example], tokenizer: Tokenizer, max_len: int = 128, *,
                    is_regression: bool = False) -> dict[str, list]:
    """``[CLS] a [SEP] (b [SEP])`` ids and segment ids (0 for CLS, a, SEP; 1 for b, SEP).

    Unlabelled examples get label -1 (classification) or NaN (regression).
    """
    is_pair = any(ex.text_b is not None for ex in examples)
    if max_len < (3 if is_pair else 2):
        raise ValueError(f"max_len={max_len} leaves no room for text")
    ids_a = tokenizer.encode_batch([ex.text_a for ex in examples])
    ids_b = (tokenizer.encode_batch([ex.text_b or "" for ex in examples]) if is_pair
             else [None] * len(examples))
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    input_ids, token_type_ids, labels = [], [], []
    for ex, a, b in zip(examples, ids_a, ids_b):
        if ex.text_b is None:
            a = list(a[: max_len - 2])
            ids, types = [cls, *a, sep], [0] * (len(a) + 2)
        else:
            a, b = truncate_pair(a, b, max_len - 3)
            ids = [cls, *a, sep, *b, sep]
            types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        input_ids.append(ids)
        token_type_ids.append(types)
        if ex.label is None:
            labels.append(float("nan") if is_regression else -1)
        else:
            labels.append(float(ex.label) if is_regression else int(ex.label))
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "labels": labels,
            "guid": [ex.guid for ex in examples]}


# ---------------------------------------------------------------------------------------------
# Cached loading through `datasets`
# ---------------------------------------------------------------------------------------------
@dataclass
class EncodedSplit:
    """A tokenised split: ``columns`` holds input_ids, token_type_ids, labels, guid (lists)."""

    task: str
    split: str
    path: Path
    columns: dict[str, list]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    from_cache: bool = False
    pad_id: int = PAD_ID  # the tokenizer's, used by bucket_batches

    def __len__(self) -> int:
        return len(self.columns["input_ids"])


def _cache_key(path: Path, spec: TaskSpec, split: str, tokenizer_id: str, max_len: int,
               augment: bool) -> str:
    h = hashlib.sha256()
    meta = [CODE_VERSION, spec.name, split, tokenizer_id, max_len, augment, repr(spec)]
    h.update(orjson.dumps(meta))
    h.update(path.read_bytes())
    return h.hexdigest()[:24]


def _have_datasets() -> bool:
    import importlib.util
    return importlib.util.find_spec("datasets") is not None


def _load_cached(folder: Path) -> tuple[dict[str, list], dict] | None:
    meta_path = folder / "glue_meta.json"
    if not meta_path.is_file() or not _have_datasets():
        return None
    import datasets

    meta = orjson.loads(meta_path.read_bytes())
    ds = datasets.Dataset.load_from_disk(str(folder))
    return ds.to_dict(), meta


def _save_cached(folder: Path, columns: dict[str, list], meta: dict) -> None:
    if not _have_datasets():  # e.g. a bare GPU image: encode every time, cache nothing
        return
    import datasets

    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        datasets.Dataset.from_dict(columns).save_to_disk(str(tmp))
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    (tmp / "glue_meta.json").write_bytes(orjson.dumps(meta))  # written last: marks completeness
    try:
        os.replace(tmp, folder)
    except OSError:  # another process filled the cache first
        shutil.rmtree(tmp, ignore_errors=True)


def load_task(glue_dir: str | os.PathLike, task: str | TaskSpec, tokenizer: Tokenizer, *,
              max_len: int, cache_dir: str | os.PathLike, tokenizer_id: str,
              augment_train: bool = True, strict: bool = False) -> dict[str, EncodedSplit]:
    """Every available split of a task, tokenised; reuses ``cache_dir`` when file content,
    tokenizer_id, max_len and code version match (without ``datasets`` installed nothing is
    cached). Train gets both orders for MRPC/STS-B."""
    spec = get_task(task)
    out = {}
    for split in available_splits(glue_dir, spec):
        path = split_path(glue_dir, spec, split)
        augment = augment_train and spec.double_unordered and split == "train"
        key = _cache_key(path, spec, split, tokenizer_id, max_len, augment)
        folder = Path(cache_dir) / "glue" / spec.name / f"{split}-{key}"
        cached = _load_cached(folder)
        if cached is not None:
            columns, meta = cached
            skipped = [tuple(s) for s in meta["skipped"]]
            if strict and skipped:
                line_no, reason = skipped[0]
                raise ValueError(f"{path}:{line_no}: {reason}")
            out[split] = EncodedSplit(spec.name, split, path, columns, skipped, from_cache=True,
                                      pad_id=tokenizer.pad_id)
            continue
        parsed = read_split(glue_dir, spec, split, strict=strict)
        examples = augment_both_orders(parsed.examples) if augment else parsed.examples
        columns = encode_examples(examples, tokenizer, max_len, is_regression=spec.is_regression)
        _save_cached(folder, columns, {"skipped": parsed.skipped, "path": str(path)})
        out[split] = EncodedSplit(spec.name, split, path, columns, parsed.skipped,
                                  pad_id=tokenizer.pad_id)
    return out


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------
def _collate(columns: Mapping[str, Sequence], rows: np.ndarray, pad_id: int,
             pad_to_multiple_of: int, label_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    ids = [columns["input_ids"][i] for i in rows]
    width = max(len(r) for r in ids)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, i in enumerate(rows):
        n = len(ids[r])
        input_ids[r, :n] = ids[r]
        token_type_ids[r, :n] = columns["token_type_ids"][i]
        attention_mask[r, :n] = 1
    labels = [columns["labels"][i] for i in rows]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(token_type_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "labels": torch.tensor(labels, dtype=label_dtype),
        "index": torch.from_numpy(np.asarray(rows, dtype=np.int64)),
    }


def bucket_batches(encoded: EncodedSplit | Mapping[str, Sequence], batch_size: int, *,
                   shuffle: bool, seed: int = 0, epoch: int = 0, pad_id: int | None = None,
                   pad_to_multiple_of: int = 1, chunk_batches: int = 100,
                   sort_by_length: bool = True) -> list[dict[str, torch.Tensor]]:
    """Dynamically padded batches covering every example exactly once.

    shuffle=True: a permutation drawn from (seed, epoch), cut into batches in that order (the
    original's random batches) or, with ``sort_by_length``, sorted by length within chunks of
    ``chunk_batches * batch_size`` examples first and the batch order shuffled (less padding;
    a training set under one chunk then gets nearly the same batches every epoch).
    shuffle=False: all examples sorted by length. ``index`` maps each row back to its example.
    Padding goes to the batch's longest row, rounded up to ``pad_to_multiple_of`` (e.g. 8 to
    bound the number of shapes torch.compile sees). ``pad_id`` defaults to the EncodedSplit's
    (its tokenizer's), else config.PAD_ID.
    """
    if batch_size < 1 or pad_to_multiple_of < 1 or chunk_batches < 1:
        raise ValueError("batch_size, pad_to_multiple_of and chunk_batches must be >= 1")
    columns = encoded.columns if isinstance(encoded, EncodedSplit) else encoded
    if pad_id is None:
        pad_id = encoded.pad_id if isinstance(encoded, EncodedSplit) else PAD_ID
    n = len(columns["input_ids"])
    lengths = np.fromiter((len(r) for r in columns["input_ids"]), dtype=np.int64, count=n)
    label_kind = np.asarray(columns["labels"]).dtype.kind
    label_dtype = torch.float32 if label_kind == "f" else torch.int64
    batches_of_rows: list[np.ndarray] = []
    if shuffle and not sort_by_length:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        batches_of_rows = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    elif shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)
        chunk = chunk_batches * batch_size
        for start in range(0, n, chunk):
            part = order[start:start + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches_of_rows += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        batches_of_rows = [batches_of_rows[i] for i in rng.permutation(len(batches_of_rows))]
    else:
        order = np.argsort(lengths, kind="stable")
        batches_of_rows = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return [_collate(columns, rows, pad_id, pad_to_multiple_of, label_dtype)
            for rows in batches_of_rows]


# ---------------------------------------------------------------------------------------------
# Submissions
# ---------------------------------------------------------------------------------------------
def submission_filename(task: str | TaskSpec, split: str = "test") -> str:
    """GLUE leaderboard file name: CoLA.tsv, SST-2.tsv, ..., MNLI-m.tsv, MNLI-mm.tsv, QQP.tsv."""
    spec = get_task(task)
    try:
        return _SUBMISSION_NAMES[(spec.name, split)]
    except KeyError:
        raise ValueError(f"no GLUE submission file for {spec.name} split {split!r}; "
                         f"test splits: {spec.test_splits}") from None


def write_predictions(path: str | os.PathLike, task: str | TaskSpec, predictions: Sequence,
                      indices: Sequence | None = None) -> Path:
    """Write ``index\\tprediction`` rows: label strings for classification, scores clipped to
    [0, 5] with 3 decimals for STS-B. ``indices`` default to 0..n-1 (the test files' order)."""
    spec = get_task(task)
    preds = np.asarray(predictions).reshape(-1)
    indices = range(len(preds)) if indices is None else list(indices)
    if len(indices) != len(preds):
        raise ValueError(f"{len(preds)} predictions but {len(indices)} indices")
    rows = ["index\tprediction"]
    if spec.is_regression:
        scores = np.clip(preds.astype(np.float64), 0.0, 5.0)
        if not np.isfinite(scores).all():
            raise ValueError("STS-B predictions contain NaN")
        rows += [f"{i}\t{s:.3f}" for i, s in zip(indices, scores)]
    else:
        if preds.size and (preds.dtype.kind not in "iu" or preds.min() < 0
                           or preds.max() >= len(spec.labels)):
            raise ValueError(f"{spec.name} predictions must be class ids in "
                             f"[0, {len(spec.labels)}), got {preds[:5]}")
        rows += [f"{i}\t{spec.labels[int(p)]}" for i, p in zip(indices, preds)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path
