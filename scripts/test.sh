#!/usr/bin/env bash
# Builds every test (and, so that they cannot rot, the benchmarks and examples) and runs them
# with ctest, then the checking stages below. Fails on the first error. Each stage can be turned
# off with its variable (e.g. FLATMIN_CI_SANITIZE=0 FLATMIN_CI_FUZZ=0 for the fast part alone);
# CI (.ci/run) runs them all. Each stage prints its wall time.
#   main      build/test: g++ -O2 without debug information, tests + benchmarks + examples, ctest
#   cuda      build/cuda: when nvcc is found (on PATH or in /usr/local/cuda/bin), compiles and links
#             the CUDA tests (no GPU is assumed: on a GPU run `ctest --test-dir build/cuda`), with
#             comm::nccl's test when NCCL is found (tests/nccl, one rank per GPU); the
#             CUDA benchmark and test_precision's twin too with FLATMIN_CI_CUDA_FULL=1. As PTX
#             for compute_90 alone by default (no ptxas: see the stage); FLATMIN_CI_CUDA_ARCH=90
#             adds the sm_90 machine code                                  (FLATMIN_SKIP_CUDA=1)
#   sanitize  build/asan: clang++-14 with AddressSanitizer + UndefinedBehaviorSanitizer (-O1, any
#             UB is an error), the tests only, the whole ctest suite but the headers-alone parse
#             (the main stage runs it) and the Thrust twins of the policy tests (whose
#             backend-generic bodies run on backend::thrust in every test anyway). This is also the clang stage: the tests compiled and run
#             by a second compiler (FLATMIN_CI_SANITIZE=0). libtorch's tests run in a build of
#             their own, build/asan-torch, under g++'s ASan + UBSan: Debian's libtorch 1.13
#             headers do not compile under clang++ in C++20.
#   fuzz      scripts/fuzz.sh 60 (libFuzzer on load()), when that script exists (FLATMIN_CI_FUZZ=0)
# Every stage compiles the tests with FLATMIN_TEST_ISA_CLONES=OFF: the host passes' per-ISA clones
# (a third of a test's compile time) only in tests/backend/test_isa_dispatch, which runs whole steps
# of every clone this CPU has and compares them bit for bit with the baseline. Benchmarks and
# examples keep the clones (as a user's build does).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)

stage_start=0
stage() { stage_start=$(date +%s); echo "flatmin: stage $1"; }
stage_done() { echo "flatmin: stage $1 took $(( $(date +%s) - stage_start )) s"; }

stage main
# -O2 as users build; no -g: debug information is a third of the compile time here.
cmake -S . -B build/test -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
      -DFLATMIN_BUILD_TESTS=ON -DFLATMIN_TEST_ISA_CLONES=OFF -DFLATMIN_BUILD_BENCHMARKS=ON \
      -DFLATMIN_BUILD_EXAMPLES=ON
cmake --build build/test -j "$jobs"
ctest --test-dir build/test --output-on-failure -j "$jobs"
stage_done main

