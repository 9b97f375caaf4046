// The ascent-time hook (concepts/roles.hpp, `ascent_hook`): a descent rule or a regularizer's state
// with `on_ascent(layout, stats, inv_scale)` sees the clean gradient g and its statistics before w
// moves. Proved with two test-only policies that keep g and apply a WSAM-like rule
//     d = g + α (g_adv − g)
// (the form of Yue et al., KDD 2023, not the library's WSAM, which is issue 16): one as a descent
// rule (closure protocol: it mixes the views after the second gradient), one as a regularizer
// (both protocols: it mixes in the fused descent pass). Each runs 20 steps against a float64
// reference on every backend, and the statistics the hook is handed are checked against the
// reference's ‖g‖² and ‖ε‖.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "support/backends.hpp"
#include "support/runner.hpp"

using namespace flatmin_test;

namespace {

const layout_spec hook_layout = {{"fc.weight", {7, 5}},
                                 {"fc.bias", {7}, {.weight_decay = false, .adaptive = false}},
                                 {"frozen", {3}, {.perturb = false}}};

/// dst[i] = g_i · inv_scale over the layout (g as the optimizer sees it).
template <class T>
struct copy_gradient {
  T* dst;
  T inv;
  FLATMIN_HD void operator()(const flatmin::backend::elem<T>& e) const { dst[e.i] = e.g * inv; }
};

/// g_adv ← g + α (g_adv − g) in the gradient views, g from `clean`.
template <class T>
struct mix_views {
  const T* clean;
  T alpha;
  FLATMIN_HD void operator()(const flatmin::backend::elem<T>& e) const {
    e.g = clean[e.i] + alpha * (e.g - clean[e.i]);
  }
};

/// What a hook saw, per call.
struct seen {
  std::size_t step;
  double grad_norm2, perturbation_norm;
};

/// A descent rule with an ascent hook: keeps g (one copy pass, its own cost) and, after the
/// second gradient, overwrites the views with g + α(g_adv − g).
template <class T, class Backend>
struct wsam_like_descent : flatmin::descent::standard {
  double alpha = 0.5;
  typename Backend::template vector<T> clean{};
  const flatmin::backend::layout<T, Backend>* layout = nullptr;
  std::vector<seen> calls{};

  void on_ascent(const flatmin::backend::layout<T, Backend>& l, const flatmin::ascent_stats& s, T inv) {
    if (clean.size() != l.numel()) clean = Backend::template make_vector<T>(l.numel());
    Backend::for_each(l.full(), copy_gradient<T>{Backend::data(clean), inv});
    layout = &l;
    calls.push_back({s.step, s.grad_norm2, s.perturbation_norm});
  }
  template <flatmin::objective O>
  void second_gradient(O& obj) {
    static_cast<void>(obj());
    Backend::for_each(layout->full(), mix_views<T>{Backend::data(clean), static_cast<T>(alpha)});
  }
};

/// The same rule as a regularizer: the state keeps g in on_ascent; prepare() returns the
/// elementwise g_adv ↦ g + α(g_adv − g) that the fused descent pass applies.
struct wsam_like_regularizer {
  double alpha = 0.5;
  void validate() const {}

  template <class T, class Backend>
  class state {
   public:
    struct view {
      const T* clean;
      T alpha;
      FLATMIN_HD T operator()(T /*w*/, T g_adv, const flatmin::backend::elem<T>& e) const {
        return clean[e.i] + alpha * (g_adv - clean[e.i]);
      }
    };
    state(const wsam_like_regularizer&, const flatmin::backend::layout<T, Backend>& l)
        : clean_(Backend::template make_vector<T>(l.numel())) {}
    void on_ascent(const flatmin::backend::layout<T, Backend>& l, const flatmin::ascent_stats& s, T inv) {
      Backend::for_each(l.full(), copy_gradient<T>{Backend::data(clean_), inv});
      calls.push_back({s.step, s.grad_norm2, s.perturbation_norm});
    }
    view prepare(const wsam_like_regularizer& r, const flatmin::backend::layout<T, Backend>&, std::size_t, T) {
      return {Backend::data(clean_), static_cast<T>(r.alpha)};
    }
    std::vector<seen> calls;

