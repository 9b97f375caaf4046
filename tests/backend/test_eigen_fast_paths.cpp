// backend::eigen's vectorised forms of the passes: the reductions over groups of segments
// (stats_pass::segments, check_pass::segments, segments of unequal lengths read side by side:
// bitwise equal to the element path, which is also backend::thrust's order) and the branch-free SGD / Adam updates with a
// compile-time or run-time fused restore. Each is checked against a float64 reference written
// here, on tensor sizes that hit the block tails, with tensors that are not perturbed and
// without weight decay, non-finite and overflowing gradients, and for thread-count invariance.
#include <doctest/doctest.h>
#include <flatmin/flatmin.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using be = flatmin::backend::eigen;
using dense_view = flatmin::mask::dense::state<float, be>::view;
using flatmin::kernels::grad_stats;

// sizes around the reduction block (64) and the segment (4096) boundaries
const std::vector<std::size_t> sizes = {1, 63, 64, 65, 130, 4095, 4096, 4097, 70000};

struct problem {
  std::vector<std::vector<float>> w, g;
  std::vector<flatmin::tensor_options> opts;
  flatmin::param_set<float> ps;
  explicit problem(unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      w.emplace_back(sizes[t]);
      g.emplace_back(sizes[t]);
      for (auto& x : w.back()) x = nd(rng);
      for (auto& x : g.back()) x = nd(rng);
      // every third tensor is not perturbed, every other one has no weight decay
      opts.push_back({.weight_decay = t % 2 == 0, .perturb = t % 3 != 1, .adaptive = t % 4 != 3});
    }
    for (std::size_t t = 0; t < sizes.size(); ++t) ps.add(std::to_string(t), w[t], g[t], opts[t]);
  }
};

struct ref_stats {
  double g2 = 0, n2 = 0, d2 = 0, bad = 0, kept = 0;
};

// SAM (l2) or ASAM (adaptive, η) sums in float64, over finite entries for the squares
ref_stats reference(const problem& p, float inv, bool adaptive, double eta) {
  ref_stats r;
  for (std::size_t t = 0; t < p.w.size(); ++t)
    for (std::size_t j = 0; j < p.w[t].size(); ++j) {
      const double x = double(p.g[t][j] * inv);
      if (!std::isfinite(x)) {
        r.bad += 1;
        continue;
      }
      r.g2 += x * x;
      if (!p.opts[t].perturb) continue;
      const double s = (adaptive && p.opts[t].adaptive) ? std::fabs(double(p.w[t][j])) + eta : 1.0;
      r.n2 += (s * x) * (s * x);
      r.d2 += (s * s * x) * (s * s * x);
      r.kept += 1;
    }
  return r;
}

template <class Pass>
grad_stats reduce(const flatmin::backend::layout<float, be>& l, const Pass& pass, int threads) {
#if defined(_OPENMP)
  const int before = omp_get_max_threads();
  omp_set_num_threads(threads);
  const grad_stats s = be::reduce<grad_stats>(l.full(), pass);
  omp_set_num_threads(before);
  return s;
#else
  static_cast<void>(threads);
  return be::reduce<grad_stats>(l.full(), pass);
#endif
}

bool same_bits(const grad_stats& a, const grad_stats& b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// The same pass without its segment form: backend::eigen sums it element by element.
template <class P>
struct element_only {
  P p;
  grad_stats operator()(const flatmin::backend::elem<float>& e) const { return p(e); }
};
template <class P>
element_only<P> elementwise(const P& p) {
  return {p};
}

void check_close(double got, double want, double rel) {
  CHECK(got == doctest::Approx(want).epsilon(rel));
}

}  // namespace

