#pragma once
// The yardstick of each pass (bench_passes' `stream_ratio`): a kernel with the pass's read and
// write streams and no arithmetic, each word the XOR of the words read at its index, measured in
// the same binary as the pass. The best of plain and non-temporal (streaming) stores, and of the
// instruction sets this CPU has (SSE2, AVX2, AVX-512F), written with intrinsics so that the
// compiler's choices do not enter; the threads split [0, N) into one chunk each, as
// parallel_copy does. `memcpy` (the copy_ratio yardstick) is one such kernel, one read and one
// write stream; a pass with several read streams can move bytes faster than a copy can.
#include <flatmin/backend/eigen.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <tuple>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FLATMIN_BENCH_X86 1
#else
#define FLATMIN_BENCH_X86 0
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace flatmin_bench {

/// A pass's streams of 4-byte words per parameter: `reads` arrays read, the first `inplace` of
/// them written back, and `fresh` arrays (0 or 1) written without being read. A pass whose streams
/// are not all 4-byte (16-bit weights or gradients, bench_mixed) gives its real bytes per parameter
/// in `actual`: its yardstick is then those bytes at the rate of the 4-byte kernel with the same
/// streams (an approximation: the same number of streams, each narrower).
struct streams {
  int reads, inplace, fresh;
  double actual = 0;
  double bytes() const { return 4.0 * (reads + inplace + fresh); }
  double pass_bytes() const { return actual > 0 ? actual : bytes(); }
};
inline constexpr streams read_only{1, 0, 0};        // global_norm, the finiteness check: g
inline constexpr streams copy_streams{1, 0, 1};     // copy, restore: saved -> w; keep_gradient
inline constexpr streams ascend_streams{2, 1, 1};   // w, g -> w, saved
inline constexpr streams sgd_streams{3, 2, 0};      // w, g, buf -> w, buf
inline constexpr streams descend_sgd_streams{3, 1, 1};    // saved, g, buf -> buf, w
inline constexpr streams adamw_streams{4, 3, 0};          // w, g, m, v -> w, m, v
inline constexpr streams descend_adamw_streams{4, 2, 1};  // saved, g, m, v -> m, v, w

namespace stream_detail {

// One chunk [lo, hi) of a stream kernel: R arrays read (the first IP written back with the XOR of
// the others), FW (0 or 1) arrays written with the XOR of all; returns the XOR of everything read
// when nothing is written (so that the reads cannot be dropped). The scalar tail is shared.
template <int R, int IP, int FW>
inline std::uint32_t scalar_tail(std::uint32_t* const* a, std::uint32_t* f, std::size_t i, std::size_t hi) {
  std::uint32_t acc = 0;
  for (; i < hi; ++i) {
    std::uint32_t x = 0;
    for (int r = 0; r < R; ++r) x ^= a[r][i];
    for (int k = 0; k < IP; ++k) a[k][i] ^= x;
    if constexpr (FW == 1) f[i] = x;
    acc ^= x;
  }
  return acc;
}

#if FLATMIN_BENCH_X86
#define FLATMIN_BENCH_STREAM_KERNEL(NAME, ATTR, VEC, LANES, ZERO, LOAD, XOR, STORE, STREAM, FIRST)   \
  template <int R, int IP, int FW, bool NT>                                                       \
  ATTR std::uint32_t NAME(std::uint32_t* const* arrays, std::uint32_t* f, std::size_t lo,         \
                          std::size_t hi) {                                                       \
    std::uint32_t* p[4] = {arrays[0], R > 1 ? arrays[1] : nullptr, R > 2 ? arrays[2] : nullptr,   \
                           R > 3 ? arrays[3] : nullptr};                                          \
    VEC acc = ZERO();                                                                             \
    std::size_t i = lo;                                                                           \
    for (; i + LANES <= hi; i += LANES) {                                                         \
      VEC v[4];                                                                                   \
      VEC x = v[0] = LOAD(p[0] + i);                                                              \
      for (int r = 1; r < R; ++r) x = XOR(x, v[r] = LOAD(p[r] + i));                             \
      for (int k = 0; k < IP; ++k) {                                                              \
        if constexpr (NT)                                                                         \
          STREAM(p[k] + i, XOR(v[k], x));                                                         \
        else                                                                                      \
          STORE(p[k] + i, XOR(v[k], x));                                                          \
      }                                                                                           \
      if constexpr (FW == 1) {                                                                    \
        if constexpr (NT)                                                                         \
          STREAM(f + i, x);                                                                       \
        else                                                                                      \
          STORE(f + i, x);                                                                        \
      }                                                                                           \
      if constexpr (IP == 0 && FW == 0) acc = XOR(acc, x);                                        \
    }                                                                                             \
    if constexpr (NT) _mm_sfence();                                                               \
    return FIRST(acc) ^ scalar_tail<R, IP, FW>(p, f, i, hi);                                      \
  }

#define FLATMIN_SSE_LOAD(p) _mm_load_si128(reinterpret_cast<const __m128i*>(p))
#define FLATMIN_SSE_STORE(p, x) _mm_store_si128(reinterpret_cast<__m128i*>(p), x)
#define FLATMIN_SSE_STREAM(p, x) _mm_stream_si128(reinterpret_cast<__m128i*>(p), x)
#define FLATMIN_SSE_FIRST(x) static_cast<std::uint32_t>(_mm_cvtsi128_si32(x))
FLATMIN_BENCH_STREAM_KERNEL(kernel_sse2, , __m128i, 4, _mm_setzero_si128, FLATMIN_SSE_LOAD, _mm_xor_si128,
                            FLATMIN_SSE_STORE, FLATMIN_SSE_STREAM, FLATMIN_SSE_FIRST)

#define FLATMIN_AVX_LOAD(p) _mm256_load_si256(reinterpret_cast<const __m256i*>(p))
#define FLATMIN_AVX_STORE(p, x) _mm256_store_si256(reinterpret_cast<__m256i*>(p), x)
#define FLATMIN_AVX_STREAM(p, x) _mm256_stream_si256(reinterpret_cast<__m256i*>(p), x)
#define FLATMIN_AVX_FIRST(x) static_cast<std::uint32_t>(_mm256_extract_epi32(x, 0))
#define FLATMIN_BENCH_AVX2 __attribute__((target("avx2")))
FLATMIN_BENCH_STREAM_KERNEL(kernel_avx2, FLATMIN_BENCH_AVX2, __m256i, 8, _mm256_setzero_si256,
                            FLATMIN_AVX_LOAD, _mm256_xor_si256, FLATMIN_AVX_STORE, FLATMIN_AVX_STREAM,
                            FLATMIN_AVX_FIRST)

#define FLATMIN_AVX512_LOAD(p) _mm512_load_si512(reinterpret_cast<const void*>(p))
#define FLATMIN_AVX512_STORE(p, x) _mm512_store_si512(reinterpret_cast<void*>(p), x)
#define FLATMIN_AVX512_STREAM(p, x) _mm512_stream_si512(reinterpret_cast<__m512i*>(p), x)
#define FLATMIN_AVX512_FIRST(x) static_cast<std::uint32_t>(_mm512_cvtsi512_si32(x))
#define FLATMIN_BENCH_AVX512 __attribute__((target("avx512f")))
FLATMIN_BENCH_STREAM_KERNEL(kernel_avx512, FLATMIN_BENCH_AVX512, __m512i, 16, _mm512_setzero_si512,
                            FLATMIN_AVX512_LOAD, _mm512_xor_si512, FLATMIN_AVX512_STORE,
                            FLATMIN_AVX512_STREAM, FLATMIN_AVX512_FIRST)
#endif

/// Variant v: instruction set v / 2 (0 baseline, 1 AVX2, 2 AVX-512), streaming stores if v is odd.
template <int R, int IP, int FW>
std::uint32_t chunk(int v, std::uint32_t* const* a, std::uint32_t* f, std::size_t lo, std::size_t hi) {
#if FLATMIN_BENCH_X86
  switch (v) {
    case 0: return kernel_sse2<R, IP, FW, false>(a, f, lo, hi);
    case 1: return kernel_sse2<R, IP, FW, true>(a, f, lo, hi);
    case 2: return kernel_avx2<R, IP, FW, false>(a, f, lo, hi);
    case 3: return kernel_avx2<R, IP, FW, true>(a, f, lo, hi);
    case 4: return kernel_avx512<R, IP, FW, false>(a, f, lo, hi);
    default: return kernel_avx512<R, IP, FW, true>(a, f, lo, hi);
  }
#else
  static_cast<void>(v);
  return scalar_tail<R, IP, FW>(a, f, lo, hi);
#endif
}

template <int R, int IP, int FW>
std::uint32_t run(int v, std::uint32_t* const* a, std::uint32_t* f, std::size_t n, int threads) {
  std::uint32_t out = 0;
#if defined(_OPENMP)
  if (threads > 1 && n >= flatmin::backend::eigen::parallel_threshold) {
#pragma omp parallel num_threads(threads) reduction(^ : out)
    {
      const std::size_t nt = static_cast<std::size_t>(omp_get_num_threads());
      const std::size_t id = static_cast<std::size_t>(omp_get_thread_num());
      // chunks of whole 64-byte lines: every thread starts aligned for every width
      const std::size_t per = ((n + nt - 1) / nt + 15) / 16 * 16;
      const std::size_t lo = std::min(n, id * per), hi = std::min(n, lo + per);
      if (hi > lo) out ^= chunk<R, IP, FW>(v, a, f, lo, hi);
    }
    return out;
  }
#endif
  static_cast<void>(threads);
  return chunk<R, IP, FW>(v, a, f, 0, n);
}

inline std::uint32_t run(const streams& s, int v, std::uint32_t* const* a, std::uint32_t* f, std::size_t n,
                         int threads) {
  const auto key = std::make_tuple(s.reads, s.inplace, s.fresh);
  if (key == std::make_tuple(1, 0, 0)) return run<1, 0, 0>(v, a, f, n, threads);
  if (key == std::make_tuple(1, 0, 1)) return run<1, 0, 1>(v, a, f, n, threads);
  if (key == std::make_tuple(2, 1, 1)) return run<2, 1, 1>(v, a, f, n, threads);
  if (key == std::make_tuple(3, 2, 0)) return run<3, 2, 0>(v, a, f, n, threads);
  if (key == std::make_tuple(3, 1, 1)) return run<3, 1, 1>(v, a, f, n, threads);
  if (key == std::make_tuple(4, 3, 0)) return run<4, 3, 0>(v, a, f, n, threads);
  return run<4, 2, 1>(v, a, f, n, threads);
}

}  // namespace stream_detail

/// The yardstick's rate, bytes/s of `s.bytes()` per word, and the variant that gave it.
struct stream_rate {
  double bytes_per_second = 0;
  /// instruction set: variant / 2 (0 baseline, 1 AVX2, 2 AVX-512); odd: streaming stores
  int variant = 0;
};

/// Five arrays of at least `n` words for the yardsticks, shared by all of them and grown, never
/// shrunk (allocating and first-touching them at every measurement cost more than the kernels).
inline std::uint32_t* const* stream_buffers(std::size_t n) {
  static std::vector<flatmin::backend::eigen::vector<std::uint32_t>> buf(5);
  static std::uint32_t* a[5] = {};
  if (buf[0].size() < n) {
    for (auto& b : buf) b.assign(n, 0x3f800000u);
    for (int k = 0; k < 5; ++k) a[k] = buf[k].data();
  }
  return a;
}

namespace stream_detail {
/// The rate (bytes/s of `s.bytes()` per word) of variant v over n words: after one warm-up run,
/// the runs of at least `seconds` (and at least 3), their bytes over their time: a mean over the
/// same span as Google Benchmark's mean over a repetition's iterations.
inline double mean_rate(const streams& s, int v, std::size_t n, int threads, double seconds) {
  std::uint32_t* const* a = stream_buffers(n);
  using clock = std::chrono::steady_clock;
  volatile std::uint32_t sink = 0;
  sink = sink ^ run(s, v, a, a[4], n, threads);
  std::size_t runs = 0;
  const auto start = clock::now();
  double sec = 0;
  while (runs < 3 || sec < seconds) {
    sink = sink ^ run(s, v, a, a[4], n, threads);
    ++runs;
    sec = std::chrono::duration<double>(clock::now() - start).count();
  }
  return s.bytes() * static_cast<double>(n) * static_cast<double>(runs) / sec;
}

/// A duration in seconds from environment variable `name`, else `fallback`.
inline double env_seconds(const char* name, double fallback) {
  const char* e = std::getenv(name);
  return e ? std::atof(e) : fallback;
}
}  // namespace stream_detail

/// The rate of streams `s` over `n` words with `threads` threads, timed at every call: a
/// benchmark calls it after its timed loop (set_traffic), once per repetition, so that the pass and
/// its yardstick meet the machine in the same second. The variant is chosen at the first call for
/// (s, n, threads): every variant this CPU runs, timed for FLATMIN_BENCH_COPY_SECONDS (0.2 s by
/// default) shared among them, the fastest kept. Every call then times that variant for
/// FLATMIN_BENCH_YARDSTICK_SECONDS (0.05 s by default: a repetition's own length in
/// scripts/bench.sh) and gives its mean rate, as the pass's time is a mean. (It had been the best
/// of its repetitions, measured once per process: on a VM whose bandwidth moved by 2x from minute
/// to minute, that set the bar from one lucky repetition, minutes away from some of its passes.)
inline stream_rate stream_bandwidth(const streams& s, std::size_t n, int threads) {
  static std::map<std::tuple<int, int, int, std::size_t, int>, int> chosen;
  n = std::max<std::size_t>(n, 16);
  const auto key = std::make_tuple(s.reads, s.inplace, s.fresh, n, threads);
  auto it = chosen.find(key);
  if (it == chosen.end()) {
    std::vector<int> variants = {0, 1};
    namespace host = flatmin::backend::host;
    if (FLATMIN_BENCH_X86 && host::isa_supported(host::isa::avx2)) variants.insert(variants.end(), {2, 3});
    if (FLATMIN_BENCH_X86 && host::isa_supported(host::isa::avx512)) variants.insert(variants.end(), {4, 5});
    static const double search = stream_detail::env_seconds("FLATMIN_BENCH_COPY_SECONDS", 0.2);
    double best = -1;
    int pick = 0;
    for (int v : variants) {
      const double r = stream_detail::mean_rate(s, v, n, threads, search / static_cast<double>(variants.size()));
      if (r > best) best = r, pick = v;
    }
    it = chosen.emplace(key, pick).first;
  }
  static const double now = stream_detail::env_seconds("FLATMIN_BENCH_YARDSTICK_SECONDS", 0.05);
  return {stream_detail::mean_rate(s, it->second, n, threads, now), it->second};
}

}  // namespace flatmin_bench
