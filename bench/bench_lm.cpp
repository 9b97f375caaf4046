// The passes issue 4 adds: BAR's regularized descent (per-pair reductions + fused update) against
// the plain base step, and the preconditioned ascent against SAM's.
#include <random>
#include <string>
#include <vector>

#include "common.hpp"

namespace {

// N float parameters in K LoRA pairs (x, y of equal size), each factor its own allocation.
struct lora_problem {
  std::vector<std::vector<float>> w, g;
  flatmin::param_set<float> params;
  lora_problem(std::size_t n, std::size_t k, unsigned seed = 1) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    const std::size_t f = n / (2 * k);
    w.resize(2 * k, std::vector<float>(f));
    g.resize(2 * k, std::vector<float>(f));
    for (auto* v : {&w, &g})
      for (auto& t : *v)
        for (auto& x : t) x = nd(rng);
    for (std::size_t p = 0; p < k; ++p)
      params.add_lora_pair("l" + std::to_string(p), w[2 * p].data(), g[2 * p].data(), {f}, w[2 * p + 1].data(),
                           g[2 * p + 1].data(), {f});
  }
};

constexpr double tiny_lr = 1e-12;  // keeps the weights essentially fixed over millions of iterations

void bm_bar_descend(benchmark::State& st) {
  lora_problem p(static_cast<std::size_t>(st.range(0)), static_cast<std::size_t>(st.range(1)));
  auto opt = flatmin::bar(p.params, flatmin::base::sgd{.lr = tiny_lr}, {.rho = 0.05});
  for (auto _ : st) opt.descend();
  // ‖g‖ reads g; the per-pair sums read w and g; the fused pass reads w, g and writes w.
  flatmin_bench::set_traffic(st, 6.0 * sizeof(float) * double(p.params.numel()), p.params.numel());
}

void bm_sgd_descend(benchmark::State& st) {
  lora_problem p(static_cast<std::size_t>(st.range(0)), static_cast<std::size_t>(st.range(1)));
  auto opt = flatmin::sgd(p.params, flatmin::base::sgd{.lr = tiny_lr});
  for (auto _ : st) opt.descend();
  // The finiteness check reads g; the update reads w, g and writes w.
  flatmin_bench::set_traffic(st, 4.0 * sizeof(float) * double(p.params.numel()), p.params.numel());
}

template <bool Preconditioned>
void bm_ascend(benchmark::State& st) {
  flatmin_bench::problem p(static_cast<std::size_t>(st.range(0)), static_cast<std::size_t>(st.range(1)));
  const flatmin::base::adam base{.lr = tiny_lr};
  auto run = [&](auto& opt) {
    opt.ascend();
    opt.descend();  // one step so the second moment exists (P ≠ I)
    for (auto _ : st) {
      opt.ascend();
      opt.cancel();
    }
  };
  if constexpr (Preconditioned) {
    auto opt = flatmin::preconditioned_sam(p.params, base);
    run(opt);
  } else {
    auto opt = flatmin::sam(p.params, base);
    run(opt);
  }
  // Statistics read g (and v); the ascent reads w, g (and v), writes w and the saved copy; the
  // restore of cancel() reads the saved copy and writes w.
  const double per = Preconditioned ? 9.0 : 7.0;
  flatmin_bench::set_traffic(st, per * sizeof(float) * double(p.params.numel()), p.params.numel());
}

}  // namespace

BENCHMARK(bm_bar_descend)->Args({1 << 20, 16})->Args({1 << 20, 256})->Args({1 << 24, 64})->UseRealTime();
BENCHMARK(bm_sgd_descend)->Args({1 << 20, 16})->Args({1 << 20, 256})->Args({1 << 24, 64})->UseRealTime();
BENCHMARK(bm_ascend<true>)->Name("bm_preconditioned_ascend")->Args({1 << 20, 32})->Args({1 << 24, 32})->UseRealTime();
BENCHMARK(bm_ascend<false>)->Name("bm_sam_ascend")->Args({1 << 20, 32})->Args({1 << 24, 32})->UseRealTime();
BENCHMARK_MAIN();