TEST_CASE("eigen: a reduction's group forms give each segment its own partial, for every share of threads") {
  // reduce_groups reads segments a quarter of a thread's share apart, then the share's last
  // (count mod 4) as a short group: each partial must land at its own segment, whatever the count
  // of segments and threads (the totals alone would hide two partials that traded places)
  std::mt19937 rng(41);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (std::size_t extra = 0; extra < 9; ++extra) {
    CAPTURE(extra);
    std::vector<std::vector<float>> w, g;
    std::vector<std::size_t> n = {70000};  // 18 segments, the last one short
    for (std::size_t k = 0; k < extra; ++k) n.push_back(1 + 509 * k);  // one segment each
    flatmin::param_set<float> ps;
    for (std::size_t t = 0; t < n.size(); ++t) {
      w.emplace_back(n[t], 0.f);
      g.emplace_back(n[t]);
      for (auto& x : g.back()) x = nd(rng);
    }
    for (std::size_t t = 0; t < n.size(); ++t) ps.add(std::to_string(t), w[t], g[t]);
    const flatmin::backend::layout<float, be> l(ps);
    for (const float inv : {0.75f, 1.f}) {
      CAPTURE(inv);
      const flatmin::kernels::check_pass<float> pass{inv};
      const std::vector<grad_stats> want = be::reduce_segments<grad_stats>(l.full(), elementwise(pass));
      REQUIRE(want.size() == 18 + extra);
      for (int threads : {1, 2, 3}) {
        CAPTURE(threads);
#if defined(_OPENMP)
        const int before = omp_get_max_threads();
        omp_set_num_threads(threads);
#endif
        const std::vector<grad_stats> got = be::reduce_segments<grad_stats>(l.full(), pass);
#if defined(_OPENMP)
        omp_set_num_threads(before);
#endif
        REQUIRE(got.size() == want.size());
        for (std::size_t s = 0; s < got.size(); ++s) {
          CAPTURE(s);
          CHECK(same_bits(got[s], want[s]));
        }
      }
    }
  }
}

TEST_CASE("eigen: SIMD statistics and check reductions match a float64 reference") {
  problem p(7);
  const flatmin::backend::layout<float, be> l(p.ps);
  const float inv = 0.5f;
  const double tol = 1e-9;  // double sums

  SUBCASE("SAM statistics (every entry masked in: one sum for all three)") {
    const flatmin::kernels::stats_pass<float, flatmin::kernels::l2_term<float>, dense_view> pass{{}, {}, inv, true};
    static_assert(decltype(pass)::gradient_only);
    const auto want = reference(p, inv, false, 0);
    const auto got = reduce(l, pass, 1);
    check_close(got.g2, want.g2, tol);
    check_close(got.n2, want.n2, tol);
    check_close(got.d2, want.d2, tol);
    CHECK(got.kept == want.kept);
    CHECK(got.bad == 0);
    CHECK(same_bits(got, reduce(l, pass, 2)));
    CHECK(same_bits(got, reduce(l, elementwise(pass), 1)));  // the order of the element path (and thrust's)
  }
  SUBCASE("ASAM statistics (element by element)") {
    const flatmin::kernels::stats_pass<float, flatmin::kernels::adaptive_term<float>, dense_view> pass{
        {0.01f}, {}, inv, true};
    static_assert(!decltype(pass)::gradient_only);
    const auto want = reference(p, inv, true, double(0.01f));
    const auto got = reduce(l, pass, 1);
    check_close(got.g2, want.g2, tol);
    check_close(got.n2, want.n2, 1e-6);  // the terms are products in float
    check_close(got.d2, want.d2, 1e-6);
    CHECK(got.kept == want.kept);
    CHECK(same_bits(got, reduce(l, pass, 2)));
  }
  SUBCASE("check pass") {
    const auto want = reference(p, inv, false, 0);
    const auto got = reduce(l, flatmin::kernels::check_pass<float>{inv}, 1);
    check_close(got.g2, want.g2, tol);
    CHECK(got.bad == 0);
    CHECK(same_bits(got, reduce(l, flatmin::kernels::check_pass<float>{inv}, 2)));
    CHECK(same_bits(got, reduce(l, elementwise(flatmin::kernels::check_pass<float>{inv}), 1)));
  }
  SUBCASE("non-finite entries are counted exactly") {
    p.g[4][3] = std::numeric_limits<float>::quiet_NaN();
    p.g[7][4096] = std::numeric_limits<float>::infinity();
    p.g[8][100] = -std::numeric_limits<float>::infinity();
    const auto c = reduce(l, flatmin::kernels::check_pass<float>{inv}, 2);
    CHECK(c.bad == 3);
    CHECK(same_bits(reduce(l, flatmin::kernels::stats_pass<float, flatmin::kernels::l2_term<float>, dense_view>{
                                  {}, {}, inv, true}, 2),
                    reduce(l, elementwise(flatmin::kernels::stats_pass<float, flatmin::kernels::l2_term<float>,
                                                                       dense_view>{{}, {}, inv, true}), 1)));
    const flatmin::kernels::stats_pass<float, flatmin::kernels::adaptive_term<float>, dense_view> pass{
        {0.01f}, {}, inv, true};
    CHECK(reduce(l, pass, 2).bad == 3);
  }
  SUBCASE("finite gradients whose squares overflow float are summed in double") {
    p.g[8][5] = 3e19f;  // (3e19 · 0.5)² ≈ 2.25e38 ... two of them overflow a float sum
    p.g[8][6] = 3e19f;
    p.g[8][7] = -3e19f;
    const auto want = reference(p, inv, false, 0);
    const auto c = reduce(l, flatmin::kernels::check_pass<float>{inv}, 1);
    CHECK(std::isfinite(c.g2));
    CHECK(c.bad == 0);
    check_close(c.g2, want.g2, 1e-12);
    const flatmin::kernels::stats_pass<float, flatmin::kernels::l2_term<float>, dense_view> sam{{}, {}, inv, true};
    const auto s = reduce(l, sam, 2);
    CHECK(std::isfinite(s.n2));
    check_close(s.n2, want.n2, 1e-12);
    const flatmin::kernels::stats_pass<float, flatmin::kernels::adaptive_term<float>, dense_view> asam{
        {0.01f}, {}, inv, true};
    const auto a = reduce(l, asam, 2);
    CHECK(std::isfinite(a.g2));
    check_close(a.g2, want.g2, 1e-12);
  }
}

