#pragma once
/// @file strands.hpp
/// Host SIMD forms of the sum of squares of gradients, in the summation order of summation.hpp:
/// the K strands are vector lanes (no reassociation: each lane is still summed in order), which
/// makes each result bitwise equal to the element path's. Under GCC and Clang the lanes are
/// written with vector extensions (`lanes::`), for every gradient and compute type an optimizer
/// has; elsewhere (nvcc's host pass) as loops over the K entries of a block that the compiler
/// vectorises (`sum_squares_written_out`).

#include <bit>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "../../kernels/math.hpp"
#include "../../numeric/bfloat16.hpp"
#include "../../numeric/half.hpp"
#include "../summation.hpp"
#include "mask_lanes.hpp"

namespace flatmin::backend::host {

/// (s·g)² as every host form sums it, and as the element path does: g converted to the compute
/// type T, the product in T, widened to double and squared.
template <class G, class T>
FLATMIN_SUM_INLINE double scaled_square(G x, T s) {
  const double y = double(static_cast<T>(x) * s);
  return y * y;
}

#if defined(__GNUC__) && !defined(__CUDACC__)
#define FLATMIN_STRAND_LANES 1
/// The eight strands of a run (float, double or 16-bit gradients) as two vectors of four double
/// lanes (GCC's and Clang's vector extensions: each lane operation is the scalar one, so lane r is
/// strand r bit for bit, and an instruction set narrower than 256 bits splits each vector in two). Left to
/// themselves, GCC's vectorisers built the four runs' blocks from scalar loads (a `vinsertps` per
/// entry), which held bench_passes' global_norm at half its read stream.
namespace lanes {
using f64x4 = double __attribute__((vector_size(32)));
using f32x4 = float __attribute__((vector_size(16)));
using f32x8 = float __attribute__((vector_size(32)));
using u32x8 = std::uint32_t __attribute__((vector_size(32)));
using i32x8 = std::int32_t __attribute__((vector_size(32)));

/// Entries p[0 … 7] of a 16-bit run as floats in x, bit for bit what `static_cast<float>` gives
/// each (numeric/: a bfloat16 is its bits shifted up, a half goes through half_to_float's selects
/// lane by lane). The vectors are passed by reference: a 32-byte vector by value changes the ABI
/// between the clones.
template <class G>
FLATMIN_SUM_INLINE void to_float(const G* p, f32x8& x) {
  std::uint16_t b[8];
  std::memcpy(b, p, sizeof b);
  const u32x8 h = {b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]};
  if constexpr (std::is_same_v<G, bfloat16>) {
    x = reinterpret_cast<f32x8>(h << 16);
  } else {
    static_assert(std::is_same_v<G, half>);
    const u32x8 sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    const u32x8 normal = ((e + 112u) << 23) | (m << 13);
    const u32x8 special = 0x7f800000u | (m << 13) | (reinterpret_cast<u32x8>(m != 0u) & 0x400000u);
    const f32x8 sub = __builtin_convertvector(reinterpret_cast<i32x8>(m), f32x8) * 5.9604644775390625e-8f;
    const u32x8 is_special = reinterpret_cast<u32x8>(e == 0x1fu), is_zero = reinterpret_cast<u32x8>(e == 0u);
    u32x8 r = (is_special & special) | (~is_special & normal);
    r = (is_zero & reinterpret_cast<u32x8>(sub)) | (~is_zero & r);
    x = reinterpret_cast<f32x8>(sign | r);
  }
}

/// lo += y0², hi += y1², the products and the sums in statements of their own: Clang contracts
/// a·b + c within one expression into an FMA where the target has one (-ffp-contract=on), which
/// rounds once where the element path rounds twice.
FLATMIN_SUM_INLINE void add_squares(f64x4& lo, f64x4& hi, const f64x4& y0, const f64x4& y1) {
  const f64x4 q0 = y0 * y0, q1 = y1 * y1;
  lo = lo + q0;
  hi = hi + q1;
}

/// Lanes O … O + 3 of x in double, lane by lane (GCC 12 splits __builtin_convertvector's float →
/// double through the stack), into y (by reference, as to_float's).
template <std::uint32_t O, class V>
FLATMIN_SUM_INLINE void widen(const V& x, f64x4& y) {
  y = f64x4{double(x[O]), double(x[O + 1]), double(x[O + 2]), double(x[O + 3])};
}

/// Block p[0 … 7] as y = double(p[r]·s), lanes r < 4 in y0 and r ≥ 4 in y1, with p[r] converted
/// to the compute type T first and the product in T, as `scaled_square` does. `Scaled = false`
/// skips the product, for s = 1: x·1 is x for every x (a NaN stays a NaN, and the sum a NaN), and
/// the loads then go straight into the widening (the sum of squares at 1.5x the rate in cache).
template <class G, class T, bool Scaled = true>
FLATMIN_SUM_INLINE void block_values(f64x4& y0, f64x4& y1, const G* p, T s) {
  if constexpr (std::is_same_v<T, float>) {
    if constexpr (std::is_same_v<G, float> || std::is_same_v<G, double>) {
      f32x4 x0, x1;  // two halves: 8-wide here was slower in cache (bench_mixed check_pass, N = 10^5)
      if constexpr (std::is_same_v<G, float>) {
        std::memcpy(&x0, p, sizeof x0);
        std::memcpy(&x1, p + 4, sizeof x1);
      } else {  // rounded to float first, as static_cast does
        f64x4 d0, d1;
        std::memcpy(&d0, p, sizeof d0);
        std::memcpy(&d1, p + 4, sizeof d1);
        x0 = f32x4{float(d0[0]), float(d0[1]), float(d0[2]), float(d0[3])};
        x1 = f32x4{float(d1[0]), float(d1[1]), float(d1[2]), float(d1[3])};
      }
      if constexpr (Scaled) {
        x0 = x0 * s;
        x1 = x1 * s;
      }
      widen<0>(x0, y0);
      widen<0>(x1, y1);
    } else {  // a 16-bit gradient
      f32x8 x;
      to_float(p, x);
      if constexpr (Scaled) x = x * s;
      widen<0>(x, y0);
      widen<4>(x, y1);
    }
  } else {
    static_assert(std::is_same_v<T, double>);
    if constexpr (std::is_same_v<G, double>) {
      std::memcpy(&y0, p, sizeof y0);
      std::memcpy(&y1, p + 4, sizeof y1);
    } else if constexpr (std::is_same_v<G, float>) {
      f32x4 x0, x1;
      std::memcpy(&x0, p, sizeof x0);
      std::memcpy(&x1, p + 4, sizeof x1);
      widen<0>(x0, y0);
      widen<0>(x1, y1);
    } else {  // a 16-bit gradient: exactly a float, then exactly a double
      f32x8 x;
      to_float(p, x);
      widen<0>(x, y0);
      widen<4>(x, y1);
    }
    if constexpr (Scaled) {
      y0 = y0 * s;
      y1 = y1 * s;
    }
  }
}

/// Adds block p[0 … 7] to the strands: lane r of lo (r < 4) or hi (r ≥ 4) += y² (block_values).
template <bool Scaled, class G, class T>
FLATMIN_SUM_INLINE void add_block(f64x4& lo, f64x4& hi, const G* p, T s) {
  f64x4 y0, y1;
  block_values<G, T, Scaled>(y0, y1, p, s);
  add_squares(lo, hi, y0, y1);
}

/// The gradient and compute types add_block takes: every pair an optimizer has (gradients of
/// float, double, bfloat16 or half; state and arithmetic in float or double).
template <class G, class T>
inline constexpr bool has_form =
    (std::is_same_v<T, float> || std::is_same_v<T, double>) &&
    (std::is_same_v<G, float> || std::is_same_v<G, double> || std::is_same_v<G, bfloat16> ||
     std::is_same_v<G, half>);

/// Blocks [from, to) of the A runs p[0 … A−1] side by side, run a's strands in lo[a], hi[a].
template <std::uint32_t A, bool Scaled, class G, class T>
FLATMIN_SUM_INLINE void side_by_side(f64x4* lo, f64x4* hi, const G* const* p, std::size_t from,
                                     std::size_t to, T s) {
  for (std::size_t j = from; j < to; j += 8) {
#pragma GCC unroll 8
    for (std::uint32_t a = 0; a < A; ++a) add_block<Scaled>(lo[a], hi[a], p[a] + j, s);
  }
}

/// The M runs ordered by their whole blocks (`body`, ascending) in `order`: stretch P reads runs
/// order[P …] side by side from the end of run order[P − 1]'s blocks to the end of run order[P]'s.
/// Every index is a constant once unrolled, so the strands stay in registers.
template <std::uint32_t P, bool Scaled, std::uint32_t M, class G, class T>
FLATMIN_SUM_INLINE void stretches(f64x4 (&lo)[M], f64x4 (&hi)[M], const G* const (&p)[M],
                                  const std::size_t (&body)[M], T s) {
  if constexpr (P < M) {
    const std::size_t from = P == 0 ? 0 : body[P - 1];
    side_by_side<M - P, Scaled>(lo + P, hi + P, p + P, from, body[P], s);
    stretches<P + 1, Scaled>(lo, hi, p, body, s);
  }
}
}  // namespace lanes
#else
#define FLATMIN_STRAND_LANES 0
#endif

