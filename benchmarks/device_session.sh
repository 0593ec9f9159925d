#!/usr/bin/env bash
# The whole GPU measurement as one time-limited script, in three stages with their own limits
# (a slow compile in one cannot eat the next one's time; a failed stage leaves the others' files):
#   1. a pre-training run of `python -m experiments.pretrain_small` on the GPU (compiled, bf16
#      autocast) under `--time-budget` (its compile, steps, evaluations and export all inside
#      it; the step is compiled once, its count fitted and re-fitted to the budget);
#   2. the throughput benchmark against Hugging Face (bf16, batch 128) with a profile, in the
#      time left; its compiled step of ours is the graph stage 1 compiled (the schedule is
#      data), which Inductor's on-disk caches can serve;
#   3. the device checks of benchmarks/gpu_checks.py (HF parity, compiled == eager, bf16),
#      in the time that is left.
# Everything lands in $OUT (at most 8 files): card.txt session.log throughput.json
# throughput.md traces.tar.gz pretrain.tar.gz checks.json
#
#   OUT=/tmp/out bash benchmarks/device_session.sh                  # on the GPU machine
#   DEVICE=cpu PRESET=tiny BATCH=8 VARIANTS=ours-func-eager,hf-eager CHECKS=hf_parity \
#     PRETRAIN_BUDGET=60 PRETRAIN_ARGS="--preset tiny --vocab-size 30522 --batch-size 8 \
#     --no-compile" SESSION_S=240 OUT=/tmp/out bash benchmarks/device_session.sh  # CPU dry run
#
# Packages the GPU image lacks (orjson) travel as wheels in .whl/ (benchmarks/
# fetch_device_wheels.sh); they are installed into /tmp/site first. The pre-training corpus
# and its tokenized cache travel in .devdata/ (corpus/ and cache/, built here beforehand by a
# one-step run with ELECTRA_FN_CACHE=.devdata/cache), since the image has no `datasets`;
# without .devdata/corpus the run uses the built-in corpus (its cache must then be there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that receives the results}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-small}
BATCH=${BATCH:-128}
DTYPE=${DTYPE:-bf16}
VARIANTS=${VARIANTS:-hf-eager,ours-func-compile,ours-autograd-eager,hf-compile}
CHECKS=${CHECKS:-hf_parity,bf16,compiled}
SESSION_S=${SESSION_S:-560}      # the whole session; each stage gets what is left of it
PRETRAIN_BUDGET=${PRETRAIN_BUDGET:-320}
PRETRAIN_ARGS=${PRETRAIN_ARGS:-}
CORPUS=${CORPUS:-.devdata/corpus}
PY=${PYTHON:-python3}
T0=$(date +%s)
mkdir -p "$OUT"
LOG="$OUT/session.log"
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export ELECTRA_FN_CACHE=${ELECTRA_FN_CACHE:-$PWD/.devdata/cache}
say() { echo "$(date -u +%H:%M:%S) [+$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
    else
        echo "no nvidia-smi (device $DEVICE)"
    fi
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
    nproc | sed 's/^/cpu cores /'
} > "$OUT/card.txt" 2>&1
tee -a "$LOG" < "$OUT/card.txt"
status=0

# -- 1. pre-training on the device -------------------------------------------------------
say "== 1. pre-training, --time-budget ${PRETRAIN_BUDGET}s"
PT_OUT="$WORK/pretrain"
CORPUS_ARGS=()  # without .devdata, the built-in corpus
[ -e "$CORPUS" ] && CORPUS_ARGS=(--corpus "$CORPUS")
timeout -k 15 $(( PRETRAIN_BUDGET + 60 )) "$PY" -m experiments.pretrain_small --device "$DEVICE" \
    "${CORPUS_ARGS[@]}" --time-budget "$PRETRAIN_BUDGET" --out "$PT_OUT" --save-every 1h \
    $PRETRAIN_ARGS > "$WORK/pretrain.log" 2>&1
rc=$?
if [ "$rc" -ne 0 ]; then
    say "pre-training exit $rc"; status=1
    # A compiled step that fails to build on this device must not cost the end-to-end run:
    # the eager step (autograd), with what is left of the budget.
    LEFT_PT=$(( PRETRAIN_BUDGET - ($(date +%s) - T0) ))
    if [ "$LEFT_PT" -ge 90 ] && ! grep -q "^done:" "$WORK/pretrain.log"; then
        mv "$WORK/pretrain.log" "$WORK/pretrain_compiled_failed.log"
        tail -30 "$WORK/pretrain_compiled_failed.log" | tee -a "$LOG"
        say "== 1b. pre-training again, eager (--no-compile), --time-budget ${LEFT_PT}s"
        timeout -k 15 $(( LEFT_PT + 60 )) "$PY" -m experiments.pretrain_small \
            --device "$DEVICE" "${CORPUS_ARGS[@]}" --time-budget "$LEFT_PT" --out "$PT_OUT" \
            --save-every 1h --overwrite $PRETRAIN_ARGS --no-compile > "$WORK/pretrain.log" 2>&1
        rc=$?; [ "$rc" -ne 0 ] && say "eager pre-training exit $rc"
    fi
fi
# the progress bar redraws with carriage returns: keep its last state and the other lines
tr '\r' '\n' < "$WORK/pretrain.log" | grep -v '^pre-training:' | grep -v '^\s*$' | tail -40 \
    | tee -a "$LOG"
tr '\r' '\n' < "$WORK/pretrain.log" | grep '^pre-training:' | tail -1 | tee -a "$LOG"
if [ -d "$PT_OUT" ]; then
    cp "$WORK/pretrain.log" "$PT_OUT/pretrain.log"
    [ -f "$WORK/pretrain_compiled_failed.log" ] && cp "$WORK/pretrain_compiled_failed.log" "$PT_OUT/"
    (cd "$PT_OUT" && tar czf "$OUT/pretrain.tar.gz" --ignore-failed-read \
        $(ls config.json metrics.jsonl eval.jsonl summary.json curves.png pretrain.log \
          pretrain_compiled_failed.log 2>/dev/null))
fi

# -- 2. benchmark, in the time left -----------------------------------------------------
LEFT=$(( SESSION_S - ($(date +%s) - T0) ))
if [ "$LEFT" -ge 60 ]; then
    say "== 2. benchmark (limit ${LEFT}s)"
    timeout -k 10 "$LEFT" "$PY" benchmarks/throughput.py --device "$DEVICE" --preset "$PRESET" \
        --batch-size "$BATCH" --dtype "$DTYPE" --variants "$VARIANTS" --profile \
        --time-limit $(( LEFT - 50 )) --json "$OUT/throughput.json" --md "$OUT/throughput.md" \
        --trace-dir "$WORK/traces" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { say "benchmark exit $rc"; status=1; }
    if compgen -G "$WORK/traces/*" > /dev/null; then
        tar czf "$OUT/traces.tar.gz" -C "$WORK" traces
    fi
else
    say "== 2. benchmark skipped: ${LEFT}s left"
fi

# -- 3. device checks, in the time left -----------------------------------------------------
LEFT=$(( SESSION_S - ($(date +%s) - T0) ))
if [ "$LEFT" -ge 30 ]; then
    say "== 3. checks (limit ${LEFT}s)"
    timeout -k 10 "$LEFT" "$PY" benchmarks/gpu_checks.py --device "$DEVICE" --preset "$PRESET" \
        --checks "$CHECKS" --json "$OUT/checks.json" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { say "checks exit $rc"; status=1; }
else
    say "== 3. checks skipped: ${LEFT}s left"
fi
say "done, status $status"
exit $status
