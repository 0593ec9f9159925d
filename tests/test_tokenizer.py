"""Tokenizers: fixed special ids, lower-casing, content-keyed caching, vocab capping, WordPiece."""

from __future__ import annotations

import ast
import os
import pickle
import shutil
from pathlib import Path

import pytest

from electra_fn.config import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID
from electra_fn.data.tokenizer import (SentencePieceTokenizer, Tokenizer, WordPieceTokenizer,
                                       is_own_config, load_tokenizer, train_tokenizer)

CORPUS = Path(__file__).parent / "fixtures" / "corpus"


class Log(list):
    def __call__(self, message: str) -> None:
        self.append(message)

    def has(self, fragment: str) -> bool:
        return any(fragment in m for m in self)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[SentencePieceTokenizer, Path]:
    cache = tmp_path_factory.mktemp("tok-cache")
    return train_tokenizer([str(CORPUS)], 150, str(cache), log=Log()), cache


def test_special_ids_are_fixed(trained):
    tok, _ = trained
    assert isinstance(tok, Tokenizer)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert [tok.id_to_piece(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert tok.vocab_size == 150
    ids = [i for row in tok.encode_batch(["The keeper rowed [MASK] to the village. [SEP]"])
           for i in row]
    assert not {PAD_ID, CLS_ID, SEP_ID, MASK_ID} & set(ids)  # specials only come from ids


def test_lowercase_and_roundtrip(trained):
    tok, _ = trained
    upper, lower = tok.encode_batch(["The OLD Orchard has Apple trees.",
                                     "the old orchard has apple trees."])
    assert upper == lower
    assert tok.decode(upper) == "the old orchard has apple trees."
    assert tok.encode_batch([]) == []


def test_decode_writes_specials_and_drops_padding(trained):
    tok, _ = trained
    a, b = tok.encode_batch(["the ferry ran", "bees were kept"])
    text = tok.decode([CLS_ID, *a, MASK_ID, SEP_ID, *b, SEP_ID, PAD_ID, PAD_ID])
    assert text == "[CLS] the ferry ran [MASK] [SEP] bees were kept [SEP]"


def test_cache_reuses_without_retraining(trained, tmp_path):
    tok, cache = trained
    (model_dir,) = cache.glob("tokenizer-*")
    mtime = (model_dir / "tokenizer.model").stat().st_mtime_ns
    # same content under another path name: the key is the content, not the path
    copy = tmp_path / "copy"
    shutil.copytree(CORPUS, copy)
    log = Log()
    again = train_tokenizer([str(copy)], 150, str(cache), log=log)
    assert log.has("reusing cached tokenizer") and not log.has("training")
    assert (model_dir / "tokenizer.model").stat().st_mtime_ns == mtime
    assert again.fingerprint == tok.fingerprint
    assert sorted(p.name for p in cache.iterdir()) == [model_dir.name]  # no temp dirs left

    # changed content → a new tokenizer
    with open(copy / "lighthouse.txt", "a", encoding="utf-8") as f:
        f.write("\nA new paragraph about the harbour wall and the fishing boats.\n")
    log = Log()
    train_tokenizer([str(copy)], 150, str(cache), log=log)
    assert log.has("training") and len(list(cache.glob("tokenizer-*"))) == 2


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_vocab_is_capped_to_what_the_corpus_supports(tmp_path, model_type):
    log = Log()
    tok = train_tokenizer([str(CORPUS)], 30522, str(tmp_path), model_type=model_type, log=log)
    assert 5 < tok.vocab_size < 30522
    assert log.has(f"requested vocab 30522 but corpus supports at most {tok.vocab_size}; "
                   f"using {tok.vocab_size}")
    assert [tok.id_to_piece(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert max(max(r) for r in tok.encode_batch(["the clockmaker sold an alarm clock"])) \
        < tok.vocab_size
    reloaded = load_tokenizer(str(next(tmp_path.glob("tokenizer-*"))))
    assert reloaded.vocab_size == tok.vocab_size


def test_save_load_and_pickle(trained, tmp_path):
    tok, _ = trained
    tok.save(str(tmp_path / "tok"))
    # not tokenizer.json: transformers reads that name as its own fast-tokenizer file
    assert sorted(os.listdir(tmp_path / "tok")) == ["electra_fn_tokenizer.json",
                                                     "tokenizer.model"]
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert isinstance(loaded, SentencePieceTokenizer) and loaded.lowercase
    assert loaded.fingerprint == tok.fingerprint
    texts = ["Wren lived ALONE for most of his life.", "Pruning is done in late winter!"]
    assert loaded.encode_batch(texts) == tok.encode_batch(texts)
    unpickled = pickle.loads(pickle.dumps(tok))
    assert unpickled.encode_batch(texts) == tok.encode_batch(texts)


def test_directories_with_the_legacy_settings_name_still_load(trained, tmp_path):
    """Run directories and caches written before the rename hold tokenizer.json (ours)."""
    tok, _ = trained
    legacy = tmp_path / "legacy"
    tok.save(str(legacy))
    os.rename(legacy / "electra_fn_tokenizer.json", legacy / "tokenizer.json")
    assert is_own_config((legacy / "tokenizer.json").read_bytes())
    loaded = load_tokenizer(str(legacy))
    assert loaded.lowercase and loaded.fingerprint == tok.fingerprint
    assert loaded.info["corpus_sha256"] == tok.info["corpus_sha256"]
    # saving again writes the new name and drops the superseded legacy file
    loaded.save(str(legacy))
    assert sorted(os.listdir(legacy)) == ["electra_fn_tokenizer.json", "tokenizer.model"]

    # a legacy cache entry is reused, not retrained
    old_cache = tmp_path / "cache"
    train_tokenizer([str(CORPUS)], 150, str(old_cache), log=Log())
    (entry,) = old_cache.glob("tokenizer-*")
    os.rename(entry / "electra_fn_tokenizer.json", entry / "tokenizer.json")
    log = Log()
    again = train_tokenizer([str(CORPUS)], 150, str(old_cache), log=log)
    assert log.has("reusing cached tokenizer") and again.fingerprint == tok.fingerprint

    # a transformers tokenizer.json beside tokenizer.model is not taken for ours
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    shutil.copy(legacy / "tokenizer.model", theirs / "tokenizer.model")
    (theirs / "tokenizer.json").write_text('{"version": "1.0", "added_tokens": [], '
                                           '"model": {"type": "Unigram"}}')
    assert not is_own_config((theirs / "tokenizer.json").read_bytes())
    assert not is_own_config(b"not json")
    assert not load_tokenizer(str(theirs)).lowercase  # no settings found: the default


def test_data_modules_import_no_cycle_and_no_private_names():
    """corpus <- tokenizer, corpus <- pretrain_data: no cycle (TYPE_CHECKING imports count)."""
    package = Path(__file__).resolve().parent.parent / "electra_fn" / "data"
    graph = {}
    for path in package.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
                module = node.module if node.level == 0 else \
                    "electra_fn.data." * (node.level == 1) + node.module
                assert not [a.name for a in node.names if a.name.startswith("_")], \
                    f"{path.name} imports private names from {module}"
                if module.startswith("electra_fn.data."):
                    deps.add(module.rsplit(".", 1)[1])
        graph[path.stem] = deps
    assert "pretrain_data" not in graph["tokenizer"] and "corpus" in graph["tokenizer"]

    def visit(node, stack):
        assert node not in stack, f"import cycle: {' -> '.join([*stack, node])}"
        for dep in graph.get(node, ()):
            visit(dep, [*stack, node])

    for module in graph:
        visit(module, [])


def _sentencepiece_with_our_specials(vocab_size: int = 200,
                                     **settings) -> SentencePieceTokenizer:
    import io

    import sentencepiece as spm

    text = " ".join(p.read_text(encoding="utf-8") for p in sorted(CORPUS.rglob("*.txt")))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.split(".")), model_writer=model, vocab_size=vocab_size,
        hard_vocab_limit=False, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece="[PAD]",
        unk_piece="[UNK]", control_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2,
        **settings)
    return SentencePieceTokenizer(model.getvalue(), lowercase=False)


@pytest.mark.parametrize("settings", [
    {"add_dummy_prefix": False}, {"add_dummy_prefix": False, "remove_extra_whitespaces": False},
    {"split_by_whitespace": False}, {"model_type": "bpe", "split_by_whitespace": False}],
    ids=["no-dummy-prefix", "no-prefix-keep-spaces", "pieces-across-spaces",
         "bpe-pieces-across-spaces"])
def test_transformers_tokenizer_json_follows_model_settings(settings):
    tokenizers = pytest.importorskip("tokenizers")
    tok = _sentencepiece_with_our_specials(**settings)
    theirs = tokenizers.Tokenizer.from_str(
        tok.transformers_files()["tokenizer.json"].decode("utf-8"))
    texts = ["the keeper rowed", "  The Keeper  rowed ", "a  b", " a", "", "orchard\tapple"]
    for text in texts:
        assert theirs.encode(text, add_special_tokens=False).ids == tok.encode(text), text
        assert theirs.encode(text).ids == [CLS_ID, *tok.encode(text), SEP_ID]


@pytest.mark.parametrize("settings, message", [
    ({"byte_fallback": True, "vocab_size": 400}, "byte_fallback"),
    ({"treat_whitespace_as_suffix": True}, "treat_whitespace_as_suffix"),
    ({"remove_extra_whitespaces": False}, "remove_extra_whitespaces"),
    ({"user_defined_symbols": ["keeper"]}, "user-defined")])
def test_transformers_files_refuse_what_tokenizer_json_cannot_express(settings, message):
    pytest.importorskip("tokenizers")
    with pytest.raises(ValueError, match=message):
        _sentencepiece_with_our_specials(**settings).transformers_files()


def test_cased_tokenizer_keeps_case(tmp_path):
    tok = train_tokenizer([str(CORPUS)], 150, str(tmp_path), lowercase=False, log=Log())
    upper, lower = tok.encode_batch(["The Orchard", "the orchard"])
    assert upper != lower
    assert not load_tokenizer(str(next(tmp_path.glob("tokenizer-*")))).lowercase


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="model_type"):
        train_tokenizer([str(CORPUS)], 150, str(tmp_path), model_type="wordpiece")
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        train_tokenizer([str(tmp_path / "nowhere.txt")], 150, str(tmp_path))


# ----------------------------------------------------------------------------- WordPiece

WORDS = ["the", "keeper", "row", "##ed", "to", "village", ".", ",", "light", "##house", "a",
         "old", "orchard", "apple", "tree", "##s", "!", "un", "##known", "'", "s"]


def _bert_style_vocab(path: Path) -> Path:
    """A BERT-layout vocab: [PAD] 0, [unused*], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103."""
    lines = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(lines + WORDS) + "\n", encoding="utf-8")
    return path