/// sum_squares_strands' order with the strands written out as loops over the K entries of a
/// block, which compilers vectorise: the form where GCC's and Clang's vector extensions are not
/// (nvcc's host pass), and the tests' second reference for the lanes.
template <class G, class T, std::uint32_t M>
FLATMIN_SUM_INLINE void sum_squares_written_out(const G* const (&g)[M], const std::uint32_t (&len)[M], T s,
                                                double (&out)[M]) {
  constexpr std::uint32_t K = reduction_strands;
  double a[M][K] = {};
  std::uint32_t common = len[0];
  for (std::uint32_t m = 1; m < M; ++m) common = len[m] < common ? len[m] : common;
  common -= common % K;
  // add_block's and add_tail's dealing: the runs side by side up to the shortest, then each alone
  for (std::uint32_t j = 0; j < common; j += K)
    for (std::uint32_t m = 0; m < M; ++m)
      for (std::uint32_t r = 0; r < K; ++r) a[m][r] = a[m][r] + scaled_square(g[m][j + r], s);
  for (std::uint32_t m = 0; m < M; ++m) {
    std::uint32_t j = common;
    for (; j + K <= len[m]; j += K)
      for (std::uint32_t r = 0; r < K; ++r) a[m][r] = a[m][r] + scaled_square(g[m][j + r], s);
    for (; j < len[m]; ++j) a[m][0] = a[m][0] + scaled_square(g[m][j], s);
    out[m] = combine_strands<K>(a[m]);
  }
}

