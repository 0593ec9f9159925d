"""The 15-minute CPU default: ELECTRA-Small on the built-in corpus, fitted to the budget.

    python -m experiments.pretrain_small --config cpu_default

Expected: 15 minutes on a 2-core CPU (the step count is fitted to the budget and re-fitted from
the run's own pace; batch 16 x 128, bf16 autocast where the CPU has it).
Reached (records/2026-11-29_cpu-default): 608 steps, 1.25M tokens; held-out generator accuracy
0 -> 0.066, discriminator ROC AUC 0.52 -> 0.83 (step 166) -> 0.72, unigram AUC 0.50.
The same as running without flags on a CPU.
"""

FLAGS = {
    "preset": "small",
    "batch_size": 16,
    "seq_len": 128,
    "time_budget": 15 * 60.0,
}
