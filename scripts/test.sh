#!/usr/bin/env bash
# Builds every test (and, so that they cannot rot, the benchmarks and examples) and runs them
# with ctest. Fails on the first error.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)
cmake -S . -B build/test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLATMIN_BUILD_TESTS=ON \
      -DFLATMIN_BUILD_BENCHMARKS=ON -DFLATMIN_BUILD_EXAMPLES=ON
cmake --build build/test -j "$jobs"
ctest --test-dir build/test --output-on-failure -j "$jobs"
