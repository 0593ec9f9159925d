"""GLUE readers (incl. the file quirks), encoding, truncation, caching, bucketing, submissions."""

import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from electra_fn.data import glue as G
from electra_fn.data.glue import Example

FIXTURES = Path(__file__).parent / "fixtures" / "glue"
REAL_GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
fast = settings(max_examples=60, deadline=None)


class FakeTokenizer:
    """Whitespace tokens hashed (crc32, stable across runs) into a 100-id vocab; 0-4 special."""

    pad_id, cls_id, sep_id, vocab_size = 0, 2, 3, 100

    def __init__(self):
        self.calls = 0

    def encode_batch(self, texts):
        self.calls += 1
        return [[5 + zlib.crc32(w.encode()) % 95 for w in t.split()] for t in texts]


def tok_ids(text):
    return FakeTokenizer().encode_batch([text])[0]


# --------------------------------------------------------------------------------- task specs
def test_task_specs():
    assert set(G.TASKS) == {"cola", "sst2", "mrpc", "stsb", "rte", "wnli", "qnli", "mnli", "qqp"}
    assert {s.dir_name for s in G.TASKS.values()} == {
        "CoLA", "SST-2", "MRPC", "STS-B", "RTE", "WNLI", "QNLI", "MNLI", "QQP"}
    assert {n for n, s in G.TASKS.items() if s.num_epochs == 10} == {"rte", "stsb"}
    assert all(s.num_epochs == 3 for n, s in G.TASKS.items() if n not in ("rte", "stsb"))
    assert {n for n, s in G.TASKS.items() if s.double_unordered} == {"mrpc", "stsb"}
    assert {n for n, s in G.TASKS.items() if s.is_regression} == {"stsb"}
    assert G.TASKS["rte"].labels == ("entailment", "not_entailment")
    assert G.TASKS["mnli"].labels == ("contradiction", "entailment", "neutral")
    assert G.TASKS["mnli"].splits == ("train", "dev_matched", "dev_mismatched",
                                      "test_matched", "test_mismatched")
    assert G.TASKS["stsb"].num_labels == 1 and G.TASKS["mnli"].num_labels == 3
    assert G.get_task("STS-B") is G.TASKS["stsb"] and G.get_task("SST-2") is G.TASKS["sst2"]
    hash(G.TASKS["mnli"])  # frozen, hashable
    with pytest.raises(ValueError, match="unknown GLUE task"):
        G.get_task("squad")
    with pytest.raises(ValueError, match="no split 'dev'"):
        G.read_split(FIXTURES, "mnli", "dev")


# ------------------------------------------------------------------------------------ readers
def read(task, split):
    s = G.read_split(FIXTURES, task, split)
    assert s.skipped == [], s.skipped
    return s.examples


def test_cola_has_no_header_and_dev_no_final_newline():
    train = read("cola", "train")
    assert len(train) == 5
    assert train[0] == Example("train-1", "Our friends won't buy this analysis, let alone the "
                               "next one we propose.", None, 1)
    assert [e.label for e in train] == [1, 1, 0, 0, 1]
    dev = read("cola", "dev")
    assert [e.guid for e in dev] == ["dev-1", "dev-2", "dev-3"]
    assert dev[-1].text_a == "John talked to Bill about himself."
    test = read("cola", "test")
    assert test[0] == Example("0", "Bill whistled past the house.", None, None)
    assert len(test) == 3


def test_sst2_keeps_trailing_space_and_unbalanced_quote():
    train = read("sst2", "train")
    assert len(train) == 5
    assert train[0] == Example("train-2", "hide new secretions from the parental units ", None, 0)
    assert train[3].text_a == 'the film \'s " hidden message is n\'t '
    assert train[4] == Example("train-6", "a patient viewer ", None, 1)
    assert [e.label for e in read("sst2", "dev")] == [1, 0, 1]
    test = read("sst2", "test")
    assert test[1].text_a == "this film 's relationship to \" actual tension is the same ."
    assert [e.guid for e in test] == ["0", "1", "2"]


