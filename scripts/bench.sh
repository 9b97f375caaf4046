#!/usr/bin/env bash
# Builds the benchmarks in Release and runs every bench/bench_*.cpp program, writing one Google
# Benchmark JSON file per program to build/bench/ (with every repetition, for medians and
# spreads), and bench_ddp on 2 MPI ranks when MPI is found (bench/ddp/results.md), then turns them
# into bench/RESULTS.md and bench/bytes_per_second.svg.
#
#   scripts/bench.sh                 # default sizes N = 10^4 … 10^7 (about 5–10 minutes on 2 cores)
#   FLATMIN_BENCH_LARGE=1 scripts/bench.sh     # adds N = 10^8 (needs ~6 GB of memory)
#   scripts/bench.sh --benchmark_filter=ascend  # extra arguments go to every program
#
# Knobs (environment): FLATMIN_BENCH_REPS (repetitions, default 5), FLATMIN_BENCH_MIN_TIME
# (seconds per repetition, default 0.05), FLATMIN_BENCH_LARGE, FLATMIN_BENCH_MAX_N,
# FLATMIN_BENCH_COPY_SECONDS, FLATMIN_BENCH_YARDSTICK_SECONDS (see bench/common.hpp), OMP_* as usual. Run it on a quiet machine:
# the figures are only as good as the machine is idle.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/bench-release
out=build/bench
jobs=$(nproc)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DFLATMIN_BUILD_BENCHMARKS=ON -DFLATMIN_BUILD_TESTS=OFF \
      -DFLATMIN_BUILD_EXAMPLES=OFF -DFLATMIN_ENABLE_THRUST=OFF >/dev/null
cmake --build "$build" -j "$jobs" >/dev/null
mkdir -p "$out"
rm -f "$out"/bench_*.json  # keeps torch_compare.json (bench/torch_compare.py), which the report includes
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "command: FLATMIN_BENCH_REPS=${FLATMIN_BENCH_REPS:-5} FLATMIN_BENCH_MIN_TIME=${FLATMIN_BENCH_MIN_TIME:-0.05}${FLATMIN_BENCH_LARGE:+ FLATMIN_BENCH_LARGE=$FLATMIN_BENCH_LARGE} scripts/bench.sh $*"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "cores: $(nproc)"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "compiler: $(${CXX:-c++} --version | head -1)"
  echo "kernel: $(uname -sr)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/machine.txt"
for exe in "$build"/bench/bench_*; do
  [ -x "$exe" ] || continue
  name=$(basename "$exe")
  [ "$name" = bench_ddp ] && continue  # an MPI program, run below
  echo "flatmin: running $name" >&2
  "$exe" --benchmark_repetitions="${FLATMIN_BENCH_REPS:-5}" --benchmark_min_time="${FLATMIN_BENCH_MIN_TIME:-0.05}" \
         --benchmark_display_aggregates_only=true --benchmark_out="$out/$name.json" --benchmark_out_format=json \
         "$@" >/dev/null
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"
# bench_ddp (bench/ddp_comm.cpp, with flatmin::mpi): the data-parallel step on 2 ranks, one thread
# each; its table goes to bench/ddp/results.md, which the report includes.
ddp="$build/bench/bench_ddp"
if [ -x "$ddp" ] && command -v mpiexec >/dev/null; then
  echo "flatmin: running bench_ddp on 2 ranks" >&2
  mkdir -p bench/ddp
  extra=""; mpiexec --version 2>/dev/null | grep -q "Open MPI" && extra=--oversubscribe
  {
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc --all) cores"
    echo "- command: \`OMP_NUM_THREADS=1 mpiexec -np 2 bench_ddp\` (load before: $(cut -d' ' -f1-3 /proc/loadavg))"
    echo
    OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpiexec $extra -np 2 "$ddp"
  } > bench/ddp/results.md
fi
python3 scripts/bench_report.py "$out" bench/RESULTS.md bench/bytes_per_second.svg
echo "flatmin: wrote bench/RESULTS.md and bench/bytes_per_second.svg from $out/*.json" >&2
