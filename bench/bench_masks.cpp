// Sparse masks: the Fisher mask refresh, the Fisher estimate of an ordinary step (alone, and with
// the statistics: two passes against one) at N = 10^7
// (and their ratios to one copy pass of N floats measured in this binary), and the ascent + restore passes for dense SAM vs 50 / 90 / 99 %
// sparse Fisher masks at element and block (128) granularity.
//
//   build/bench/bench_masks --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <algorithm>
#include <chrono>

#include "common.hpp"

namespace {
using flatmin::backend::eigen;
constexpr std::size_t N = 10'000'000, K = 64;

/// Median seconds of one parallel copy pass of N floats (read N·4 + write N·4 bytes).
double copy_seconds(const std::vector<float>& a, std::vector<float>& b) {
  std::vector<double> t;
  for (int r = 0; r < 7; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const float* src = a.data();
    float* dst = b.data();
    eigen::for_each_index(a.size(), [=](std::size_t i) { dst[i] = src[i]; });
    benchmark::DoNotOptimize(dst);
    benchmark::ClobberMemory();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void BM_copy_pass(benchmark::State& st) {
  std::vector<float> a(N, 1.f), b(N, 0.f);
  for (auto _ : st) {
    const float* src = a.data();
    float* dst = b.data();
    eigen::for_each_index(N, [=](std::size_t i) { dst[i] = src[i]; });
    benchmark::DoNotOptimize(dst);
    benchmark::ClobberMemory();
  }
  flatmin_bench::set_traffic(st, 8.0 * N, N);
}
BENCHMARK(BM_copy_pass)->Unit(benchmark::kMillisecond)->UseRealTime();

/// Times `call()` per iteration and reports it against one copy pass of N floats measured here:
/// counters copy_ms and x_copy.
template <class Call>
void against_copy(benchmark::State& st, const Call& call) {
  std::vector<float> a(N, 1.f), b(N, 0.f);
  const double copy = copy_seconds(a, b);
  double total = 0;
  for (auto _ : st) {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    total += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  st.counters["copy_ms"] = copy * 1e3;
  st.counters["x_copy"] = total / static_cast<double>(st.iterations()) / copy;
}

/// One refresh: accumulate g² into F, exact top-k of F (mask/detail/score_top_k.hpp), write the
/// bits (and, for blocks, the block list). arg 0: block size (1 = elements); arg 1: keep in per mille.
void BM_fisher_refresh(benchmark::State& st) {
  const auto block = static_cast<std::size_t>(st.range(0));
  const double keep = static_cast<double>(st.range(1)) / 1000.0;
  flatmin_bench::problem p(N, K);
  auto opt = flatmin::fsam(p.params, flatmin::base::sgd{.lr = 0.01}, {.keep = keep, .block = block});
  auto& ms = opt.mask_state();
  std::size_t step = 1;  // refresh steps: 1, 101, 201, ... (each step number refreshes once)
  against_copy(st, [&] {
    benchmark::DoNotOptimize(ms.refresh(opt.mask(), opt.layout(), step, 1.f));
    step += 100;
  });
  st.counters["N"] = static_cast<double>(N);
}
BENCHMARK(BM_fisher_refresh)
    ->Args({1, 100})
    ->Args({128, 100})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

/// The Fisher estimate of a step that is not a refresh step (the accumulated estimator's pass on
/// every step: F' = F + g², and g's finiteness), one pass of 12 bytes per parameter.
void BM_fisher_estimate(benchmark::State& st) {
  flatmin_bench::problem p(N, K);
  auto opt = flatmin::fsam(p.params, flatmin::base::sgd{.lr = 0.01}, {.keep = 0.1});
  auto& ms = opt.mask_state();
  // step 2 refreshes nothing: the estimate alone
  against_copy(st, [&] { benchmark::DoNotOptimize(ms.refresh(opt.mask(), opt.layout(), 2, 1.f)); });
  flatmin_bench::set_traffic(st, 12.0 * N, N);
}
BENCHMARK(BM_fisher_estimate)->Unit(benchmark::kMillisecond)->UseRealTime();

/// The statistics and the Fisher estimate of an ordinary FSAM step (element units, accumulated
/// estimator, no refresh). arg 0 = 0: two passes, the statistics under the mask (4.125 B per
/// parameter) and then the estimate reading g again (12 B), as the optimizer ran them until
/// 2026-12-03; 1: one pass, kernels::stats_scores_pass (12.125 B), as it runs them now. Compare
/// the two in one run with --benchmark_enable_random_interleaving=true (they alternate).
void BM_fisher_statistics(benchmark::State& st) {
  const bool fused = st.range(0) != 0;
  flatmin_bench::problem p(N, K);
  auto opt = flatmin::fsam(p.params, flatmin::base::sgd{.lr = 0.01}, {.keep = 0.1});
  auto& ms = opt.mask_state();
  using view_t = decltype(ms.get_view());
  using stats_t = flatmin::kernels::stats_pass<float, flatmin::kernels::l2_term<float>, view_t>;
  const stats_t stats{{}, ms.get_view(), 1.f, false};
  const std::size_t step = 2;  // not a refresh step
  against_copy(st, [&] {
    if (fused) {
      const auto scores = ms.statistics_scores(opt.mask(), step, 1.f);
      benchmark::DoNotOptimize(eigen::reduce<flatmin::kernels::grad_stats>(
          opt.layout().full(), flatmin::kernels::stats_scores_pass<stats_t, float>{stats, *scores}));
    } else {
      benchmark::DoNotOptimize(eigen::reduce<flatmin::kernels::grad_stats>(opt.layout().full(), stats));
      benchmark::DoNotOptimize(ms.refresh(opt.mask(), opt.layout(), step, 1.f));
    }
    ms.abandon_step();  // every iteration the same step: F' = F + g² into the pending sums
  });
  flatmin_bench::set_traffic(st, (fused ? 12.125 : 16.125) * N, N);
}
BENCHMARK(BM_fisher_statistics)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

/// The ascent pass (save + perturb the masked entries) and the restore pass over the mask's
/// range. arg 0: block (0 = dense SAM, 1 = element mask, else block size); arg 1: keep in per mille.
/// As the optimizer launches them: over a compact range (blocks) with the all-true view, since
/// the range holds masked-in entries only; element masks test their bit per entry.
template <class Opt, class V>
void ascend_restore(benchmark::State& st, Opt& opt, std::size_t numel, const V& view) {
  auto& ms = opt.mask_state();
  const auto range = ms.range(opt.layout());
  std::vector<float> saved(ms.saved_size(opt.layout()));
  const flatmin::kernels::ascend_pass<float, flatmin::kernels::l2_term<float>, V> up{{}, view, 1e-6f, 1.f, saved.data()};
  const flatmin::kernels::restore_pass<float, V> down{view, saved.data()};
  for (auto _ : st) {
    eigen::for_each(range, up);
    eigen::for_each(range, down);
    benchmark::ClobberMemory();
  }
  st.counters["touched"] = static_cast<double>(range.elements) / static_cast<double>(numel);
  st.counters["N"] = static_cast<double>(numel);
}

void BM_ascend_restore(benchmark::State& st) {
  const auto block = static_cast<std::size_t>(st.range(0));
  const double keep = static_cast<double>(st.range(1)) / 1000.0;
  flatmin_bench::problem p(N, K);
  if (block == 0) {
    auto opt = flatmin::sam(p.params, flatmin::base::sgd{.lr = 0.01});
    ascend_restore(st, opt, N, opt.mask_state().get_view());
  } else {
    auto opt = flatmin::fsam(p.params, flatmin::base::sgd{.lr = 0.01}, {.keep = keep, .block = block});
    opt.ascend();  // step 1 computes the mask
    opt.cancel();
    if (opt.mask_state().is_compact())
      ascend_restore(st, opt, N, flatmin::mask::dense::state<float, eigen>::view{});
    else
      ascend_restore(st, opt, N, opt.mask_state().get_view());
  }
}
BENCHMARK(BM_ascend_restore)
    ->Args({0, 1000})
    ->Args({1, 500})
    ->Args({1, 100})
    ->Args({1, 10})
    ->Args({128, 500})
    ->Args({128, 100})
    ->Args({128, 10})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

/// The whole ascend() + cancel() of the optimizer (statistics pass included, which stays dense).
void BM_ascend_cancel(benchmark::State& st) {
  const auto block = static_cast<std::size_t>(st.range(0));
  const double keep = static_cast<double>(st.range(1)) / 1000.0;
  flatmin_bench::problem p(N, K);
  auto run = [&](auto& opt) {
    opt.ascend();
    opt.descend();  // step 1 done: later ascents do not refresh
    for (auto _ : st) {
      opt.ascend();
      opt.cancel();
    }
  };
  if (block == 0) {
    auto opt = flatmin::sam(p.params, flatmin::base::sgd{.lr = 1e-9});
    run(opt);
  } else {
    auto opt = flatmin::fsam(p.params, flatmin::base::sgd{.lr = 1e-9}, {.keep = keep, .block = block});
    run(opt);
  }
  st.counters["N"] = static_cast<double>(N);
}
BENCHMARK(BM_ascend_cancel)
    ->Args({0, 1000})
    ->Args({1, 500})
    ->Args({1, 100})
    ->Args({128, 100})
    ->Args({128, 10})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
