#!/bin/bash
# The 15-minute CPU default's recipe at a fixed 608 steps (the record's step count), current
# peak lr (5e-4 x sqrt(16/128) = 1.77e-4) against 5e-4; one thread each, side by side.
cd /work/main && . .venv/bin/activate
for lr in 1.77e-4 5e-4; do
  OMP_NUM_THREADS=1 python -m experiments.pretrain_small --steps 608 --lr $lr \
    --out runs/lr-default/lr-$lr > runs/lr-default/lr-$lr.log 2>&1 < /dev/null &
done
wait
