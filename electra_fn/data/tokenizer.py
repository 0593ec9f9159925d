"""Tokenizers: our sentencepiece vocabularies (trained and cached here) and BERT WordPiece.

Our sentencepiece models put the specials at fixed ids 0..4 ([PAD] [UNK] [CLS] [SEP] [MASK],
see ``electra_fn.config``). A trained tokenizer's ``vocab_size`` may be smaller than the size
asked for (small corpora cannot fill a large unigram vocabulary): the model config must use
``tokenizer.vocab_size``, not the requested number.

A sentencepiece tokenizer directory holds ``tokenizer.model`` and ``electra_fn_tokenizer.json``
(our settings; directories written before it was renamed hold it as ``tokenizer.json``, which
still loads). ``transformers_files()`` gives the files with which ``transformers.AutoTokenizer``
reproduces our ids (``hf.save_hf`` writes them next to the weights).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import orjson
import sentencepiece as spm

from electra_fn.config import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID
from electra_fn.data.corpus import (expand_corpus_paths, file_sha256, read_documents,
                                    split_sentences)
from electra_fn.rundir import remove_stale_temp_dirs, temp_dir, write_atomic

# Bump when training settings change in a way the cache key does not capture.
TOKENIZER_TRAIN_VERSION = 1
SP_MODEL_FILE, SP_CONFIG_FILE = "tokenizer.model", "electra_fn_tokenizer.json"
# Our settings' former name, which transformers reads as a fast-tokenizer file: still read when
# its content is ours, never written.
LEGACY_SP_CONFIG_FILE = "tokenizer.json"
_VOCAB_TOO_HIGH = re.compile(
    r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
# transformers' names for the files of a fast tokenizer
HF_TOKENIZER_FILE, HF_TOKENIZER_CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"
HF_SPECIAL_TOKENS_FILE = "special_tokens_map.json"
_HF_SPECIAL_NAMES = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")


def is_own_config(data: bytes) -> bool:
    """Whether ``data`` is our sentencepiece settings file (not a transformers tokenizer.json)."""
    try:
        config = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return (isinstance(config, dict) and config.get("kind") == SentencePieceTokenizer.kind
            and "model" not in config and "added_tokens" not in config)


def sp_config_path(directory: str | os.PathLike) -> Path | None:
    """Our settings file in ``directory``: ``electra_fn_tokenizer.json``, else a legacy
    ``tokenizer.json`` whose content is ours; None when there is neither."""
    path = Path(directory, SP_CONFIG_FILE)
    if path.is_file():
        return path
    legacy = Path(directory, LEGACY_SP_CONFIG_FILE)
    if legacy.is_file() and is_own_config(legacy.read_bytes()):
        return legacy
    return None


def _json_bytes(obj) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2)


# -- the sentencepiece model proto, read without protobuf ----------------------------------
# Field numbers of sentencepiece_model.proto (ModelProto, TrainerSpec, NormalizerSpec).
_PIECES, _TRAINER_SPEC, _NORMALIZER_SPEC = 1, 2, 3
_PIECE_TYPE = 3
_MODEL_TYPE, _TREAT_WS_AS_SUFFIX, _BYTE_FALLBACK = 3, 24, 35
_CHARSMAP, _ADD_DUMMY_PREFIX, _REMOVE_EXTRA_WS, _ESCAPE_WS = 2, 3, 4, 5
_SP_UNIGRAM, _SP_BPE = 1, 2
_SP_NORMAL, _SP_UNKNOWN, _SP_CONTROL = 1, 2, 3


def _proto_fields(buf: bytes):
    """(field number, value) of each field of a serialized protobuf message: ints for varints,
    bytes for length-delimited and fixed-width fields."""
    def varint(i: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result, i

    i = 0
    while i < len(buf):
        key, i = varint(i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(i)
        elif wire == 2:
            size, i = varint(i)
            value, i = bytes(buf[i:i + size]), i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = bytes(buf[i:i + size]), i + size
        else:
            raise ValueError(f"sentencepiece model: unsupported protobuf wire type {wire}")
        yield number, value


def _sentencepiece_spec(proto: bytes) -> dict:
    """The settings of a sentencepiece model that decide how it encodes text."""
    spec = {"piece_types": [], "model_type": _SP_UNIGRAM, "treat_whitespace_as_suffix": 0,
            "byte_fallback": 0, "charsmap": b"", "add_dummy_prefix": 1,
            "remove_extra_whitespaces": 1, "escape_whitespaces": 1}
    for number, value in _proto_fields(proto):
        if number == _PIECES:
            spec["piece_types"].append(
                dict(_proto_fields(value)).get(_PIECE_TYPE, _SP_NORMAL))
        elif number == _TRAINER_SPEC:
            fields = dict(_proto_fields(value))
            for key, field in (("model_type", _MODEL_TYPE), ("byte_fallback", _BYTE_FALLBACK),
                               ("treat_whitespace_as_suffix", _TREAT_WS_AS_SUFFIX)):
                spec[key] = fields.get(field, spec[key])
        elif number == _NORMALIZER_SPEC:
            fields = dict(_proto_fields(value))
            for key, field in (("charsmap", _CHARSMAP), ("add_dummy_prefix", _ADD_DUMMY_PREFIX),
                               ("remove_extra_whitespaces", _REMOVE_EXTRA_WS),
                               ("escape_whitespaces", _ESCAPE_WS)):
                spec[key] = fields.get(field, spec[key])
    return spec


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError("writing a tokenizer that transformers loads needs the optional "
                          "'tokenizers' package: pip install 'electra-fn[wordpiece]'") from e
    return tokenizers


def _hf_pipeline_parts(tk, cls_id: int, sep_id: int):
    """BERT's post-processor: [CLS] A [SEP] (B [SEP]), token types 0 then 1."""
    return tk.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])


