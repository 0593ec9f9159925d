#!/usr/bin/env bash
# One prepared call on a lent GPU machine: device checks, then the throughput benchmark against
# Hugging Face (bf16, batch 128), with a profile. Everything lands in $OUT (at most 8 files):
#   card.txt  checks.json  throughput.json  throughput.md  session.log  traces/*.json.gz
#
#   OUT=/tmp/out bash benchmarks/device_session.sh                  # on the GPU machine
#   DEVICE=cpu PRESET=tiny BATCH=8 CHECKS=hf_parity VARIANTS=ours-func-eager,hf-eager \
#       OUT=/tmp/out bash benchmarks/device_session.sh          # dry run on CPU (no compiles)
#
# Packages the GPU image lacks (orjson) travel as wheels in .whl/ (fetch them here with
# benchmarks/fetch_device_wheels.sh and name .whl in the call's carry); they are installed into
# /tmp/site first. Each stage has its own time limit, so a slow compile cannot eat the next
# stage's time, and a stage that fails leaves the others' files in place.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that receives the results}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-small}
BATCH=${BATCH:-128}
DTYPE=${DTYPE:-bf16}
VARIANTS=${VARIANTS:-ours-func-eager,ours-func-compile,ours-func-reduce-overhead,hf-eager,hf-compile}
CHECKS=${CHECKS:-compiled,bf16,hf_parity}
CHECKS_LIMIT=${CHECKS_LIMIT:-150}
BENCH_LIMIT=${BENCH_LIMIT:-330}
PY=${PYTHON:-python3}
mkdir -p "$OUT/traces"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    else
        echo "no nvidia-smi (device $DEVICE)"
    fi
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/card.txt" 2>&1
cat "$OUT/card.txt" | tee -a "$LOG"

status=0
echo "== checks (limit ${CHECKS_LIMIT}s)" | tee -a "$LOG"
timeout "$CHECKS_LIMIT" "$PY" benchmarks/gpu_checks.py --device "$DEVICE" --preset "$PRESET" \
    --checks "$CHECKS" --json "$OUT/checks.json" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "checks exit $rc" | tee -a "$LOG"; status=1; }

echo "== benchmark (limit ${BENCH_LIMIT}s)" | tee -a "$LOG"
timeout "$BENCH_LIMIT" "$PY" benchmarks/throughput.py --device "$DEVICE" --preset "$PRESET" \
    --batch-size "$BATCH" --dtype "$DTYPE" --variants "$VARIANTS" --profile \
    --json "$OUT/throughput.json" --md "$OUT/throughput.md" --trace-dir "$OUT/traces" \
    2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { echo "benchmark exit $rc" | tee -a "$LOG"; status=1; }
exit $status
