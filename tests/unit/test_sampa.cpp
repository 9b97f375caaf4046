// SAMPa (issue 16): perturb::sampa and flatmin::sampa against a float64 re-derivation of
// LIONS-EPFL/SAMPa's train.py (at 9fd7534), 1 and 20 steps, both protocols (the two-call one with
// its middle second_point()), on every backend, over SGD-momentum and AdamW; two objective calls
// per step, at x̃ then at y; the kept gradient through a checkpoint; skips and misuse.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <flatmin/algorithms/sampa.hpp>

#include "support/backends.hpp"
#include "support/runner.hpp"

using namespace flatmin_test;

namespace {

const layout_spec sampa_layout = {{"fc.weight", {7, 5}},
                                  {"fc.bias", {7}, {.weight_decay = false, .adaptive = false}},
                                  {"frozen", {3}, {.perturb = false}}};

/// The float64 SAMPa step, re-deriving train.py: rank 0 perturbs every parameter by
/// ρ·g_y/(‖g_y‖ + 1e-12) (‖·‖ over the flat vector of all parameters, l. 52-58; here over the
/// perturbed tensors) and takes the gradient there (l. 59-64); rank 1 moves to
/// x − lr·(g_y + wd·x + μ·b), torch SGD's step on g_y without its buffer's update (l. 67-81), and
/// takes the gradient there, kept as the next g_y (l. 82-87); the two are mixed (1 − λ) g̃ + λ g_y
/// and fed to the optimizer (l. 89-99). The look-ahead is written here as the base optimizer of
/// the reference stepped on a COPY of itself (its state untouched): for torch SGD that is the
/// official formula; for AdamW it is the library's extension (Adam's step on g_y). On the first
/// step g_y = 0 and no buffer exists: x̃ = y = x.
struct sampa_ref {
  double rho, xi, lambda;
  ref::vec gy{};
  template <class Base>
  void step(ref::vec& x, const ref::opts_vec& o, Base& base, quadratic& q) {
    ref::vec xt = x, y = x;
    if (!gy.empty()) {
      const ref::vec eps = ref::sam_epsilon(gy, o, rho, xi);
      for (std::size_t i = 0; i < x.size(); ++i) xt[i] += eps[i];
      Base peek = base;
      peek.step(y, gy, o);
      for (std::size_t i = 0; i < x.size(); ++i)
        if (!o[i].perturb) y[i] = x[i];
    }
    const ref::vec gt = q.grad(xt);
    gy = q.grad(y);
    ref::vec d(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) d[i] = (1 - lambda) * gt[i] + lambda * gy[i];
    base.step(x, d, o);
  }
};

/// One step of `opt` in the two-call protocol (objective at x̃, second_point(), at y).
template <class Opt, class T>
flatmin::step_report two_calls(Opt& opt, quadratic& q, model<T>& m) {
  opt.ascend();
  q.eval(m);
  opt.second_point();
  q.eval(m);
  return opt.descend();
}

template <class Backend, class T, class Base>
void sampa_case(const Base& base, int steps, bool closure, std::uint64_t seed) {
  CAPTURE(steps);
  CAPTURE(closure);
  model<T> m(sampa_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, seed));
  const auto q = quadratic::random(m.numel, seed, 0.5, 2.0, 0.3);
  // ρ and λ away from the defaults, so that a swapped weight or a wrong point shows
  auto opt = flatmin::sampa<Backend>(m.params, base, {.rho = 0.15, .lambda = 0.35});
  auto rb = to_ref(base);
  sampa_ref r{0.15, 1e-12, 0.35};
  quadratic ql = q, qr = q;
  ref::vec w = m.weights();
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-11;
  for (int s = 1; s <= steps; ++s) {
    CAPTURE(s);
    r.step(w, m.opts, rb, qr);
    const std::size_t before = ql.calls;
    const auto rep = closure ? opt.step(ql.objective(m)) : two_calls(opt, ql, m);
    CHECK_FALSE(rep.skipped);
    CHECK(ql.calls - before == 2);  // two gradients per step, every step
    FLATMIN_CHECK_CLOSE(m.weights(), w, tol);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("SAMPa: 1 and 20 steps against LIONS-EPFL/SAMPa's train.py re-derived in float64, two "
                   "objective calls per step",
                   Backend, FLATMIN_TEST_BACKENDS) {
  const flatmin::base::sgd sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 5e-4};
  const flatmin::base::adamw adamw{.lr = 0.01, .weight_decay = 0.01};
  sampa_case<Backend, double>(sgd, 1, true, 1901);
  sampa_case<Backend, float>(sgd, 1, false, 1902);
  sampa_case<Backend, double>(sgd, 20, false, 1903);
  sampa_case<Backend, float>(sgd, 20, true, 1904);
  sampa_case<Backend, double>(adamw, 20, true, 1905);
  sampa_case<Backend, float>(adamw, 20, false, 1906);
}

TEST_CASE_TEMPLATE("SAMPa: g_y goes through a checkpoint; skips at either point leave the weights and g_y",
                   Backend, FLATMIN_TEST_BACKENDS) {
  using T = double;
  const flatmin::base::sgd sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 5e-4};
  model<T> m(sampa_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, 1911));
  auto q = quadratic::random(m.numel, 1911);
  auto opt = flatmin::sampa<Backend>(m.params, sgd);
  for (int s = 0; s < 3; ++s) opt.step(q.objective(m));
  const auto w0 = m.raw_weights();
  std::stringstream ck;
  opt.save(ck);
  const quadratic q0 = q;
  // the checkpoint holds g_y: a resumed optimizer continues bit for bit
  for (int s = 0; s < 4; ++s) opt.step(q.objective(m));
  const auto want = m.raw_weights();
  model<T> m2(sampa_layout, test_space<Backend>);
  m2.set_raw_weights(w0);
  auto resumed = flatmin::sampa<Backend>(m2.params, sgd);
  resumed.load(ck);
  quadratic q2 = q0;
  for (int s = 0; s < 4; ++s) resumed.step(q2.objective(m2));
  CHECK(bitwise_equal(m2.raw_weights(), want));
  // a fresh optimizer has no g_y: the same four steps differ
  model<T> m3(sampa_layout, test_space<Backend>);
  m3.set_raw_weights(w0);
  auto fresh = flatmin::sampa<Backend>(m3.params, sgd);
  quadratic q3 = q0;
  for (int s = 0; s < 4; ++s) fresh.step(q3.objective(m3));
  CHECK_FALSE(bitwise_equal(m3.raw_weights(), want));

  // a NaN at x̃: second_point() skips and restores x; descend() returns the skip
  const auto w1 = m.raw_weights();
  opt.ascend();
  CHECK_FALSE(bitwise_equal(m.raw_weights(), w1));
  q.eval(m);
  m.gat(4) = std::numeric_limits<T>::quiet_NaN();
  const auto a = opt.second_point();
  CHECK(a.skipped);
  CHECK(a.reason == flatmin::skip_reason::nonfinite_perturbed_gradient);
  CHECK(bitwise_equal(m.raw_weights(), w1));
  CHECK(opt.descend().skipped);
  CHECK(opt.steps() == 7);
  // a NaN at y: descend() skips and restores x
  opt.ascend();
  q.eval(m);
  opt.second_point();
  q.eval(m);
  m.gat(0) = std::numeric_limits<T>::infinity();
  CHECK(opt.descend().skipped);
  CHECK(bitwise_equal(m.raw_weights(), w1));
  // cancel() at the second point restores x
  opt.ascend();
  q.eval(m);
  opt.second_point();
  opt.cancel();
  CHECK(bitwise_equal(m.raw_weights(), w1));
  // none of it touched g_y: the next step equals that of an optimizer that never saw them
  std::stringstream ck2;
  resumed.save(ck2);  // resumed is at the same step with the same state as opt before the skips
  model<T> m4(sampa_layout, test_space<Backend>);
  m4.set_raw_weights(w1);
  auto twin = flatmin::sampa<Backend>(m4.params, sgd);
  twin.load(ck2);
  quadratic q4 = q;
  opt.step(q.objective(m));
  twin.step(q4.objective(m4));
  CHECK(bitwise_equal(m.raw_weights(), m4.raw_weights()));
}

