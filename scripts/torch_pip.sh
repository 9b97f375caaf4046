#!/usr/bin/env bash
# The libtorch adapter's tests against a pip-installed torch (libtorch 2.x), which CI cannot
# install (the wheel is 4+ GB; CI tests Debian's libtorch 1.13). Builds build/torch-pip and runs
# ctest's torch tests there:
#   torch.test_binding, torch.test_reference          g++, CPU tensors
#   cuda.torch.test_cuda_tensors                       with nvcc and a CUDA wheel: CUDA tensors
#                                                      (its GPU cases return at once without a GPU)
# Usage: scripts/torch_pip.sh [python]   (a python whose `import torch` works; default python3)
# Set FLATMIN_SKIP_CUDA=1 to leave the CUDA test out; TORCH_CUDA_ARCH_LIST (default 9.0) is the
# architectures torch's CMake compiles for.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
prefix=$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')
site=$("$py" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
cuda=$("$py" -c 'import torch; print(1 if torch.version.cuda else 0)')
echo "flatmin: torch $("$py" -c 'import torch; print(torch.__version__)') from $prefix"

args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DFLATMIN_BUILD_TESTS=ON -DCMAKE_PREFIX_PATH="$prefix")
targets=(flatmin_torch_test_binding flatmin_torch_test_reference)
tests='^torch\.'
nvcc_bin=$(command -v nvcc || true)
[ -n "$nvcc_bin" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc_bin=/usr/local/cuda/bin/nvcc; } || true
if [ "$cuda" = 1 ] && [ -n "$nvcc_bin" ] && [ "${FLATMIN_SKIP_CUDA:-0}" != 1 ]; then
  # The wheel's CUDA libraries (NCCL, cuDNN, ...) sit beside torch: the linker must find them
  # there, not the toolkit's (older) ones.
  link=""
  for d in "$site"/nvidia/*/lib; do [ -d "$d" ] && link="$link -Wl,-rpath-link,$d -Wl,-rpath,$d"; done
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  args+=(-DFLATMIN_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_bin" -DCMAKE_CUDA_ARCHITECTURES=90
         -DFLATMIN_CUDA_TESTS= -DCMAKE_EXE_LINKER_FLAGS="$link")
  targets+=(flatmin_cuda_torch_test_cuda_tensors)
  tests='^(torch|cuda\.torch)\.'
fi
cmake -S . -B build/torch-pip "${args[@]}"
cmake --build build/torch-pip -j "$(nproc)" --target "${targets[@]}"
ctest --test-dir build/torch-pip -R "$tests" --output-on-failure
