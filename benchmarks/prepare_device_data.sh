#!/usr/bin/env bash
# The pre-training corpus and its tokenized cache for benchmarks/device_session.sh, in .devdata/
# (ignored by git; carried to the GPU machine, whose image has no `datasets`):
#   .devdata/corpus/  SHARDS Wikipedia shards (xz; default 3, ~5M tokens, ~8 MB)
#   .devdata/cache/   the sentencepiece tokenizer and the packed examples (~28 MB)
#   .devdata/glue/    the GLUE tasks of the reproduction (GLUE=DIR, default ../shared/data/glue)
# built by a one-step CPU run. The cache is keyed by the corpus content, so the GPU run finds it.
#
#   bash benchmarks/prepare_device_data.sh ../shared/data/corpus/wikipedia_en_2015/train
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:?give the folder holding wiki_en_*.txt.xz}
SHARDS=${SHARDS:-3}
mkdir -p .git/info .devdata/corpus
grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo '/.devdata/' >> .git/info/exclude
ls "$SRC"/*.txt.xz | sort | head -n "$SHARDS" | xargs -I{} cp -f {} .devdata/corpus/
ELECTRA_FN_CACHE=.devdata/cache python -m experiments.pretrain_small --corpus .devdata/corpus \
    --steps 1 --device cpu --no-plot --out "$(mktemp -d)/devdata_build" --overwrite
GLUE=${GLUE:-../shared/data/glue}
if [ -d "$GLUE" ]; then
    mkdir -p .devdata/glue
    for t in CoLA SST-2 MRPC STS-B RTE WNLI; do cp -rf "$GLUE/$t" .devdata/glue/; done
fi
du -sh .devdata/corpus .devdata/cache .devdata/glue 2>/dev/null