namespace {

// w ← saved on perturbed tensors (restore), then SGD with momentum μ, dampening τ, Nesterov and
// coupled weight decay λ on tensors with weight decay, in float64
void sgd_reference(std::vector<double>& w, const std::vector<double>& g, std::vector<double>& buf, double lr,
                   double mu, double tau, double lambda, bool nesterov, bool first, bool wd) {
  for (std::size_t j = 0; j < w.size(); ++j) {
    double d = g[j] + (wd ? lambda * w[j] : 0.0);
    buf[j] = first ? d : mu * buf[j] + (1 - tau) * d;
    d = nesterov ? d + mu * buf[j] : buf[j];
    w[j] -= lr * d;
  }
}

}  // namespace

TEST_CASE("eigen: fused restore + SGD-momentum and AdamW match a float64 reference") {
  for (int variant = 0; variant < 3; ++variant) {
    CAPTURE(variant);
    problem p(11 + variant);
    const flatmin::backend::layout<float, be> l(p.ps);
    const std::size_t n = l.numel();
    // saved weights: what ascend would have stored (different from w, to see the restore)
    be::vector<float> saved(n);
    {
      std::size_t off = 0;
      for (std::size_t t = 0; t < p.w.size(); ++t)
        for (std::size_t j = 0; j < p.w[t].size(); ++j) saved[off++] = p.w[t][j] * 0.75f + 0.1f;
    }
    const flatmin::base::sgd so{.lr = 0.1, .momentum = 0.9, .dampening = variant == 2 ? 0.25 : 0.0,
                                .weight_decay = 0.01, .nesterov = variant == 1};
    flatmin::base::sgd::state<float, be> ss(so, n);
    flatmin::base::adamw::state<float, be> as(flatmin::base::adamw{}, n);
    using adjust = flatmin::regularize::none::state<float, be>::view;

    for (std::size_t step = 1; step <= 3; ++step) {
      CAPTURE(step);
      // the same inputs through the run-time and the compile-time restore
      std::vector<std::vector<double>> w_ref(p.w.size());
      std::size_t off = 0;
      for (std::size_t t = 0; t < p.w.size(); ++t) {
        w_ref[t].resize(p.w[t].size());
        for (std::size_t j = 0; j < p.w[t].size(); ++j, ++off)
          w_ref[t][j] = p.opts[t].perturb ? double(saved[off]) : double(p.w[t][j]);
      }
      // momentum buffer before the step
      std::vector<float> buf0(n);
      std::memcpy(buf0.data(), ss.prepare(so, step).buf, n * sizeof(float));

      // run-time restore flag on a copy of the weights
      std::vector<std::vector<float>> keep = p.w;
      const auto upd = ss.prepare(so, step);
      be::for_each(l.full(),
                   flatmin::kernels::descend_pass<float, dense_view, adjust, decltype(upd)>{{}, {}, upd, 1.0f, saved.data(), true});
      const auto w_rt = p.w;
      std::vector<float> buf_rt(upd.buf, upd.buf + n);
      // compile-time restore from the same state
      p.w = keep;
      std::memcpy(upd.buf, buf0.data(), n * sizeof(float));
      be::for_each(l.full(), flatmin::kernels::descend_pass<float, dense_view, adjust, decltype(upd), 1>{
                                 {}, {}, upd, 1.0f, saved.data(), false});
      CHECK(p.w == w_rt);
      CHECK(std::memcmp(buf_rt.data(), upd.buf, n * sizeof(float)) == 0);

      // float64 reference
      off = 0;
      bool ok = true;
      for (std::size_t t = 0; t < p.w.size(); ++t) {
        std::vector<double> g(p.g[t].begin(), p.g[t].end()), buf(buf0.begin() + off, buf0.begin() + off + p.w[t].size());
        sgd_reference(w_ref[t], g, buf, 0.1, 0.9, so.dampening, 0.01, so.nesterov, step == 1, p.opts[t].weight_decay);
        for (std::size_t j = 0; j < p.w[t].size(); ++j) {
          ok = ok && std::fabs(p.w[t][j] - w_ref[t][j]) <= 1e-5 * (1 + std::fabs(w_ref[t][j]));
          ok = ok && std::fabs(upd.buf[off + j] - buf[j]) <= 1e-5 * (1 + std::fabs(buf[j]));
        }
        off += p.w[t].size();
      }
      CHECK(ok);
    }

    // AdamW without restore (the plain composition's pass), one step from zero moments
    auto w0 = p.w;
    const flatmin::base::adamw ao{.lr = 0.01, .weight_decay = 0.1};
    const auto au = as.prepare(ao, 1);
    be::for_each(l.full(), flatmin::kernels::descend_pass<float, dense_view, adjust, decltype(au), 0>{
                               {}, {}, au, 1.0f, nullptr, false});
    bool ok = true;
    for (std::size_t t = 0; t < p.w.size(); ++t)
      for (std::size_t j = 0; j < p.w[t].size(); ++j) {
        const double g = p.g[t][j];
        double w = w0[t][j];
        if (p.opts[t].weight_decay) w *= 1 - 0.01 * 0.1;
        const double m = 0.1 * g, v = 0.001 * g * g;
        const double mhat = m / (1 - 0.9), vhat = v / (1 - 0.999);
        w -= 0.01 * mhat / (std::sqrt(vhat) + 1e-8);
        ok = ok && std::fabs(p.w[t][j] - w) <= 1e-5 * (1 + std::fabs(w));
      }
    CHECK(ok);
  }
}

