#pragma once
/// @file isa.hpp
/// Which instruction set backend::eigen's hot passes run (backend/host/isa_clones.hpp): chosen once
/// per process from the CPU's features, the widest this build and the CPU both have, unless the
/// environment variable FLATMIN_ISA (baseline, avx2, avx512 or auto) or `force_isa` says otherwise.
/// The choice changes speed only: every clone computes the same bits (isa_clones.hpp says why).

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace flatmin::backend::host {

/// The instruction sets the hot passes are compiled for. `avx2` runs on CPUs with AVX2 (it uses
/// no FMA instruction: contraction is off in every clone); `avx512` needs AVX-512 F, BW and VL.
enum class isa : std::uint8_t { baseline = 0, avx2 = 1, avx512 = 2 };

/// Whether this translation unit compiles the AVX2 and AVX-512 clones: GCC or Clang host code for
/// x86-64. nvcc (and any other compiler or architecture) gets the baseline alone.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && \
    !defined(__CUDA_ARCH__) && !defined(FLATMIN_NO_ISA_DISPATCH)
#define FLATMIN_ISA_DISPATCH 1
#else
#define FLATMIN_ISA_DISPATCH 0
#endif

inline const char* isa_name(isa i) {
  switch (i) {
    case isa::baseline:
      return "baseline";
    case isa::avx2:
      return "avx2";
    case isa::avx512:
      return "avx512";
  }
  return "unknown";
}

/// Whether `i` can run here: compiled into this build and supported by the CPU (and its OS).
inline bool isa_supported(isa i) {
  if (i == isa::baseline) return true;
#if FLATMIN_ISA_DISPATCH
  __builtin_cpu_init();  // before any constructor has run (a static initialiser may ask)
  if (i == isa::avx2) return __builtin_cpu_supports("avx2");
  if (i == isa::avx512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#endif
  return false;
}

/// The widest instruction set `isa_supported` allows.
inline isa best_isa() {
  if (isa_supported(isa::avx512)) return isa::avx512;
  if (isa_supported(isa::avx2)) return isa::avx2;
  return isa::baseline;
}

namespace detail {
/// FLATMIN_ISA read once: the instruction set it asks for, or the message of why it cannot be
/// had (then every pass throws it: a debugging request is not silently ignored).
struct isa_request {
  isa value = isa::baseline;
  std::string error;
};
inline isa_request read_isa_environment() {
  isa_request r;
  const char* e = std::getenv("FLATMIN_ISA");
  const std::string s = e ? e : "";
  if (s.empty() || s == "auto") {
    r.value = best_isa();
    return r;
  }
  if (s == "baseline")
    r.value = isa::baseline;
  else if (s == "avx2")
    r.value = isa::avx2;
  else if (s == "avx512")
    r.value = isa::avx512;
  else {
    r.error = "flatmin: FLATMIN_ISA must be baseline, avx2, avx512 or auto, got '" + s + "'";
    return r;
  }
  if (!isa_supported(r.value))
    r.error = "flatmin: FLATMIN_ISA=" + s + ": this CPU or build does not support it (best here: " +
              isa_name(best_isa()) + ")";
  return r;
}
inline const isa_request& environment_isa() {
  static const isa_request r = read_isa_environment();
  return r;
}
/// -1: none forced (the environment's choice), else the forced `isa`.
inline std::atomic<int> forced_isa{-1};
}  // namespace detail

/// The instruction set the hot passes run now: the forced one, else FLATMIN_ISA's, else
/// `best_isa()`. Throws std::invalid_argument when FLATMIN_ISA names no instruction set or one
/// that cannot run here (the first pass of a step is a reduction: nothing is written before).
inline isa active_isa() {
  const int f = detail::forced_isa.load(std::memory_order_relaxed);
  if (f >= 0) return static_cast<isa>(f);
  const detail::isa_request& r = detail::environment_isa();
  if (!r.error.empty()) throw std::invalid_argument(r.error);
  return r.value;
}

/// Runs the hot passes on `i` from now on, in every thread (for debugging and tests: not while a
/// pass runs). Throws std::invalid_argument, changing nothing, when `i` cannot run here.
inline void force_isa(isa i) {
  if (!isa_supported(i))
    throw std::invalid_argument(std::string("flatmin::backend::host::force_isa: isa must be supported by "
                                            "this CPU and build, got ") +
                                isa_name(i) + " (best here: " + isa_name(best_isa()) + ")");
  detail::forced_isa.store(static_cast<int>(i), std::memory_order_relaxed);
}

/// Undoes `force_isa`: back to FLATMIN_ISA's choice, or the best.
inline void unforce_isa() { detail::forced_isa.store(-1, std::memory_order_relaxed); }

}  // namespace flatmin::backend::host