   private:
    typename Backend::template vector<T> clean_;
  };
};

/// The float64 reference step: g, ε = ρ g/(‖g‖ + ξ), g_adv at w + ε, base step on g + α(g_adv − g).
struct ref_step {
  double grad_norm2, perturbation_norm;
};
ref_step wsam_like_reference(ref::vec& w, const ref::opts_vec& o, double rho, double alpha, ref::sgd& base,
                             quadratic& q) {
  const ref::vec g = q.grad(w);
  const ref::vec eps = ref::sam_epsilon(g, o, rho, 1e-12);
  ref::vec wp = w;
  for (std::size_t i = 0; i < w.size(); ++i) wp[i] += eps[i];
  const ref::vec ga = q.grad(wp);
  ref::vec d(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) d[i] = g[i] + alpha * (ga[i] - g[i]);
  base.step(w, d, o);
  return {ref::dot(g, g), ref::norm(eps)};
}

template <class T, class Opt, class Calls, class Step>
void against_reference(model<T>& m, Opt& opt, const Calls& calls, const flatmin::base::sgd& base, double rho,
                       double alpha, const quadratic& q, const Step& lib_step) {
  quadratic ql = q, qr = q;
  ref::vec w = m.weights();
  ref::sgd rb = to_ref(base);
  for (std::size_t s = 1; s <= 20; ++s) {
    CAPTURE(s);
    const ref_step rr = wsam_like_reference(w, m.opts, rho, alpha, rb, qr);
    const auto r = lib_step(opt, ql);
    CHECK_FALSE(r.skipped);
    CHECK(r.perturbed);
    FLATMIN_CHECK_CLOSE(m.weights(), w, rtol<T>);
    REQUIRE(calls().size() == s);  // once per step
    const seen& c = calls().back();
    CHECK(c.step == s);
    FLATMIN_CHECK_CLOSE1(c.grad_norm2, rr.grad_norm2, rtol<T>);
    FLATMIN_CHECK_CLOSE1(c.perturbation_norm, rr.perturbation_norm, rtol<T>);
    CHECK(c.perturbation_norm == r.perturbation_norm);
  }
}

template <class Backend, class T>
void descent_hook_case(std::uint64_t seed) {
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.01};
  model<T> m(hook_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, seed));
  const auto q = quadratic::random(m.numel, seed);
  using D = wsam_like_descent<T, Backend>;
  flatmin::sharpness_aware<T, Backend, flatmin::perturb::l2, flatmin::mask::dense, flatmin::base::sgd, D> opt(
      m.params, {.base = base, .perturb = flatmin::perturb::l2{.rho = 0.1}, .descent = D{{}, 0.4}});
  against_reference(
      m, opt, [&]() -> const std::vector<seen>& { return opt.descent().calls; }, base, 0.1, 0.4, q,
      [&](auto& o, quadratic& ql) { return o.step(ql.objective(m)); });
}

template <class Backend, class T>
void regularizer_hook_case(std::uint64_t seed, bool closure) {
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.01};
  model<T> m(hook_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, seed));
  const auto q = quadratic::random(m.numel, seed);
  using R = wsam_like_regularizer;
  flatmin::sharpness_aware<T, Backend, flatmin::perturb::l2, flatmin::mask::dense, flatmin::base::sgd,
                           flatmin::descent::standard, R>
      opt(m.params,
          {.base = base, .perturb = flatmin::perturb::l2{.rho = 0.1}, .regularizer = R{.alpha = 0.4}});
  auto calls = [&]() -> const std::vector<seen>& { return opt.regularizer_state().calls; };
  if (closure)
    against_reference(m, opt, calls, base, 0.1, 0.4, q,
                      [&](auto& o, quadratic& ql) { return o.step(ql.objective(m)); });
  else
    against_reference(m, opt, calls, base, 0.1, 0.4, q, [&](auto& o, quadratic& ql) {
      ql.eval(m);
      o.ascend();
      ql.eval(m);
      return o.descend();
    });
}

}  // namespace

TEST_CASE_TEMPLATE("ascent hook: a descent rule sees the clean g (WSAM-like rule vs float64)", Backend,
                   FLATMIN_TEST_BACKENDS) {
  descent_hook_case<Backend, float>(81);
  descent_hook_case<Backend, double>(82);
}

TEST_CASE_TEMPLATE("ascent hook: a regularizer's state sees the clean g (WSAM-like rule vs float64)", Backend,
                   FLATMIN_TEST_BACKENDS) {
  regularizer_hook_case<Backend, float>(83, true);
  regularizer_hook_case<Backend, double>(84, false);
}

TEST_CASE_TEMPLATE("ascent hook: not called on a step the schedule leaves unperturbed", Backend,
                   FLATMIN_TEST_BACKENDS) {
  using T = double;
  const flatmin::base::sgd base{.lr = 0.05};
  model<T> m(hook_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, 85));
  auto q = quadratic::random(m.numel, 85);
  using D = wsam_like_descent<T, Backend>;
  flatmin::sharpness_aware<T, Backend, flatmin::perturb::l2, flatmin::mask::dense, flatmin::base::sgd, D,
                           flatmin::regularize::none, flatmin::schedule::every_k>
      opt(m.params, {.base = base, .descent = D{}, .schedule = flatmin::schedule::every_k{.k = 3}});
  std::vector<std::size_t> hooked;
  for (int s = 1; s <= 7; ++s) opt.step(q.objective(m));
  for (const auto& c : opt.descent().calls) hooked.push_back(c.step);
  CHECK(hooked == std::vector<std::size_t>{1, 4, 7});
}
