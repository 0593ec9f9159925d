"""Corpus files: paths, lines, documents, sentences and content hashes.

The format is one paragraph per line and a blank line between documents, in plain, ``.gz`` or
``.xz`` files. Both the tokenizer trainer and the pre-training pipeline read corpora through
these functions, so they share one definition of a document and of a sentence.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import lzma
import os
from collections.abc import Iterator, Sequence


def expand_corpus_paths(specs: str | Sequence[str]) -> list[str]:
    """Files named by each spec: a file, a directory (recursive, sorted) or a glob pattern."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    specs = [os.fspath(s) for s in specs]
    paths: list[str] = []
    for spec in specs:
        if os.path.isfile(spec):
            found = [spec]
        elif os.path.isdir(spec):
            found = _files_under(spec)
        elif glob.has_magic(spec):
            found = []
            for match in sorted(glob.glob(spec, recursive=True)):
                found += [match] if os.path.isfile(match) else _files_under(match)
            if not found:
                raise FileNotFoundError(f"corpus pattern matches no file: {spec}")
        else:
            raise FileNotFoundError(f"corpus path not found: {spec}")
        paths += [p for p in found if p not in paths]
    if not paths:
        raise ValueError(f"no corpus files found in {specs}")
    return paths


def _files_under(directory: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
    return sorted(found)


def _open_binary(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def read_lines(path: str) -> Iterator[str]:
    """Lines of one .txt/.gz/.xz file, strictly UTF-8, without line ends."""
    try:
        with _open_binary(path) as f:
            for line_no, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(
                        f"{path} line {line_no}: not valid UTF-8 "
                        f"(byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
                if line_no == 1:
                    line = line.removeprefix("\ufeff")
                yield line.rstrip("\r\n")
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise ValueError(f"{path}: cannot read compressed/plain text: {e}") from e


def read_documents(paths: str | Sequence[str]) -> Iterator[list[str]]:
    """Documents (lists of non-blank, stripped lines); blank lines and file ends separate them."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    any_text = False
    for path in paths:
        doc: list[str] = []
        for line in read_lines(path):
            line = line.strip()
            if line:
                doc.append(line)
            elif doc:
                any_text = True
                yield doc
                doc = []
        if doc:
            any_text = True
            yield doc
    if not any_text:
        raise ValueError(f"no text found in {', '.join(paths)}")


_CLOSERS = "\"'”’)]»"
_OPENERS = "\"'“‘([«"
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc no nos fig figs vol vols ed eds e.g i.e cf al approx "
    "ca c gen col lt sgt capt rev gov sen rep inc ltd co corp mt ft jan feb mar apr jun jul aug "
    "sep sept oct nov dec u.s u.k".split())


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph after . ! ? (plus closing quotes) when the next word starts a sentence.

    The next word must begin (after optional opening quotes) with an upper-case letter or a
    digit; single-letter initials ("J. R. Tolkien") and common abbreviations ("Dr.", "e.g.")
    do not end a sentence. Whitespace inside the paragraph is collapsed to single spaces.
    """
    words = paragraph.split()
    sentences, start = [], 0
    for i in range(len(words) - 1):
        word = words[i].rstrip(_CLOSERS)
        if not word or word[-1] not in ".!?":
            continue
        nxt = words[i + 1].lstrip(_OPENERS)
        if not nxt or not (nxt[0].isupper() or nxt[0].isdigit()):
            continue
        stem = word[:-1].lstrip(_OPENERS)
        is_initial = len(stem) == 1 and stem.isalpha()
        if word[-1] == "." and (is_initial or stem.lower() in _ABBREVIATIONS):
            continue
        sentences.append(" ".join(words[start:i + 1]))
        start = i + 1
    if start < len(words):
        sentences.append(" ".join(words[start:]))
    return sentences


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (as stored, so a .xz file hashes its compressed bytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
