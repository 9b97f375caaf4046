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
/// With F16C (`__F16C__`, e.g. -mf16c or -march=native) the host converts float by `vcvtps2ph` /
/// `vcvtph2ps`, which give these bits (tests/unit/test_mixed_precision.cpp compares them over
/// every half and a large sample of floats); otherwise, and on a CUDA device, the integer code
/// below (CUDA's `__float2half_rn` is not used: its NaN encoding is not this one).

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../config.hpp"
#include "bfloat16.hpp"  // the bit helpers and round_to_odd

#if defined(__F16C__) && !defined(__CUDA_ARCH__)
#include <immintrin.h>
#endif

namespace flatmin {

namespace numeric::detail {

FLATMIN_HD inline std::uint16_t half_from_float_portable(float f) {
  const std::uint32_t u = bits_of(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  std::uint32_t h;
  if (a > 0x7f800000u) {
    h = 0x7e00u | ((a >> 13) & 0x3ffu);  // NaN, quieted
  } else if (a >= 0x477ff000u) {
    h = 0x7c00u;  // ≥ 65520 (65504 + half a spacing, a tie toward the odd 65504): ±inf
  } else if (a >= 0x38800000u) {
    const std::uint32_t r = a - 0x38000000u;  // rebias the exponent (127 → 15), fraction kept
    h = r >> 13;
    const std::uint32_t rem = r & 0x1fffu;
    h += (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ? 1u : 0u;
  } else if (a >= 0x33000000u) {  // [2^-25, 2^-14): a subnormal half (or 2^-14 after rounding)
    const std::uint32_t e = a >> 23;
    const std::uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const std::uint32_t s = 126u - e;  // 14 … 24
    h = m >> s;
    const std::uint32_t rem = m & ((1u << s) - 1u), mid = 1u << (s - 1u);
    h += (rem > mid || (rem == mid && (h & 1u))) ? 1u : 0u;
  } else {
    h = 0;  // below 2^-25, or a tie at 2^-25 toward the even 0
  }
  return static_cast<std::uint16_t>(sign | h);
}

FLATMIN_HD inline float half_to_float_portable(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1fu) return float_of(sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u));
  if (e == 0) {  // ±0 or subnormal: m · 2^-24, exact in float
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;
    return float_of(sign | bits_of(v));
  }
  return float_of(sign | ((e + 112u) << 23) | (m << 13));
}

FLATMIN_HD inline std::uint16_t half_from_float(float f) {
#if defined(__F16C__) && !defined(__CUDA_ARCH__)
  return static_cast<std::uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
#else
  return half_from_float_portable(f);
#endif
}

FLATMIN_HD inline float half_to_float(std::uint16_t h) {
#if defined(__F16C__) && !defined(__CUDA_ARCH__)
  return _cvtsh_ss(h);
#else
  return half_to_float_portable(h);
#endif
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
