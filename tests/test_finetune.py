"""GLUE fine-tuning: config, layer-wise LR, the pure step, learning, compile, and the CLI."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import grad_and_value

from electra_fn import finetune as FT
from electra_fn import model, optim, save_hf
from electra_fn import rng as rnglib
from electra_fn.config import FinetuneConfig, ModelConfig
from electra_fn.data.glue import EncodedSplit, get_task, read_split
from electra_fn.tree import flat_dict, tree_leaves, tree_map

FIXTURES = Path(__file__).parent / "fixtures" / "glue"
TINY = ModelConfig.from_name("tiny")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads; on a shared CPU spinning OpenMP threads cost 10x+."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _clone(tree):
    return tree_map(lambda t: t.clone(), tree)


def _trees_equal(a, b) -> bool:
    la, lb = tree_leaves(a), tree_leaves(b)
    return len(la) == len(lb) and all(torch.equal(x, y) for x, y in zip(la, lb))


def _batch(seed=0, B=8, L=16, vocab=TINY.vocab_size, regression=False):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[: B // 2, L - 5:] = 0  # some padding
    labels = (torch.rand(B, generator=g) * 5 if regression
              else torch.randint(0, 2, (B,), generator=g))
    return {"input_ids": torch.randint(5, vocab, (B, L), generator=g) * mask,
            "token_type_ids": torch.zeros(B, L, dtype=torch.long), "attention_mask": mask,
            "labels": labels}


# ------------------------------------------------------------------------------------ config
def test_config_defaults_and_validation():
    c = FinetuneConfig()
    assert (c.learning_rate, c.layer_decay, c.extra_decay_factor, c.weight_decay,
            c.warmup_fraction, c.batch_size, c.max_len, c.epochs, c.clip_norm, c.adam_eps) == (
        3e-4, 0.8, True, 0.0, 0.1, 32, 128, None, 1.0, 1e-6)
    assert c.adam_bias_correction is False  # the original's uncorrected Adam by default
    assert c.num_epochs(3) == 3 and c.num_epochs(10) == 10
    assert c.replace(epochs=2).num_epochs(10) == 2
    assert hash(c) == hash(FinetuneConfig()) and FinetuneConfig.from_dict(c.to_dict()) == c
    for bad in (dict(learning_rate=0), dict(layer_decay=1.5), dict(warmup_fraction=-0.1),
                dict(batch_size=0), dict(epochs=0), dict(max_len=2), dict(weight_decay=-1)):
        with pytest.raises(ValueError, match="FinetuneConfig"):
            FinetuneConfig(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.learning_rate = 1.0


def test_init_finetune_from_pretrained_and_scratch():
    params = model.init_params(TINY, 3)
    ft = FT.init_finetune(params, TINY, 3, seed=1)
    assert set(ft) == {"embeddings", "encoder", "classifier"}
    assert ft["embeddings"]["word"] is params["embeddings"]["word"]  # shared, never mutated
    assert ft["classifier"]["weight"].shape == (3, TINY.hidden_size)
    scratch = FT.init_finetune(None, TINY, 2, seed=3)
    assert torch.equal(scratch["embeddings"]["word"], params["embeddings"]["word"])
    assert not torch.equal(FT.init_finetune(None, TINY, 2, seed=4)["embeddings"]["word"],
                           params["embeddings"]["word"])


# ------------------------------------------------------------------------- layer-wise LR
@pytest.mark.parametrize("extra", [True, False])
def test_layerwise_lr_closed_form(extra):
    cfg = ModelConfig.from_name("tiny", num_layers=4)
    N, d = cfg.num_layers, 0.8
    ft = FT.init_finetune(None, cfg, 2, 0)
    scales = flat_dict(FT.finetune_lr_scales(ft, cfg, FinetuneConfig(extra_decay_factor=extra)))
    e = 1 if extra else 0
    for path, s in scales.items():
        if path.startswith("classifier."):
            want = 1.0  # the head gets the full lr
        elif path.startswith("embeddings.") or path.startswith("encoder.embed_proj."):
            want = d ** (N + 1 + e)  # 0.8^(N+2) with the original's extra factor
        else:
            i = int(path.split(".")[2])  # encoder.layers.<i>.
            want = d ** (N - i + e)  # last layer 0.8^2, first 0.8^(N+1) (with the factor)
        assert s == pytest.approx(want, rel=1e-12), path
    assert scales["encoder.layers.3.ffn.out.weight"] == pytest.approx(d ** (1 + e))
    assert scales["encoder.layers.0.attention.qkv.weight"] == pytest.approx(d ** (N + e))
    assert scales["embeddings.word"] == pytest.approx(d ** (N + 1 + e))
    assert "encoder.embed_proj.weight" in scales  # tiny: E != H, the projection is decayed too


def test_step_applies_layerwise_lr_exactly():
    """One step after warmup equals p - lr * scale * m / (sqrt(v) + eps) with clipped grads."""
    ft_cfg = FinetuneConfig(layer_decay=0.5)
    total = 100
    step = FT.make_finetune_step(TINY, ft_cfg, 2, False, total)
    params = FT.init_finetune(None, TINY, 2, 0)
    state = FT.init_finetune_state(params)
    state["step"] = torch.tensor(40)
    batch, key = _batch(), FT.step_key(0, 40)
    new, new_state, metrics = step(params, state, batch, key)
    lr = 3e-4 * (total - 40) / total  # past the 10-step warmup, linear decay
    assert metrics["lr"].item() == pytest.approx(lr, rel=1e-6)
    assert new_state["step"].item() == 41

    grads, _ = grad_and_value(lambda p: FT.task_loss(p, batch, key, TINY, False),
                              has_aux=True)(params)
    grads, _ = optim.clip_by_global_norm(grads, 1.0)
    scales = flat_dict(FT.finetune_lr_scales(params, TINY, ft_cfg))
    g, p, q = flat_dict(grads), flat_dict(params), flat_dict(new)
    for name, s in scales.items():
        m, v = 0.1 * g[name], 0.001 * g[name] ** 2
        want = p[name] - lr * s * m / (v.sqrt() + 1e-6)
        torch.testing.assert_close(q[name], want, rtol=1e-5, atol=1e-8, msg=name)
    assert scales["classifier.weight"] == 1.0 and scales["embeddings.word"] == 0.5 ** 4


# ------------------------------------------------------------------------------ the step
@pytest.mark.parametrize("regression", [False, True])
def test_step_is_pure_and_deterministic(regression):
    n = 1 if regression else 3
    step = FT.make_finetune_step(TINY, FinetuneConfig(), n, regression, 20)
    params = FT.init_finetune(None, TINY, n, 0)
    state = FT.init_finetune_state(params)
    state["step"] = torch.tensor(5)
    batch = _batch(regression=regression)
    if not regression:
        batch["labels"] = batch["labels"] + 1  # 3 classes
    before = _clone((params, state, batch))
    key = FT.step_key(7, 5)
    out1 = step(params, state, batch, key)
    assert _trees_equal((params, state, batch), before), "step mutated its inputs"
    out2 = step(params, state, batch, key.clone())
    assert _trees_equal(out1, out2), "same key, different result"
    out3 = step(params, state, batch, FT.step_key(7, 6))
    assert not torch.equal(out1[2]["loss"], out3[2]["loss"])  # dropout follows the key
    assert set(out1[2]) == {"loss", "grad_norm", "lr"} | (set() if regression else {"accuracy"})
    assert all(t.ndim == 0 for t in out1[2].values())


@pytest.mark.parametrize("regression", [False, True])
def test_autograd_route_matches_func_route(regression):
    """The eager default (autograd over the leaves) computes the func route's step."""
    n = 1 if regression else 2
    params = FT.init_finetune(None, TINY, n, 3)
    state = FT.init_finetune_state(params)
    state["step"] = torch.tensor(12)
    batch, key = _batch(seed=4, regression=regression), FT.step_key(1, 12)
    outs = [FT.make_finetune_step(TINY, FinetuneConfig(), n, regression, 40,
                                  grad_route=route)(params, state, batch, key)
            for route in ("func", "autograd")]
    torch.testing.assert_close(outs[1][2], outs[0][2], rtol=1e-5, atol=1e-7)
    for a, b in zip(tree_leaves(outs[1][:2]), tree_leaves(outs[0][:2])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert FT.default_grad_route("eager") == "autograd"
    assert FT.default_grad_route("dynamic") == "func" == FT.default_grad_route("static")
    with pytest.raises(ValueError, match="grad_route"):
        FT.make_finetune_step(TINY, FinetuneConfig(), 2, False, 10, grad_route="jvp")


def test_bf16_autocast_step_and_predict():
    """Under bf16 autocast the weights, moments, loss and logits stay float32 and the step
    follows the float32 one (bf16 matmuls: ~3 significant digits)."""
    params = FT.init_finetune(None, TINY, 2, 5)
    state = FT.init_finetune_state(params)
    state["step"] = torch.tensor(30)  # past warmup: a full-size update
    batch, key = _batch(seed=6), FT.step_key(2, 30)
    f32 = FT.make_finetune_step(TINY, FinetuneConfig(), 2, False, 100)(params, state, batch, key)
    b16 = FT.make_finetune_step(TINY, FinetuneConfig(), 2, False, 100, amp_dtype=torch.bfloat16,
                                grad_route="autograd")(params, state, batch, key)
    assert all(t.dtype == torch.float32 for t in tree_leaves(b16[:2]) if t.is_floating_point())
    assert b16[2]["loss"].dtype == torch.float32
    assert abs(b16[2]["loss"].item() - f32[2]["loss"].item()) < 2e-2 * f32[2]["loss"].item()
    assert abs(b16[2]["grad_norm"].item() / f32[2]["grad_norm"].item() - 1) < 0.05
    # the updates point the same way
    d32 = torch.cat([(a - p).flatten() for a, p in zip(tree_leaves(f32[0]), tree_leaves(params))])
    d16 = torch.cat([(a - p).flatten() for a, p in zip(tree_leaves(b16[0]), tree_leaves(params))])
    assert torch.nn.functional.cosine_similarity(d32, d16, dim=0) > 0.9
    logits32 = FT.make_predict(TINY)(params, batch)
    logits16 = FT.make_predict(TINY, amp_dtype=torch.bfloat16)(params, batch)
    assert logits16.dtype == torch.float32
    torch.testing.assert_close(logits16, logits32, rtol=0.05, atol=0.02)


def test_step_rejects_bad_heads():
    with pytest.raises(ValueError, match="regression"):
        FT.make_finetune_step(TINY, FinetuneConfig(), 2, True, 10)
    with pytest.raises(ValueError, match="classification"):
        FT.make_finetune_step(TINY, FinetuneConfig(), 1, False, 10)


def _compare_eager_compiled(backend: str, with_predict: bool, amp_dtype=None):
    cfg = TINY.replace(num_layers=1)  # tracing time grows with depth
    ft_cfg = FinetuneConfig()
    make = lambda: FT.make_finetune_step(cfg, ft_cfg, 2, False, 50,  # noqa: E731
                                         amp_dtype=amp_dtype)
    compiled = FT.compile_fn(make(), "static", backend=backend)
    params = FT.init_finetune(None, cfg, 2, 0)
    state = FT.init_finetune_state(params)
    state["step"] = torch.tensor(10)
    batch = _batch()
    with rnglib.counter_based():  # eager draws dropout from the compiled stream
        eager_out = make()(params, state, batch, FT.step_key(0, 10))
    comp_out = compiled(params, state, batch, FT.step_key(0, 10))
    with torch._dynamo.config.patch(error_on_recompile=True):  # a second step reuses the graph
        compiled(*comp_out[:2], batch, FT.step_key(0, 11))
    torch.testing.assert_close(comp_out[2], eager_out[2], rtol=1e-4, atol=1e-5)
    for a, b in zip(tree_leaves(comp_out[:2]), tree_leaves(eager_out[:2])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if not with_predict:
        return
    predict_c = FT.compile_fn(FT.make_predict(cfg), "static", backend=backend)
    torch.testing.assert_close(predict_c(params, batch), FT.make_predict(cfg)(params, batch),
                               rtol=1e-4, atol=1e-5)


def test_eager_vs_compiled_graph_capture():
    """fullgraph=True capture (dynamo + AOTAutograd) agrees with eager on one fixed shape."""
    torch._dynamo.reset()
    _compare_eager_compiled("aot_eager", with_predict=False)


def test_bf16_autocast_step_graph_capture():
    """The bf16 autocast step (the CUDA default) also captures as one graph."""
    torch._dynamo.reset()
    _compare_eager_compiled("aot_eager", with_predict=False, amp_dtype=torch.bfloat16)


@pytest.mark.slow  # inductor's cold C++ compile takes minutes on CPU
def test_eager_vs_compiled_inductor():
    torch._dynamo.reset()
    _compare_eager_compiled("inductor", with_predict=True)


# ---------------------------------------------------------------------------------- learning
def _toy_split(n, seed, marker=7):
    """Label = whether token ``marker`` appears (a separable task)."""
    rng = np.random.default_rng(seed)
    ids, types, labels = [], [], []
    for i in range(n):
        length = int(rng.integers(4, 12))
        toks = rng.integers(10, 60, size=length).tolist()
        y = int(i % 2)
        if y:
            toks[int(rng.integers(0, length))] = marker
        ids.append([2, *toks, 3])
        types.append([0] * (length + 2))
        labels.append(y)
    cols = {"input_ids": ids, "token_type_ids": types, "labels": labels,
            "guid": [f"toy-{i}" for i in range(n)]}
    return EncodedSplit("sst2", "train", Path("toy"), cols)


def test_short_finetune_learns_separable_task():
    # lr 1e-3: at 3e-3 the from-scratch tiny model with the original's Glorot head stayed at
    # chance for 2 of 3 seeds (single thread); 1e-3 learns the task for all three.
    ft_cfg = FinetuneConfig(learning_rate=1e-3, batch_size=16, epochs=6, layer_decay=0.9)
    train = _toy_split(192, 0)
    dev = dataclasses.replace(_toy_split(96, 1), split="dev")
    params = FT.init_finetune(None, TINY, 2, 0)
    predict = FT.make_predict(TINY)
    before = FT.evaluate(predict, params, dev, "sst2")
    seen = []
    params, info = FT.train(params, train, TINY, ft_cfg, "sst2", seed=0,
                            progress=lambda s, t, r, m: seen.append((s, t, r)))
    assert info["total_steps"] == 6 * 12 == len(seen) and seen[-1][:2] == (72, 72)
    assert sum(r for _, _, r in seen) == 6 * 192
    assert info["last_loss"] < 0.5 * info["first_loss"], info
    after = FT.evaluate(predict, params, dev, "sst2")
    assert after["accuracy"] >= 0.95 > before["accuracy"], (before, after)


def test_predict_split_returns_example_order():
    split = _toy_split(37, 2)
    params = FT.init_finetune(None, TINY, 2, 5)
    predict = FT.make_predict(TINY)
    got = FT.predict_split(predict, params, split, is_regression=True, batch_size=8)
    want = []
    for ids in split.columns["input_ids"]:  # one at a time, no padding
        b = {"input_ids": torch.tensor([ids]), "token_type_ids": torch.zeros(1, len(ids),
                                                                               dtype=torch.long),
             "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        want.append(predict(params, b)[0, 0].item())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    cls = FT.predict_split(predict, params, split, is_regression=False, batch_size=8)
    assert cls.dtype == np.int64 and cls.shape == (37,)


def test_subsample_keeps_swapped_pairs():
    split = _toy_split(10, 0)
    cols = split.columns
    doubled = {k: v + (v if k != "guid" else [f"{g}-swapped" for g in v])
               for k, v in cols.items()}
    paired = dataclasses.replace(split, columns=doubled)
    sub = FT.subsample(paired, 4, seed=0)
    guids = sub.columns["guid"]
    assert len(guids) == 8 and {f"{g}-swapped" for g in guids[:4]} == set(guids[4:])
    assert FT.subsample(paired, 4, seed=0).columns == sub.columns  # fixed subset
    assert len(FT.subsample(split, 3).columns["labels"]) == 3
    assert FT.subsample(split, None) is split and FT.subsample(split, 100) is split


# ------------------------------------------------------------------------------- reports
def test_summaries_and_markdown():
    s = FT.summarize_seeds([{"accuracy": 0.5, "f1": 0.1}, {"accuracy": 0.7, "f1": 0.3},
                            {"accuracy": 0.6, "f1": 0.2}])
    assert s["accuracy"]["median"] == pytest.approx(0.6)
    assert s["accuracy"]["std"] == pytest.approx(0.1)
    assert FT.summarize_seeds([{"mcc": 0.3}])["mcc"]["std"] == 0.0
    assert FT.best_seed_index([{"accuracy": 0.5}, {"accuracy": 0.7}], "rte") == 1
    md = FT.results_markdown({"rte": 0.6, "cola": 0.5}, {"rte": 3, "cola": 3},
                             train_examples={"rte": (2490, 2490), "cola": (2000, 8551)})
    assert "| CoLA | mcc | 50.0 | 3 | 2,000 of 8,551 | 56.8 | -6.8 |" in md
    assert "| RTE | accuracy | 60.0 | 3 | 2,490 | 68.5 | -8.5 |" in md
    assert "**55.0**" in md and "62.6" in md  # GLUE scores over the same two tasks


def test_resolve_checkpoint_layouts(tmp_path):
    for sub in ("a/hf/discriminator", "b/discriminator", "c"):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "config.json").write_text("{}")
    assert FT.resolve_checkpoint(tmp_path / "a") == tmp_path / "a/hf/discriminator"
    assert FT.resolve_checkpoint(tmp_path / "b") == tmp_path / "b/discriminator"
    assert FT.resolve_checkpoint(tmp_path / "c") == tmp_path / "c"
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        FT.resolve_checkpoint(tmp_path / "d")
    (tmp_path / "d/checkpoints").mkdir()
    for step in (7, 12):
        (tmp_path / f"d/checkpoints/step_{step:08d}.pt").write_bytes(b"")
    (tmp_path / "d/config.json").write_text("{}")  # a run's config.json, not a model's
    assert FT.resolve_checkpoint(tmp_path / "d") == tmp_path / "d/checkpoints/step_00000012.pt"
    chosen = tmp_path / "d/checkpoints/step_00000007.pt"
    assert FT.resolve_checkpoint(chosen) == chosen


def test_a_run_folder_without_its_weights_is_not_taken_for_a_model(tmp_path):
    run = tmp_path / "run"  # what a record keeps of a run: its config and logs, no weights
    run.mkdir()
    (run / "config.json").write_text('{"pretrain": {"model": {"hidden_size": 64}}}')
    (run / "summary.json").write_text("{}")
    assert FT.is_run_config(run / "config.json")
    with pytest.raises(FileNotFoundError, match="pre-training run's folder.*weights are not here"):
        FT.resolve_checkpoint(run)
    model = tmp_path / "model"  # a Hugging Face directory: its config.json is the model's
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "electra", "hidden_size": 64}')
    assert not FT.is_run_config(model / "config.json")
    assert FT.resolve_checkpoint(model) == model
    (run / "checkpoints").mkdir()
    (run / "checkpoints/step_00000003.pt").write_bytes(b"")
    assert FT.resolve_checkpoint(run) == run / "checkpoints/step_00000003.pt"


# --------------------------------------------------------------------------- entry point
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny pre-training output: DIR/hf/discriminator with our sentencepiece tokenizer."""
    from electra_fn.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("ckpt")
    texts = []
    for path in sorted(FIXTURES.glob("*/*.tsv")):
        texts += path.read_text(encoding="utf-8-sig").replace("\t", " ").splitlines()
    rng = np.random.default_rng(0)
    words = sorted({w for t in texts for w in t.split()})
    texts += [" ".join(rng.choice(words, 12)) + "." for _ in range(300)]
    (root / "corpus.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    tok = train_tokenizer(str(root / "corpus.txt"), 400, str(root / "tok_cache"),
                          log=lambda _: None)
    tok_dir = root / "tokenizer"
    tok.save(str(tok_dir))
    extra = {n: (tok_dir / n).read_bytes()
             for n in ("tokenizer.model", "electra_fn_tokenizer.json")}

    def make(name, vocab_size):
        cfg = TINY.replace(vocab_size=vocab_size)
        out = root / name
        save_hf(model.init_params(cfg, 0), cfg, out / "hf", parts=("discriminator",),
                extra_files=extra)
        return out
    return {"good": make("good", tok.vocab_size), "mismatch": make("bad", tok.vocab_size + 1),
            "tokenizer": tok_dir}


def test_cli_end_to_end_on_fixtures(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _main(capsys, "--checkpoint", checkpoint["good"], "--glue-dir", FIXTURES,
                    "--tasks", "sst2,stsb,mnli,qnli,qqp", "--seeds", 2, "--epochs", 1,
                    "--max-len", 64, "--out", out, "--no-progress", "--dtype", "bf16",
                    "--export-hf")
    assert rc == 0, err
    assert "bf16 autocast" in err
    assert "train split missing for qnli: skipped" in err
    assert "QQP/train.tsv: skipped 3 malformed row(s): line 4" in err

    import orjson
    r = orjson.loads((out / "sst2.json").read_bytes())
    assert r["task"] == "sst2" and r["main_metric"] == "accuracy"
    assert [s["seed"] for s in r["seeds"]] == [0, 1]
    assert set(r["summary"]["accuracy"]) == {"values", "median", "mean", "std"}
    assert r["config"]["finetune"]["learning_rate"] == 3e-4 and r["wall_s"] > 0
    assert r["config"]["dtype"] == "bf16 autocast"
    assert r["submission"]["seed"] in (0, 1) and "best dev" in r["submission"]["chosen_by"]
    mnli = orjson.loads((out / "mnli.json").read_bytes())
    assert "dev_mismatched/accuracy" in mnli["summary"]
    qqp = orjson.loads((out / "qqp.json").read_bytes())
    assert qqp["data"]["skipped_rows"]["train"] == {"count": 3, "first_lines": [4, 5, 6]}
    assert not (out / "qnli.json").exists()

    md = (out / "results.md").read_text()
    assert "| SST-2 | accuracy |" in md and "88.3" in md and "GLUE score" in md
    for name, split, task in (("SST-2.tsv", "test", "sst2"), ("STS-B.tsv", "test", "stsb"),
                              ("MNLI-m.tsv", "test_matched", "mnli"),
                              ("MNLI-mm.tsv", "test_mismatched", "mnli"),
                              ("QQP.tsv", "test", "qqp")):
        lines = (out / "submission" / name).read_text().splitlines()
        examples = read_split(FIXTURES, task, split).examples
        assert lines[0] == "index\tprediction" and len(lines) == 1 + len(examples), name
        assert [ln.split("\t")[0] for ln in lines[1:]] == [ex.guid for ex in examples]
    stsb = (out / "submission" / "STS-B.tsv").read_text().splitlines()[1:]
    assert all(0.0 <= float(ln.split("\t")[1]) <= 5.0 for ln in stsb)
    # --export-hf: each task's best seed, loadable by transformers (same predictions:
    # tests/test_glue_run.py)
    for task, labels in (("sst2", 2), ("stsb", 1), ("mnli", 3)):
        config = orjson.loads((out / "hf" / task / "config.json").read_bytes())
        assert len(config["id2label"]) == labels
        result = orjson.loads((out / f"{task}.json").read_bytes())
        assert result["hf_export"]["seed"] == result["submission"]["seed"]


def _main(capsys, *args):
    from experiments.finetune_glue import main
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def test_cli_from_scratch_with_tokenizer_and_subsample(checkpoint, tmp_path, capsys):
    rc, err = _main(capsys, "--from-scratch", "--tokenizer", checkpoint["tokenizer"],
                    "--preset", "tiny", "--glue-dir", FIXTURES, "--tasks", "mrpc",
                    "--seeds", 1, "--epochs", 1, "--max-train-examples", 2, "--out",
                    tmp_path, "--no-progress", "--no-extra-decay-factor", "--lr", "1e-3",
                    "--dtype", "float32")
    assert rc == 0, err
    import orjson
    r = orjson.loads((tmp_path / "mrpc.json").read_bytes())
    assert r["data"]["train_examples_used"] == 4  # 2 examples in both orders
    total = r["data"]["train_examples_total"]
    assert total > 4
    md = (tmp_path / "results.md").read_text()  # the subsample is labelled per task
    assert f"| MRPC | accuracy | {100 * r['main_median']:.1f} | 1 | 4 of {total:,} |" in md
    assert r["config"]["from_scratch"] and r["config"]["finetune"]["extra_decay_factor"] is False
    assert r["config"]["model"]["name"] == "tiny" and r["config"]["compile"] == "eager"
    assert r["config"]["dtype"] == "float32"  # --dtype float32 below; auto is per machine


def test_cli_device_names(checkpoint, tmp_path, capsys):
    rc, err = _main(capsys, "--checkpoint", checkpoint["good"], "--glue-dir", FIXTURES,
                    "--tasks", "rte", "--out", tmp_path, "--device", "gpu0", "--no-progress")
    assert rc == 2 and "--device gpu0: not a device name" in err
    if not torch.cuda.is_available():
        rc, err = _main(capsys, "--checkpoint", checkpoint["good"], "--glue-dir", FIXTURES,
                        "--tasks", "rte", "--out", tmp_path, "--device", "cuda",
                        "--no-progress")
        assert rc == 2 and "CUDA is not available" in err
    assert not (tmp_path / "rte.json").exists()


def test_cli_missing_task_folder(checkpoint, tmp_path, capsys):
    glue = tmp_path / "glue"
    shutil.copytree(FIXTURES / "SST-2", glue / "SST-2")
    rc, err = _main(capsys, "--checkpoint", checkpoint["good"], "--glue-dir", glue,
                    "--tasks", "sst2,cola", "--out", tmp_path / "o", "--no-progress")
    assert rc == 2 and "CoLA" in err and "not found" in err, err
    assert not (tmp_path / "o" / "sst2.json").exists()  # checked before any training
    # "all" skips absent folders instead
    rc, err = _main(capsys, "--checkpoint", checkpoint["good"], "--glue-dir", glue,
                    "--tasks", "all", "--epochs", 1, "--out", tmp_path / "o2",
                    "--no-progress")
    assert rc == 0 and "for cola not found" in err and (tmp_path / "o2/sst2.json").exists()


def test_cli_strict_malformed_row_names_file_and_line(checkpoint, tmp_path, capsys):
    rc, err = _main(capsys, "--checkpoint", checkpoint["good"], "--glue-dir", FIXTURES,
                    "--tasks", "qqp", "--strict", "--out", tmp_path, "--no-progress")
    assert rc == 2, err
    assert f"{FIXTURES / 'QQP' / 'train.tsv'}:4: expected 6 columns" in err


def test_cli_vocab_mismatch_and_bad_checkpoint(checkpoint, tmp_path, capsys):
    rc, err = _main(capsys, "--checkpoint", checkpoint["mismatch"], "--glue-dir", FIXTURES,
                    "--tasks", "rte", "--out", tmp_path, "--no-progress")
    assert rc == 2, err
    assert "vocab" in err and "config.json" in err and "tokenizer.model" in err
    rc, err = _main(capsys, "--checkpoint", tmp_path / "nowhere", "--glue-dir", FIXTURES,
                    "--tasks", "rte", "--out", tmp_path, "--no-progress")
    assert rc == 2 and "nowhere" in err
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint["good"] / "hf" / "discriminator", broken)
    (broken / "config.json").write_text("{not json")
    rc, err = _main(capsys, "--checkpoint", broken, "--glue-dir", FIXTURES, "--tasks", "rte",
                    "--out", tmp_path, "--no-progress")
    assert rc == 2 and "config.json" in err and "JSON" in err, err


def test_cli_full_disk_is_one_line_naming_the_file_and_debug_shows_the_traceback(
        checkpoint, tmp_path, capsys, disk_full_at):
    args = ("--checkpoint", checkpoint["good"], "--glue-dir", FIXTURES, "--tasks", "sst2",
            "--epochs", 1, "--max-train-examples", 4, "--no-progress", "--dtype", "float32")
    disk_full_at("sst2.json")
    rc, err = _main(capsys, *args, "--out", tmp_path / "a")
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err, err
    assert last.startswith("error: [Errno 28] No space left on device: ") and "sst2.json" in last
    assert list((tmp_path / "a").glob("*sst2.json*")) == []  # no half or temporary file
    with pytest.raises(OSError, match="sst2.json"):
        _main(capsys, *args, "--out", tmp_path / "b", "--debug")


def test_cli_flags_that_name_nothing_to_do(checkpoint, tmp_path, capsys):
    rc, err = _main(capsys, "--checkpoint", checkpoint["good"], "--glue-dir", FIXTURES,
                    "--tasks", ",", "--out", tmp_path, "--no-progress")
    assert rc == 2 and err.strip() == "error: --tasks ',': names no task"
    with pytest.raises(SystemExit) as e:
        _main(capsys, "--checkpoint", checkpoint["good"], "--glue-dir", FIXTURES,
              "--max-train-examples", 0)
    assert e.value.code == 2 and "--max-train-examples must be >= 1" in capsys.readouterr().err


def test_stsb_trains_on_score_over_five_and_predicts_on_the_score_scale(monkeypatch):
    """As the original's STS task: the regression target is label / 5 (so the MSE is a 25th of
    the raw one's); predictions come back on the 0-5 scale (Spearman and Pearson are
    unchanged by the scale)."""
    rng = np.random.default_rng(3)
    n = 10
    ids = [[2] + list(rng.integers(5, 50, 6)) + [3] for _ in range(n)]
    scores = [float(x) for x in rng.uniform(0, 5, n)]
    cols = {"input_ids": ids, "token_type_ids": [[0] * 8] * n, "labels": scores,
            "guid": [str(i) for i in range(n)]}
    split = EncodedSplit("stsb", "train", Path("toy"), cols)
    seen = []

    def fake_cached_step(*a, **kw):
        def step(params, state, batch, key):
            seen.append(batch["labels"].clone())
            return params, state, {"loss": torch.zeros(())}
        return step

    monkeypatch.setattr(FT, "cached_step", fake_cached_step)
    cfg = TINY.replace(vocab_size=60)
    params = FT.init_finetune(None, cfg, 1, 0)
    FT.train(params, split, cfg, FinetuneConfig(epochs=1, batch_size=4), "stsb", seed=0)
    order = np.random.default_rng([0, 0]).permutation(n)  # the epoch's random batches
    want = torch.tensor([scores[i] for i in order], dtype=torch.float32) / 5
    torch.testing.assert_close(torch.cat(seen), want)
    preds = FT.predict_split(lambda p, b: torch.full((b["input_ids"].shape[0], 1), 0.5), params,
                             split, is_regression=True, target_scale=5.0)
    assert np.allclose(preds, 2.5)


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_batched_seeds_equal_seeds_run_one_by_one(task):
    """train_seeds (one vmap over three seeds, each with its own shuffle, head initialisation
    and dropout) gives each seed's train() result at the same padded widths, both drawing
    counter-based dropout: parameters within 1e-5, losses within 1e-5."""
    rng_np = np.random.default_rng(5)
    n = 13
    ids = [[2] + list(rng_np.integers(5, 60, int(rng_np.integers(3, 12)))) + [3]
           for _ in range(n)]
    labels = ([float(x) for x in rng_np.uniform(0, 5, n)] if task == "stsb"
              else [int(x) for x in rng_np.integers(0, 2, n)])
    cols = {"input_ids": ids, "token_type_ids": [[0] * len(r) for r in ids], "labels": labels,
            "guid": [str(i) for i in range(n)]}
    split = EncodedSplit(task, "train", Path("toy"), cols)
    cfg = TINY.replace(vocab_size=60)
    ft_cfg = FinetuneConfig(epochs=2, batch_size=4, learning_rate=1e-3)
    spec = get_task(task)
    pretrained = model.init_params(cfg, 9)
    seeds = [0, 1, 2]
    inits = [FT.init_finetune(pretrained, cfg, spec.num_labels, s) for s in seeds]
    together = FT.train_seeds(inits, split, cfg, ft_cfg, task, seeds=seeds)
    with rnglib.counter_based():
        alone = [FT.train(FT.init_finetune(pretrained, cfg, spec.num_labels, s), split, cfg,
                          ft_cfg, task, seed=s, pad_widths=together[0][1]["pad_widths"])
                 for s in seeds]
    for (p_b, info_b), (p_s, info_s) in zip(together, alone):
        fb, fs = flat_dict(p_b), flat_dict(p_s)
        assert fb.keys() == fs.keys()
        for k in fb:
            torch.testing.assert_close(fb[k], fs[k], atol=1e-5, rtol=1e-5, msg=k)
        assert info_b["last_loss"] == pytest.approx(info_s["last_loss"], abs=1e-5)
        assert info_b["total_steps"] == info_s["total_steps"] == 2 * 4
    # the seeds really differ (their own data order, head and dropout)
    assert not torch.equal(flat_dict(together[0][0])["classifier.weight"],
                           flat_dict(together[1][0])["classifier.weight"])