def _hf_tokenizer_config(ids: Sequence[int], model_max_length: int | None, **fields) -> dict:
    config = {**fields, **dict(zip(_HF_SPECIAL_NAMES, SPECIAL_TOKENS)),
              "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
              "padding_side": "right", "clean_up_tokenization_spaces": False,
              "added_tokens_decoder": {
                  str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": True}
                  for i, t in sorted(zip(ids, SPECIAL_TOKENS))}}
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    return config


def _with_specials(tk, tokenizer, cls_id: int, sep_id: int):
    """``tokenizer`` with BERT's post-processor and our five specials as added tokens."""
    tokenizer.post_processor = _hf_pipeline_parts(tk, cls_id, sep_id)
    tokenizer.add_special_tokens([tk.AddedToken(t, special=True, normalized=False)
                                  for t in SPECIAL_TOKENS])
    return tokenizer


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline and the models need from a tokenizer."""

    kind: str
    vocab_size: int
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    fingerprint: str  # changes whenever encode() could change (cache keys use it)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids; [PAD] dropped, other special tokens written out."""
        ...

    def save(self, directory: str) -> None:
        """Write the files that ``load_tokenizer(directory)`` reads back."""
        ...


class SentencePieceTokenizer:
    """A sentencepiece model with [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0..4."""

    kind = "sentencepiece"
    pad_id, unk_id, cls_id, sep_id, mask_id = PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID

    def __init__(self, model_proto: bytes, *, lowercase: bool = True, info: dict | None = None):
        self._proto = bytes(model_proto)
        self.lowercase = lowercase
        self.info = dict(info or {})
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.vocab_size = self._sp.get_piece_size()
        pieces = tuple(self._sp.id_to_piece(i) for i in range(min(5, self.vocab_size)))
        if pieces != SPECIAL_TOKENS:
            raise ValueError(
                f"sentencepiece model has specials {pieces}, expected {SPECIAL_TOKENS}")
        self.fingerprint = hashlib.sha256(
            self._proto + orjson.dumps({"lowercase": lowercase})).hexdigest()

    def __getstate__(self) -> dict:  # picklable for multi-process datasets.map
        return {"model_proto": self._proto, "lowercase": self.lowercase, "info": self.info}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_proto"], lowercase=state["lowercase"], info=state["info"])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.lowercase:
            texts = [t.lower() for t in texts]
        return self._sp.encode(list(texts), out_type=int)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids: Sequence[int]) -> str:
        # sentencepiece writes control symbols as "", so decode the runs between specials
        parts, run = [], []
        for i in (int(i) for i in ids):
            if i == PAD_ID:
                continue
            if i in (CLS_ID, SEP_ID, MASK_ID):
                parts += [self._sp.decode(run), SPECIAL_TOKENS[i]]
                run = []
            else:
                run.append(i)
        parts.append(self._sp.decode(run))
        return " ".join(p for p in parts if p)

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def save(self, directory: str) -> None:
        """Write ``tokenizer.model`` and ``electra_fn_tokenizer.json`` (each atomically); a
        legacy ``tokenizer.json`` of ours there is removed, as this supersedes it."""
        os.makedirs(directory, exist_ok=True)
        write_atomic(Path(directory, SP_MODEL_FILE), self._proto)
        config = {"kind": self.kind, "lowercase": self.lowercase, "vocab_size": self.vocab_size,
                  "special_tokens": list(SPECIAL_TOKENS), **self.info}
        write_atomic(Path(directory, SP_CONFIG_FILE), _json_bytes(config))
        legacy = Path(directory, LEGACY_SP_CONFIG_FILE)
        if legacy.is_file() and is_own_config(legacy.read_bytes()):
            legacy.unlink()

    def transformers_files(self, model_max_length: int | None = None) -> dict[str, bytes]:
        """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` with
        which ``transformers.AutoTokenizer`` gives ``encode``'s ids, as ``[CLS] A [SEP]`` or
        ``[CLS] A [SEP] B [SEP]`` with token types 0 / 1 (as our data pipelines build them).

        Needs the optional ``tokenizers`` package (ImportError without it). Two known
        differences: text that spells a special token ("[MASK]") becomes that token there (as
        fill-mask needs), where ``encode`` reads its characters; and ``tokenizers``' copy of
        sentencepiece's normaliser can compose a character carrying several combining marks
        differently (NFKC first makes ordinary NFC/NFD text agree).
        """
        tk = _import_tokenizers()
        spec = _sentencepiece_spec(self._proto)
        unsupported = [name for name, bad in (
            ("treat_whitespace_as_suffix", spec["treat_whitespace_as_suffix"]),
            ("byte_fallback", spec["byte_fallback"]),
            ("escape_whitespaces=false", not spec["escape_whitespaces"]),
            ("add_dummy_prefix but remove_extra_whitespaces=false",  # "▁▁a" for " a"
             spec["add_dummy_prefix"] and not spec["remove_extra_whitespaces"]),
            ("a model type other than unigram or bpe",
             spec["model_type"] not in (_SP_UNIGRAM, _SP_BPE)),
            ("user-defined, byte or unused pieces", any(
                t not in (_SP_NORMAL, _SP_UNKNOWN, _SP_CONTROL) for t in spec["piece_types"])),
        ) if bad]
        if unsupported:
            raise ValueError(f"sentencepiece model with {', '.join(unsupported)}: no "
                             "tokenizer.json equivalent is written for it")
        pieces = [self._sp.id_to_piece(i) for i in range(self.vocab_size)]
        normal = [i for i, t in enumerate(spec["piece_types"]) if t == _SP_NORMAL]
        if spec["model_type"] == _SP_UNIGRAM:
            model = tk.models.Unigram([(p, self._sp.get_score(i)) for i, p in enumerate(pieces)],
                                      unk_id=self.unk_id, byte_fallback=False)
        else:
            # sentencepiece BPE merges the adjacent pair whose union has the highest score
            # (leftmost first): every split of every normal piece is a merge, ranked so.
            vocab = {p: i for i, p in enumerate(pieces)}
            ranked = sorted((-self._sp.get_score(i), i, k, pieces[i][:k], pieces[i][k:])
                            for i in normal for k in range(1, len(pieces[i]))
                            if pieces[i][:k] in vocab and pieces[i][k:] in vocab)
            model = tk.models.BPE(vocab, [(a, b) for *_, a, b in ranked],
                                  unk_token=SPECIAL_TOKENS[self.unk_id], fuse_unk=True,
                                  byte_fallback=False)
        tokenizer = tk.Tokenizer(model)
        norms = [tk.normalizers.Lowercase()] if self.lowercase else []  # as encode_batch
        norms.append(tk.normalizers.NFKC())  # see the docstring
        if spec["charsmap"]:
            norms.append(tk.normalizers.Precompiled(spec["charsmap"]))
        if spec["remove_extra_whitespaces"]:
            norms += [tk.normalizers.Replace(tk.Regex(" {2,}"), " "),
                      tk.normalizers.Replace(tk.Regex("^ | $"), "")]
        tokenizer.normalizer = tk.normalizers.Sequence(norms)
        # Splitting at spaces changes nothing unless a piece has a space inside.
        split = not any("\u2581" in pieces[i][1:] for i in normal)
        scheme = "always" if spec["add_dummy_prefix"] else "never"
        tokenizer.pre_tokenizer = tk.pre_tokenizers.Metaspace(prepend_scheme=scheme,
                                                              split=split)
        tokenizer.decoder = tk.decoders.Metaspace(prepend_scheme=scheme, split=split)
        _with_specials(tk, tokenizer, self.cls_id, self.sep_id)
        ids = (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)
        config = _hf_tokenizer_config(ids, model_max_length,
                                      tokenizer_class="PreTrainedTokenizerFast",
                                      do_lower_case=self.lowercase)
        return {HF_TOKENIZER_FILE: tokenizer.to_str().encode("utf-8"),
                HF_TOKENIZER_CONFIG_FILE: _json_bytes(config),
                HF_SPECIAL_TOKENS_FILE: _json_bytes(dict(zip(_HF_SPECIAL_NAMES,
                                                             SPECIAL_TOKENS)))}

    @classmethod
    def load(cls, directory: str) -> SentencePieceTokenizer:
        """Read ``tokenizer.model`` and our settings (``electra_fn_tokenizer.json``, or a legacy
        ``tokenizer.json`` of ours; without either, lowercase=False)."""
        config_path = sp_config_path(directory)
        config = orjson.loads(config_path.read_bytes()) if config_path is not None else {}
        info = {k: v for k, v in config.items()
                if k not in ("kind", "lowercase", "vocab_size", "special_tokens")}
        return cls(Path(directory, SP_MODEL_FILE).read_bytes(),
                   lowercase=bool(config.get("lowercase", False)), info=info)