/// Σ (s·g)² over each of M runs of consecutive gradients (`g[m]`, `len[m]`), each g converted to
/// the compute type T first (a 16-bit gradient: exactly, numeric/). The M runs are read side by
/// side (M streams keep a core's hardware prefetchers busier than one); each run's own order does
/// not depend on M. Under GCC and Clang by the lanes (every gradient and compute type an optimizer
/// has), elsewhere written out.
template <class G, class T, std::uint32_t M>
FLATMIN_SUM_INLINE void sum_squares_strands(const G* const (&g)[M], const std::uint32_t (&len)[M], T s,
                                            double (&out)[M]) {
#if FLATMIN_STRAND_LANES
  if constexpr (reduction_strands == 8 && lanes::has_form<G, T>) {
    constexpr std::uint32_t K = reduction_strands;
    // Every run that has whole blocks left is read side by side with the others, up to the
    // shortest of them, and again with those left (a group whose runs differ in length, a short
    // last segment or tensors of mixed sizes, keeps its streams); each run's blocks are summed in
    // order whatever the grouping. The runs are sorted by whole blocks (`body`), with their
    // pointers, lengths and places, by an odd-even transposition sort: constant indices once
    // unrolled, so the sort stays in registers (an insertion sort through an index array went
    // through the stack). Runs of equal body may trade places: no run's sum depends on its place.
    const G* p[M];
    std::size_t body[M];
    std::uint32_t n[M], order[M];
    lanes::f64x4 lo[M], hi[M];
#pragma GCC unroll 8
    for (std::uint32_t k = 0; k < M; ++k) {
      p[k] = g[k];
      n[k] = len[k];
      body[k] = len[k] - len[k] % K;
      order[k] = k;
      lo[k] = lanes::f64x4{0, 0, 0, 0};
      hi[k] = lanes::f64x4{0, 0, 0, 0};
    }
#pragma GCC unroll 8
    for (std::uint32_t round = 0; round < M; ++round) {
#pragma GCC unroll 8
      for (std::uint32_t k = round % 2; k + 1 < M; k += 2) {
        if (body[k + 1] < body[k]) {
          std::swap(body[k], body[k + 1]);
          std::swap(p[k], p[k + 1]);
          std::swap(n[k], n[k + 1]);
          std::swap(order[k], order[k + 1]);
        }
      }
    }
    // the usual case (no loss scale): no product (block_values). Not for 16-bit gradients: without
    // the product GCC widened their lanes through memory (bench_mixed check_pass g_bf16 at 10^5,
    // one thread: 17 -> 26 us)
    if constexpr (sizeof(G) >= 4) {
      if (s == T(1))
        lanes::stretches<0, false>(lo, hi, p, body, s);
      else
        lanes::stretches<0, true>(lo, hi, p, body, s);
    } else {
      lanes::stretches<0, true>(lo, hi, p, body, s);
    }
#pragma GCC unroll 8
    for (std::uint32_t k = 0; k < M; ++k) {  // the last len mod K entries of each run, to strand 0
      const lanes::f64x4 l = lo[k], h = hi[k];
      double b[K];
      for (std::uint32_t r = 0; r < 4; ++r) {
        b[r] = l[r];
        b[4 + r] = h[r];
      }
      for (std::size_t j = body[k]; j < n[k]; ++j) b[0] = b[0] + scaled_square(p[k][j], s);
      out[order[k]] = combine_strands<K>(b);
    }
  } else {
    sum_squares_written_out(g, len, s, out);
  }
#else
  sum_squares_written_out(g, len, s, out);
#endif
}

