// backend::thrust: bytes/s of each optimizer pass and its ratio to a device-to-device copy
// measured in the same binary, for N = 10^6 … 10^8 parameters in 1 or 1000 tensors.
// Built twice: bench_thrust_passes (host device system, OMP/CPP) and, with FLATMIN_ENABLE_CUDA,
// bench_cuda_passes (the same source as CUDA). Traffic counts are the minimal bytes each pass
// must move per parameter (float): a pass at copy speed has copy_ratio ≈ 1.
//
//   copy      read x, write y                                   8 B
//   stats     SAM norm reduction: read g                        4 B
//   ascend    read w, g; write saved, w                        16 B
//   restore   read saved; write w                               8 B
//   descend   fused restore + SGD momentum: read saved, g, b; write w, b   20 B
//   step      a whole SAM-SGD(momentum) step, ascend() + descend()        44 B
//   bm_fisher_refresh: a Fisher mask refresh, as a multiple of one copy pass (x_copy)
#include <benchmark/benchmark.h>
#include <flatmin/flatmin.hpp>
#include <flatmin/backend/thrust.hpp>
#include <flatmin/params/thrust_views.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <thrust/copy.h>
#include <thrust/device_vector.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/transform.h>
#if THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_CUDA
#include <cuda_runtime_api.h>
#endif

