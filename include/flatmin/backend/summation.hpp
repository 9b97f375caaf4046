#pragma once
/// @file summation.hpp
/// The segment size and the summation order of every reduction, defined once for backend::eigen,
/// backend::thrust and the host fast forms (backend/host/): bitwise equality between the backends
/// rests on this header alone.
///
/// A segment of len elements is summed in K = `reduction_strands` strands: its first ⌊len/K⌋·K
/// elements are dealt to the strands (element j to strand j mod K), the remaining len mod K are
/// added to strand 0, each strand is summed in order, and the strands are combined pairwise
/// (`combine_strands`, K = 8: ((a0+a1)+(a2+a3))+((a4+a5)+(a6+a7))). A pass's segment partials are
/// then added in segment order. A reduction over an index space [0, n) (`reduce_index`) sums each
/// block of `segment_size` indices with one accumulator in order (`index_block_sum`), then the
/// blocks in order. K = 8 lets a host compiler keep four SSE2 (or two AVX) double
/// accumulators in flight, which takes the sum of squares from latency-bound to the read-bandwidth
/// limit (bench/RESULTS.md).

#include <cstddef>
#include <cstdint>

#include "../config.hpp"

/// Inlined where a backend calls them (GCC, Clang host code), so that each backend's loop is
/// compiled, and inlined into its callers, as if it were written out there.
#if defined(__GNUC__) && !defined(__CUDA_ARCH__)
#define FLATMIN_SUM_INLINE __attribute__((always_inline)) inline
#else
#define FLATMIN_SUM_INLINE inline
#endif
/// nvcc: these host-and-device templates are also called with host-only callables (backend::eigen's
/// loops in a CUDA translation unit), which is fine as long as no device code instantiates them so.
#if defined(__CUDACC__)
#define FLATMIN_SUM_ANY_CALLABLE _Pragma("nv_exec_check_disable")
#else
#define FLATMIN_SUM_ANY_CALLABLE
#endif

namespace flatmin::backend {

inline constexpr std::uint32_t log2_segment_size = 12;
/// Elements per segment, in both backends (so that they cut tensors identically and reduce in the
/// same order): large enough to amortise a segment's set-up, small enough that 10^6 parameters
/// give hundreds of units of parallel work. A power of two (thrust maps a lane to its segment by a
/// shift), and at least the largest mask block (1024), which must fit a segment.
inline constexpr std::size_t segment_size = std::size_t{1} << log2_segment_size;
static_assert(segment_size >= 1024, "mask blocks of up to 1024 elements must fit in a segment");

/// K, the number of strands of a segment's sum.
inline constexpr std::uint32_t reduction_strands = 8;

/// Combines K partial sums (K a power of two) pairwise in place; returns a[0].
template <std::uint32_t K, class R>
FLATMIN_HD inline R combine_strands(R* a) {
  static_assert(K >= 1 && (K & (K - 1)) == 0, "strand count must be a power of two");
  for (std::uint32_t width = K; width > 1; width /= 2)
    for (std::uint32_t r = 0; r < width / 2; ++r) a[r] = a[2 * r] + a[2 * r + 1];
  return a[0];
}

/// The block of K elements at j: element j + r to strand r.
FLATMIN_SUM_ANY_CALLABLE
template <std::uint32_t K, class R, class F>
FLATMIN_HD FLATMIN_SUM_INLINE void add_block(R* a, std::uint32_t j, const F& f) {
  for (std::uint32_t r = 0; r < K; ++r) a[r] = a[r] + f(j + r);
}

/// The tail [j, len) of a segment, to strand 0 (`a0`).
FLATMIN_SUM_ANY_CALLABLE
template <class R, class F>
FLATMIN_HD FLATMIN_SUM_INLINE void add_tail(R& a0, std::uint32_t j, std::uint32_t len, const F& f) {
  for (; j < len; ++j) a0 = a0 + f(j);
}

/// Σ f(j) over the segment's j in [0, len), in the order above (R value-initialises to zero).
FLATMIN_SUM_ANY_CALLABLE
template <class R, std::uint32_t K = reduction_strands, class F>
FLATMIN_HD FLATMIN_SUM_INLINE R strand_sum(std::uint32_t len, const F& f) {
  R a[K]{};
  std::uint32_t j = 0;
  for (; j + K <= len; j += K) add_block<K>(a, j, f);
  add_tail(a[0], j, len, f);
  return combine_strands<K>(a);
}

/// Strand r of that order on its own (a GPU runs one thread per strand); combining the K results
/// with `combine_strands` gives `strand_sum` bit for bit. The strand's terms are evaluated U at a
/// time, in order, before they are added, in order: the same sums, but a GPU thread has U reads
/// in flight instead of one (a strand is 512 dependent additions, so a thread that waited for each
/// read in turn left the reduction latency-bound, not bandwidth-bound).
FLATMIN_SUM_ANY_CALLABLE
template <class R, std::uint32_t K = reduction_strands, std::uint32_t U = 1, class F>
FLATMIN_HD FLATMIN_SUM_INLINE R strand_partial(std::uint32_t len, std::uint32_t r, const F& f) {
  static_assert(U >= 1, "strand_partial: U >= 1 terms per round");
  const std::uint32_t body = len - len % K;
  R a{};
  std::uint32_t j = r;
  if constexpr (U > 1) {
    for (; j + (U - 1) * K < body; j += U * K) {
      R v[U];
      FLATMIN_UNROLL
      for (std::uint32_t u = 0; u < U; ++u) v[u] = f(j + u * K);
      FLATMIN_UNROLL
      for (std::uint32_t u = 0; u < U; ++u) a = a + v[u];
    }
  }
  for (; j < body; j += K) a = a + f(j);
  if (r == 0) add_tail(a, body, len, f);
  return a;
}

/// Σ f(i) over block b of [0, n), i in [b·S, min(n, (b + 1)·S)) with S = `segment_size`, in order.
FLATMIN_SUM_ANY_CALLABLE
template <class R, class F>
FLATMIN_HD FLATMIN_SUM_INLINE R index_block_sum(std::size_t n, std::size_t b, const F& f) {
  R acc{};
  const std::size_t lo = b * segment_size, hi = lo + segment_size < n ? lo + segment_size : n;
  for (std::size_t i = lo; i < hi; ++i) acc = acc + f(i);
  return acc;
}

}  // namespace flatmin::backend