TEST_CASE("SAMPa: the protocol's misuse is refused; options are checked and reach the policy") {
  using T = double;
  model<T> m(sampa_layout);
  m.set_weights(random_vec(m.numel, 1921));
  auto q = quadratic::random(m.numel, 1921);
  const flatmin::base::sgd sgd{.lr = 0.05, .momentum = 0.9};
  auto opt = flatmin::sampa<flatmin::backend::eigen>(m.params, sgd, {.rho = 0.3, .xi = 1e-9, .lambda = 0.6});
  CHECK(opt.perturbation().rho == 0.3);
  CHECK(opt.perturbation().xi == 1e-9);
  CHECK(opt.perturbation().lambda == 0.6);
  CHECK_THROWS_AS(opt.second_point(), flatmin::usage_error);  // no ascend()
  opt.ascend();
  q.eval(m);
  CHECK_THROWS_WITH_AS(opt.descend(), doctest::Contains("second_point"), flatmin::usage_error);
  opt.second_point();
  CHECK_THROWS_WITH_AS(opt.second_point(), doctest::Contains("twice"), flatmin::usage_error);
  q.eval(m);
  CHECK_FALSE(opt.descend().skipped);
  CHECK(opt.extra_state_bytes() == 3 * m.numel * sizeof(T));  // saved w, g̃, g_y
  CHECK_THROWS_AS(flatmin::sampa<flatmin::backend::eigen>(m.params, sgd, {.rho = -1}), std::invalid_argument);
  CHECK_THROWS_AS(flatmin::sampa<flatmin::backend::eigen>(m.params, sgd, {.lambda = 1.5}), std::invalid_argument);
  CHECK_THROWS_AS(flatmin::sampa<flatmin::backend::eigen>(m.params, sgd, {.xi = -1e-3}), std::invalid_argument);
}