namespace {

namespace fm = flatmin;
using B = fm::backend::thrust;

void sync() {
#if THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_CUDA
  cudaDeviceSynchronize();
#endif
}

/// Uniform values in [−1, 1) from a counter hash, generated on the device (host random numbers
/// for 10^8 parameters took longer than the benchmarks themselves).
struct uniform_fill {
  std::uint64_t stream;
  FLATMIN_HD float operator()(std::size_t i) const {
    return static_cast<float>(fm::kernels::counter_hash(1, stream, i) >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }
};

struct problem {
  std::vector<thrust::device_vector<float>> w, g;
  fm::param_set<float> params;
  problem(std::size_t n, std::size_t k) {
    w.reserve(k);
    g.reserve(k);
    for (std::size_t t = 0; t < k; ++t) {
      const std::size_t sz = n / k + (t < n % k ? 1 : 0);
      thrust::counting_iterator<std::size_t> first(0);
      w.emplace_back(sz);
      g.emplace_back(sz);
      thrust::transform(first, first + sz, w.back().begin(), uniform_fill{2 * t});
      thrust::transform(first, first + sz, g.back().begin(), uniform_fill{2 * t + 1});
      params.add("t" + std::to_string(t), w.back(), g.back());
    }
  }
};

std::map<std::size_t, double>& copy_rate() {
  static std::map<std::size_t, double> r;
  return r;
}

void report(benchmark::State& st, double bytes_per_param, std::size_t n, double seconds) {
  const double rate = bytes_per_param * static_cast<double>(n) * static_cast<double>(st.iterations()) / seconds;
  st.SetBytesProcessed(static_cast<int64_t>(bytes_per_param * static_cast<double>(n) * static_cast<double>(st.iterations())));
  st.counters["N"] = static_cast<double>(n);
  st.counters["GBps"] = rate / 1e9;
  const auto c = copy_rate().find(n);
  if (c != copy_rate().end()) st.counters["copy_ratio"] = rate / c->second;
}

template <class F>
double timed(benchmark::State& st, F&& f) {
  double total = 0;
  for (auto _ : st) {
    sync();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    sync();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.SetIterationTime(s);
    total += s;
  }
  return total;
}

void bm_copy(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  thrust::device_vector<float> x(n, 1.f), y(n);
  const double s = timed(st, [&] { thrust::copy(x.begin(), x.end(), y.begin()); });
  const double rate = 8.0 * static_cast<double>(n) * static_cast<double>(st.iterations()) / s;
  copy_rate()[n] = rate;
  report(st, 8, n, s);
}

enum class pass { stats, ascend, restore, descend, step };

template <pass P>
void bm_pass(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  const auto k = static_cast<std::size_t>(st.range(1));
  problem p(n, k);
  fm::backend::layout<float, B> l(p.params);
  auto saved = B::make_vector<float>(n);
  auto buf = B::make_vector<float>(n);
  using mask = fm::mask::dense::state<float, B>::view;
  using adjust = fm::regularize::none::state<float, B>::view;
  double s = 0, bytes = 0;
  if constexpr (P == pass::stats) {
    const fm::kernels::stats_pass<float, fm::kernels::l2_term<float>, mask> f{{}, {}, 1.f, true};
    s = timed(st, [&] { benchmark::DoNotOptimize(B::reduce<fm::kernels::grad_stats>(l.full(), f)); });
    bytes = 4;
  } else if constexpr (P == pass::ascend) {
    const fm::kernels::ascend_pass<float, fm::kernels::l2_term<float>, mask> f{{}, {}, 0.f, 1.f, B::data(saved)};
    s = timed(st, [&] { B::for_each(l.full(), f); });  // scale 0: w unchanged from one run to the next
    bytes = 16;
  } else if constexpr (P == pass::restore) {
    const fm::kernels::restore_pass<float, mask> f{{}, B::data(saved)};
    B::for_each(l.full(), fm::kernels::ascend_pass<float, fm::kernels::l2_term<float>, mask>{{}, {}, 0.f, 1.f, B::data(saved)});
    s = timed(st, [&] { B::for_each(l.full(), f); });
    bytes = 8;
  } else if constexpr (P == pass::descend) {
    B::for_each(l.full(), fm::kernels::ascend_pass<float, fm::kernels::l2_term<float>, mask>{{}, {}, 0.f, 1.f, B::data(saved)});
    const fm::kernels::sgd_update<float> upd{1e-6f, 0.9f, 0.f, 0.f, false, false, B::data(buf)};
    const fm::kernels::descend_pass<float, mask, adjust, fm::kernels::sgd_update<float>> f{{}, {}, upd, 1.f, B::data(saved), true};
    s = timed(st, [&] { B::for_each(l.full(), f); });
    bytes = 20;
  } else {
    auto opt = fm::sam<B>(p.params, fm::base::sgd{.lr = 1e-6, .momentum = 0.9}, {.rho = 1e-6});
    s = timed(st, [&] {
      opt.ascend({.found_inf = false});
      opt.descend({.found_inf = false});
    });
    bytes = 44 - 4;  // found_inf given: descend skips its check pass
  }
  report(st, bytes, n, s);
  st.counters["tensors"] = static_cast<double>(k);
}

/// One Fisher mask refresh (mask/fisher.hpp: add g² into F, exact top-k of F, write the bits and,
/// for blocks, the block list), keep = 10 %. Args: N, block (1 = element units). Counter x_copy:
/// the refresh time over one copy pass of N floats measured above (bm_copy) at the same N.
void bm_fisher_refresh(benchmark::State& st) {
  const auto n = static_cast<std::size_t>(st.range(0));
  const auto block = static_cast<std::size_t>(st.range(1));
  problem p(n, 64);
  auto opt = fm::fsam<B>(p.params, fm::base::sgd{.lr = 0.01}, {.keep = 0.1, .block = block});
  auto& ms = opt.mask_state();
  std::size_t step = 1;  // refresh steps 1, 101, 201, ...: each step number refreshes once
  const double s = timed(st, [&] {
    benchmark::DoNotOptimize(ms.refresh(opt.mask(), opt.layout(), step, 1.f));
    step += 100;
  });
  st.counters["N"] = static_cast<double>(n);
  st.counters["block"] = static_cast<double>(block);
  const auto c = copy_rate().find(n);
  if (c != copy_rate().end())
    st.counters["x_copy"] = s / static_cast<double>(st.iterations()) / (8.0 * static_cast<double>(n) / c->second);
}

void args(benchmark::internal::Benchmark* b) {
  for (long n : {1000000L, 10000000L, 100000000L})
    for (long k : {1L, 1000L}) b->Args({n, k});
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(bm_copy)->Arg(1000000)->Arg(10000000)->Arg(100000000)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(bm_pass, pass::stats)->Apply(args);
BENCHMARK_TEMPLATE(bm_pass, pass::ascend)->Apply(args);
BENCHMARK_TEMPLATE(bm_pass, pass::restore)->Apply(args);
BENCHMARK_TEMPLATE(bm_pass, pass::descend)->Apply(args);
BENCHMARK_TEMPLATE(bm_pass, pass::step)->Apply(args);
BENCHMARK(bm_fisher_refresh)
    ->Args({10000000, 1})
    ->Args({10000000, 128})
    ->Args({100000000, 1})
    ->Args({100000000, 128})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_MAIN();
