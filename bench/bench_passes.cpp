// The dense optimizer-side passes of a SAM step on backend::eigen, one benchmark each, against
// the copy bandwidth measured in this binary (bench/common.hpp).
//
// Pass-level benchmarks run one kernel of kernels/sam_passes.hpp over a layout exactly as the
// optimizer launches it; step-level benchmarks (opt_*) call the optimizer's public protocol and so
// include every pass it runs (the statistics pass, the finiteness check of g_adv, ...).
// Yardstick for the K = 1000 against K = 1 ratios: `copy_tensors`, the copy over K separate tensors.
// Yardstick of each pass (stream_ratio, bench/streams.hpp): a kernel with its read and write
// streams and no arithmetic; a step's is the sum of its passes' (the opt_* rows list them).
// Minimal traffic per parameter (DESIGN.md §5, fp32):
//   copy 8 B · copy_tensors 8 B · global_norm 4 B · ascend 16 B · keep_gradient 8 B · descend_sgd 20 B
//   descend_adamw 28 B
//   sgd 20 B · adamw 28 B (base step pass alone)
//   opt_sam_sgd   = norm 4 + ascend 16 + check 4 + descend 20 = 44 B
//   opt_sam_adamw = norm 4 + ascend 16 + check 4 + descend 28 = 52 B
//   opt_msam_adamw = the same passes over the first moment m instead of g (its norm 4, the ascent
//   reads w and m: 16 B): 52 B, and no extra gradient evaluation, which these rows do not time
//   opt_rwp_sgd = check of g 4 + row norms of w 4 + copy of g 8 + ascend 16 (the draws are computed,
//   not read) + check 4 + descend with the mix 20 + 4 (reads the kept g) = 60 B
//   opt_sampa_sgd = norm of the kept g_y 4 + ascend 16 + check of g̃ writing its copy 8 + look-ahead
//   (saved, g_y, buf -> w) 16 + check 4 + descend with the mix and the new g_y (saved, g, g̃, buf ->
//   buf, w, g_y) 28 = 76 B (SAMPa; the two gradient evaluations are not timed)
//   opt_fsam_sgd = FSAM's ordinary step (element units, keep 0.1, no refresh): norm under the mask
//   with the Fisher estimate in the same pass (g, F, bits -> F') 12.125 + ascent under the mask
//   16.125 + check 4 + descend with the mask's restore (saved, w, g, buf, bits -> buf, w) 24.125
//   = 56.375 B (60.375 until the estimate shared the norm's read of g, 2026-12-03)
//   opt_sgd / opt_adamw (plain compositions: check 4 + base) = 24 B / 32 B
#include "common.hpp"