def test_mrpc_bom_and_unbalanced_quotes():
    assert (FIXTURES / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbf")
    train = read("mrpc", "train")
    assert len(train) == 4
    assert [e.label for e in train] == [1, 0, 1, 0]
    assert train[2].text_b == '" The foodservice pie business does not fit our long-term ' \
                              'growth strategy .'
    assert train[1].text_a.startswith("Yucaipa owned Dominick 's")
    dev = read("mrpc", "dev")
    assert dev[0].label == 1 and dev[0].text_b.startswith("In Soviet times the Beatles ' music \"")
    test = read("mrpc", "test")
    assert [e.guid for e in test] == ["0", "1"] and all(e.label is None for e in test)
    assert test[0].text_b == "Current Chief Operating Officer Mike Butcher will report to So ."


def test_stsb_float_scores():
    train = read("stsb", "train")
    assert [e.label for e in train] == [5.0, 3.8, 0.0, 4.2]
    assert train[0] == Example("0", "A plane is taking off.", "An air plane is taking off.", 5.0)
    assert train[2].text_b == "The Latest on Severe Weather: 1 Dead in Texas After Tornado"
    assert [e.label for e in read("stsb", "dev")] == [5.0, 4.75, 0.5]
    test = read("stsb", "test")
    assert test[1] == Example("1", "A group of men play soccer on the beach.",
                              "A group of boys are playing soccer on the beach.", None)


def test_rte_wnli_qnli_pairs():
    rte = read("rte", "train")
    assert rte[0] == Example("0", "No Weapons of Mass Destruction Found in Iraq Yet.",
                             "Weapons of Mass Destruction Found in Iraq.", 1)
    assert [e.label for e in rte] == [1, 0, 0]
    assert read("rte", "test")[1].text_b == "Authorities in Brazil hold 200 people as hostage."
    assert [e.label for e in read("wnli", "train")] == [1, 1, 0]
    assert [e.label for e in read("wnli", "dev")] == [0, 1]
    qnli = read("qnli", "dev")
    assert qnli[1].label == 1 and qnli[0].text_a.startswith("What came into force")
    assert read("qnli", "test")[0].text_b == \
        'The Muslim Brotherhood took a "quiescent" stance towards Israel.'


def test_mnli_layouts():
    train = read("mnli", "train")
    assert [e.label for e in train] == [2, 1, 0]  # neutral, entailment, contradiction
    assert train[0].text_b == "Product and geography are what make cream skimming work. "
    dev = read("mnli", "dev_matched")  # 16 columns: gold label last, not label1
    assert [e.label for e in dev] == [2, 0]
    assert [e.label for e in read("mnli", "dev_mismatched")] == [0, 1]
    assert len(read("mnli", "test_matched")) == 2
    assert read("mnli", "test_mismatched")[0] == Example(
        "0", "What we are offering is a kind of friendship.", "We are offering friendship.", None)


def test_qqp_malformed_rows_are_counted_with_line_numbers():
    s = G.read_split(FIXTURES, "qqp", "train")
    assert [e.guid for e in s.examples] == ["133273", "402555", "183004"]
    assert [e.label for e in s.examples] == [0, 1, 1]
    assert s.skipped == [
        (4, "expected 6 columns, found 4"),
        (5, "label '2' not in ('0', '1')"),
        (6, "expected 6 columns, found 1"),
    ]
    assert s.path == FIXTURES / "QQP" / "train.tsv"
    assert read("qqp", "test")[1].text_b == "How much would it cost?"


def test_strict_mode_names_file_and_line():
    path = FIXTURES / "QQP" / "train.tsv"
    with pytest.raises(ValueError) as err:
        G.read_split(FIXTURES, "qqp", "train", strict=True)
    assert str(err.value) == f"{path}:4: expected 6 columns, found 4"
    G.read_split(FIXTURES, "qqp", "dev", strict=True)  # clean files pass


def write_tsv(root, dir_name, split, text):
    folder = root / dir_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.tsv").write_bytes(text.encode("utf-8"))


def test_bad_scores_and_line_separators(tmp_path):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "{}\tg\tf\t2012\t0\tnone\tnone\t{}\tb\t{}\n"
    text = head + "".join([row.format(0, "a\u2028still row one\x85", "1.5"),
                           row.format(1, "x", "abc"), row.format(2, "y", "nan"),
                           row.format(3, "z", " 2.25 ").replace("\n", "\r\n")])
    write_tsv(tmp_path, "STS-B", "train", text)
    s = G.read_split(tmp_path, "stsb", "train")
    assert s.examples[0].text_a == "a\u2028still row one\x85"
    assert [(e.guid, e.label) for e in s.examples] == [("0", 1.5), ("3", 2.25)]
    assert s.examples[1].text_b == "b"  # CRLF stripped
    assert s.skipped == [(3, "unparsable score 'abc'"), (4, "non-finite score 'nan'")]


def test_missing_folder_and_missing_split(tmp_path):
    assert G.available_splits(FIXTURES, "qnli") == ("dev", "test")
    assert G.available_splits(FIXTURES, "mnli") == G.TASKS["mnli"].splits
    assert G.available_splits(FIXTURES, "cola") == ("train", "dev", "test")
    with pytest.raises(G.MissingSplitError, match="train split missing for qnli") as err:
        G.read_split(FIXTURES, "qnli", "train")
    assert isinstance(err.value, FileNotFoundError) and err.value.split == "train"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "CoLA")) as err:
        G.read_split(tmp_path, "cola", "train")
    assert not isinstance(err.value, G.MissingSplitError)
    with pytest.raises(FileNotFoundError, match="SST-2"):
        G.available_splits(tmp_path, "sst2")


