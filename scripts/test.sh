#!/usr/bin/env bash
# Builds every test (and, so that they cannot rot, the benchmarks and examples) and runs them
# with ctest. Fails on the first error. When nvcc is found (on PATH or in /usr/local/cuda/bin),
# also configures build/cuda with FLATMIN_ENABLE_CUDA=ON and compiles and links the CUDA tests
# and benchmarks (no GPU is assumed: they are not run here; on a GPU run `ctest --test-dir build/cuda`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)
cmake -S . -B build/test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLATMIN_BUILD_TESTS=ON \
      -DFLATMIN_BUILD_BENCHMARKS=ON -DFLATMIN_BUILD_EXAMPLES=ON
cmake --build build/test -j "$jobs"
ctest --test-dir build/test --output-on-failure -j "$jobs"

nvcc_bin=$(command -v nvcc || true)
[ -n "$nvcc_bin" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc_bin=/usr/local/cuda/bin/nvcc; } || true
if [ -n "$nvcc_bin" ] && [ "${FLATMIN_SKIP_CUDA:-0}" != 1 ]; then
  echo "flatmin: compiling the CUDA build with $nvcc_bin (compile and link only)"
  start=$(date +%s)
  cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release -DFLATMIN_ENABLE_CUDA=ON \
        -DCMAKE_CUDA_COMPILER="$nvcc_bin" -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DFLATMIN_BUILD_TESTS=ON -DFLATMIN_BUILD_BENCHMARKS=ON -DFLATMIN_BUILD_EXAMPLES=OFF
  cmake --build build/cuda -j "$jobs" --target flatmin_cuda_tests flatmin_cuda_benchmarks
  echo "flatmin: CUDA build compiled in $(( $(date +%s) - start )) s"
else
  echo "flatmin: nvcc not found, CUDA build not compiled"
fi
