#pragma once
/// @file bfloat16.hpp
/// `flatmin::bfloat16`: a 16-bit storage type with the bit layout of bfloat16 (1 sign bit, the 8
/// exponent bits of binary32, 7 fraction bits), usable as the weight or gradient type of a view
/// (params/precision.hpp). It is storage, not arithmetic: kernels convert to float or double,
/// compute there and round once when they write. A bfloat16 has float's range and 8 significant
/// bits (relative spacing 2^-7 ≈ 0.8 %), so gradients rarely overflow and loss scaling is unneeded,
/// but an update smaller than half a spacing of the weight is lost by round to nearest
/// (`optimizer_options::weight_rounding`, `master_weights`).
///
/// Conversions, the same bits on host and device (FLATMIN_HD, integer code; CUDA's
/// `__float2bfloat16_rn` is not used: its NaN encodings vary with the architecture, and the code
/// below is a handful of integer operations):
/// - to float: exact (the 16 bits are binary32's high half);
/// - from float: round to nearest, ties to even; overflow to ±inf; subnormals rounded like any
///   value (no flush); a NaN stays a NaN, quieted (bit 6 set), sign and top 6 payload bits kept;
/// - from double: rounded once (round to odd into float, then to nearest even: no double
///   rounding), NaN as from `float(d)`.
/// The host keeps this portable form: AVX-512 BF16's `vcvtneps2bf16` flushes subnormal inputs to
/// zero, so it would not give these bits, and the integer form vectorises as it is.

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../config.hpp"
#include "bits.hpp"

// The 16-bit types are read and written through pointers to the user's own 16-bit types
// (numeric/reinterpret.hpp): exempt them from type-based alias analysis where the compiler can.
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define FLATMIN_MAY_ALIAS __attribute__((__may_alias__))
#else
#define FLATMIN_MAY_ALIAS
#endif

namespace flatmin {

namespace numeric::detail {

/// d rounded to float with round to odd (toward zero, the last bit set when inexact): a float
/// with at least two more significant bits than the 16-bit format at every scale, from which one
/// round to nearest even gives the correctly rounded 16-bit value (Boldo & Melquiond, "Emulation
/// of FMA and correctly rounded sums: proved algorithms using rounding to odd", IEEE TC 2008).
/// d must not be a NaN.
FLATMIN_HD inline float round_to_odd(double d) {
  const float f = static_cast<float>(d);  // nearest even
  const double back = static_cast<double>(f);
  if (back == d) return f;
  std::uint32_t u = bits_of(f);
  const bool away = (back < 0 ? -back : back) > (d < 0 ? -d : d);  // |f| > |d|: step back toward 0
  if (away) u -= 1;                         // f ≠ 0 here; from +inf this is FLT_MAX
  return float_of(u | 1u);
}

FLATMIN_HD inline std::uint16_t bf16_from_float(float f) {
  const std::uint32_t u = bits_of(f);
  const std::uint32_t nan = (u >> 16) | 0x0040u;
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // overflow carries to ±inf
  return static_cast<std::uint16_t>(select_bits((u & 0x7fffffffu) > 0x7f800000u, nan, rounded));
}

FLATMIN_HD inline std::uint16_t bf16_from_double(double d) {
  if (d != d) {  // NaN: what float(d) keeps of the payload (fraction bits 50..45), quieted
    const std::uint64_t u = bits_of(d);
    return static_cast<std::uint16_t>(((u >> 48) & 0x8000u) | 0x7fc0u | ((u >> 45) & 0x3fu));
  }
  return bf16_from_float(round_to_odd(d));
}

}  // namespace numeric::detail

/// bfloat16 storage (see the file comment). Trivially copyable, 2 bytes, the bits in `bits`;
/// `bfloat16{}` is +0. Conversions are explicit: a narrowing to 16 bits is always visible.
struct FLATMIN_MAY_ALIAS bfloat16 {
  std::uint16_t bits;

  bfloat16() = default;
  FLATMIN_HD explicit bfloat16(float f) : bits(numeric::detail::bf16_from_float(f)) {}
  FLATMIN_HD explicit bfloat16(double d) : bits(numeric::detail::bf16_from_double(d)) {}
  FLATMIN_HD explicit operator float() const {
    return numeric::detail::float_of(static_cast<std::uint32_t>(bits) << 16);
  }
  FLATMIN_HD explicit operator double() const { return static_cast<double>(static_cast<float>(*this)); }

  FLATMIN_HD static constexpr bfloat16 from_bits(std::uint16_t b) {
    bfloat16 x{};
    x.bits = b;
    return x;
  }
  /// IEEE comparison (NaN unequal to everything, +0 == −0), as for float.
  FLATMIN_HD friend bool operator==(bfloat16 a, bfloat16 b) {
    return static_cast<float>(a) == static_cast<float>(b);
  }
};

static_assert(sizeof(bfloat16) == 2 && alignof(bfloat16) == 2);
static_assert(std::is_trivially_copyable_v<bfloat16> && std::is_standard_layout_v<bfloat16>);

}  // namespace flatmin