# ------------------------------------------------------------------------- truncation/encoding
def bert_truncate_seq_pair(a, b, max_length):
    """BERT's run_classifier._truncate_seq_pair, copied in spirit as the reference."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_length:
        (a if len(a) > len(b) else b).pop()
    return a, b


@fast
@given(st.lists(st.integers(5, 99), max_size=40), st.lists(st.integers(5, 99), max_size=40),
       st.integers(0, 60))
def test_truncate_pair_longest_first(a, b, max_tokens):
    ta, tb = G.truncate_pair(a, b, max_tokens)
    assert (ta, tb) == bert_truncate_seq_pair(a, b, max_tokens)
    assert len(ta) + len(tb) == min(len(a) + len(b), max_tokens)
    assert ta == a[:len(ta)] and tb == b[:len(tb)]  # tokens only come off the end
    if len(ta) < len(a) and len(tb) < len(b):
        assert len(ta) - len(tb) in (0, 1)  # both cut: balanced, b loses the tie
    elif len(ta) < len(a):
        assert len(ta) >= len(tb)  # only the longer one was cut
    elif len(tb) < len(b):
        assert len(tb) >= len(ta) - 1


def test_encode_pair_exact():
    ex = Example("g", "the cat sat", "on the mat today", 1)
    out = G.encode_examples([ex], FakeTokenizer(), max_len=128)
    a, b = tok_ids("the cat sat"), tok_ids("on the mat today")
    assert out["input_ids"] == [[2, *a, 3, *b, 3]]
    assert out["token_type_ids"] == [[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]]
    assert out["labels"] == [1] and out["guid"] == ["g"]
    out = G.encode_examples([ex], FakeTokenizer(), max_len=8)  # 5 of 3+4 text tokens fit:
    assert out["input_ids"] == [[2, *a, 3, *b[:2], 3]]  # b 4->3 (longer), 3->2 (b loses ties)
    assert out["token_type_ids"] == [[0, 0, 0, 0, 0, 1, 1, 1]]


def test_encode_single_and_unlabelled():
    exs = [Example("a", "one two three four five", None, None),
           Example("b", "six", None, 0)]
    out = G.encode_examples(exs, FakeTokenizer(), max_len=4)
    assert out["input_ids"][0] == [2, *tok_ids("one two"), 3]
    assert out["input_ids"][1] == [2, *tok_ids("six"), 3]
    assert out["token_type_ids"] == [[0] * 4, [0] * 3]
    assert out["labels"] == [-1, 0]
    reg = G.encode_examples([Example("r", "x", "y", None)], FakeTokenizer(), is_regression=True)
    assert np.isnan(reg["labels"][0])
    with pytest.raises(ValueError):
        G.encode_examples(exs, FakeTokenizer(), max_len=1)


words = st.lists(st.sampled_from(["a", "b", "cd", "efg", "the", "x1"]), max_size=30).map(" ".join)


@fast
@given(st.lists(st.tuples(words, st.one_of(st.none(), words)), min_size=1, max_size=6),
       st.integers(3, 40))
def test_encode_lengths_and_segments(pairs, max_len):
    exs = [Example(str(i), a, b, 0) for i, (a, b) in enumerate(pairs)]
    out = G.encode_examples(exs, FakeTokenizer(), max_len=max_len)
    for ex, ids, types in zip(exs, out["input_ids"], out["token_type_ids"]):
        assert len(ids) == len(types) <= max_len
        assert ids[0] == 2 and ids[-1] == 3
        n_a = len(tok_ids(ex.text_a))
        if ex.text_b is None:
            assert ids.count(3) == 1 and set(types) == {0}
            assert len(ids) == min(n_a, max_len - 2) + 2
        else:
            n_b = len(tok_ids(ex.text_b))
            assert ids.count(3) == 2
            first_sep = ids.index(3)
            assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
            assert len(ids) == min(n_a + n_b, max_len - 3) + 3


def test_augment_both_orders():
    exs = read("mrpc", "train")
    both = G.augment_both_orders(exs)
    assert both[:4] == exs and len(both) == 8
    assert both[4] == Example(exs[0].guid + "-swapped", exs[0].text_b, exs[0].text_a, 1)
    with pytest.raises(ValueError, match="one segment"):
        G.augment_both_orders(read("cola", "dev"))


# ----------------------------------------------------------------------------------- bucketing
def random_columns(n, seed=0, regression=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 40, size=n)
    labels = rng.random(n).tolist() if regression else rng.integers(0, 2, n).tolist()
    return {"input_ids": [list(rng.integers(5, 99, size=k)) for k in lengths],
            "token_type_ids": [[0] * (k // 2) + [1] * (k - k // 2) for k in lengths],
            "labels": labels}


@pytest.mark.parametrize("shuffle", [True, False])
def test_bucket_batches_cover_each_example_once(shuffle):
    cols = random_columns(203)
    batches = G.bucket_batches(cols, 8, shuffle=shuffle, seed=3, epoch=1, chunk_batches=4)
    index = torch.cat([b["index"] for b in batches])
    assert sorted(index.tolist()) == list(range(203))
    assert sum(len(b["index"]) == 8 for b in batches) == 25
    for b in batches:
        lengths = b["attention_mask"].sum(1)
        assert b["input_ids"].shape[1] == lengths.max()  # padded only to the longest row
        for row, i in enumerate(b["index"].tolist()):
            k = len(cols["input_ids"][i])
            assert lengths[row] == k
            assert b["input_ids"][row, :k].tolist() == cols["input_ids"][i]
            assert b["token_type_ids"][row, :k].tolist() == cols["token_type_ids"][i]
            assert (b["input_ids"][row, k:] == 0).all() and (b["token_type_ids"][row, k:] == 0).all()
            assert b["labels"][row].item() == cols["labels"][i]
        assert b["labels"].dtype == torch.int64 and b["input_ids"].dtype == torch.int64


def test_bucket_batches_sorting_reduces_padding():
    cols = random_columns(400)
    batches = G.bucket_batches(cols, 16, shuffle=True, seed=0, epoch=0)
    padded = sum(b["input_ids"].numel() for b in batches)
    real = sum(len(r) for r in cols["input_ids"])
    assert padded < 1.1 * real  # one chunk of 1600 > 400: sorted globally, near-zero padding
    evals = G.bucket_batches(cols, 16, shuffle=False)
    widths = [b["input_ids"].shape[1] for b in evals]
    assert widths == sorted(widths)


def test_bucket_batches_deterministic_and_epoch_dependent():
    cols = random_columns(100)

    def order(seed, epoch):
        bs = G.bucket_batches(cols, 4, shuffle=True, seed=seed, epoch=epoch, chunk_batches=5)
        return torch.cat([b["index"] for b in bs]).tolist()

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    ev1 = G.bucket_batches(cols, 4, shuffle=False, seed=1, epoch=0)
    ev2 = G.bucket_batches(cols, 4, shuffle=False, seed=9, epoch=5)
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(ev1, ev2))


def test_bucket_batches_pad_multiple_and_regression_labels():
    cols = random_columns(50, regression=True)
    batches = G.bucket_batches(cols, 7, shuffle=True, seed=0, epoch=0, pad_to_multiple_of=8,
                               pad_id=1)
    for b in batches:
        assert b["input_ids"].shape[1] % 8 == 0
        assert b["input_ids"].shape[1] - b["attention_mask"].sum(1).max() < 8
        assert (b["input_ids"][b["attention_mask"] == 0] == 1).all()
        assert b["labels"].dtype == torch.float32
    assert G.bucket_batches({"input_ids": [], "token_type_ids": [], "labels": []}, 4,
                            shuffle=True) == []


# -------------------------------------------------------------------------------------- cache
def test_load_task_caches_and_reuses(tmp_path):
    glue_dir = tmp_path / "glue"
    shutil.copytree(FIXTURES / "MRPC", glue_dir / "MRPC")
    cache = tmp_path / "cache"
    tok = FakeTokenizer()
    first = G.load_task(glue_dir, "mrpc", tok, max_len=32, cache_dir=cache, tokenizer_id="fake")
    assert set(first) == {"train", "dev", "test"}
    assert len(first["train"]) == 8  # both orders for MRPC training
    assert len(first["dev"]) == 2 and len(first["test"]) == 2
    assert not any(s.from_cache for s in first.values())
    calls = tok.calls
    assert list((cache / "glue" / "mrpc").iterdir())  # stored inside cache_dir

    second = G.load_task(glue_dir, "mrpc", tok, max_len=32, cache_dir=cache, tokenizer_id="fake")
    assert tok.calls == calls  # no tokenisation on a hit
    for split in first:
        assert second[split].from_cache
        assert second[split].columns == first[split].columns
    assert second["test"].columns["labels"] == [-1, -1]

    third = G.load_task(glue_dir, "mrpc", tok, max_len=16, cache_dir=cache, tokenizer_id="fake")
    assert not third["dev"].from_cache  # max_len is part of the key
    fourth = G.load_task(glue_dir, "mrpc", tok, max_len=32, cache_dir=cache, tokenizer_id="other")
    assert not fourth["dev"].from_cache  # so is the tokenizer id
    dev = glue_dir / "MRPC" / "dev.tsv"
    dev.write_bytes(dev.read_bytes() + b"1\t7\t8\tA new row .\tAnother one .\n")
    fifth = G.load_task(glue_dir, "mrpc", tok, max_len=32, cache_dir=cache, tokenizer_id="fake")
    assert not fifth["dev"].from_cache and len(fifth["dev"]) == 3  # and the file content
    assert fifth["train"].from_cache


def test_load_task_keeps_skipped_rows_through_cache(tmp_path):
    glue_dir = tmp_path / "glue"
    shutil.copytree(FIXTURES / "QQP", glue_dir / "QQP")
    kw = dict(max_len=16, cache_dir=tmp_path / "c", tokenizer_id="fake")
    a = G.load_task(glue_dir, "qqp", FakeTokenizer(), **kw)
    b = G.load_task(glue_dir, "qqp", FakeTokenizer(), **kw)
    assert b["train"].from_cache and b["train"].skipped == a["train"].skipped
    assert [line for line, _ in b["train"].skipped] == [4, 5, 6]
    with pytest.raises(ValueError, match="train.tsv:4:"):
        G.load_task(glue_dir, "qqp", FakeTokenizer(), strict=True, **kw)
    batches = G.bucket_batches(b["train"], 2, shuffle=True, seed=0, epoch=0)
    assert sorted(torch.cat([x["index"] for x in batches]).tolist()) == [0, 1, 2]


def test_bucket_batches_uses_the_tokenizers_pad_id(tmp_path):
    tok = FakeTokenizer()
    tok.pad_id = 7
    enc = G.load_task(FIXTURES, "rte", tok, max_len=64, cache_dir=tmp_path, tokenizer_id="f7")
    batch = G.bucket_batches(enc["train"], 3, shuffle=False)[0]
    assert enc["train"].pad_id == 7
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 7).all()
    assert (batch["attention_mask"] == 0).any()


def test_load_task_stsb_regression_and_missing_train(tmp_path):
    kw = dict(max_len=16, cache_dir=tmp_path, tokenizer_id="fake")
    stsb = G.load_task(FIXTURES, "stsb", FakeTokenizer(), **kw)
    assert stsb["train"].columns["labels"] == [5.0, 3.8, 0.0, 4.2] * 2
    batch = G.bucket_batches(stsb["dev"], 4, shuffle=False)[0]
    assert batch["labels"].dtype == torch.float32
    qnli = G.load_task(FIXTURES, "qnli", FakeTokenizer(), **kw)
    assert set(qnli) == {"dev", "test"}


# -------------------------------------------------------------------------------- submissions
def test_submission_filenames():
    expected = {("cola", "test"): "CoLA.tsv", ("sst2", "test"): "SST-2.tsv",
                ("mrpc", "test"): "MRPC.tsv", ("stsb", "test"): "STS-B.tsv",
                ("rte", "test"): "RTE.tsv", ("wnli", "test"): "WNLI.tsv",
                ("qnli", "test"): "QNLI.tsv", ("qqp", "test"): "QQP.tsv",
                ("mnli", "test_matched"): "MNLI-m.tsv", ("mnli", "test_mismatched"): "MNLI-mm.tsv"}
    for (task, split), name in expected.items():
        assert G.submission_filename(task, split) == name
    with pytest.raises(ValueError):
        G.submission_filename("rte", "dev")


def test_write_predictions_formats(tmp_path):
    p = G.write_predictions(tmp_path / "RTE.tsv", "rte", np.array([0, 1, 1]))
    assert p.read_text() == "index\tprediction\n0\tentailment\n1\tnot_entailment\n2\tnot_entailment\n"
    p = G.write_predictions(tmp_path / "sub" / "SST-2.tsv", "sst2", [1, 0])
    assert p.read_text() == "index\tprediction\n0\t1\n1\t0\n"
    p = G.write_predictions(tmp_path / "MNLI-m.tsv", "mnli", [2, 0], indices=["7", "8"])
    assert p.read_text() == "index\tprediction\n7\tneutral\n8\tcontradiction\n"
    p = G.write_predictions(tmp_path / "STS-B.tsv", "stsb", [-0.3, 2.71828, 5.6, 4.0])
    assert p.read_text() == "index\tprediction\n0\t0.000\n1\t2.718\n2\t5.000\n3\t4.000\n"
    with pytest.raises(ValueError, match="class ids"):
        G.write_predictions(tmp_path / "x.tsv", "cola", [0, 2])
    with pytest.raises(ValueError, match="class ids"):
        G.write_predictions(tmp_path / "x.tsv", "cola", [0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        G.write_predictions(tmp_path / "x.tsv", "stsb", [float("nan")])
    with pytest.raises(ValueError, match="indices"):
        G.write_predictions(tmp_path / "x.tsv", "cola", [0, 1], indices=[0])


# ------------------------------------------------------------------------------ real GLUE data
REAL_COUNTS = {
    ("cola", "train"): 8551, ("cola", "dev"): 1043, ("cola", "test"): 1063,
    ("sst2", "train"): 67349, ("sst2", "dev"): 872, ("sst2", "test"): 1821,
    ("mrpc", "train"): 3668, ("mrpc", "dev"): 408, ("mrpc", "test"): 1725,
    ("stsb", "train"): 5749, ("stsb", "dev"): 1500, ("stsb", "test"): 1379,
    ("rte", "train"): 2490, ("rte", "dev"): 277, ("rte", "test"): 3000,
    ("wnli", "train"): 635, ("wnli", "dev"): 71, ("wnli", "test"): 146,
    ("qnli", "dev"): 5463, ("qnli", "test"): 5463,
}
REAL_LABELS = {("cola", "dev"): [322, 721], ("sst2", "dev"): [428, 444],
               ("mrpc", "train"): [1194, 2474], ("rte", "dev"): [146, 131],
               ("qnli", "dev"): [2702, 2761], ("wnli", "train"): [323, 312]}


@pytest.mark.skipif(not REAL_GLUE.is_dir(), reason=f"real GLUE data not at {REAL_GLUE}")
def test_real_glue_row_counts():
    for (task, split), rows in REAL_COUNTS.items():
        s = G.read_split(REAL_GLUE, task, split, strict=True)
        assert len(s.examples) == rows and s.skipped == [], (task, split)
        if (task, split) in REAL_LABELS:
            counts = np.bincount([e.label for e in s.examples]).tolist()
            assert counts == REAL_LABELS[task, split], (task, split)
    assert G.available_splits(REAL_GLUE, "qnli") == ("dev", "test")
    train = G.read_split(REAL_GLUE, "stsb", "train").examples
    assert np.mean([e.label for e in train]) == pytest.approx(2.701, abs=1e-3)
    with pytest.raises(FileNotFoundError):
        G.available_splits(REAL_GLUE, "mnli")


@pytest.mark.parametrize("seed", [0, 7])
def test_random_batches_are_the_epoch_permutation_cut_in_order(seed):
    """The original's batches (sort_by_length=False): the (seed, epoch) permutation cut into
    consecutive batches, not sorted by length, and new batches every epoch even for a training
    set smaller than one chunk."""
    rng = np.random.default_rng(seed + 100)
    n = 50
    cols = {"input_ids": [[2] + [9] * int(k) + [3] for k in rng.integers(1, 30, n)],
            "token_type_ids": [[0] * 5] * n, "labels": list(rng.integers(0, 2, n))}
    cols["token_type_ids"] = [[0] * len(r) for r in cols["input_ids"]]
    for epoch in (0, 1):
        batches = G.bucket_batches(cols, 8, shuffle=True, seed=seed, epoch=epoch,
                                   sort_by_length=False)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        assert [b["index"].tolist() for b in batches] == [
            order[i:i + 8].tolist() for i in range(0, n, 8)]
    first = {frozenset(b["index"].tolist()) for b in G.bucket_batches(
        cols, 8, shuffle=True, seed=seed, epoch=0, sort_by_length=False)}
    second = {frozenset(b["index"].tolist()) for b in G.bucket_batches(
        cols, 8, shuffle=True, seed=seed, epoch=1, sort_by_length=False)}
    assert first != second
    # the bucketed variant keeps a small set's batches nearly fixed across epochs: the reason
    # it is not the faithful default
    sorted_lengths = [len(cols["input_ids"][i]) for b in G.bucket_batches(
        cols, 8, shuffle=True, seed=seed, epoch=0) for i in b["index"].tolist()]
    assert sorted_lengths != [len(cols["input_ids"][i]) for i in
                              np.random.default_rng([seed, 0]).permutation(n)]


def test_stsb_trains_on_score_over_five():
    """The original's STS task scales the target to (label - 0) / 5."""
    spec = G.get_task("stsb")
    assert spec.is_regression and spec.target_scale == 5.0
    assert all(G.get_task(t).target_scale == 1.0 for t in ("cola", "sst2", "mrpc", "rte"))


