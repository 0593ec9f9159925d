"""The ablation study at ELECTRA-Small's full shape on one GPU: every variant of cpu_ablate
for 500 steps of the paper's batch (128 x 128) on the shards packed into .devdata, then SST-2,
CoLA and RTE from each checkpoint.

    OUT=out STAGES=ablate bash benchmarks/device_session.sh     # on the GPU machine, runs:
    python -m experiments.ablate --study gpu_ablate --glue-dir .devdata/glue --device cuda

Expected on one H200: about 20 s of pre-training per variant (the CUDA-graph step at ~36
ms/step) and a minute of GLUE, so about six variants fit one 15-minute window (pick them with
ABLATE_ARGS="--variants ..."). ABLATE_ARGS="--jobs 2 ..." shares the card between two worker
processes; whether that beats one after another shows in the report's s/step and wall time.
Reached: not yet run (no GPU was lent since it was written).
"""

import dataclasses

from experiments.configs.cpu_ablate import STUDY as CPU_STUDY

FLAGS = {
    "preset": "small",
    "corpus": [".devdata/corpus"],
    "vocab_size": 30522,
    "batch_size": 128,
    "seq_len": 128,
    "steps": 500,
}

GLUE = {"tasks": "sst2,cola,rte", "seeds": 3, "max_train_examples": 2000}

# The same variants; the generator's delay is a quarter of these 500 steps.
STUDY = {"seeds": [0], "variants": [
    dataclasses.replace(v, recipe={"gen_delay_steps": 125}) if "gen_delay_steps" in v.recipe
    else v for v in CPU_STUDY["variants"]]}
