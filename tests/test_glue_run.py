"""The GLUE runner in-process: per-task JSON with provenance, the table, and the best seed's
model exported for transformers with the same predictions."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import torch

from electra_fn import finetune as FT
from electra_fn import glue_run, model
from electra_fn.config import FinetuneConfig, ModelConfig
from electra_fn.data.glue import get_task, load_task
from electra_fn.data.tokenizer import train_tokenizer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "glue"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    texts = []
    for path in sorted(FIXTURES.glob("*/*.tsv")):
        texts += path.read_text(encoding="utf-8-sig").replace("\t", " ").splitlines()
    (root / "corpus.txt").write_text("\n".join(texts * 3) + "\n", encoding="utf-8")
    tok = train_tokenizer(str(root / "corpus.txt"), 300, str(root / "cache"), log=lambda _: None)
    tok.save(str(root / "tokenizer"))
    return root / "tokenizer"


def test_run_glue_writes_results_and_exports_the_best_seed(tokenizer_dir, tmp_path,
                                                           monkeypatch):
    transformers = pytest.importorskip("transformers")
    from electra_fn.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    cfg = ModelConfig.from_name("tiny").replace(vocab_size=tok.vocab_size)
    params = model.init_params(cfg, 0)
    kept = {}
    real = FT.run_seed

    def run_seed(*a, **kw):  # remember every seed's fine-tuned parameters
        r = real(*a, **kw)
        kept[(a[3] if isinstance(a[3], str) else a[3].name, r["seed"])] = r["params"]
        return r

    monkeypatch.setattr(FT, "run_seed", run_seed)
    ft_cfg = FinetuneConfig(epochs=1, max_len=64, batch_size=8)
    opts = glue_run.GlueOptions(str(FIXTURES), tmp_path / "out", seeds=(0, 1),
                                progress=False, export_hf=True, tokenizer_dir=tokenizer_dir)
    said = []
    info = {"checkpoint": "random", "tokenizer": str(tokenizer_dir / "tokenizer.model")}
    assert glue_run.run_glue(["sst2", "stsb"], params, cfg, tok, info, ft_cfg, opts,
                             log=said.append) == 0
    for task, num_labels in (("sst2", 2), ("stsb", 1)):
        result = orjson.loads((opts.out / f"{task}.json").read_bytes())
        assert result["provenance"]["commit"] and result["provenance"]["versions"]["torch"]
        seed = result["hf_export"]["seed"]
        assert seed == result["submission"]["seed"]
        ours = kept[(task, seed)]
        # transformers, as a user would load it, on a fresh batch of the task's dev split
        hf_dir = opts.out / "hf" / task
        net = transformers.AutoModelForSequenceClassification.from_pretrained(str(hf_dir))
        net.eval()
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
        dev = load_task(str(FIXTURES), get_task(task), tok, max_len=64,
                        cache_dir=tmp_path / "cache", tokenizer_id=tok.fingerprint)["dev"]
        ids = [list(dev.columns["input_ids"][i]) for i in range(min(6, len(dev)))]
        width = max(map(len, ids))
        batch = {"input_ids": torch.tensor([x + [0] * (width - len(x)) for x in ids])}
        batch["attention_mask"] = (batch["input_ids"] != 0).long()
        batch["token_type_ids"] = torch.tensor(
            [list(dev.columns["token_type_ids"][i]) + [0] * (width - len(ids[i]))
             for i in range(len(ids))])
        with torch.no_grad():
            got = net(**batch).logits
        want = FT.classifier_logits_of(ours, batch, cfg, None)
        assert got.shape == (len(ids), num_labels)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        assert hf_tok.convert_tokens_to_ids("[SEP]") == 3
    assert (opts.out / "results.md").read_text().count("|") > 10
    assert any("exported for transformers" in s for s in said)
    assert "(2 task(s) run now)" in said[-1]


def test_run_glue_batched_seeds_record_each_seed(tokenizer_dir, tmp_path):
    """--batch-seeds: every seed trained in one vmapped step still gets its own metrics and
    the same JSON layout."""
    from electra_fn.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    cfg = ModelConfig.from_name("tiny").replace(vocab_size=tok.vocab_size)
    opts = glue_run.GlueOptions(str(FIXTURES), tmp_path / "out", seeds=(0, 1, 2),
                                progress=False, batch_seeds=True)
    info = {"checkpoint": None, "tokenizer": str(tokenizer_dir / "tokenizer.model")}
    assert glue_run.run_glue(["mrpc"], None, cfg, tok, info,
                             FinetuneConfig(epochs=1, max_len=64, batch_size=8), opts,
                             log=lambda m: None) == 0
    result = orjson.loads((opts.out / "mrpc.json").read_bytes())
    assert [s["seed"] for s in result["seeds"]] == [0, 1, 2]
    assert all(s["train"]["batched_seeds"] == [0, 1, 2] for s in result["seeds"])
    assert result["config"]["batch_seeds"] is True


def test_batched_seeds_refuse_bf16_with_a_clear_message(tokenizer_dir, tmp_path):
    from electra_fn.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    cfg = ModelConfig.from_name("tiny").replace(vocab_size=tok.vocab_size)
    opts = glue_run.GlueOptions(str(FIXTURES), tmp_path / "out", seeds=(0, 1), progress=False,
                                batch_seeds=True, amp=torch.bfloat16)
    said = []
    assert glue_run.run_glue(["mrpc"], None, cfg, tok, {}, FinetuneConfig(epochs=1), opts,
                             log=said.append) == 2
    assert "--dtype float32 with --batch-seeds" in said[-1]
    assert not (opts.out / "mrpc.json").exists()


@pytest.mark.parametrize("batch_seeds", [False, True])
def test_diverged_fine_tuning_stops_with_exit_3_and_writes_no_scores(tokenizer_dir, tmp_path,
                                                                     batch_seeds):
    """lr 1e30 drives the parameters to inf: the runner says so in one line, exits 3 and
    writes no task JSON (no majority-class accuracy reported as a result)."""
    from electra_fn.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    cfg = ModelConfig.from_name("tiny").replace(vocab_size=tok.vocab_size)
    opts = glue_run.GlueOptions(str(FIXTURES), tmp_path / "out", seeds=(0, 1), progress=False,
                                batch_seeds=batch_seeds)
    said = []
    code = glue_run.run_glue(["sst2"], None, cfg, tok, {},
                             FinetuneConfig(epochs=2, batch_size=2, learning_rate=1e30), opts,
                             log=said.append)
    assert code == 3 and "fine-tuning diverged" in said[-1] and "sst2 seed 0" in said[-1]
    assert not (opts.out / "sst2.json").exists()
