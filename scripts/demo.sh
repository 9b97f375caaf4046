#!/usr/bin/env bash
# Builds and runs the main demo: SAM-family optimizers against their base optimizer on the
# digits data set with 30 % label noise (examples/digits_demo.cpp). Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DFLATMIN_BUILD_TESTS=OFF -DFLATMIN_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build/release --target digits_demo -j "$(nproc)"
exec build/release/examples/digits_demo "$@"
