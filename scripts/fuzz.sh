#!/usr/bin/env bash
# Usage: scripts/fuzz.sh [SECONDS]
# Builds the libFuzzer target for sharpness_aware::load() with clang (build/fuzz, ASan + UBSan),
# writes the seed corpus (valid checkpoints of every composition in tests/fuzz/compositions.hpp),
# replays the committed regression inputs (tests/fuzz/regressions), then fuzzes for SECONDS
# (default 60) with a 2 GiB memory limit. Exits non-zero when an input crashes, leaks, times out
# or runs out of memory (the input is left in build/fuzz/artifacts/); 0 otherwise.
# Environment: CXX (default clang++-14, else clang++), JOBS (build parallelism, default 2).
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build/fuzz
cxx=${CXX:-$(command -v clang++-14 || command -v clang++ || true)}
if [[ -z "$cxx" ]]; then
  echo "fuzz.sh: clang++ not found (set CXX)" >&2
  exit 2
fi

cmake -S "$root" -B "$build" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFLATMIN_BUILD_FUZZERS=ON -DFLATMIN_BUILD_TESTS=OFF -DFLATMIN_BUILD_BENCHMARKS=OFF \
  -DFLATMIN_BUILD_EXAMPLES=OFF -DFLATMIN_ENABLE_THRUST=OFF -DFLATMIN_ENABLE_OPENMP=OFF >/dev/null
cmake --build "$build" -j"${JOBS:-2}" --target flatmin_fuzz_load flatmin_fuzz_seeds

corpus=$build/corpus
mkdir -p "$corpus" "$build/artifacts"
"$build/fuzz/flatmin_fuzz_seeds" "$corpus"
fuzzer=$build/fuzz/flatmin_fuzz_load
if compgen -G "$root/tests/fuzz/regressions/*" >/dev/null; then
  "$fuzzer" -rss_limit_mb=2048 -timeout=20 "$root"/tests/fuzz/regressions/*
fi
"$fuzzer" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
  -artifact_prefix="$build/artifacts/" "$corpus"
