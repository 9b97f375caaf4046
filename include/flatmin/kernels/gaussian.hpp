#pragma once
/// @file gaussian.hpp
/// Standard normal draws from `counter_hash` words (Box–Muller), computed with +, −, ×, ÷ and √
/// only: no libm `log` / `cos`, whose last bits differ between a host's C library and CUDA's, so
/// that backend::eigen and backend::thrust (host or device, built with -fmad=false) draw the same
/// bits. The logarithm and the cosine are polynomial (series) evaluations accurate to a few units
/// in the last place of a double over the ranges used (tests/unit/test_gaussian.cpp checks them
/// against the C library and the draws' moments against N(0, 1)); their selects work on the bits,
/// so that the host loop vectorises (about 8 ns per draw on AVX2, 36 ns scalar). Also the passes
/// of perturb::gaussian (RWP's filter-wise noise): the row norms and the ascent's term.

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../backend/layout.hpp"
#include "../config.hpp"
#include "../numeric/bits.hpp"
#include "counter_hash.hpp"
#include "math.hpp"
#include "rows.hpp"

namespace flatmin::kernels {

namespace gaussian_detail {

using numeric::detail::bits_of;
using numeric::detail::double_of;

/// c ? a : b on the bits: both values computed, no branch for the compiler to turn the
/// arithmetic of one arm into (it does so for a floating-point select, and then the host loop
/// does not vectorise: under -ftrapping-math a floating-point operation is not speculated).
FLATMIN_HD inline double select(bool c, double a, double b) {
  const std::uint64_t m = std::uint64_t{0} - static_cast<std::uint64_t>(c);
  return double_of((bits_of(a) & m) | (bits_of(b) & ~m));
}

/// ln u for a normal double u in (0, 1]: u = m · 2ᵉ with m in [√½, √2) (exponent and mantissa
/// taken from the bits), ln m = 2 atanh(s), s = (m − 1)/(m + 1), |s| ≤ 0.1716 (the series to s²¹:
/// truncation below 1e-18).
FLATMIN_HD inline double log_unit(double u) {
  const std::uint64_t b = bits_of(u);
  // m = mantissa in [1, 2), halved (its exponent field one lower) when above √2: integer work
  const std::uint64_t mb = (b & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
  const bool high = mb > 0x3ff6a09e667f3bcdull;  // m > √2 (the double 1.4142135623730951)
  const double m = double_of(mb - (static_cast<std::uint64_t>(high) << 52));
  const double exponent =
      static_cast<double>(static_cast<int>((b >> 52) & 0x7ffu) - 1023 + static_cast<int>(high));
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  double p = 1.0 / 21;
  p = p * s2 + 1.0 / 19;
  p = p * s2 + 1.0 / 17;
  p = p * s2 + 1.0 / 15;
  p = p * s2 + 1.0 / 13;
  p = p * s2 + 1.0 / 11;
  p = p * s2 + 1.0 / 9;
  p = p * s2 + 1.0 / 7;
  p = p * s2 + 1.0 / 5;
  p = p * s2 + 1.0 / 3;
  p = p * s2 + 1.0;
  return 2.0 * s * p + exponent * 0.6931471805599453;  // + e ln 2
}

/// The 52 high bits of a word as a double in [1, 2) (integer operations only).
FLATMIN_HD inline double one_to_two(std::uint64_t h) { return double_of((h >> 12) | 0x3ff0000000000000ull); }

/// cos(2π v) for v in [0, 1): folded to an angle θ in [0, π/4] of a cosine or a sine (Taylor
/// series to θ¹⁶ / θ¹⁷: truncation below 3e-18), with the sign of the quadrant; every arm is
/// computed and chosen by `select`.
FLATMIN_HD inline double cos_two_pi(double v) {
  const double t = select(v < 0.5, v, v - 1.0);                        // [−½, ½): cos(2πt) = cos(2πv)
  const double a = select(t < 0, -t, t);                               // |t| in [0, ½]
  const bool flip = a > 0.25;                                          // cos(2πa) = −cos(2π(½ − a))
  const double b = select(flip, 0.5 - a, a);                           // [0, ¼]
  const bool as_sine = b > 0.125;                                      // cos(2πb) = sin(2π(¼ − b))
  const double th = 6.283185307179586 * select(as_sine, 0.25 - b, b);  // [0, π/4]
  const double x2 = th * th;
  // cos: Σ (−1)ⁿ θ²ⁿ/(2n)!, n ≤ 8;  sin: θ Σ (−1)ⁿ θ²ⁿ/(2n+1)!, n ≤ 8 (Horner)
  double c = 1.0 / 20922789888000.0;  // 1/16!
  c = c * x2 - 1.0 / 87178291200.0;   // 1/14!
  c = c * x2 + 1.0 / 479001600.0;     // 1/12!
  c = c * x2 - 1.0 / 3628800.0;       // 1/10!
  c = c * x2 + 1.0 / 40320.0;         // 1/8!
  c = c * x2 - 1.0 / 720.0;           // 1/6!
  c = c * x2 + 1.0 / 24.0;            // 1/4!
  c = c * x2 - 0.5;                   // 1/2!
  c = c * x2 + 1.0;
  double s = 1.0 / 355687428096000.0;  // 1/17!
  s = s * x2 - 1.0 / 1307674368000.0;  // 1/15!
  s = s * x2 + 1.0 / 6227020800.0;     // 1/13!
  s = s * x2 - 1.0 / 39916800.0;       // 1/11!
  s = s * x2 + 1.0 / 362880.0;         // 1/9!
  s = s * x2 - 1.0 / 5040.0;           // 1/7!
  s = s * x2 + 1.0 / 120.0;            // 1/5!
  s = s * x2 - 1.0 / 6.0;              // 1/3!
  s = s * x2 + 1.0;
  s = s * th;
  const double r = select(as_sine, s, c);
  return select(flip, -r, r);
}

}  // namespace gaussian_detail

/// A standard normal draw from one 64-bit hash word: Box–Muller's √(−2 ln u₁) cos(2π u₂) with
/// u₁ = 2 − (1 + 52 bits · 2⁻⁵²) in (0, 1] (so |z| ≤ 8.49) and u₂ in [0, 1) from a second word
/// mixed from the first; the uniforms are built from bits, not converted from integers, so the
/// host loop vectorises. Deterministic: the same word gives the same bits on every backend.
FLATMIN_HD inline double standard_normal(std::uint64_t hash) {
  const double u1 = 2.0 - gaussian_detail::one_to_two(hash);
  const double u2 = gaussian_detail::one_to_two(mix64(hash ^ 0x6a09e667f3bcc909ull)) - 1.0;
  return fm_sqrt(-2.0 * gaussian_detail::log_unit(u1)) * gaussian_detail::cos_two_pi(u2);
}

/// The stream of `counter_hash` random perturbations of step t draw from: apart from the masks'
/// (step numbers) and the stochastic rounding's (`rounding_stream`, bit 63).
FLATMIN_HD inline std::uint64_t noise_stream(std::uint64_t step) { return step | (std::uint64_t{1} << 62); }

/// ‖W_r‖ for every row r (kernels/rows.hpp), + 1e-16 for a whole-tensor row (a tensor of one
/// dimension, as the official RWP code), in double over row_sum's strands. `tensors`: the layout's
/// table (weights per tensor).
template <class T, class W, class G>
struct row_norm_pass {
  const backend::tensor_rec<W, G>* tensors;
  const std::uint64_t* row_tensor;
  const row_table_entry* table;
  T* norms;
  FLATMIN_HD void operator()(std::size_t r) const {
    const std::uint64_t t = row_tensor[r];
    const row_table_entry e = table[t];
    const W* w = tensors[t].w + (r - e.first_row) * e.row_length;
    const double s = row_sum(e.row_length, [&](std::uint64_t j) {
      const double x = static_cast<double>(static_cast<T>(w[j]));
      return x * x;
    });
    norms[r] = static_cast<T>(fm_sqrt(s) + (e.row_length == tensors[t].size ? 1e-16 : 0.0));
  }
};

/// len_r ‖W_r‖² of row r (len_r 0 on a tensor that is not perturbed): summed by reduce_index into
/// the expected ‖ε‖² / σ² (perturb::gaussian's report), in the backend's memory.
template <class T>
struct row_energy {
  const double* length;
  const T* norms;
  FLATMIN_HD double operator()(std::size_t r) const {
    const double n = static_cast<double>(norms[r]);
    return length[r] * n * n;
  }
};

/// The random term: dir = ‖W_r(i)‖ · z_i (the ascent's scale is σ). Its statistics are not taken
/// (`normalised == false`); the statistics pass still checks the gradient at w, which the descent
/// mixes in. The row of entry i is looked up per element (backend::thrust) or its tensor's entry
/// resolved by `for_tensor` once per run of its segments (backend::eigen).
template <class T>
struct gaussian_term {
  const row_table_entry* table;
  const T* norms;
  std::uint64_t seed;
  std::uint64_t stream;
  bool resolved = false;  ///< set by for_tensor: this copy serves one tensor, `at`
  row_locator at{};
  static constexpr bool normalised = false;

  FLATMIN_HD gaussian_term for_tensor(std::uint32_t, std::uint32_t tensor) const {
    gaussian_term r = *this;
    r.at = row_locator::of(table[tensor]);
    r.resolved = true;
    return r;
  }
  FLATMIN_HD T dir(T, T, std::size_t i, std::uint32_t flags, std::uint32_t tensor) const {
    return resolved ? draw(i) : for_tensor(flags, tensor).draw(i);
  }

 private:
  FLATMIN_HD T draw(std::size_t i) const {
    const T n = norms[at.row(i)];
    return static_cast<T>(static_cast<double>(n) * standard_normal(counter_hash(seed, stream, i)));
  }
};

}  // namespace flatmin::kernels