namespace {
namespace md = flatmin::mask::detail;
using bits_view = md::bit_view<float>;

// problem(23) with every fifth tensor not eligible for the mask (or, `every_tensor`, every tensor
// perturbed and eligible: FSAM's usual layout, whose groups the statistics sum in one sweep), and
// random element mask bits
struct masked_problem {
  bool every;
  problem p{23};
  flatmin::param_set<float> ps;
  std::vector<bool> eligible;
  std::unique_ptr<flatmin::backend::layout<float, be>> lp;
  const flatmin::backend::layout<float, be>& l;
  md::units<float, be> units;
  std::vector<std::uint32_t> bits;
  explicit masked_problem(bool every_tensor = false)
      : every(every_tensor), lp(make()), l(*lp), units(l, md::unit_kind::element, 1), bits(units.words()) {
    std::mt19937 rng(5);
    for (auto& b : bits) b = static_cast<std::uint32_t>(rng()) & static_cast<std::uint32_t>(rng());  // ~25 % set
  }
  std::unique_ptr<flatmin::backend::layout<float, be>> make() {
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      if (every) p.opts[t].perturb = true;
      auto o = p.opts[t];
      o.mask_eligible = every || t % 5 != 2;
      eligible.push_back(o.mask_eligible);
      ps.add(std::to_string(t), p.w[t], p.g[t], o);
    }
    return std::make_unique<flatmin::backend::layout<float, be>>(ps);
  }
  bits_view view() const { return {units.view(l), bits.data()}; }
};