class WordPieceTokenizer:
    """BERT WordPiece from a ``vocab.txt`` (as in google/electra-*); needs ``tokenizers``."""

    kind = "wordpiece"

    def __init__(self, vocab_file: str, *, lowercase: bool = True):
        try:
            from tokenizers import Tokenizer as HFTokenizer
            from tokenizers import decoders, models, normalizers, pre_tokenizers
        except ImportError as e:
            raise ImportError("WordPieceTokenizer needs the optional 'tokenizers' package: "
                              "pip install 'electra-fn[wordpiece]'") from e
        self.vocab_file = str(vocab_file)
        self.lowercase = lowercase
        vocab_bytes = Path(vocab_file).read_bytes()
        vocab = {}
        for line in vocab_bytes.decode("utf-8").splitlines():
            token = line.rstrip("\r\n")
            if token and token not in vocab:
                vocab[token] = len(vocab)
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_file} lacks special tokens {missing}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            vocab[t] for t in SPECIAL_TOKENS)
        self._tok = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]",
                                                 max_input_chars_per_word=100))
        self._tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
        self._tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._tok.decoder = decoders.WordPiece(prefix="##")
        self.vocab_size = self._tok.get_vocab_size()
        self.fingerprint = hashlib.sha256(
            vocab_bytes + orjson.dumps({"lowercase": lowercase})).hexdigest()

    def __getstate__(self) -> dict:
        return {"vocab_file": self.vocab_file, "lowercase": self.lowercase}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["vocab_file"], lowercase=state["lowercase"])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids if int(i) != self.pad_id],
                                skip_special_tokens=False)

    def save(self, directory: str) -> None:
        """Write ``vocab.txt`` and ``tokenizer_config.json`` (``do_lower_case``), atomically."""
        os.makedirs(directory, exist_ok=True)
        target = Path(directory, "vocab.txt")
        if not (target.exists() and os.path.samefile(target, self.vocab_file)):
            write_atomic(target, Path(self.vocab_file).read_bytes())
        write_atomic(Path(directory, HF_TOKENIZER_CONFIG_FILE),
                      _json_bytes({"do_lower_case": self.lowercase}))

    def transformers_files(self, model_max_length: int | None = None) -> dict[str, bytes]:
        """``vocab.txt``, ``tokenizer.json``, ``tokenizer_config.json`` (``ElectraTokenizer``)
        and ``special_tokens_map.json``: ``transformers.AutoTokenizer`` then gives ``encode``'s
        ids inside ``[CLS] A [SEP] (B [SEP])``; text spelling a special token ("[MASK]")
        becomes that token there, where ``encode`` reads its characters."""
        tk = _import_tokenizers()
        tokenizer = _with_specials(tk, tk.Tokenizer.from_str(self._tok.to_str()), self.cls_id,
                                   self.sep_id)
        ids = (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)
        config = _hf_tokenizer_config(ids, model_max_length, tokenizer_class="ElectraTokenizer",
                                      do_lower_case=self.lowercase, strip_accents=None,
                                      tokenize_chinese_chars=True)
        return {"vocab.txt": Path(self.vocab_file).read_bytes(),
                HF_TOKENIZER_FILE: tokenizer.to_str().encode("utf-8"),
                HF_TOKENIZER_CONFIG_FILE: _json_bytes(config),
                HF_SPECIAL_TOKENS_FILE: _json_bytes(dict(zip(_HF_SPECIAL_NAMES,
                                                             SPECIAL_TOKENS)))}

    @classmethod
    def load(cls, directory: str) -> WordPieceTokenizer:
        """Read ``vocab.txt``; ``do_lower_case`` from ``tokenizer_config.json`` (default True)."""
        config_path = Path(directory, "tokenizer_config.json")
        config = orjson.loads(config_path.read_bytes()) if config_path.is_file() else {}
        return cls(str(Path(directory, "vocab.txt")),
                   lowercase=bool(config.get("do_lower_case", True)))


