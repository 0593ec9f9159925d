"""Smoke test: the whole pipeline in seconds, on the test fixture corpus.

    python -m experiments.pretrain_small --config smoke --out runs/smoke

Expected: about 20 s on a 2-core CPU (tokenizer, data, 30 steps, evaluations, export, plot).
It checks plumbing only: a 0.1M-parameter model learns nothing worth reporting in 30 steps.
"""

FLAGS = {
    "preset": "tiny",
    "corpus": ["tests/fixtures/corpus"],
    "vocab_size": 300,
    "batch_size": 4,
    "seq_len": 64,
    "steps": 30,
    "dtype": "float32",
}
