"""The CPU-scale reproduction past the plateau: the tiny model (hidden 64, 2 layers, 2 heads,
embeddings 32, generator 1/2) pre-trained on the reproduction's 8 Wikipedia shards for 20,000
steps, then GLUE from it and from scratch.

    python -m experiments.reproduce --config cpu_tiny --glue-dir ../shared/data/glue

Expected: pre-training about 1.5 hours on one core of a 2-core CPU (20,000 steps of 32 x 128,
82M tokens, 5 epochs of the shards; the discriminator leaves its identity-only plateau near
step 5,000, records/2026-11-29_discriminator-context §10), then GLUE (6 tasks, 3 seeds, full
training sets except SST-2's 20,000-example subset) from the checkpoint and from scratch,
about 1 hour.
Reached (records/2026-11-30_cpu-tiny-reproduction): 82M tokens, held-out unigram AUC 0.619;
GLUE pre-trained vs from scratch, 5-task average 44.1 vs 43.5 (STS-B +12.1, CoLA -6.1, SST-2
-1.8): no consistent gain at this budget. Its pre-training wall time was 2.5 hours beside
other runs.
Paths are relative to the repository root (the staged data sit in ../shared/data).
"""

from experiments.configs.cpu_reproduce import FLAGS as REPRODUCTION

# The reproduction's data, vocabulary and batch; the tiny model for 5x the steps.
FLAGS = {**REPRODUCTION, "preset": "tiny", "steps": 20000}

GLUE = {"tasks": "cola,sst2,mrpc,stsb,rte,wnli", "seeds": 3, "max_train_examples": 20000}