namespace {

using namespace flatmin_bench;
using be = flatmin::backend::eigen;
using layout_t = flatmin::backend::layout<float, be>;
using dense_view = flatmin::mask::dense::state<float, be>::view;
using flatmin::kernels::grad_stats;

struct args {
  std::size_t n, k;
  int threads;
  explicit args(const benchmark::State& st)
      : n(static_cast<std::size_t>(st.range(0))),
        k(static_cast<std::size_t>(st.range(1))),
        threads(use_threads(st.range(2))) {}
};

void copy(benchmark::State& st) {
  const args a(st);
  be::vector<float> src(a.n, 1.0f), dst(a.n, 0.0f);
  for (auto _ : st) {
    parallel_copy(src.data(), dst.data(), a.n, a.threads);
    benchmark::ClobberMemory();
  }
  set_traffic(st, 8.0 * a.n, a.n, a.threads, {copy_streams});
}

/// `copy` over K tensors: each tensor's g copied into its own buffer (K separate allocations, as in
/// the problem), one memcpy per tensor, tensors split over the threads like backend::eigen's
/// segments. The yardstick for the K = 1000 against K = 1 ratios: what the memory system charges
/// for K separate allocations before any optimizer runs.
void copy_tensors(benchmark::State& st) {
  const args a(st);
  problem& p = shared_problem(a.n, a.k);
  std::vector<be::vector<float>> dst(a.k);
  for (std::size_t t = 0; t < a.k; ++t) dst[t].resize(p.g[t].size());
  const auto k = static_cast<std::ptrdiff_t>(a.k);
  for (auto _ : st) {
    if (a.k == 1) {
      parallel_copy(p.g[0].data(), dst[0].data(), a.n, a.threads);
    } else {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (a.n >= be::parallel_threshold)
#endif
      for (std::ptrdiff_t t = 0; t < k; ++t) std::memcpy(dst[t].data(), p.g[t].data(), p.g[t].size() * sizeof(float));
    }
    benchmark::ClobberMemory();
  }
  set_traffic(st, 8.0 * a.n, a.n, a.threads, {copy_streams});
}

void global_norm(benchmark::State& st) {
  const args a(st);
  problem& p = shared_problem(a.n, a.k);
  layout_t l(p.params);
  const flatmin::kernels::stats_pass<float, flatmin::kernels::l2_term<float>, dense_view> pass{{}, {}, 1.0f, true};
  for (auto _ : st) {
    grad_stats s = be::reduce<grad_stats>(l.full(), pass);
    benchmark::DoNotOptimize(s);
  }
  set_traffic(st, 4.0 * a.n, a.n, a.threads, {read_only});
}

void ascend(benchmark::State& st) {
  const args a(st);
  problem& p = shared_problem(a.n, a.k);
  layout_t l(p.params);
  be::vector<float> saved(a.n);
  // a tiny radius: repeated ascents drift w by 1e-7·g per iteration
  const flatmin::kernels::ascend_pass<float, flatmin::kernels::l2_term<float>, dense_view> pass{
      {}, {}, 1e-7f, 1.0f, saved.data()};
  for (auto _ : st) {
    be::for_each(l.full(), pass);
    benchmark::ClobberMemory();
  }
  set_traffic(st, 16.0 * a.n, a.n, a.threads, {ascend_streams});
}

/// The copy of the clean gradient GSAM, WSAM, LookSAM and RWP keep (copy_gradient_pass): g read,
/// the copy written only.
void keep_gradient(benchmark::State& st) {
  const args a(st);
  problem& p = shared_problem(a.n, a.k);
  layout_t l(p.params);
  be::vector<float> kept(a.n);
  const flatmin::kernels::copy_gradient_pass<float> pass{kept.data(), 1.0f};
  for (auto _ : st) {
    be::for_each(l.full(), pass);
    benchmark::ClobberMemory();
  }
  set_traffic(st, 8.0 * a.n, a.n, a.threads, {copy_streams});
}

template <class Base, bool restore>
void descend(benchmark::State& st, double bytes, streams yardstick) {
  const args a(st);
  problem& p = shared_problem(a.n, a.k);
  layout_t l(p.params);
  be::vector<float> saved(a.n, 0.5f);
  Base opts{};
  if constexpr (std::is_same_v<Base, flatmin::base::sgd>) opts.momentum = 0.9;
  typename Base::template state<float, be> bs(opts, a.n);
  const auto update = bs.prepare(opts, 2);
  flatmin::regularize::none::state<float, be>::view adjust{};
  const flatmin::kernels::descend_pass<float, dense_view, decltype(adjust), decltype(update), restore ? 1 : 0> pass{
      {}, adjust, update, 1.0f, saved.data(), restore};
  for (auto _ : st) {
    be::for_each(l.full(), pass);
    benchmark::ClobberMemory();
  }
  set_traffic(st, bytes * a.n, a.n, a.threads, {yardstick});
}

void descend_sgd(benchmark::State& st) { descend<flatmin::base::sgd, true>(st, 20.0, descend_sgd_streams); }
void descend_adamw(benchmark::State& st) { descend<flatmin::base::adamw, true>(st, 28.0, descend_adamw_streams); }
void sgd(benchmark::State& st) { descend<flatmin::base::sgd, false>(st, 20.0, sgd_streams); }
void adamw(benchmark::State& st) { descend<flatmin::base::adamw, false>(st, 28.0, adamw_streams); }

/// `warm_up`: one step before the clock (FSAM: the first step is the refresh that builds the mask).
template <class Make>
void opt_step(benchmark::State& st, Make make, double bytes, std::initializer_list<streams> passes,
              bool warm_up = false) {
  const args a(st);
  problem& p = shared_problem(a.n, a.k);
  auto opt = make(p.params);
  if (warm_up) {
    opt.ascend();
    opt.descend();
  }
  for (auto _ : st) {
    auto r = opt.ascend();
    r = opt.descend();
    if (r.skipped) st.SkipWithError("step skipped");
    benchmark::DoNotOptimize(r);
  }
  set_traffic(st, bytes * a.n, a.n, a.threads, passes);
}

void opt_sam_sgd(benchmark::State& st) {
  opt_step(st, [](auto& ps) { return flatmin::sam<be>(ps, flatmin::base::sgd{.lr = 1e-6, .momentum = 0.9}); }, 44.0,
           {read_only, ascend_streams, read_only, descend_sgd_streams});
}
void opt_sam_adamw(benchmark::State& st) {
  opt_step(st, [](auto& ps) { return flatmin::sam<be>(ps, flatmin::base::adamw{.lr = 1e-6}); }, 52.0,
           {read_only, ascend_streams, read_only, descend_adamw_streams});
}
void opt_msam_adamw(benchmark::State& st) {
  opt_step(st, [](auto& ps) { return flatmin::msam<be>(ps, flatmin::base::adamw{.lr = 1e-6}, {.rho = 1}); }, 52.0,
           {read_only, ascend_streams, read_only, descend_adamw_streams});
}
constexpr streams descend_mix_sgd_streams{4, 1, 1};  // saved, g_adv, kept g, buf -> buf, w
void opt_rwp_sgd(benchmark::State& st) {
  opt_step(st, [](auto& ps) { return flatmin::rwp<be>(ps, flatmin::base::sgd{.lr = 1e-6, .momentum = 0.9}); }, 60.0,
           {read_only, read_only, copy_streams, ascend_streams, read_only, descend_mix_sgd_streams});
}
constexpr streams lookahead_sgd_streams{3, 0, 1};  // saved, g_y, buf -> w
constexpr streams descend_sampa_sgd_streams{4, 1, 2};  // saved, g, g̃, buf -> buf, w, g_y
void opt_sampa_sgd(benchmark::State& st) {
  const args a(st);
  problem& p = shared_problem(a.n, a.k);
  auto opt = flatmin::sampa<be>(p.params, flatmin::base::sgd{.lr = 1e-6, .momentum = 0.9});
  for (auto _ : st) {
    auto r = opt.ascend();
    r = opt.second_point();
    r = opt.descend();
    if (r.skipped) st.SkipWithError("step skipped");
    benchmark::DoNotOptimize(r);
  }
  set_traffic(st, 76.0 * a.n, a.n, a.threads,
              {read_only, ascend_streams, copy_streams, lookahead_sgd_streams, read_only,
               descend_sampa_sgd_streams});  // the check of g̃ writes its copy: copy_streams
}
constexpr streams estimate_streams{2, 0, 1};  // F, g -> F' (the pending sums; the norm reads the same g)
constexpr streams descend_fsam_sgd_streams{4, 2, 0};  // saved, w, g_adv, buf -> buf, w (the mask's select)
void opt_fsam_sgd(benchmark::State& st) {  // FSAM's ordinary steps: no refresh while timed
  opt_step(st, [](auto& ps) {
    return flatmin::fsam<be>(ps, flatmin::base::sgd{.lr = 1e-6, .momentum = 0.9},
                             {.keep = 0.1, .refresh_every = std::size_t{1} << 40});
  }, 56.375, {estimate_streams, ascend_streams, read_only, descend_fsam_sgd_streams}, true);
}
void opt_sgd(benchmark::State& st) {
  opt_step(st, [](auto& ps) { return flatmin::sgd<be>(ps, {.lr = 1e-6, .momentum = 0.9}); }, 24.0,
           {read_only, sgd_streams});
}
void opt_adamw(benchmark::State& st) {
  opt_step(st, [](auto& ps) { return flatmin::adamw<be>(ps, {.lr = 1e-6}); }, 32.0, {read_only, adamw_streams});
}

const bool registered = [] {
  grid(benchmark::RegisterBenchmark("copy", copy), {1});
  grid(benchmark::RegisterBenchmark("copy_tensors", copy_tensors), {1, 1000});
  grid(benchmark::RegisterBenchmark("global_norm", global_norm));
  grid(benchmark::RegisterBenchmark("ascend", ascend));
  grid(benchmark::RegisterBenchmark("keep_gradient", keep_gradient), {1, 1000});
  grid(benchmark::RegisterBenchmark("descend_sgd", descend_sgd));
  grid(benchmark::RegisterBenchmark("descend_adamw", descend_adamw));
  grid(benchmark::RegisterBenchmark("sgd", sgd));
  grid(benchmark::RegisterBenchmark("adamw", adamw));
  grid(benchmark::RegisterBenchmark("opt_sam_sgd", opt_sam_sgd));
  grid(benchmark::RegisterBenchmark("opt_sam_adamw", opt_sam_adamw));
  grid(benchmark::RegisterBenchmark("opt_msam_adamw", opt_msam_adamw));
  grid(benchmark::RegisterBenchmark("opt_rwp_sgd", opt_rwp_sgd));
  grid(benchmark::RegisterBenchmark("opt_sampa_sgd", opt_sampa_sgd));
  grid(benchmark::RegisterBenchmark("opt_fsam_sgd", opt_fsam_sgd));
  grid(benchmark::RegisterBenchmark("opt_sgd", opt_sgd));
  grid(benchmark::RegisterBenchmark("opt_adamw", opt_adamw));
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
