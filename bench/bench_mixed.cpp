// Mixed precision (params/precision.hpp) on backend::eigen: the gradient check pass, the ascent
// and AdamW descent passes alone, and whole SAM steps for (a) fp32 weights with bf16 gradients
// (mode 3), (b) bf16 weights with fp32 master weights (mode 2), (c) fp32 throughout, (d) bf16
// weights in place (mode 1), against the copy bandwidth and the stream yardsticks measured in this
// binary.
// Minimal traffic per parameter (DESIGN.md §5 counted with 2-byte w16 / g16, 4-byte fp32):
//   check_pass  fp32 g 4 B · bf16 g 2 B
//   SAM + SGD-momentum step (norm + ascend + check + descend):
//     (c) fp32       4 + 16 + 4 + 20                                      = 44 B
//     (a) g bf16     2 + (w 4, g 2; w 4, saved 4) 14 + 2 + (saved 4, g 2, buf 4; w 4, buf 4) 18 = 36 B
//     (b) master     2 + (w16 2, master 4, g 2; w16 2, saved 2) 12 + 2
//                      + (master 4, g 2, buf 4; master 4, w16 2, buf 4) 20                 = 36 B
//   SAM + AdamW step: (c) 52 B · (a) 2 + 14 + 2 + 26 = 44 B · (b) 2 + 12 + 2 + 28 = 44 B
//     (d) bf16 weights and gradients in place (mode 1), no master copy: 2 + (w 2, g 2; w 2,
//         saved 2) 8 + 2 + (saved 2, g 2, m 4, v 4; w 2, m 4, v 4) 22 = 34 B
//     (e) fp32 weights and gradients, double m and v: 4 + 16 + 4 + (saved 4, g 4, m 8, v 8; w 4,
//         m 8, v 8) 44 = 68 B
// fp16 rows (`g_fp16`) have the bf16 rows' bytes; their conversions are more work.
// No timing is asserted anywhere; bench/RESULTS.md records measured runs.
#include <array>

#include "common.hpp"

