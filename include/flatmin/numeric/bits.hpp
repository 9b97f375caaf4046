#pragma once
/// @file bits.hpp
/// The bits of a float or a double and back (`memcpy`, valid in host and CUDA device code): what
/// the 16-bit conversions (bfloat16.hpp, half.hpp) and the arithmetic-only normal draws
/// (kernels/gaussian.hpp) work on.

#include <cstdint>
#include <cstring>

#include "../config.hpp"

namespace flatmin::numeric::detail {

FLATMIN_HD inline std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
FLATMIN_HD inline float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
FLATMIN_HD inline std::uint64_t bits_of(double d) {
  std::uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return u;
}
FLATMIN_HD inline double double_of(std::uint64_t u) {
  double d;
  std::memcpy(&d, &u, sizeof d);
  return d;
}

/// `a` where `c`, else `b`, by integer masks: no branch, so that a host loop that converts
/// vectorises (a conversion's early return is control flow GCC does not always if-convert).
/// kernels::blend is the same select for the compute types; numeric/ sits below kernels/.
FLATMIN_HD inline std::uint32_t select_bits(bool c, std::uint32_t a, std::uint32_t b) {
  return b ^ ((a ^ b) & (0u - static_cast<std::uint32_t>(c)));
}

}  // namespace flatmin::numeric::detail