def test_wordpiece_reads_ids_from_vocab(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    del tokenizers
    tok = load_tokenizer(str(_bert_style_vocab(tmp_path / "bert")))
    assert isinstance(tok, WordPieceTokenizer) and isinstance(tok, Tokenizer)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.vocab_size == 104 + len(WORDS)

    # a vocab with other positions: nothing is hard-coded
    other = tmp_path / "other"
    other.mkdir()
    (other / "vocab.txt").write_text("\n".join(["[UNK]", "the", "[SEP]", "[PAD]", "[MASK]",
                                                "[CLS]", "keeper"]) + "\n", encoding="utf-8")
    tok2 = load_tokenizer(str(other))
    assert (tok2.pad_id, tok2.unk_id, tok2.cls_id, tok2.sep_id, tok2.mask_id) == (3, 0, 5, 2, 4)


def test_wordpiece_matches_transformers_bert_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    directory = _bert_style_vocab(tmp_path / "bert")
    ours = load_tokenizer(str(directory))
    reference = transformers.BertTokenizer(str(directory / "vocab.txt"), do_lower_case=True)
    texts = ["The Keeper rowed to the village.", "Old apple trees, the lighthouse!",
             "Unknown keeper's orchard", "zebra"]
    expected = [reference.convert_tokens_to_ids(reference.tokenize(t)) for t in texts]
    assert ours.encode_batch(texts) == expected
    ids = ours.encode_batch(["the keeper rowed"])[0]
    assert ours.decode([ours.cls_id, *ids, ours.sep_id, ours.pad_id]) == \
        "[CLS] the keeper rowed [SEP]"

    ours.save(str(tmp_path / "saved"))
    again = load_tokenizer(str(tmp_path / "saved"))
    assert again.encode_batch(texts) == expected and again.fingerprint == ours.fingerprint
    assert pickle.loads(pickle.dumps(ours)).encode_batch(texts) == expected


def test_wordpiece_missing_special_token(tmp_path):
    pytest.importorskip("tokenizers")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        load_tokenizer(str(tmp_path))


def test_unk_id_constant_matches_config():
    assert SentencePieceTokenizer.unk_id == UNK_ID