def test_load_task_works_without_datasets(tmp_path, monkeypatch):
    """A bare image (the GPU machine) has no `datasets`: tasks still load, uncached, with the
    same encoding."""
    tok = FakeTokenizer()
    with_cache = G.load_task(FIXTURES, "rte", tok, max_len=64, cache_dir=tmp_path / "a",
                             tokenizer_id="t")
    monkeypatch.setattr(G, "_have_datasets", lambda: False)
    without = G.load_task(FIXTURES, "rte", tok, max_len=64, cache_dir=tmp_path / "b",
                          tokenizer_id="t")
    assert without["train"].columns["input_ids"] == with_cache["train"].columns["input_ids"]
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------- malformed files
def test_out_of_range_stsb_scores_are_malformed_rows(tmp_path):
    """The original's STS asserts 0 <= score <= 5: a 7.5 (which would train to NaN-prone
    targets and break the submission range) is a malformed row, named with its line."""
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "{i}\tmain\tf\t2012\t{i}\tnone\tnone\tA man runs.\tA man is running.\t{s}\n"
    write_tsv(tmp_path, "STS-B", "train",
              header + "".join(row.format(i=i, s=s) for i, s in enumerate((4.2, 7.5, -0.5, 0.0))))
    s = G.read_split(tmp_path, "stsb", "train")
    assert [e.label for e in s.examples] == [4.2, 0.0]
    assert s.skipped == [(3, "score 7.5 outside [0, 5]"), (4, "score -0.5 outside [0, 5]")]