namespace {

using namespace flatmin_bench;
using be = flatmin::backend::eigen;
using bf16 = flatmin::bfloat16;
using fp16 = flatmin::half;

/// The shared float problem's values, stored as W and G (a model held in those types).
template <class W, class G>
struct typed_problem {
  std::vector<std::vector<W>> w;
  std::vector<std::vector<G>> g;
  flatmin::param_set<W, G> params;
  typed_problem(std::size_t n, std::size_t k) {
    problem& p = shared_problem(n, k);
    for (std::size_t t = 0; t < p.w.size(); ++t) {
      w.emplace_back(p.w[t].size());
      g.emplace_back(p.g[t].size());
      for (std::size_t j = 0; j < p.w[t].size(); ++j) {
        w[t][j] = static_cast<W>(p.w[t][j]);
        g[t][j] = static_cast<G>(p.g[t][j]);
      }
    }
    for (std::size_t t = 0; t < w.size(); ++t)
      params.add("t" + std::to_string(t), w[t].data(), g[t].data(), {w[t].size()});
  }
};

struct args {
  std::size_t n, k;
  int threads;
  explicit args(const benchmark::State& st)
      : n(static_cast<std::size_t>(st.range(0))),
        k(static_cast<std::size_t>(st.range(1))),
        threads(use_threads(st.range(2))) {}
};

const flatmin::base::sgd sgd{.lr = 1e-6, .momentum = 0.9};
const flatmin::base::adamw adamw{.lr = 1e-6};

template <class G>
void check_pass(benchmark::State& st) {
  const args a(st);
  typed_problem<float, G> p(a.n, a.k);
  flatmin::backend::layout<float, flatmin::backend::with_elements<be, float, G>> l(p.params);
  for (auto _ : st) {
    auto s = be::reduce<flatmin::kernels::grad_stats>(l.full(), flatmin::kernels::check_pass<float>{1.0f});
    benchmark::DoNotOptimize(s);
  }
  set_traffic(st, double(sizeof(G)) * a.n, a.n, a.threads, {{1, 0, 0, double(sizeof(G))}});
}

/// What a pass-level row over weights W and gradients G needs: the problem in those types, its
/// layout, the dense mask's view, and the weight store (to nearest, or through an fp32 master copy
/// when `master`: params/precision.hpp's mode 2), with its copy.
template <class W, class G, bool master>
struct pass_setup {
  using B = flatmin::backend::with_elements<be, W, G>;
  using view = typename flatmin::mask::dense::state<float, B>::view;
  using store = std::conditional_t<master, flatmin::kernels::master_store<W, float>,
                                   flatmin::kernels::nearest_store<W, float>>;
  typed_problem<W, G> p;
  flatmin::backend::layout<float, B> l;
  be::vector<float> copy;
  store s{};
  explicit pass_setup(const args& a) : p(a.n, a.k), l(p.params), copy(a.n, 0.5f) {
    if constexpr (master) s.copy = copy.data();
  }
};

/// The ascent pass alone over weights W and gradients G (w + ε rounded to W, saved ← w), to
/// nearest or, with `master`, from the fp32 master copy (mode 2). Bytes: w, g read; w, saved written
/// (saved has W's type); the master read too.
template <class W, class G, bool master>
void ascend16(benchmark::State& st) {
  const args a(st);
  using setup = pass_setup<W, G, master>;
  setup f(a);
  be::vector<W> saved(a.n);
  // a tiny radius: repeated ascents drift w by 1e-7·g per iteration (nothing at all in bf16)
  const flatmin::kernels::ascend_pass<float, flatmin::kernels::l2_term<float>, typename setup::view, W,
                                      typename setup::store>
      pass{{}, {}, 1e-7f, 1.0f, saved.data(), f.s};
  for (auto _ : st) {
    be::for_each(f.l.full(), pass);
    benchmark::ClobberMemory();
  }
  constexpr double w = sizeof(W), g = sizeof(G);
  constexpr double bytes = w + g + w + w + (master ? 4.0 : 0.0);
  set_traffic(st, bytes * a.n, a.n, a.threads, {{master ? 3 : 2, 1, 1, bytes}});
}

/// The fused restore + AdamW descent pass alone over W and G: the saved w restored and stepped
/// (modes 1 and 3), or the master copy stepped and rounded into w (mode 2: nothing to restore).
template <class W, class G, bool master>
void descend16_adamw(benchmark::State& st) {
  const args a(st);
  using setup = pass_setup<W, G, master>;
  setup f(a);
  be::vector<W> saved(a.n, static_cast<W>(0.5f));
  flatmin::base::adamw::state<float, be> bs(adamw, a.n);
  const auto update = bs.prepare(adamw, 2);
  typename flatmin::regularize::none::state<float, typename setup::B>::view adjust{};
  const flatmin::kernels::descend_pass<float, typename setup::view, decltype(adjust), decltype(update),
                                       master ? 0 : 1, W, typename setup::store>
      pass{{}, adjust, update, 1.0f, saved.data(), !master, f.s};
  for (auto _ : st) {
    be::for_each(f.l.full(), pass);
    benchmark::ClobberMemory();
  }
  constexpr double w = sizeof(W), g = sizeof(G);
  constexpr double bytes = master ? 4 + g + 16 + 4 + w : w + g + 16 + w;
  set_traffic(st, bytes * a.n, a.n, a.threads, {{4, master ? 3 : 2, 1, bytes}});
}

/// The streams of a SAM step's four passes (statistics, ascent, check, descent) and their bytes per
/// parameter: w and g of the precision, the saved copy of w's type, the state and master fp32.
template <class P, class Base>
std::array<streams, 4> step_streams(bool master) {
  constexpr double w = sizeof(typename P::weight_type), g = sizeof(typename P::grad_type);
  constexpr double e = sizeof(typename P::state_type);  // 4, or 8 for double state
  constexpr bool adam = !std::is_same_v<Base, flatmin::base::sgd>;
  constexpr int state = adam ? 2 : 1;  // m, v or the momentum buffer, each read and written
  const std::array<streams, 4> plain = {
      {{1, 0, 0, g},
       {2, 1, 1, w + g + w + w},  // w, g -> w, saved
       {1, 0, 0, g},
       {2 + state, state, 1, w + g + 2 * e * state + w}}};  // saved, g, state -> state, w
  const std::array<streams, 4> with_master = {
      {{1, 0, 0, g},
       {3, 1, 1, w + 4 + g + w + w},  // w16, master, g -> w16, saved
       {1, 0, 0, g},
       {2 + state, 1 + state, 1, 4 + g + 2 * e * state + 4 + w}}};  // master, g, state -> master, state, w16
  return master ? with_master : plain;
}

template <class P, class Base>
void sam_step(benchmark::State& st, Base base, bool master, double bytes) {
  const args a(st);
  typed_problem<typename P::weight_type, typename P::grad_type> p(a.n, a.k);
  flatmin::sharpness_aware<P, be, flatmin::perturb::l2, flatmin::mask::dense, Base> opt(
      p.params, {.base = base, .perturb = {.rho = 1e-3}, .options = {.master_weights = master}});
  for (auto _ : st) {
    auto r = opt.ascend();
    r = opt.descend();
    if (r.skipped) st.SkipWithError("step skipped");
    benchmark::DoNotOptimize(r);
  }
  const std::array<streams, 4> s = step_streams<P, Base>(master);
  if (s[0].pass_bytes() + s[1].pass_bytes() + s[2].pass_bytes() + s[3].pass_bytes() != bytes)
    st.SkipWithError("the passes' bytes do not add up to the step's");
  set_traffic(st, bytes * a.n, a.n, a.threads, {s[0], s[1], s[2], s[3]});
}

/// A whole SAM step over SGD-momentum or AdamW (`adam`), with master weights or not; `bytes`: the
/// minimal count of the file comment.
template <class P, bool adam, bool master, int bytes>
void step(benchmark::State& st) {
  if constexpr (adam)
    sam_step<P>(st, adamw, master, bytes);
  else
    sam_step<P>(st, sgd, master, bytes);
}

const bool registered = [] {
  const std::vector<std::int64_t> one = {1};
  grid(benchmark::RegisterBenchmark("check_pass/g_fp32", check_pass<float>), one);
  grid(benchmark::RegisterBenchmark("check_pass/g_bf16", check_pass<bf16>), one);
  grid(benchmark::RegisterBenchmark("check_pass/g_fp16", check_pass<fp16>), one);
  grid(benchmark::RegisterBenchmark("ascend/fp32", ascend16<float, float, false>), one);
  grid(benchmark::RegisterBenchmark("ascend/g_bf16", ascend16<float, bf16, false>), one);
  grid(benchmark::RegisterBenchmark("ascend/w_bf16_master", ascend16<bf16, bf16, true>), one);
  grid(benchmark::RegisterBenchmark("ascend/w_bf16", ascend16<bf16, bf16, false>), one);
  grid(benchmark::RegisterBenchmark("descend_adamw/fp32", descend16_adamw<float, float, false>), one);
  grid(benchmark::RegisterBenchmark("descend_adamw/g_bf16", descend16_adamw<float, bf16, false>), one);
  grid(benchmark::RegisterBenchmark("descend_adamw/w_bf16_master", descend16_adamw<bf16, bf16, true>), one);
  grid(benchmark::RegisterBenchmark("descend_adamw/w_bf16", descend16_adamw<bf16, bf16, false>), one);
  using fp32 = flatmin::precision<float>;
  using g_bf16 = flatmin::precision<float, bf16>;
  using w_bf16 = flatmin::precision<bf16>;
  using g_fp16 = flatmin::precision<float, fp16>;
  grid(benchmark::RegisterBenchmark("sam_sgd/fp32", step<fp32, false, false, 44>), one);
  grid(benchmark::RegisterBenchmark("sam_sgd/g_bf16", step<g_bf16, false, false, 36>), one);
  grid(benchmark::RegisterBenchmark("sam_sgd/w_bf16_master", step<w_bf16, false, true, 36>), one);
  grid(benchmark::RegisterBenchmark("sam_adamw/fp32", step<fp32, true, false, 52>), one);
  grid(benchmark::RegisterBenchmark("sam_adamw/g_bf16", step<g_bf16, true, false, 44>), one);
  grid(benchmark::RegisterBenchmark("sam_adamw/w_bf16_master", step<w_bf16, true, true, 44>), one);
  grid(benchmark::RegisterBenchmark("sam_adamw/w_bf16", step<w_bf16, true, false, 34>), one);
  grid(benchmark::RegisterBenchmark("sam_adamw/g_fp16", step<g_fp16, true, false, 44>), one);
  // fp32 weights and gradients, double optimizer state (m, v): 4 + 16 + 4 + (4 + 4 + 32 + 4) = 68 B
  using s_fp64 = flatmin::precision<float, float, double>;
  grid(benchmark::RegisterBenchmark("sam_adamw/state_fp64", step<s_fp64, true, false, 68>), one);
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
