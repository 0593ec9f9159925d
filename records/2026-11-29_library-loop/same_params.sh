#!/usr/bin/env bash
# The same tiny pre-training run (fixed seed, CPU, float32) at two commits; compares the final
# parameters, optimizer state and held-out evaluations bit for bit.
#   [DTYPE=bf16] bash records/2026-11-29_library-loop/same_params.sh 69296a9 HEAD
set -euo pipefail
before=${1:-69296a9}; after=${2:-HEAD}
root=$(git rev-parse --show-toplevel); work=$(mktemp -d)
for rev in "$before" "$after"; do
  git -C "$root" worktree add --detach -q "$work/$rev" "$rev"
  (cd "$work/$rev" && PYTHONPATH="$work/$rev" python -c "import electra_fn; print('$rev:', electra_fn.__file__)" &&
   PYTHONPATH="$work/$rev" python -m experiments.pretrain_small --preset tiny \
     --corpus tests/fixtures/corpus --vocab-size 300 --steps 12 --batch-size 4 --seq-len 64 \
     --seed 3 --dtype "${DTYPE:-float32}" --no-plot --out "$work/run-$rev" --cache-dir "$work/cache-$rev" \
     > "$work/log-$rev" 2>&1)
done
python "$root/records/2026-11-29_library-loop/compare.py" "$work/run-$before" "$work/run-$after"
for rev in "$before" "$after"; do git -C "$root" worktree remove --force "$work/$rev"; done
