#pragma once
// Shared by the benchmark programs: a problem of N parameters over K tensors, the copy baseline
// measured in the same binary, the thread setting, the size grid and the bytes/s counters.
//
// Every benchmark takes the arguments {N, K, threads} (threads: 1, or 0 for all cores) and must
// be registered with `->UseRealTime()` (OpenMP workers' CPU time is not the main thread's), which
// `flatmin_bench::grid` does. Counters (see set_traffic):
//   bytes_per_second  minimal traffic of DESIGN.md §5 per second (Google Benchmark's own field)
//   B_per_param       that minimal traffic per parameter
//   copy_ratio        bytes_per_second ÷ the copy bandwidth of the same number of bytes, same
//                     thread count, measured once in this binary (copy_bandwidth below)
//   stream_ratio      the time the benchmark's passes take at their own yardsticks (streams.hpp:
//                     the same read and write streams, no arithmetic) ÷ its time; stream_GBps the
//                     yardstick's rate for the same bytes, stream_variant which kernel set it;
//                     the yardstick is timed again at each call, right after the timed loop
// Environment: FLATMIN_BENCH_LARGE=1 adds N = 10^8 to the grid; FLATMIN_BENCH_SIZES=n1,n2,... replaces
// its N = 10^4 … 10^7; FLATMIN_BENCH_MAX_N=n caps it;
// FLATMIN_BENCH_COPY_SECONDS sets how long each copy baseline is measured, and each yardstick's
// variant chosen (default 0.2 s); FLATMIN_BENCH_YARDSTICK_SECONDS how long a yardstick is timed
// at each call (default 0.05 s).
#include <benchmark/benchmark.h>
#include <flatmin/flatmin.hpp>

#include "streams.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace flatmin_bench {

/// N float parameters and gradients split into K tensors of (nearly) equal size, each tensor its
/// own allocation (as in a real model), with random values in [-1, 1) (a cheap generator: at
/// N = 10^7 a normal distribution would cost more than the benchmark's own runs).
struct problem {
  std::vector<std::vector<float>> w, g;
  flatmin::param_set<float> params;
  problem(std::size_t n, std::size_t k, unsigned seed = 1) {
    std::uint64_t state = 0x9E3779B97F4A7C15ull * (seed + 1);
    auto next = [&state] {  // xorshift64*
      state ^= state >> 12;
      state ^= state << 25;
      state ^= state >> 27;
      const std::uint64_t r = state * 0x2545F4914F6CDD1Dull;
      return static_cast<float>(static_cast<double>(r >> 40) * 0x1.0p-23 - 1.0);
    };
    w.resize(k);
    g.resize(k);
    for (std::size_t t = 0; t < k; ++t) {
      const std::size_t sz = n / k + (t < n % k ? 1 : 0);
      w[t].resize(sz);
      g[t].resize(sz);
      for (auto& x : w[t]) x = next();
      for (auto& x : g[t]) x = next();
      params.add("t" + std::to_string(t), w[t].data(), g[t].data(), {sz});
    }
  }
};

/// The problem of the last (n, k) asked for, kept across a benchmark's repetitions and the
/// benchmarks that follow with the same sizes (the passes leave w and g finite, so reusing them is
/// harmless). Building it anew for each repetition would dominate the suite's run time at 10^7.
inline problem& shared_problem(std::size_t n, std::size_t k) {
  static std::unique_ptr<problem> p;
  static std::size_t pn = 0, pk = 0;
  if (!p || pn != n || pk != k) {
    p.reset();
    p = std::make_unique<problem>(n, k);
    pn = n;
    pk = k;
  }
  return *p;
}

/// Number of cores the "all threads" setting uses.
inline int all_threads() {
#if defined(_OPENMP)
  return omp_get_num_procs();
#else
  return 1;
#endif
}

/// Sets the OpenMP thread count for a benchmark's `threads` argument (0 = all cores) and returns
/// the count in use.
inline int use_threads(std::int64_t arg) {
  const int t = arg <= 0 ? all_threads() : static_cast<int>(arg);
#if defined(_OPENMP)
  omp_set_num_threads(t);
  return t;
#else
  return 1;
#endif
}

/// Copies `n` floats from `src` to `dst` with `threads` threads, each copying one contiguous
/// chunk with memcpy (what a user would call "a copy").
inline void parallel_copy(const float* src, float* dst, std::size_t n, int threads) {
#if defined(_OPENMP)
  // the same rule as backend::eigen: small copies stay on the calling thread
  if (threads > 1 && n >= flatmin::backend::eigen::parallel_threshold) {
#pragma omp parallel num_threads(threads)
    {
      const std::size_t nt = static_cast<std::size_t>(omp_get_num_threads());
      const std::size_t id = static_cast<std::size_t>(omp_get_thread_num());
      // chunks rounded to 16 floats so that every thread starts on a cache line
      const std::size_t chunk = ((n + nt - 1) / nt + 15) / 16 * 16;
      const std::size_t lo = std::min(n, id * chunk), hi = std::min(n, lo + chunk);
      if (hi > lo) std::memcpy(dst + lo, src + lo, (hi - lo) * sizeof(float));
    }
    return;
  }
#endif
  static_cast<void>(threads);
  std::memcpy(dst, src, n * sizeof(float));
}

