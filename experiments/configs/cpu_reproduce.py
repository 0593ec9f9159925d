"""The CPU-scale reproduction: ELECTRA-Small (the paper's shapes) pre-trained on 8 Wikipedia
shards with a vocabulary sized to them, then GLUE from it and from scratch.

    python -m experiments.reproduce --config cpu_reproduce --glue-dir ../shared/data/glue

Expected: pre-training about 2.5 hours on a 2-core CPU (4,000 steps of 32 x 128, 16.4M
tokens, about 0.1% of the paper's compute), then GLUE (6 tasks, 3 seeds, at most 2,000
training examples per task) from the checkpoint and from scratch, about 3.5 hours.
Reached (records/2026-11-30_cpu-tiny-reproduction, last section): pre-training done, inside
the plateau (unigram AUC 0.531); fine-tuned from it CoLA 0.0, SST-2 50.9, MRPC 68.4 (the
majority class); the rest not run: experiments/configs/cpu_tiny.py replaces it.
Paths are relative to the repository root (the staged data sit in ../shared/data).
"""

FLAGS = {
    "preset": "small",
    "corpus": [f"../shared/data/corpus/wikipedia_en_2015/train/wiki_en_00{i}.txt.xz"
               for i in range(8)],
    "valid": ["../shared/data/corpus/wikipedia_en_2015/valid"],
    "vocab_size": 8000,
    "batch_size": 32,
    "seq_len": 128,
    "steps": 4000,
}

GLUE = {"tasks": "cola,sst2,mrpc,stsb,rte,wnli", "seeds": 3, "max_train_examples": 2000}
