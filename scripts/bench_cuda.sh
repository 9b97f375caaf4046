#!/usr/bin/env bash
# GPU figures: builds bench_cuda_passes (bench/thrust_passes.cpp as CUDA, backend::thrust) in
# build/cuda and runs it, writing bench/gpu/bench_cuda_passes.json (every repetition) and
# bench/gpu/machine.txt; scripts/bench_report.py (run by scripts/bench.sh) adds them to
# bench/RESULTS.md as the GPU section. Needs nvcc, a CUDA GPU and Google Benchmark.
#
#   scripts/bench_cuda.sh                        # CMAKE_CUDA_ARCHITECTURES=90 (H100/H200)
#   FLATMIN_CUDA_ARCH=80 scripts/bench_cuda.sh   # another architecture
#
# Knobs (environment): FLATMIN_BENCH_REPS (default 5); FLATMIN_CUDA_BENCH_EXE=path runs a binary
# built elsewhere (same sources and cmake line) instead of building; FLATMIN_CUDA_BENCH_OUT=dir
# writes there instead of bench/gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FLATMIN_CUDA_BENCH_OUT:-bench/gpu}
exe=${FLATMIN_CUDA_BENCH_EXE:-}
if [ -z "$exe" ]; then
  cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release -DFLATMIN_ENABLE_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES="${FLATMIN_CUDA_ARCH:-90}" -DFLATMIN_BUILD_TESTS=OFF \
        -DFLATMIN_BUILD_BENCHMARKS=ON -DFLATMIN_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build build/cuda -j "$(nproc)" --target bench_cuda_passes >/dev/null
  exe=build/cuda/bench/bench_cuda_passes
fi
mkdir -p "$out"
reps=${FLATMIN_BENCH_REPS:-5}
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "command: FLATMIN_BENCH_REPS=$reps scripts/bench_cuda.sh $*"
  echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
  echo "host cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores"
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo 'not on PATH (binary built elsewhere)')"
} > "$out/machine.txt"
"$exe" --benchmark_repetitions="$reps" --benchmark_display_aggregates_only=true \
       --benchmark_out="$out/bench_cuda_passes.json" --benchmark_out_format=json "$@"
echo "flatmin: wrote $out/bench_cuda_passes.json and $out/machine.txt" >&2