// The same pass without its segment form: backend::eigen runs it element by element.
template <class P>
struct element_each {
  P p;
  void operator()(const flatmin::backend::elem<float>& e) const { p(e); }
};
}  // namespace

TEST_CASE("eigen: SAM statistics under an element bit mask: eight bits at a time, the element path's sums") {
  // the bit_view of mask::fisher / mask::dynamic with element units, over tensors that are not
  // perturbed or not eligible for the mask (always perturbed), and segment tails; and over tensors
  // that are all perturbed and eligible (the form's one sweep per segment)
  for (const bool every : {false, true}) {
    CAPTURE(every);
    masked_problem mp(every);
    problem& p = mp.p;
    const auto& l = mp.l;
    const auto& bits = mp.bits;
    const auto& eligible = mp.eligible;
    const bits_view view = mp.view();
    const float inv = 0.5f;
    for (bool over_mask : {false, true}) {
      CAPTURE(over_mask);
      const flatmin::kernels::stats_pass<float, flatmin::kernels::l2_term<float>, bits_view> pass{{}, view, inv, over_mask};
      static_assert(flatmin::backend::host::has_group_form<decltype(pass), grad_stats, float, float, be::reduction_group> &&
                    !decltype(pass)::gradient_only);
      // float64 reference: Σg² over all, Σd² and count over the masked perturbed entries, Σn² over
      // the perturbed entries (or the masked ones with over_mask)
      ref_stats want;
      for (std::size_t t = 0, i = 0; t < p.w.size(); ++t)
        for (std::size_t j = 0; j < p.w[t].size(); ++j, ++i) {
          const double x = double(p.g[t][j] * inv);
          want.g2 += x * x;
          if (!p.opts[t].perturb) continue;
          const bool in = !eligible[t] || ((bits[i >> 5] >> (i & 31)) & 1u);
          if (in || !over_mask) want.n2 += x * x;
          if (in) {
            want.d2 += x * x;
            want.kept += 1;
          }
        }
      const auto got = reduce(l, pass, 1);
      check_close(got.g2, want.g2, 1e-9);
      check_close(got.n2, want.n2, 1e-9);
      check_close(got.d2, want.d2, 1e-9);
      CHECK(got.kept == want.kept);
      CHECK(got.bad == 0);
      CHECK(same_bits(got, reduce(l, pass, 2)));
      CHECK(same_bits(got, reduce(l, elementwise(pass), 1)));  // the order of the element path (and thrust's)
    }
    {  // a non-finite entry outside the mask is counted, and adds nothing to the masked sums
      const std::size_t t = 8, off = l.host_tensors()[t].offset;  // perturbed and eligible
      std::size_t j = 0;
      while ((bits[(off + j) >> 5] >> ((off + j) & 31)) & 1u) ++j;  // an entry the mask leaves out
      p.g[t][j] = std::numeric_limits<float>::infinity();
      const flatmin::kernels::stats_pass<float, flatmin::kernels::l2_term<float>, bits_view> pass{{}, view, inv, false};
      const auto got = reduce(l, pass, 2);
      CHECK(got.bad == 1);
      CHECK(std::isfinite(got.d2));
      CHECK(same_bits(got, reduce(l, elementwise(pass), 1)));
    }
  }
}

