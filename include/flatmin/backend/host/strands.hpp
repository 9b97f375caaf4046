#pragma once
/// @file strands.hpp
/// Host SIMD forms of the sum of squares of gradients, in the summation order of summation.hpp,
/// written as straight-line blocks of K so that the compiler vectorises the K strands as lanes (no
/// reassociation: each lane is still summed in order), which makes each result bitwise equal to
/// the element path's.

#include <bit>
#include <cstdint>

#include "../../kernels/math.hpp"
#include "../summation.hpp"
#include "mask_lanes.hpp"

namespace flatmin::backend::host {

/// Σ (s·g)² over each of M runs of consecutive gradients (`g[m]`, `len[m]`), each g converted to
/// the compute type T first (a 16-bit gradient: exactly, numeric/). The M runs are read side by
/// side (M streams keep a core's hardware prefetchers busier than one); each run's own order does
/// not depend on M.
template <class G, class T, std::uint32_t M>
FLATMIN_SUM_INLINE void sum_squares_strands(const G* const (&g)[M], const std::uint32_t (&len)[M], T s,
                                            double (&out)[M]) {
  constexpr std::uint32_t K = reduction_strands;
  const auto sq = [s](G x) {
    const double y = double(static_cast<T>(x) * s);
    return y * y;
  };
  double a[M][K] = {};
  std::uint32_t common = len[0];
  for (std::uint32_t m = 1; m < M; ++m) common = len[m] < common ? len[m] : common;
  common -= common % K;
  // add_block's and add_tail's dealing, written out: the loops the compiler vectorises as they were
  for (std::uint32_t j = 0; j < common; j += K)
    for (std::uint32_t m = 0; m < M; ++m)
      for (std::uint32_t r = 0; r < K; ++r) a[m][r] = a[m][r] + sq(g[m][j + r]);
  // What is left of each run, continuing its strands. GCC: one run at a time with its strands and
  // bounds in locals and each block straight-line; indexed through a[m] and g[m], GCC vectorised
  // this loop over the entry index (a gather per block), and a group whose runs differ in length
  // (a short or empty last segment, tensors of mixed sizes) summed at a third of the speed of equal
  // runs (0.55 → 0.19 ns per entry on AVX2, 0.63 → 0.25 on the baseline; the same bits). Clang
  // vectorises the plain form well and the local form 15 % slower, so it keeps the plain one (and
  // so does nvcc's host pass).
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC unroll 1
  for (std::uint32_t m = 0; m < M; ++m) {
    double b[K];
#pragma GCC unroll 16
    for (std::uint32_t r = 0; r < K; ++r) b[r] = a[m][r];
    const G* gm = g[m];
    const std::uint32_t n = len[m];
    std::uint32_t j = common;
    for (; j + K <= n; j += K) {
#pragma GCC unroll 16
      for (std::uint32_t r = 0; r < K; ++r) b[r] = b[r] + sq(gm[j + r]);
    }
    for (; j < n; ++j) b[0] = b[0] + sq(gm[j]);
    out[m] = combine_strands<K>(b);
  }
#else
  for (std::uint32_t m = 0; m < M; ++m) {
    std::uint32_t j = common;
    for (; j + K <= len[m]; j += K)
      for (std::uint32_t r = 0; r < K; ++r) a[m][r] = a[m][r] + sq(g[m][j + r]);
    for (; j < len[m]; ++j) a[m][0] = a[m][0] + sq(g[m][j]);
    out[m] = combine_strands<K>(a[m]);
  }
#endif
}

/// Σ (s·g)² over the entries of one run whose mask bit is set, and their count, in the same order
/// (an entry that is out adds +0 on the element path, which is what the AND with its bit's lane
/// adds here). `bits8(j)` gives the bits of entries j … j + 7 of the run, `bit(j)` one entry's.
/// g is converted to the compute type T first, as in sum_squares_strands.
template <class G, class T, class Bits8, class Bit>
FLATMIN_SUM_INLINE double masked_sum_squares_strands(const G* g, std::uint32_t len, T s, const Bits8& bits8,
                                                     const Bit& bit, double& kept) {
  constexpr std::uint32_t K = reduction_strands;
  static_assert(K == 8, "eight strands: one byte of mask bits per block");
  const auto sq = [s](G x) {
    const double y = double(static_cast<T>(x) * s);
    return y * y;
  };
  double a[K] = {};
  std::uint32_t count = 0, j = 0;
  for (; j + K <= len; j += K) {  // add_block's dealing, the lanes of a byte of bits in two halves
    const std::uint32_t b = bits8(j);
    count += static_cast<std::uint32_t>(std::popcount(b));
    const std::uint64_t* lo = nibble_table<std::uint64_t>.lane[b & 15u];
    const std::uint64_t* hi = nibble_table<std::uint64_t>.lane[b >> 4];
    for (std::uint32_t r = 0; r < 4; ++r)
      a[r] = a[r] + kernels::blend_lanes<double>(lo[r], sq(g[j + r]), 0.0);
    for (std::uint32_t r = 0; r < 4; ++r)
      a[4 + r] = a[4 + r] + kernels::blend_lanes<double>(hi[r], sq(g[j + 4 + r]), 0.0);
  }
  for (; j < len; ++j)  // add_tail's, counting
    if (bit(j)) {
      a[0] = a[0] + sq(g[j]);
      ++count;
    }
  kept = double(count);
  return combine_strands<K>(a);
}

}  // namespace flatmin::backend::host
