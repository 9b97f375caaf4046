#!/usr/bin/env bash
# Installs flatmin's Debian build dependencies when any is missing (needs root or sudo).
set -euo pipefail
# clang-14, libclang-rt-14-dev (sanitizer / libFuzzer runtimes) and libomp-14-dev (OpenMP for
# clang++-14): the clang and fuzzing stages of scripts/test.sh. libtorch-dev (Debian's libtorch 1.13,
# CPU only): flatmin::torch and tests/torch (without it CMake leaves them out). libopenmpi-dev and
# openmpi-bin (mpiexec): flatmin::mpi and the distributed tests of tests/mpi (else reported Not Run).
pkgs=(cmake g++ make libeigen3-dev doctest-dev libbenchmark-dev libthrust-dev libomp-dev zlib1g-dev
      clang-14 libclang-rt-14-dev libomp-14-dev libtorch-dev libopenmpi-dev openmpi-bin)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "flatmin: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
