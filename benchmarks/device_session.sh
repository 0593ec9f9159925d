#!/usr/bin/env bash
# The whole GPU measurement as one time-limited script, in three stages with their own limits
# (a slow compile in one cannot eat the next one's time; a failed stage leaves the others' files):
#   1. the throughput benchmark against Hugging Face (bf16, batch 128) with a profile;
#   2. a short pre-training run of `python -m experiments.pretrain_small` on the GPU (compiled,
#      bf16 autocast), its step count fitted from stage 1's measured step time;
#   3. the device checks of benchmarks/gpu_checks.py (compiled == eager, bf16, HF parity),
#      in the time that is left.
# Everything lands in $OUT (at most 8 files): card.txt session.log throughput.json
# throughput.md traces.tar.gz pretrain.tar.gz checks.json
#
#   OUT=/tmp/out bash benchmarks/device_session.sh                  # on the GPU machine
#   DEVICE=cpu PRESET=tiny BATCH=8 VARIANTS=ours-func-eager,hf-eager CHECKS=hf_parity \
#     PRETRAIN_ARGS="--preset tiny --batch-size 8 --no-compile" OUT=/tmp/out \
#     bash benchmarks/device_session.sh                            # dry run on CPU
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
VARIANTS=${VARIANTS:-hf-eager,ours-func-eager,ours-func-compile,hf-compile,ours-func-reduce-overhead}
CHECKS=${CHECKS:-hf_parity,compiled,bf16}
SESSION_S=${SESSION_S:-550}      # the whole session; the checks get what is left of it
BENCH_LIMIT=${BENCH_LIMIT:-230}
PRETRAIN_LIMIT=${PRETRAIN_LIMIT:-200}
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

# -- 1. benchmark ---------------------------------------------------------------------------
say "== 1. benchmark (limit ${BENCH_LIMIT}s)"
timeout -k 10 "$BENCH_LIMIT" "$PY" benchmarks/throughput.py --device "$DEVICE" --preset "$PRESET" \
    --batch-size "$BATCH" --dtype "$DTYPE" --variants "$VARIANTS" --profile \
    --time-limit $(( BENCH_LIMIT - 15 )) --json "$OUT/throughput.json" --md "$OUT/throughput.md" \
    --trace-dir "$WORK/traces" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { say "benchmark exit $rc"; status=1; }
if compgen -G "$WORK/traces/*" > /dev/null; then
    tar czf "$OUT/traces.tar.gz" -C "$WORK" traces
fi

# -- 2. pre-training on the device -------------------------------------------------------
# Steps that fit: the benchmark's compiled step time (x1.3 for the loop's data transfer and
# metrics), after the compile (its first call) and ~45 s of loading, evaluation and export.
STEPS=$("$PY" - "$OUT/throughput.json" "$PRETRAIN_LIMIT" <<'EOF'
import sys, orjson
limit = float(sys.argv[2])
try:
    rows = orjson.loads(open(sys.argv[1], "rb").read())["rows"]
    row = {r["variant"]: r for r in rows}.get("ours-func-compile") or min(
        (r for r in rows if r["implementation"] == "ours"), key=lambda r: r["ms_per_step"])
    step_s, compile_s = row["ms_per_step"] * 1.3 / 1000, row["first_call_s"]
except Exception:
    step_s, compile_s = 0.05, 90.0
print(max(100, min(20000, int((limit - compile_s - 45) / step_s))))
EOF
)
say "== 2. pre-training, ${STEPS} steps (limit ${PRETRAIN_LIMIT}s)"
PT_OUT="$WORK/pretrain"
CORPUS_ARGS=()  # without .devdata, the built-in corpus
[ -e "$CORPUS" ] && CORPUS_ARGS=(--corpus "$CORPUS")
timeout -k 15 "$PRETRAIN_LIMIT" "$PY" -m experiments.pretrain_small --device "$DEVICE" \
    "${CORPUS_ARGS[@]}" --steps "$STEPS" --out "$PT_OUT" --save-every 1h $PRETRAIN_ARGS \
    > "$WORK/pretrain.log" 2>&1
rc=$?; [ "$rc" -ne 0 ] && { say "pre-training exit $rc"; status=1; }
# the progress bar redraws with carriage returns: keep its last state and the other lines
tr '\r' '\n' < "$WORK/pretrain.log" | grep -v '^pre-training:' | grep -v '^\s*$' | tail -40 \
    | tee -a "$LOG"
tr '\r' '\n' < "$WORK/pretrain.log" | grep '^pre-training:' | tail -1 | tee -a "$LOG"
if [ -d "$PT_OUT" ]; then
    cp "$WORK/pretrain.log" "$PT_OUT/pretrain.log"
    (cd "$PT_OUT" && tar czf "$OUT/pretrain.tar.gz" --ignore-failed-read \
        $(ls config.json metrics.jsonl eval.jsonl summary.json curves.png pretrain.log \
          2>/dev/null))
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