def load_tokenizer(directory: str) -> SentencePieceTokenizer | WordPieceTokenizer:
    """Our sentencepiece tokenizer if ``tokenizer.model`` is there, else WordPiece ``vocab.txt``."""
    if Path(directory, SP_MODEL_FILE).is_file():
        return SentencePieceTokenizer.load(directory)
    if Path(directory, "vocab.txt").is_file():
        return WordPieceTokenizer.load(directory)
    raise FileNotFoundError(f"no tokenizer in {directory}: expected {SP_MODEL_FILE} "
                            "(sentencepiece) or vocab.txt (WordPiece)")


# ----------------------------------------------------------------------------- training


def _sample_sentences(paths: list[str], max_sentences: int, seed: int,
                      lowercase: bool) -> list[str]:
    """Up to max_sentences sentences, a uniform reservoir sample that depends only on the seed."""
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for doc in read_documents(paths):
        for line in doc:
            for sentence in split_sentences(line):
                if lowercase:
                    sentence = sentence.lower()
                if len(sample) < max_sentences:
                    sample.append(sentence)
                else:
                    j = rng.randrange(seen + 1)
                    if j < max_sentences:
                        sample[j] = sentence
                seen += 1
    return sample


def _train_sentencepiece(sentences: list[str], vocab_size: int, model_type: str, lowercase: bool,
                         num_threads: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, model_type=model_type,
        vocab_size=vocab_size,
        # unigram: a soft limit lets a small corpus end below vocab_size instead of failing
        hard_vocab_limit=model_type != "unigram",
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1,
        pad_piece=SPECIAL_TOKENS[PAD_ID], unk_piece=SPECIAL_TOKENS[UNK_ID],
        control_symbols=list(SPECIAL_TOKENS[CLS_ID:]),  # ids 2, 3, 4; never produced by encode
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
        character_coverage=0.9995, input_sentence_size=0, num_threads=num_threads,
        minloglevel=2)
    return model.getvalue()


