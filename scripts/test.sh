#!/usr/bin/env bash
# Builds every test (and, so that they cannot rot, the benchmarks and examples) and runs them
# with ctest, then the checking stages below. Fails on the first error. Each stage can be turned
# off with its variable (e.g. FLATMIN_CI_SANITIZE=0 FLATMIN_CI_CLANG=0 FLATMIN_CI_FUZZ=0 for the
# fast part alone); CI (.ci/run) runs them all. Each stage prints its wall time.
#   main      build/test: g++ RelWithDebInfo, tests + benchmarks + examples, ctest
#   cuda      build/cuda: when nvcc is found (on PATH or in /usr/local/cuda/bin), compiles and links
#             the CUDA tests and benchmarks (no GPU is assumed: on a GPU run `ctest --test-dir
#             build/cuda`)                                                  (FLATMIN_SKIP_CUDA=1)
#   sanitize  build/asan: g++ with AddressSanitizer + UndefinedBehaviorSanitizer (-O1, any UB is
#             an error), the tests only, the whole ctest suite             (FLATMIN_CI_SANITIZE=0)
#   clang     build/clang: clang++-14, the tests only, compiled and run    (FLATMIN_CI_CLANG=0)
#             Both with FLATMIN_TEST_ISA_CLONES=OFF: the host passes' per-ISA clones (a third more
#             compile time) only in test_isa_dispatch there; the main stage compiles them everywhere.
#   fuzz      scripts/fuzz.sh 60 (libFuzzer on load()), when that script exists (FLATMIN_CI_FUZZ=0)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)

stage_start=0
stage() { stage_start=$(date +%s); echo "flatmin: stage $1"; }
stage_done() { echo "flatmin: stage $1 took $(( $(date +%s) - stage_start )) s"; }

stage main
cmake -S . -B build/test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLATMIN_BUILD_TESTS=ON \
      -DFLATMIN_BUILD_BENCHMARKS=ON -DFLATMIN_BUILD_EXAMPLES=ON
cmake --build build/test -j "$jobs"
ctest --test-dir build/test --output-on-failure -j "$jobs"
stage_done main

nvcc_bin=$(command -v nvcc || true)
[ -n "$nvcc_bin" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc_bin=/usr/local/cuda/bin/nvcc; } || true
if [ -n "$nvcc_bin" ] && [ "${FLATMIN_SKIP_CUDA:-0}" != 1 ]; then
  stage cuda
  echo "flatmin: compiling the CUDA build with $nvcc_bin (compile and link only)"
  cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release -DFLATMIN_ENABLE_CUDA=ON \
        -DCMAKE_CUDA_COMPILER="$nvcc_bin" -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DFLATMIN_BUILD_TESTS=ON -DFLATMIN_BUILD_BENCHMARKS=ON -DFLATMIN_BUILD_EXAMPLES=OFF
  cmake --build build/cuda -j "$jobs" --target flatmin_cuda_tests flatmin_cuda_benchmarks
  stage_done cuda
else
  echo "flatmin: nvcc not found, CUDA build not compiled"
fi

if [ "${FLATMIN_CI_SANITIZE:-1}" != 0 ]; then
  stage sanitize
  # -O1 keeps the instrumented build and run affordable; RelWithDebInfo for file:line in reports.
  san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
  cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=g++ \
        -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_FLAGS="$san" \
        -DCMAKE_EXE_LINKER_FLAGS="$san" -DFLATMIN_BUILD_TESTS=ON -DFLATMIN_TEST_ISA_CLONES=OFF \
        -DFLATMIN_BUILD_BENCHMARKS=OFF -DFLATMIN_BUILD_EXAMPLES=OFF
  cmake --build build/asan -j "$jobs"
  # FLATMIN_CI_SANITIZE_EXCLUDE: a ctest -E regex, should the stage need trimming to fit CI's budget.
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build/asan --output-on-failure -j "$jobs" ${FLATMIN_CI_SANITIZE_EXCLUDE:+-E "$FLATMIN_CI_SANITIZE_EXCLUDE"}
  stage_done sanitize
fi

if [ "${FLATMIN_CI_CLANG:-1}" != 0 ]; then
  stage clang
  # libtorch 1.13 (Debian) does not compile under clang++-14 in C++20: CMake leaves flatmin::torch
  # and tests/torch out of this stage (it says so in a warning); g++ stages build and run them.
  echo "flatmin: with libtorch 1.x the clang stage has no flatmin::torch (its headers fail under clang in C++20)"
  cmake -S . -B build/clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
        -DFLATMIN_BUILD_TESTS=ON -DFLATMIN_TEST_ISA_CLONES=OFF -DFLATMIN_BUILD_BENCHMARKS=OFF \
        -DFLATMIN_BUILD_EXAMPLES=OFF
  cmake --build build/clang -j "$jobs"
  ctest --test-dir build/clang --output-on-failure -j "$jobs"
  stage_done clang
fi

if [ "${FLATMIN_CI_FUZZ:-1}" != 0 ]; then
  if [ -f scripts/fuzz.sh ]; then
    stage fuzz
    bash scripts/fuzz.sh 60
    stage_done fuzz
  else
    echo "flatmin: scripts/fuzz.sh not found, fuzzing skipped"
  fi
fi