nvcc_bin=$(command -v nvcc || true)
[ -n "$nvcc_bin" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc_bin=/usr/local/cuda/bin/nvcc; } || true
if [ -n "$nvcc_bin" ] && [ "${FLATMIN_SKIP_CUDA:-0}" != 1 ]; then
  stage cuda
  echo "flatmin: compiling the CUDA build with $nvcc_bin (compile and link only)"
  # Without a GPU this is a compile check, so by default only the CUDA tests that cover every
  # composition on the device (test_differential), the primitives and top-k, and comm::nccl's
  # data_parallel test. FLATMIN_CI_CUDA_FULL=1 adds test_precision's twin and the CUDA benchmark.
  # They are compiled to PTX alone (CMAKE_CUDA_ARCHITECTURES=90-virtual): the front end (cicc) and
  # the host compiler check every line, and ptxas, which turns PTX into machine code and was 62 % of
  # the time (test_differential: ptxas 520 s, cicc 168 s, host g++ 153 s of 14 min 8 s, nvcc --time,
  # 2026-12-02), is left to the GPU run, which builds with CMAKE_CUDA_ARCHITECTURES=90 (the binaries
  # built here would still run there, the driver compiling their PTX at load). Measured on the 2-core
  # AMD EPYC VM: this stage took 392 s as PTX (over 14 min with machine code; 12–19 minutes in past
  # CI runs).
  cuda_tests="backend/test_differential.cpp;backend/test_thrust_primitives.cpp;unit/test_top_k.cpp"
  cuda_targets=flatmin_cuda_tests
  if [ "${FLATMIN_CI_CUDA_FULL:-0}" = 1 ]; then
    cuda_tests="$cuda_tests;unit/test_precision.cpp"
    cuda_targets="flatmin_cuda_tests flatmin_cuda_benchmarks"
  fi
  cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release -DFLATMIN_ENABLE_CUDA=ON \
        -DCMAKE_CUDA_COMPILER="$nvcc_bin" -DCMAKE_CUDA_ARCHITECTURES="${FLATMIN_CI_CUDA_ARCH:-90-virtual}" \
        -DFLATMIN_CUDA_TESTS="$cuda_tests" \
        -DFLATMIN_BUILD_TESTS=ON -DFLATMIN_BUILD_BENCHMARKS=ON -DFLATMIN_BUILD_EXAMPLES=OFF
  # shellcheck disable=SC2086
  cmake --build build/cuda -j "$jobs" --target $cuda_targets
  stage_done cuda
else
  echo "flatmin: nvcc not found, CUDA build not compiled"
fi

if [ "${FLATMIN_CI_SANITIZE:-1}" != 0 ]; then
  stage sanitize
  # clang++ rather than g++: the same checks at about 0.6 of g++'s instrumented compile time, and a
  # second compiler for the whole suite. -O1 keeps the run affordable; line tables for file:line.
  san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
  cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
        -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" -DCMAKE_CXX_FLAGS="$san" \
        -DCMAKE_EXE_LINKER_FLAGS="$san" -DFLATMIN_BUILD_TESTS=ON -DFLATMIN_TEST_ISA_CLONES=OFF \
        -DFLATMIN_TEST_THRUST_TWINS=OFF -DFLATMIN_BUILD_BENCHMARKS=OFF -DFLATMIN_BUILD_EXAMPLES=OFF
  cmake --build build/asan -j "$jobs"
  # FLATMIN_CI_SANITIZE_EXCLUDE: a ctest -E regex added to the headers-alone parse, should the
  # stage need trimming to fit CI's budget (e.g. '^mpi\.').
  exclude='^headers\.each_alone$'
  [ -z "${FLATMIN_CI_SANITIZE_EXCLUDE:-}" ] || exclude="$exclude|$FLATMIN_CI_SANITIZE_EXCLUDE"
  # tests/lsan.supp: libomp's per-thread allocations kept until exit (the MPI tests set their own).
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
  LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp" \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build/asan --output-on-failure -j "$jobs" -E "$exclude"
  # The libtorch adapter's tests (the stale-binding cases among them: flatmin must never read or
  # write memory torch has freed) under g++'s ASan + UBSan in a build of their own: Debian's
  # libtorch 1.13 headers do not compile under clang++ in C++20. About 4 minutes on 2 cores.
  cmake -S . -B build/asan-torch -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=g++ \
        -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_CXX_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" \
        -DFLATMIN_BUILD_TESTS=ON -DFLATMIN_TEST_ISA_CLONES=OFF -DFLATMIN_TEST_THRUST_TWINS=OFF \
        -DFLATMIN_BUILD_BENCHMARKS=OFF -DFLATMIN_BUILD_EXAMPLES=OFF
  if [ -d build/asan-torch/tests/torch ]; then
    cmake --build build/asan-torch -j "$jobs" --target flatmin_torch_tests
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
    LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp" \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      ctest --test-dir build/asan-torch --output-on-failure -j "$jobs" -R '^torch\.'
  else
    echo "flatmin: libtorch not found, the adapter's tests not run under the sanitizers"
  fi
  stage_done sanitize
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