TEST_CASE("eigen: SAM statistics that also write FSAM's element scores: the two passes' sums and scores, bit for bit") {
  // kernels::stats_scores_pass (mask::fisher's estimate F' = F + (g/s)^2 written by the statistics
  // pass as it reads g): its group form runs the statistics' form, then each segment's scores.
  // Both results must be those of the two passes run apart (the statistics pass, and the element
  // scores' own pass as add_scores runs it), and the scores those of a float64 reference.
  for (const bool every : {false, true}) {
    CAPTURE(every);
    masked_problem mp(every);
    const problem& p = mp.p;
    const auto& l = mp.l;
    const std::size_t n = l.numel();
    const float inv = 0.5f;
    std::vector<float> from(n);
    std::mt19937 rng(9);
    std::uniform_real_distribution<float> ud(0.f, 4.f);
    for (auto& x : from) x = ud(rng);
    using stats_t = flatmin::kernels::stats_pass<float, flatmin::kernels::l2_term<float>, bits_view>;
    using scores_t = flatmin::kernels::element_scores<float>;
    for (const bool over_mask : {false, true})
      for (const bool accumulate : {false, true})
        for (const int threads : {1, 2}) {
          CAPTURE(over_mask);
          CAPTURE(accumulate);
          CAPTURE(threads);
          const stats_t stats{{}, mp.view(), inv, over_mask};
          std::vector<float> got(n, -7.f), apart(n, -7.f), each(n, -7.f);
          const float* f = accumulate ? from.data() : nullptr;
          const auto fused = [&](float* out) {
            return flatmin::kernels::stats_scores_pass<stats_t, float>{
                stats, scores_t{out, f, inv, flatmin::kernels::score_of::square}};
          };
          static_assert(flatmin::backend::host::has_group_form<decltype(fused(nullptr)), grad_stats, float, float,
                                                               be::reduction_group>);
          const grad_stats s = reduce(l, fused(got.data()), threads);
          CHECK(same_bits(s, reduce(l, stats, 1)));
          // the element path (backend::thrust's order), into its own buffer
          CHECK(same_bits(s, reduce(l, elementwise(fused(each.data())), 1)));
          CHECK(std::memcmp(got.data(), each.data(), n * sizeof(float)) == 0);
          be::reduce<double>(l.full(), scores_t{apart.data(), f, inv, flatmin::kernels::score_of::square});
          CHECK(std::memcmp(got.data(), apart.data(), n * sizeof(float)) == 0);
          std::size_t wrong = 0;
          for (std::size_t t = 0, i = 0; t < p.w.size(); ++t)
            for (std::size_t j = 0; j < p.w[t].size(); ++j, ++i) {
              const double x = double(p.g[t][j]) * double(inv);
              const bool candidate = p.opts[t].perturb && mp.eligible[t];
              const double want = candidate ? (accumulate ? double(from[i]) : 0.0) + x * x : -1.0;
              wrong += std::fabs(double(got[i]) - want) <= 1e-6 * std::fabs(want) ? 0u : 1u;
            }
          CHECK(wrong == 0);
        }
  }
}

