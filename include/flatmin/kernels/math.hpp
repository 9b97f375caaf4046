#pragma once
/// @file math.hpp
/// Scalar helpers usable on host and device.

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../config.hpp"

namespace flatmin::kernels {

/// The largest finite value (std::numeric_limits is not callable from CUDA device code without
/// --expt-relaxed-constexpr).
template <class T>
FLATMIN_HD constexpr T finite_max() {
  if constexpr (sizeof(T) == sizeof(float))
    return FLT_MAX;
  else
    return DBL_MAX;
}

/// `in ? a : b`, bit for bit, by integer masks: no branch for a compiler to reintroduce. An element
/// mask's bit is random per entry, and a mispredicted branch per entry costs more than the pass's
/// memory traffic (bench_masks, element masks).
/// The unsigned integer of T's width: the lanes of `blend_lanes`.
template <class T>
using lane_t = std::conditional_t<sizeof(T) == 2, std::uint16_t,
                                  std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>;

/// a where the lane mask m is all ones, b where it is zero (bit-exact).
template <class T>
FLATMIN_HD inline T blend_lanes(lane_t<T> m, T a, T b) {
  using U = lane_t<T>;
  static_assert(sizeof(T) == sizeof(U), "blend: a 2-, 4- or 8-byte value");
  U ua, ub;
  std::memcpy(&ua, &a, sizeof ua);
  std::memcpy(&ub, &b, sizeof ub);
  const U r = static_cast<U>((ua & m) | (ub & static_cast<U>(~m)));
  T out;
  std::memcpy(&out, &r, sizeof out);
  return out;
}

template <class T>
FLATMIN_HD inline T blend(bool in, T a, T b) {
  return blend_lanes<T>(static_cast<lane_t<T>>(lane_t<T>(0) - static_cast<lane_t<T>>(in)), a, b);
}

/// True for finite x. Written as a comparison so that it vectorises (and is false for NaN).
template <class T>
FLATMIN_HD inline bool is_finite(T x) {
  const T a = x < T(0) ? -x : x;
  return a <= finite_max<T>();
}

FLATMIN_HD inline float fm_sqrt(float x) { return ::sqrtf(x); }
FLATMIN_HD inline double fm_sqrt(double x) { return ::sqrt(x); }
template <class T>
FLATMIN_HD inline T fm_abs(T x) {
  return x < T(0) ? -x : x;
}

/// Sums of a reduction pass: Σ over elements, accumulated in double.
struct grad_stats {
  double g2 = 0;    ///< Σ g² over every element
  double n2 = 0;    ///< Σ (norm term)² over the elements that enter the perturbation's norm
  double d2 = 0;    ///< Σ (direction)² over the perturbed elements
  double bad = 0;   ///< number of non-finite gradient entries
  double kept = 0;  ///< number of perturbed elements
  FLATMIN_HD friend grad_stats operator+(const grad_stats& a, const grad_stats& b) {
    return {a.g2 + b.g2, a.n2 + b.n2, a.d2 + b.d2, a.bad + b.bad, a.kept + b.kept};
  }
};

}  // namespace flatmin::kernels