def test_a_non_utf8_byte_names_the_file_and_line(tmp_path):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "train.tsv").write_bytes(b"sentence\tlabel\ngood film\t1\nbad \xff film\t0\n")
    with pytest.raises(ValueError, match=r"SST-2/train.tsv:3: not UTF-8"):
        G.read_split(tmp_path, "sst2", "train")


@pytest.mark.parametrize("text, why", [
    ("", "no usable rows (0 malformed)"),
    ("sentence\tlabel\n", "no usable rows (0 malformed)"),
    ("sentence\tlabel\nbad row\n\tmaybe\n", "no usable rows (2 malformed; first: line 2"),
])
def test_an_empty_header_only_or_all_malformed_split_is_an_error(tmp_path, text, why):
    write_tsv(tmp_path, "SST-2", "dev", text)
    with pytest.raises(ValueError, match=re.escape(why)):
        G.read_split(tmp_path, "sst2", "dev")


def test_a_split_that_lost_its_header_keeps_its_first_row(tmp_path):
    """RTE dev without its header line: the first line is a real row (its index is a number
    and its label valid), so it is kept, not dropped as a header."""
    rows = "0\tA dog barks.\tAn animal makes noise.\tentailment\n1\tIt rains.\tIt is dry.\tnot_entailment\n"
    write_tsv(tmp_path, "RTE", "dev", rows)
    assert [e.guid for e in G.read_split(tmp_path, "rte", "dev").examples] == ["0", "1"]
    write_tsv(tmp_path, "RTE", "dev", "index\tsentence1\tsentence2\tlabel\n" + rows)
    assert [e.guid for e in G.read_split(tmp_path, "rte", "dev").examples] == ["0", "1"]


def test_glue_padding_counts_the_tokens_each_batch_order_computes():
    """benchmarks.glue_padding: real tokens are the lengths times the epochs in both orders;
    bucketed batches compute fewer padded tokens; random batches pair an example with the same
    partner again about as often as chance, (batch - 1) / (rows - 1), bucketed ones far more."""
    from benchmarks import glue_padding

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=400)
    columns = {"input_ids": [list(range(5, 5 + n)) for n in lengths],
               "token_type_ids": [[0] * n for n in lengths],
               "labels": [int(i % 2) for i in range(len(lengths))]}
    random, bucketed = (glue_padding.count(columns, 3, 16, b) for b in (False, True))
    assert random["real_tokens"] == bucketed["real_tokens"] == 3 * int(lengths.sum())
    assert bucketed["computed_tokens"] < 0.7 * random["computed_tokens"]
    assert abs(random["pairs_batched_again"] - 15 / 399) < 0.02
    assert bucketed["pairs_batched_again"] > 0.2
    same = {k: [[7] * 10 for _ in range(64)] if k != "labels" else [0] * 64 for k in columns}
    assert glue_padding.count(same, 2, 16, True)["computed_per_real"] == 1.0