TEST_CASE("eigen: ascent and restore under an element bit mask: the segment form writes what the element path writes") {
  masked_problem a, b;  // the same data twice: one run per path
  const float inv = 0.5f, scale = 0.125f;
  const std::size_t n = a.l.numel();
  std::vector<float> saved_a(n, -7.f), saved_b(n, -7.f);
  using ascend = flatmin::kernels::ascend_pass<float, flatmin::kernels::l2_term<float>, bits_view>;
  using restore = flatmin::kernels::restore_pass<float, bits_view>;
  static_assert(flatmin::backend::host::element_bit_mask<bits_view>);
  be::for_each(a.l.full(), ascend{{}, a.view(), scale, inv, saved_a.data()});
  be::for_each(b.l.full(), element_each<ascend>{{{}, b.view(), scale, inv, saved_b.data()}});
  auto flat = [](const masked_problem& m) {
    std::vector<float> w;
    for (const auto& t : m.p.w) w.insert(w.end(), t.begin(), t.end());
    return w;
  };
  const auto wa = flat(a), wb = flat(b);
  CHECK(std::memcmp(wa.data(), wb.data(), n * sizeof(float)) == 0);
  CHECK(std::memcmp(saved_a.data(), saved_b.data(), n * sizeof(float)) == 0);
  // hand check: a masked-in entry moved by scale·g·inv, a masked-out one and an unperturbed one did not
  std::size_t moved = 0, kept = 0;
  problem fresh(23);
  for (std::size_t t = 0, i = 0; t < a.p.w.size(); ++t)
    for (std::size_t j = 0; j < a.p.w[t].size(); ++j, ++i) {
      const bool in = a.p.opts[t].perturb && (!a.eligible[t] || ((a.bits[i >> 5] >> (i & 31)) & 1u));
      const float want = in ? fresh.w[t][j] + scale * (fresh.g[t][j] * inv) : fresh.w[t][j];
      moved += in;
      kept += a.p.w[t][j] == want;
    }
  CHECK(kept == n);
  CHECK(moved > n / 5);
  be::for_each(a.l.full(), restore{a.view(), saved_a.data()});
  be::for_each(b.l.full(), element_each<restore>{{b.view(), saved_b.data()}});
  const auto ra = flat(a), rb = flat(b);
  CHECK(std::memcmp(ra.data(), rb.data(), n * sizeof(float)) == 0);
  std::vector<float> orig;
  for (const auto& t : fresh.w) orig.insert(orig.end(), t.begin(), t.end());
  CHECK(std::memcmp(ra.data(), orig.data(), n * sizeof(float)) == 0);  // the restore is exact
}

TEST_CASE("eigen: stream_copy writes exactly memcpy's bytes, whatever the alignment and length") {
  // around its 64-byte head, its whole lines and its tail; guard bytes on both sides stay as they were
  const std::size_t guard = 64, most = 700;
  std::vector<unsigned char> src(most + 128), dst(most + 128 + 2 * guard), want;
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<unsigned char>(i * 37 + 11);
  for (std::size_t from = 0; from < 64; from += 7)
    for (std::size_t to = 0; to < 64; to += 5)
      for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{63}, std::size_t{64}, std::size_t{65},
                            std::size_t{127}, std::size_t{128}, std::size_t{129}, std::size_t{200}, most}) {
        CAPTURE(from);
        CAPTURE(to);
        CAPTURE(n);
        std::fill(dst.begin(), dst.end(), static_cast<unsigned char>(0xa5));
        want = dst;
        std::memcpy(want.data() + guard + to, src.data() + from, n);
        flatmin::backend::host::stream_copy(src.data() + from, dst.data() + guard + to, n);
        flatmin::backend::host::stream_fence();
        CHECK(dst == want);
      }
}

TEST_CASE("eigen: FLATMIN_STREAM_STORES and force_stream_stores choose the streaming stores") {
  namespace host = flatmin::backend::host;
  const char* before = std::getenv("FLATMIN_STREAM_STORES");
  const std::string saved = before ? before : "";
  const auto parse = [](const char* value) {
    ::setenv("FLATMIN_STREAM_STORES", value, 1);
    return host::detail::read_stream_environment();
  };
  CHECK(parse("").value == -1);
  CHECK(parse("auto").value == -1);
  CHECK(parse("on").value == 1);
  CHECK(parse("1").value == 1);
  CHECK(parse("off").value == 0);
  CHECK(parse("0").value == 0);
  const auto bad = parse("sometimes");
  CHECK(bad.error.find("FLATMIN_STREAM_STORES") != std::string::npos);
  CHECK(bad.error.find("'sometimes'") != std::string::npos);
  if (before)
    ::setenv("FLATMIN_STREAM_STORES", saved.c_str(), 1);
  else
    ::unsetenv("FLATMIN_STREAM_STORES");
  host::force_stream_stores(host::stream_stores::on);
  CHECK(host::streams_writes(0));
  host::force_stream_stores(host::stream_stores::off);
  CHECK_FALSE(host::streams_writes(std::size_t{1} << 40));
  host::force_stream_stores(host::stream_stores::automatic);  // by size, where the stores exist
  CHECK_FALSE(host::streams_writes(host::stream_threshold_bytes - 1));
  CHECK(host::streams_writes(host::stream_threshold_bytes) == (FLATMIN_HAS_STREAM_STORES != 0));
  host::unforce_stream_stores();
}
