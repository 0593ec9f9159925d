"""Smoke test: the whole pipeline in seconds, on the test fixture corpus.

    python -m experiments.pretrain_small --config smoke --out runs/smoke

Expected: about 20 s on a 2-core CPU (tokenizer, data, 30 steps, evaluations, export, plot).
It checks plumbing only: a 0.1M-parameter model learns nothing worth reporting in 30 steps.
"""

from electra_fn.study import Variant

FLAGS = {
    "preset": "tiny",
    "corpus": ["tests/fixtures/corpus"],
    "vocab_size": 300,
    "batch_size": 4,
    "seq_len": 64,
    "steps": 30,
    "dtype": "float32",
}

# python -m experiments.ablate --study smoke --glue-dir tests/fixtures/glue: plumbing only.
STUDY = {"seeds": [0, 1], "variants": [
    Variant("baseline", why="the recipe as it is"),
    Variant("dropout-0", model={"hidden_dropout": 0.0, "attention_dropout": 0.0},
            why="no dropout"),
    Variant("gdes", model={"embedding_sharing": "gdes"}, why="gradient-disentangled sharing"),
]}
GLUE = {"tasks": "sst2,rte", "seeds": 2, "max_train_examples": 64}
