#!/bin/bash
# Random vs length-bucketed fine-tuning batches from the ablation study's baseline checkpoint.
set -e
cd /work/main && . .venv/bin/activate
CK=runs/ablate-cpu_ablate/baseline/seed0/pretrain
for mode in random bucketed; do
  extra=""; [ $mode = bucketed ] && extra="--length-bucketing"
  OMP_NUM_THREADS=1 python -m experiments.finetune_glue --checkpoint $CK --glue-dir ../shared/data/glue \
    --tasks sst2,cola,rte --seeds 3 --max-train-examples 2000 --threads 1 --no-progress \
    --cache-dir runs/bucketing/cache --out runs/bucketing/$mode $extra
done