/// Copy bandwidth in bytes/s (read + write counted: 8 B per float) for a copy of `floats`
/// floats with `threads` threads. Measured once per (floats, threads) in this process: after one
/// warm-up copy, timed repetitions until 0.2 s (FLATMIN_BENCH_COPY_SECONDS) have passed (at least
/// 5); the best of their rates (what the machine can do: on a busy machine the median would
/// measure the other processes), so the ratio errs on the low side.
inline double copy_bandwidth(std::size_t floats, int threads) {
  static std::map<std::pair<std::size_t, int>, double> memo;
  const auto key = std::make_pair(floats, threads);
  if (auto it = memo.find(key); it != memo.end()) return it->second;
  floats = std::max<std::size_t>(floats, 16);
  flatmin::backend::eigen::vector<float> src(floats, 1.0f), dst(floats, 0.0f);
  parallel_copy(src.data(), dst.data(), floats, threads);
  std::vector<double> rates;
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  static const double seconds = stream_detail::env_seconds("FLATMIN_BENCH_COPY_SECONDS", 0.2);
  while (rates.size() < 5 || std::chrono::duration<double>(clock::now() - start).count() < seconds) {
    // inner repetitions keep each timed interval well above the clock's resolution
    const std::size_t inner = std::max<std::size_t>(1, (1u << 20) / floats);
    const auto t0 = clock::now();
    for (std::size_t r = 0; r < inner; ++r) {
      parallel_copy(src.data(), dst.data(), floats, threads);
      benchmark::ClobberMemory();
    }
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    rates.push_back(8.0 * static_cast<double>(floats) * static_cast<double>(inner) / s);
    if (rates.size() >= 200) break;
  }
  return memo[key] = *std::max_element(rates.begin(), rates.end());
}

/// Sets bytes/s from the minimal traffic per iteration (DESIGN.md §5), and the parameter count.
inline void set_traffic(benchmark::State& st, double bytes_per_iter, std::size_t n) {
  st.SetBytesProcessed(static_cast<int64_t>(bytes_per_iter * static_cast<double>(st.iterations())));
  st.counters["N"] = static_cast<double>(n);
  st.counters["B_per_param"] = bytes_per_iter / static_cast<double>(n);
}

/// set_traffic, plus `copy_ratio`: bytes/s over the copy bandwidth of the same bytes (a copy of
/// bytes_per_iter / 8 floats) with the same thread count. Call after the timed loop.
inline void set_traffic(benchmark::State& st, double bytes_per_iter, std::size_t n, int threads) {
  set_traffic(st, bytes_per_iter, n);
  const double bw = copy_bandwidth(static_cast<std::size_t>(bytes_per_iter / 8.0), threads);
  st.counters["omp_threads"] = threads;
  st.counters["copy_GBps"] = bw / 1e9;
  // a rate counter is divided by the (real) time: bytes / (time · bandwidth) = ratio
  st.counters["copy_ratio"] =
      benchmark::Counter(bytes_per_iter * static_cast<double>(st.iterations()) / bw, benchmark::Counter::kIsRate);
}

/// set_traffic with copy_ratio, plus the counters of the stream yardstick (streams.hpp): `passes`
/// are the streams of each pass one iteration runs (a step's several), each measured on its own
/// over N contiguous words with the same threads, now (streams.hpp: timed at each call, so after
/// each repetition); their times add up.
inline void set_traffic(benchmark::State& st, double bytes_per_iter, std::size_t n, int threads,
                        std::initializer_list<streams> passes) {
  set_traffic(st, bytes_per_iter, n, threads);
  double seconds = 0;  // one iteration at the yardsticks' rates
  for (const streams& s : passes) {
    const stream_rate r = stream_bandwidth(s, n, threads);
    seconds += s.pass_bytes() * static_cast<double>(n) / r.bytes_per_second;
    if (passes.size() == 1) st.counters["stream_variant"] = r.variant;
  }
  st.counters["stream_GBps"] = bytes_per_iter / seconds / 1e9;
  st.counters["stream_ratio"] =
      benchmark::Counter(seconds * static_cast<double>(st.iterations()), benchmark::Counter::kIsRate);
}

/// The N grid: 10^4 … 10^7, plus 10^8 when FLATMIN_BENCH_LARGE=1, or the comma-separated sizes of
/// FLATMIN_BENCH_SIZES instead; FLATMIN_BENCH_MAX_N caps it.
inline std::vector<std::int64_t> sizes() {
  std::vector<std::int64_t> n = {10'000, 100'000, 1'000'000, 10'000'000};
  if (const char* e = std::getenv("FLATMIN_BENCH_SIZES")) {
    n.clear();
    for (const char* p = e; *p != '\0';) {
      char* end = nullptr;
      const long long v = std::strtoll(p, &end, 10);
      if (end == p) break;  // not a number: the sizes read so far
      if (v > 0) n.push_back(v);
      p = *end == ',' ? end + 1 : end;
    }
  }
  if (const char* e = std::getenv("FLATMIN_BENCH_LARGE"); e && std::string(e) == "1") n.push_back(100'000'000);
  if (const char* e = std::getenv("FLATMIN_BENCH_MAX_N")) {
    const auto cap = std::atoll(e);
    std::erase_if(n, [&](std::int64_t x) { return x > cap; });
  }
  return n;
}

/// Registers {N, K, threads} for N in sizes(), K in `tensor_counts`, threads in {1, all}
/// (the all-threads run is left out on a single-core machine), with real time.
inline benchmark::internal::Benchmark* grid(benchmark::internal::Benchmark* b,
                                            std::vector<std::int64_t> tensor_counts = {1, 100, 1000}) {
  b->ArgNames({"N", "K", "threads"});
  std::vector<std::int64_t> thr = {1};
  if (all_threads() > 1) thr.push_back(0);
  for (auto n : sizes())
    for (auto k : tensor_counts)
      if (k <= n)
        for (auto t : thr) b->Args({n, k, t});
  return b->UseRealTime();
}

}  // namespace flatmin_bench