/// Σ (s·g)² over the entries of one run whose mask bit is set, and their count, in the same order
/// (an entry that is out adds +0 on the element path, which is what the AND with its bit's lane
/// adds here), and from the same sweep Σ (s·g)² over every entry of the run (`all`:
/// sum_squares_strands' order for one run). `bits8(j)` gives the bits of entries j … j + 7 of the
/// run, `bit(j)` one entry's. g is converted to the compute type T first, as in
/// sum_squares_strands. Under GCC and Clang by the lanes: y (block_values) ANDed with the byte's
/// lanes, so that an entry that is out adds 0² = +0, the blend's +0, bit for bit (GCC's vectorisers
/// had moved every lane of the blend through a general register: the masked statistics took twice
/// the dense ones, bench_passes opt_fsam_sgd). Both sums in one sweep: four chains of additions,
/// where the masked sum alone had two and the statistics read the run a second time for Σg²; in
/// cache the sweep is bound by the additions' latency, so the second sum is nearly free.
template <class G, class T, class Bits8, class Bit>
FLATMIN_SUM_INLINE double masked_sum_squares_strands(const G* g, std::uint32_t len, T s, const Bits8& bits8,
                                                     const Bit& bit, double& kept, double& all) {
  constexpr std::uint32_t K = reduction_strands;
  static_assert(K == 8, "eight strands: one byte of mask bits per block");
  double a[K] = {}, f[K] = {};
  std::uint32_t count = 0, j = 0;
#if FLATMIN_STRAND_LANES
  if constexpr (lanes::has_form<G, T>) {
    using u64x4 = std::uint64_t __attribute__((vector_size(32)));
    lanes::f64x4 lo{0, 0, 0, 0}, hi{0, 0, 0, 0}, flo{0, 0, 0, 0}, fhi{0, 0, 0, 0};
    for (; j + K <= len; j += K) {
      const std::uint32_t b = bits8(j);
      count += static_cast<std::uint32_t>(std::popcount(b));
      u64x4 m0, m1;
      std::memcpy(&m0, nibble_table<std::uint64_t>.lane[b & 15u], sizeof m0);
      std::memcpy(&m1, nibble_table<std::uint64_t>.lane[b >> 4], sizeof m1);
      lanes::f64x4 y0, y1;
      lanes::block_values(y0, y1, g + j, s);
      lanes::add_squares(flo, fhi, y0, y1);
      y0 = reinterpret_cast<lanes::f64x4>(reinterpret_cast<u64x4>(y0) & m0);
      y1 = reinterpret_cast<lanes::f64x4>(reinterpret_cast<u64x4>(y1) & m1);
      lanes::add_squares(lo, hi, y0, y1);
    }
    for (std::uint32_t r = 0; r < 4; ++r) {
      a[r] = lo[r];
      a[4 + r] = hi[r];
      f[r] = flo[r];
      f[4 + r] = fhi[r];
    }
  }
#endif
  for (; j + K <= len; j += K) {
    const std::uint32_t b = bits8(j);
    count += static_cast<std::uint32_t>(std::popcount(b));
    const std::uint64_t* lo = nibble_table<std::uint64_t>.lane[b & 15u];
    const std::uint64_t* hi = nibble_table<std::uint64_t>.lane[b >> 4];
    for (std::uint32_t r = 0; r < 8; ++r) f[r] = f[r] + scaled_square(g[j + r], s);
    for (std::uint32_t r = 0; r < 4; ++r)
      a[r] = a[r] + kernels::blend_lanes<double>(lo[r], scaled_square(g[j + r], s), 0.0);
    for (std::uint32_t r = 0; r < 4; ++r)
      a[4 + r] = a[4 + r] + kernels::blend_lanes<double>(hi[r], scaled_square(g[j + 4 + r], s), 0.0);
  }
  for (; j < len; ++j) {
    const double q = scaled_square(g[j], s);
    f[0] = f[0] + q;
    if (bit(j)) {
      a[0] = a[0] + q;
      ++count;
    }
  }
  kept = double(count);
  all = combine_strands<K>(f);
  return combine_strands<K>(a);
}

}  // namespace flatmin::backend::host
