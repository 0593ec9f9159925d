"""The reproduction inside one 15-minute GPU window: ELECTRA-Small pre-trained for 6 minutes on
the Wikipedia shards packed into .devdata (benchmarks/prepare_device_data.sh), then GLUE from it
and from scratch, 3 seeds, at most 4,000 training examples per task.

    OUT=out STAGES=reproduce bash benchmarks/device_session.sh     # on the GPU machine, runs:
    python -m experiments.reproduce --config gpu_reproduce --glue-dir .devdata/glue --device cuda

Expected on one H200: about 6 minutes of pre-training (the CUDA-graph step at ~460k tokens/s:
~165M tokens, about 1% of the paper's compute, some 30 passes over the packed shards), then
about 6 minutes of GLUE. Reached: not yet run (no GPU was lent since it was written).
"""

FLAGS = {
    "preset": "small",
    "corpus": [".devdata/corpus"],
    "batch_size": 128,
    "seq_len": 128,
    "time_budget": 360.0,
}

GLUE = {"tasks": "cola,sst2,mrpc,stsb,rte,wnli", "seeds": 3, "max_train_examples": 4000}
