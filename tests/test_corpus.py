"""Corpus files (electra_fn.data.corpus): paths, plain/gzip/xz reading, documents, strict
UTF-8 and sentence splitting."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import pytest

from electra_fn.data.corpus import expand_corpus_paths, read_documents, split_sentences

CORPUS = Path(__file__).parent / "fixtures" / "corpus"


def test_expand_files_directories_globs(tmp_path):
    lighthouse, orchard = str(CORPUS / "lighthouse.txt"), str(CORPUS / "more" / "orchard.txt")
    assert expand_corpus_paths([lighthouse]) == [lighthouse]
    assert expand_corpus_paths(str(CORPUS)) == [lighthouse, orchard]
    assert expand_corpus_paths([str(CORPUS / "**" / "*.txt")]) == [lighthouse, orchard]
    assert expand_corpus_paths([orchard, str(CORPUS)]) == [orchard, lighthouse]  # no duplicates
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        expand_corpus_paths([str(tmp_path / "missing.txt")])
    with pytest.raises(FileNotFoundError, match=r"nothing\*"):
        expand_corpus_paths([str(tmp_path / "nothing*")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        expand_corpus_paths([str(tmp_path / "empty")])


def test_read_plain_gzip_xz_give_the_same_documents(tmp_path):
    text = (CORPUS / "lighthouse.txt").read_bytes()
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(text))
    (tmp_path / "c.txt.xz").write_bytes(lzma.compress(text))
    plain = list(read_documents([str(CORPUS / "lighthouse.txt")]))
    assert len(plain) == 3 and [len(d) for d in plain] == [3, 3, 3]
    assert plain[0][0].startswith("The lighthouse on Gull Point")
    assert list(read_documents([str(tmp_path / "c.txt.gz")])) == plain
    assert list(read_documents([str(tmp_path / "c.txt.xz")])) == plain


def test_documents_split_on_blank_lines_and_file_ends(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfone\r\ntwo\n\n\n  \nthree\n")
    (tmp_path / "b.txt").write_text("four\n\nfive\nsix", encoding="utf-8")
    docs = list(read_documents(expand_corpus_paths([str(tmp_path)])))
    assert docs == [["one", "two"], ["three"], ["four"], ["five", "six"]]


def test_invalid_utf8_names_file_and_line(tmp_path):
    bad = tmp_path / "corpus.txt"
    bad.write_bytes(b"fine line\n\nanother\nab\xffcd\n")
    message = r"corpus\.txt line 4: not valid UTF-8 \(byte 0xff at column 3\)"
    with pytest.raises(ValueError, match=message):
        list(read_documents([str(bad)]))
    packed = tmp_path / "corpus.txt.xz"
    packed.write_bytes(lzma.compress(bad.read_bytes()))
    with pytest.raises(ValueError, match=r"corpus\.txt\.xz line 4"):
        list(read_documents([str(packed)]))


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no text found in .*blank.txt"):
        list(read_documents([str(tmp_path / "blank.txt")]))


def test_split_sentences():
    assert split_sentences("It rained. Then it stopped! Did it? \"Yes,\" he said.") == \
        ["It rained.", "Then it stopped!", "Did it?", "\"Yes,\" he said."]
    assert split_sentences('He said "stop." The end. In 1871 it opened. (It was new.) Fine.') == \
        ['He said "stop."', "The end.", "In 1871 it opened.", "(It was new.)", "Fine."]
    # no split before lower case, after initials or common abbreviations
    assert split_sentences("J. R. R. Tolkien met Dr. Smith, e.g. Jones. ok. fine") == \
        ["J. R. R. Tolkien met Dr. Smith, e.g. Jones. ok. fine"]
    assert split_sentences("  spaced   words  ") == ["spaced words"]
    assert split_sentences("") == []