def train_tokenizer(corpus_paths: str | Sequence[str], vocab_size: int, cache_dir: str, *,
                    model_type: str = "unigram", lowercase: bool = True,
                    max_sentences: int = 1_000_000, seed: int = 0,
                    log: Callable[[str], None] = print) -> SentencePieceTokenizer:
    """Train (or reuse from ``cache_dir/tokenizer-<hash>/``) a sentencepiece tokenizer.

    The cache key is the corpus content (sha256 of each file) plus every setting. When the
    corpus cannot support ``vocab_size`` the vocabulary is capped (logged); use the returned
    ``tokenizer.vocab_size`` for the model config.
    """
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type={model_type!r}: expected 'unigram' or 'bpe'")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} must exceed the {len(SPECIAL_TOKENS)} specials")
    paths = expand_corpus_paths(corpus_paths)
    settings = {"version": TOKENIZER_TRAIN_VERSION,
                "corpus_sha256": [file_sha256(p) for p in paths],
                "requested_vocab_size": vocab_size, "model_type": model_type,
                "lowercase": lowercase, "max_sentences": max_sentences, "seed": seed}
    digest = hashlib.sha256(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    final = Path(cache_dir, f"tokenizer-{digest}")
    if (final / SP_MODEL_FILE).is_file() and sp_config_path(final) is not None:
        log(f"reusing cached tokenizer {final}")
        return SentencePieceTokenizer.load(str(final))

    sentences = _sample_sentences(paths, max_sentences, seed, lowercase)
    log(f"training sentencepiece {model_type} tokenizer (vocab {vocab_size}) on "
        f"{len(sentences)} sentences from {len(paths)} file(s)")
    spm.set_random_generator_seed(seed)
    threads = min(2, os.cpu_count() or 1)
    target = vocab_size
    for _ in range(3):
        try:
            proto = _train_sentencepiece(sentences, target, model_type, lowercase, threads)
            break
        except RuntimeError as e:  # hard limit (bpe): "Vocabulary size too high (V) ... <= N."
            match = _VOCAB_TOO_HIGH.search(str(e))
            if not match:
                raise
            target = int(match.group(2))
    else:
        raise RuntimeError(f"sentencepiece kept rejecting the vocabulary size (last {target})")
    tokenizer = SentencePieceTokenizer(proto, lowercase=lowercase, info=settings)
    if tokenizer.vocab_size < vocab_size:
        log(f"requested vocab {vocab_size} but corpus supports at most {tokenizer.vocab_size}; "
            f"using {tokenizer.vocab_size}")
    for i, token in enumerate(SPECIAL_TOKENS):  # the fixed ids everything else relies on
        assert tokenizer.id_to_piece(i) == token, (i, tokenizer.id_to_piece(i))
    assert all(tokenizer._sp.is_control(i) for i in (CLS_ID, SEP_ID, MASK_ID))

    os.makedirs(cache_dir, exist_ok=True)
    for stale in remove_stale_temp_dirs(cache_dir):
        log(f"note: removed {stale}, left by an interrupted tokenizer build")
    tmp = str(temp_dir(cache_dir, final.name))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the cache is ordinary shared data
    try:
        tokenizer.save(tmp)
        os.replace(tmp, final)
    except OSError:
        if not (final / SP_MODEL_FILE).is_file():  # a concurrent trainer may have won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"tokenizer with vocab {tokenizer.vocab_size} saved to {final}")
    return tokenizer
