#!/usr/bin/env bash
# The whole GPU measurement as one time-limited script, in stages with their own limits (a slow
# stage cannot eat the next one's time; every stage writes its own files):
#   1. device checks of benchmarks/gpu_checks.py (default: the CUDA-graph step against the same
#      step run op by op, HF parity, the compiled step against eager (2 layers, ~90 s on an
#      H200), and the data-parallel step on one NCCL rank);
#   2. the throughput benchmark against Hugging Face with a profile (default variants: HF eager,
#      our eager step, our CUDA-graph step);
#   3. a pre-training run of `python -m experiments.pretrain_small` on the GPU (its default
#      there: the CUDA-graph step, bf16 autocast) under `--time-budget`: the end-to-end path;
#   4. if at least COMPILE_MIN seconds are left: the cold compile of the full training step
#      (benchmarks/compile_time.py, ELECTRA-Small, bf16, batch 128): its time, or "not
#      finished after N s", and if it finishes the compiled step's ms/step.
#   original (only when named in STAGES): the paper's recipe as the original runs it (1M-step
#      schedule, 10k warmup, Adam without bias correction) stopped at ORIGINAL_STEPS (5,000),
#      held-out evaluation every 500 steps, for the side-by-side with google-research/electra#81.
#   reproduce (only when named in STAGES): `python -m experiments.reproduce` with REPRO_CONFIG
#      (default gpu_reproduce: 6 minutes of pre-training on .devdata/corpus, then GLUE from
#      .devdata/glue from the checkpoint and from scratch); results.md, report.json,
#      compute.png and the runs' JSON in reproduce.tar.gz.
#   ablate (only when named in STAGES): `python -m experiments.ablate` with ABLATE_STUDY (default
#      gpu_ablate) and ABLATE_ARGS (e.g. --variants baseline,dropout-0, or --jobs 2 to share
#      the card); results.md, report.json, the plots and the runs' files in ablate.tar.gz.
#   compile_cache (only when named in STAGES): the portable compile cache of the compiled step
#      (electra_fn.compile_cache) through benchmarks/compile_time.py, which may compile on CUDA:
#      a cold compile that saves the artifacts (limit: the time left less WARM_RESERVE), then a
#      fresh process with empty caches that loads them; compile_cache-cold.json,
#      compile_cache-warm.json, and compile_cache.tar (unpack into the repo's compile_cache/).
# STAGES (default checks,bench,pretrain,compile) picks stages. Everything lands in $OUT (at most 8 files): card.txt session.log checks.json
# throughput.json throughput.md traces.tar.gz pretrain.tar.gz compile.json
#
#   OUT=/tmp/out bash benchmarks/device_session.sh                  # on the GPU machine
#   STAGES=checks,compile_cache CHECKS=compiled_diag OUT=/tmp/out bash benchmarks/device_session.sh
#   DEVICE=cpu PRESET=tiny BATCH=8 LAYERS=1 CHECKS=graph,hf_parity COMPILE_MIN=100 \
#     PRETRAIN_BUDGET=60 PRETRAIN_ARGS="--preset tiny --vocab-size 30522 --batch-size 8" \
#     VARIANTS=hf-eager,ours-autograd-eager SESSION_S=420 OUT=/tmp/out \
#     bash benchmarks/device_session.sh                             # dry run on CPU
#   (the compile_cache stage on CPU: STAGES=compile_cache DEVICE=cpu PRESET=tiny LAYERS=1 BATCH=2
#    DTYPE=float32 WARM_RESERVE=60 SESSION_S=1500 OUT=/tmp/out bash benchmarks/device_session.sh)
#
# Packages the GPU image lacks (orjson) travel as wheels in .whl/ (benchmarks/
# fetch_device_wheels.sh); they are installed into /tmp/site first. The pre-training corpus
# and its tokenized cache travel in .devdata/ (corpus/ and cache/, built here beforehand by
# benchmarks/prepare_device_data.sh), since the image has no `datasets`; without
# .devdata/corpus the run uses the built-in corpus (its cache must then be there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that receives the results}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-small}
LAYERS=${LAYERS:-12}
BATCH=${BATCH:-128}
DTYPE=${DTYPE:-bf16}
STAGES=${STAGES:-checks,bench,pretrain,compile}  # the stages to run, in this order
CHECKS=${CHECKS:-graph,hf_parity,compiled,data_parallel}
CHECKS_LIMIT=${CHECKS_LIMIT:-240}
VARIANTS=${VARIANTS:-hf-eager,ours-autograd-eager,ours-autograd-graph}
SESSION_S=${SESSION_S:-540}      # the whole session; the last stages get what is left of it
COMPILE_MIN=${COMPILE_MIN:-240}
PRETRAIN_BUDGET=${PRETRAIN_BUDGET:-150}
PRETRAIN_ARGS=${PRETRAIN_ARGS:-}
ORIGINAL_STEPS=${ORIGINAL_STEPS:-5000}
ORIGINAL_ARGS=${ORIGINAL_ARGS:-}
REPRO_CONFIG=${REPRO_CONFIG:-gpu_reproduce}
REPRO_ARGS=${REPRO_ARGS:-}
ABLATE_STUDY=${ABLATE_STUDY:-gpu_ablate}
ABLATE_ARGS=${ABLATE_ARGS:-}
WARM_RESERVE=${WARM_RESERVE:-150}  # compile_cache: seconds kept for the warm start
GLUE_DIR=${GLUE_DIR:-.devdata/glue}
CORPUS=${CORPUS:-.devdata/corpus}
PY=${PYTHON:-python3}
T0=$(date +%s)
mkdir -p "$OUT"
LOG="$OUT/session.log"
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export ELECTRA_FN_CACHE=${ELECTRA_FN_CACHE:-$PWD/.devdata/cache}
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"
say() { echo "$(date -u +%H:%M:%S) [+$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
left() { echo $(( SESSION_S - ($(date +%s) - T0) )); }
stage() { [[ ",$STAGES," == *",$1,"* ]]; }
# a run's log without the progress bar's redraws (carriage returns), its last N lines
show_log() { tr '\r' '\n' < "$1" | grep -v '^pre-training:' | grep -v '^\s*$' | tail -"$2" \
    | tee -a "$LOG"; }

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

# -- 1. device checks ---------------------------------------------------------------------
L=$(( CHECKS_LIMIT < $(left) ? CHECKS_LIMIT : $(left) ))
if stage checks; then
    say "== 1. checks $CHECKS (limit ${L}s)"
    timeout -k 10 "$L" "$PY" -m benchmarks.gpu_checks --device "$DEVICE" --preset "$PRESET" \
        --checks "$CHECKS" --json "$OUT/checks.json" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { say "checks exit $rc"; status=1; }
fi

# -- 2. benchmark -----------------------------------------------------------------------------
L=$(( $(left) - PRETRAIN_BUDGET - 40 ))
if ! stage bench; then
    :
elif [ "$L" -ge 60 ]; then
    say "== 2. benchmark $VARIANTS (limit ${L}s)"
    timeout -k 10 "$L" "$PY" -m benchmarks.throughput --device "$DEVICE" --preset "$PRESET" \
        --batch-size "$BATCH" --dtype "$DTYPE" --variants "$VARIANTS" --profile \
        --time-limit $(( L - 50 )) --json "$OUT/throughput.json" --md "$OUT/throughput.md" \
        --trace-dir "$WORK/traces" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { say "benchmark exit $rc"; status=1; }
    if compgen -G "$WORK/traces/*" > /dev/null; then
        tar czf "$OUT/traces.tar.gz" -C "$WORK" traces
    fi
else
    say "== 2. benchmark skipped: ${L}s left for it"
fi

# -- 3. pre-training on the device (its defaults: CUDA graph, bf16) ---------------------------
B=$(( $(left) - 30 < PRETRAIN_BUDGET ? $(left) - 30 : PRETRAIN_BUDGET ))
if ! stage pretrain; then
    :
elif [ "$B" -ge 45 ]; then
    say "== 3. pre-training, --time-budget ${B}s"
    PT_OUT="$WORK/pretrain"
    CORPUS_ARGS=()  # without .devdata, the built-in corpus
    [ -e "$CORPUS" ] && CORPUS_ARGS=(--corpus "$CORPUS")
    timeout -k 15 $(( B + 30 )) "$PY" -m experiments.pretrain_small --device "$DEVICE" \
        "${CORPUS_ARGS[@]}" --time-budget "$B" --out "$PT_OUT" --save-every 1h \
        $PRETRAIN_ARGS > "$WORK/pretrain.log" 2>&1
    rc=$?; [ "$rc" -ne 0 ] && { say "pre-training exit $rc"; status=1; }
    # the progress bar redraws with carriage returns: keep its last state and the other lines
    show_log "$WORK/pretrain.log" 40
    tr '\r' '\n' < "$WORK/pretrain.log" | grep '^pre-training:' | tail -1 | tee -a "$LOG"
    if [ -d "$PT_OUT" ]; then
        cp "$WORK/pretrain.log" "$PT_OUT/pretrain.log"
        (cd "$PT_OUT" && tar czf "$OUT/pretrain.tar.gz" --ignore-failed-read \
            $(ls config.json metrics.jsonl eval.jsonl summary.json curves.png pretrain.log \
              2>/dev/null))
    fi
else
    say "== 3. pre-training skipped: ${B}s left for it"
fi

# -- the original's recipe to step ORIGINAL_STEPS (named stage only) --------------------------
L=$(( $(left) - 20 ))
if stage original; then
    say "== original recipe to step $ORIGINAL_STEPS (limit ${L}s)"
    OR_OUT="$WORK/original"
    CORPUS_ARGS=()
    [ -e "$CORPUS" ] && CORPUS_ARGS=(--corpus "$CORPUS")
    timeout -k 15 "$L" "$PY" -m experiments.pretrain_small --device "$DEVICE" \
        "${CORPUS_ARGS[@]}" --steps 1000000 --stop-at-step "$ORIGINAL_STEPS" \
        --eval-every 500 --save-every 1h --out "$OR_OUT" $ORIGINAL_ARGS > "$WORK/original.log" 2>&1
    rc=$?; [ "$rc" -ne 0 ] && { say "original recipe exit $rc"; status=1; }
    show_log "$WORK/original.log" 30
    if [ -d "$OR_OUT" ]; then
        cp "$WORK/original.log" "$OR_OUT/original.log"
        (cd "$OR_OUT" && tar czf "$OUT/original.tar.gz" --ignore-failed-read \
            $(ls config.json metrics.jsonl eval.jsonl original.log 2>/dev/null))
    fi
fi

# -- the experiments that end in GLUE (named stages only) -----------------------------------
# run_experiment NAME "ARGS" "FILES": python -m experiments.NAME into $WORK/NAME under the time
# left; its log and FILES (globs inside its folder) into $OUT/NAME.tar.gz.
run_experiment() {
    local name=$1 args=$2 files=$3 dir="$WORK/$1" limit=$(( $(left) - 20 ))
    say "== $name: $args (limit ${limit}s)"
    timeout -k 15 "$limit" "$PY" -m "experiments.$name" $args --glue-dir "$GLUE_DIR" \
        --device "$DEVICE" --out "$dir" > "$WORK/$name.log" 2>&1
    local rc=$?; [ "$rc" -ne 0 ] && { say "$name exit $rc"; status=1; }
    show_log "$WORK/$name.log" 50
    if [ -d "$dir" ]; then
        cp "$WORK/$name.log" "$dir/$name.log"
        (cd "$dir" && tar czf "$OUT/$name.tar.gz" --ignore-failed-read \
            $(ls $files "$name.log" 2>/dev/null))
    fi
}
# The reproduction: pre-training, GLUE from it and from scratch, the report.
stage reproduce && run_experiment reproduce "--config $REPRO_CONFIG $REPRO_ARGS" \
    "results.md report.json compute.png pretrain/config.json pretrain/metrics.jsonl
     pretrain/eval.jsonl pretrain/summary.json glue_pretrained/*.json glue_scratch/*.json"
# The ablation study: variants at equal FLOPs, GLUE from each.
# (** for variants named like gen-1/4; worker.log from ABLATE_ARGS="--jobs N")
shopt -s globstar
stage ablate && run_experiment ablate "--study $ABLATE_STUDY $ABLATE_ARGS" \
    "results.md report.json study.png curves.png **/seed*/pretrain/config.json
     **/seed*/pretrain/summary.json **/seed*/pretrain/eval.jsonl **/seed*/pretrain/metrics.jsonl
     **/seed*/glue/*.json **/seed*/worker.log"

# -- the portable compile cache: cold compile and save, then a warm start (named stage only) --
L=$(( $(left) - WARM_RESERVE - 10 ))
if ! stage compile_cache; then
    :
elif [ "$L" -ge 60 ]; then
    say "== compile cache, $PRESET with $LAYERS layers, batch $BATCH, $DTYPE: cold (limit ${L}s)"
    CC="$WORK/compile_cache"
    CC_ARGS=(--preset "$PRESET" --layers "$LAYERS" --batch-size "$BATCH" --device "$DEVICE"
             --dtype "$DTYPE" --warm-start "$CC")
    "$PY" -m benchmarks.compile_time "${CC_ARGS[@]}" --phases cold --timeout "$L" \
        --json "$OUT/compile_cache-cold.json" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { say "compile cache (cold) exit $rc"; status=1; }
    if compgen -G "$CC/*/*/*.bin" > /dev/null; then
        tar cf "$OUT/compile_cache.tar" -C "$CC" .
        TAR_BYTES=$(stat -c %s "$OUT/compile_cache.tar")
        say "compile_cache.tar: $TAR_BYTES bytes"
        [ "$TAR_BYTES" -gt 16777216 ] && say "warning: compile_cache.tar is over 16 MiB: it" \
            "will not come back"
        L=$(( $(left) - 10 ))
        say "== compile cache: warm start (limit ${L}s)"
        "$PY" -m benchmarks.compile_time "${CC_ARGS[@]}" --phases warm --timeout "$L" \
            --json "$OUT/compile_cache-warm.json" 2>&1 | tee -a "$LOG"
        rc=${PIPESTATUS[0]}; [ "$rc" -ne 0 ] && { say "compile cache (warm) exit $rc"; status=1; }
    else
        say "compile cache: nothing saved, no warm start"
    fi
else
    say "== compile cache skipped: ${L}s left for the cold compile"
fi

# -- 4. cold compile of the training step, if there is time for it ---------------------------
L=$(( $(left) - 10 ))
if ! stage compile; then
    :
elif [ "$L" -ge "$COMPILE_MIN" ]; then
    say "== 4. cold compile, $PRESET with $LAYERS layers, batch $BATCH, $DTYPE (limit ${L}s)"
    "$PY" -m benchmarks.compile_time --which library --preset "$PRESET" --layers "$LAYERS" \
        --batch-size "$BATCH" --device "$DEVICE" --dtype "$DTYPE" --timeout "$L" \
        --cache-dir "$TORCHINDUCTOR_CACHE_DIR" --json "$OUT/compile.json" 2>&1 | tee -a "$LOG"
else
    say "== 4. cold compile skipped: ${L}s left (COMPILE_MIN ${COMPILE_MIN}s)"
fi
say "done, status $status"
exit $status
