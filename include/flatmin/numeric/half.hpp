#pragma once
/// @file half.hpp
/// `flatmin::half`: a 16-bit storage type with the bit layout of IEEE 754 binary16 (1 sign bit,
/// 5 exponent bits, 10 fraction bits), usable as the weight or gradient type of a view
/// (params/precision.hpp). Storage, not arithmetic: kernels convert to float or double, compute
/// there and round once when they write. A half has 11 significant bits (relative spacing 2^-10)
/// but a narrow range (largest finite 65504, smallest normal 2^-14): gradients need loss scaling
/// (`step_args::grad_scale`), and one that overflows to ±inf is caught by the passes that read
/// them (the step is skipped, `skip_reason::nonfinite_gradient`).
///
/// Conversions, the same bits on every path (FLATMIN_HD):
/// - to float: exact; a NaN is quieted (fraction bit 9 → binary32 bit 22), sign and payload kept;
/// - from float: round to nearest, ties to even; ≥ 65520 in magnitude → ±inf; subnormal results
///   rounded like any value (no flush); a NaN stays a NaN, quieted, top 9 payload bits kept;
/// - from double: rounded once (round to odd into float, then to nearest even), NaN as from
///   `float(d)`.
/// The host and a CUDA device run the same integer code below, without branches (CUDA's
/// `__float2half_rn` is not used: its NaN encoding is not this one). F16C's `vcvtps2ph` /
/// `vcvtph2ps` give the same bits (tests/unit/test_mixed_precision.cpp compares them over every
/// half and a large sample of floats), but as scalar intrinsics they keep GCC from vectorising the
/// loop that converts: an AdamW update of 2^20 entries over half weights and gradients took
/// 5.2 ms with them and 2.2 ms with this code vectorised, both compiled for AVX2 (2026-11-30,
/// this project's 2-core EPYC).

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../config.hpp"
#include "bfloat16.hpp"  // the bit helpers and round_to_odd

namespace flatmin {

namespace numeric::detail {

// Both conversions compute every case and select by integer masks (select_bits): no branch, so
// that a host loop converting 16-bit values vectorises.

FLATMIN_HD inline std::uint16_t half_from_float(float f) {
  const std::uint32_t u = bits_of(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  const std::uint32_t nan = 0x7e00u | ((a >> 13) & 0x3ffu);  // quieted, top payload bits kept
  // [2^-14, 65520): rebias the exponent (127 → 15), round the 13 dropped bits to nearest even
  // (the added 0xfff plus the kept lsb carries exactly when they are above half, or half with an
  // odd lsb; a carry into the exponent is the next binade)
  const std::uint32_t normal = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
  // below 2^-14: |f| + 0.5 puts |f|'s multiple of 2^-24 in the low bits of 0.5's fraction,
  // rounded to nearest even by the addition itself (below 2^-25, and the tie at 2^-25, give 0)
  const std::uint32_t subnormal = bits_of(float_of(a) + 0.5f) - 0x3f000000u;
  std::uint32_t h = select_bits(a >= 0x38800000u, normal, subnormal);
  h = select_bits(a >= 0x477ff000u, 0x7c00u, h);  // ≥ 65520 (65504 + half a spacing): ±inf
  h = select_bits(a > 0x7f800000u, nan, h);
  return static_cast<std::uint16_t>(sign | h);
}

FLATMIN_HD inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  const std::uint32_t normal = ((e + 112u) << 23) | (m << 13);
  const std::uint32_t special = 0x7f800000u | (m << 13) | select_bits(m != 0, 0x400000u, 0u);  // ±inf, NaN
  // ±0 or subnormal: m · 2^-24, exact in float
  const std::uint32_t subnormal =
      bits_of(static_cast<float>(static_cast<std::int32_t>(m)) * 5.9604644775390625e-8f);
  std::uint32_t r = select_bits(e == 0x1fu, special, normal);
  r = select_bits(e == 0, subnormal, r);
  return float_of(sign | r);
}

FLATMIN_HD inline std::uint16_t half_from_double(double d) {
  if (d != d) {  // NaN: what float(d) keeps of the payload (fraction bits 50..42), quieted
    const std::uint64_t u = bits_of(d);
    return static_cast<std::uint16_t>(((u >> 48) & 0x8000u) | 0x7e00u | ((u >> 42) & 0x1ffu));
  }
  return half_from_float(round_to_odd(d));
}

}  // namespace numeric::detail

/// IEEE binary16 storage (see the file comment). Trivially copyable, 2 bytes, the bits in
/// `bits`; `half{}` is +0. Conversions are explicit.
struct FLATMIN_MAY_ALIAS half {
  std::uint16_t bits;

  half() = default;
  FLATMIN_HD explicit half(float f) : bits(numeric::detail::half_from_float(f)) {}
  FLATMIN_HD explicit half(double d) : bits(numeric::detail::half_from_double(d)) {}
  FLATMIN_HD explicit operator float() const { return numeric::detail::half_to_float(bits); }
  FLATMIN_HD explicit operator double() const { return static_cast<double>(static_cast<float>(*this)); }

  FLATMIN_HD static constexpr half from_bits(std::uint16_t b) {
    half x{};
    x.bits = b;
    return x;
  }
  /// IEEE comparison (NaN unequal to everything, +0 == −0), as for float.
  FLATMIN_HD friend bool operator==(half a, half b) { return static_cast<float>(a) == static_cast<float>(b); }
};

static_assert(sizeof(half) == 2 && alignof(half) == 2);
static_assert(std::is_trivially_copyable_v<half> && std::is_standard_layout_v<half>);

}  // namespace flatmin
