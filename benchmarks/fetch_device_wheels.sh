#!/usr/bin/env bash
# Wheels for the packages the GPU machine's image lacks, for its Python 3.12 on x86-64, into
# .whl/ (ignored by git). benchmarks/device_session.sh installs them there before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "orjson>=3.9" "${@}"
ls -l .whl
