// The SAM family beyond the seeds (issue 16): the descent rules with state (descent/state.hpp) —
// GSAM, WSAM (coupled and decoupled), LookSAM — and Friendly-SAM, Momentum-SAM, RWP and GCSAM, each against a float64 re-derivation written here,
// for 1 and 20 steps, on every backend, in both protocols; the gradient evaluations per step
// counted; their state through a checkpoint; their option structs and official presets.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <flatmin/algorithms/friendly_sam.hpp>
#include <flatmin/algorithms/gcsam.hpp>
#include <flatmin/algorithms/gsam.hpp>
#include <flatmin/algorithms/looksam.hpp>
#include <flatmin/algorithms/msam.hpp>
#include <flatmin/algorithms/rwp.hpp>
#include <flatmin/algorithms/wsam.hpp>

#include "support/backends.hpp"
#include "support/runner.hpp"

using namespace flatmin_test;

namespace {

const layout_spec family_layout = {{"fc.weight", {7, 5}},
                                   {"fc.bias", {7}, {.weight_decay = false, .adaptive = false}},
                                   {"frozen", {3}, {.perturb = false}}};

ref::vec axpy(const ref::vec& x, double a, const ref::vec& y) {  // x + a·y
  ref::vec r = x;
  for (std::size_t i = 0; i < r.size(); ++i) r[i] += a * y[i];
  return r;
}

/// The float64 GSAM step, re-deriving big_vision/trainers/proj/gsam/gsam.py (google-research/
/// big_vision at 0a83553): ρ_t at lines 72-75, ε = ρ_t g/(‖g‖ + eps) at lines 82-83 (over the
/// perturbed tensors, as perturb::l2), g_clean's residual orthogonal to g_robust and
/// g_gsam = g_robust − α·residual at lines 92-105 (minimize_fp = True).
struct gsam_ref {
  double rho, xi, alpha, rho_min = 0, lr_max = 0, lr_min = 0;
  double rho_t(double lr) const {
    return lr_max == lr_min ? rho : rho_min + (rho - rho_min) * (lr - lr_min) / (lr_max - lr_min);
  }
  template <class Base>
  double step(ref::vec& w, const ref::opts_vec& o, Base& base, quadratic& q) const {
    const ref::vec g = q.grad(w);
    const ref::vec eps = ref::sam_epsilon(g, o, rho_t(base.lr), xi);
    const ref::vec ga = q.grad(axpy(w, 1, eps));
    const double aa = ref::dot(ga, ga);
    const double k = aa > 0 ? ref::dot(g, ga) / aa : 0.0;
    ref::vec d(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) d[i] = ga[i] - alpha * (g[i] - k * ga[i]);
    base.step(w, d, o);
    return ref::norm(eps);
  }
};

/// The float64 WSAM step, re-deriving atorch/atorch/optimizers/wsam.py (intelligent-machine-
/// learning/dlrover at 05e4f76): α = γ/(1−γ) (line 42); coupled: the base step on α·g_adv +
/// (1−α)·g (lines 96-99); decoupled: the base step on g (lines 100-106), then
/// w −= lr·α·(g_adv − g) (lines 108-115). No gradient clipping (max_norm = None).
struct wsam_ref {
  double rho, xi, gamma;
  bool decouple;
  template <class Base>
  void step(ref::vec& w, const ref::opts_vec& o, Base& base, quadratic& q) const {
    const double alpha = gamma / (1 - gamma);
    const ref::vec g = q.grad(w);
    const ref::vec ga = q.grad(axpy(w, 1, ref::sam_epsilon(g, o, rho, xi)));
    ref::vec d(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) d[i] = decouple ? g[i] : alpha * ga[i] + (1 - alpha) * g[i];
    base.step(w, d, o);
    if (decouple)
      for (std::size_t i = 0; i < w.size(); ++i) w[i] -= base.lr * alpha * (ga[i] - g[i]);
  }
};

/// The float64 LookSAM (Liu et al., CVPR 2022, Algorithm 1, global form): every k-th step from
/// step 1 a SAM step keeping g_v = g_s − (⟨g, g_s⟩/‖g‖²) g; between them ONE gradient and the base
/// step on g + α (‖g‖/‖g_v‖) g_v.
struct looksam_ref {
  double rho, xi, alpha;
  std::size_t k;
  ref::vec gv{};
  std::size_t t = 0;
  template <class Base>
  bool step(ref::vec& w, const ref::opts_vec& o, Base& base, quadratic& q) {
    ++t;
    const ref::vec g = q.grad(w);
    if ((t - 1) % k == 0) {
      const ref::vec gs = q.grad(axpy(w, 1, ref::sam_epsilon(g, o, rho, xi)));
      const double gg = ref::dot(g, g);
      gv = axpy(gs, -(gg > 0 ? ref::dot(g, gs) / gg : 0.0), g);
      base.step(w, gs, o);
      return true;
    }
    const double nv = gv.empty() ? 0.0 : ref::norm(gv);
    base.step(w, nv > 0 ? axpy(g, alpha * ref::norm(g) / nv, gv) : g, o);
    return false;
  }
};

/// Runs `steps` steps of the library (closure protocol when `closure`, else ascend / descend
/// around the caller's gradients) against the reference, checking the weights after each step
/// and the objective calls per step (`calls_at(t)`). `gradient_first == false`: the composition
/// takes no gradient at w (Momentum-SAM), so the two-call protocol is ascend(), one gradient,
/// descend().
template <class T, class Opt, class Ref, class Calls>
void against(model<T>& m, Opt& opt, Ref step_ref, const quadratic& q, int steps, bool closure,
             const Calls& calls_at, double tol = rtol<T>, bool gradient_first = true) {
  quadratic ql = q, qr = q;
  ref::vec w = m.weights();
  for (int s = 1; s <= steps; ++s) {
    CAPTURE(s);
    step_ref(w, qr);
    const std::size_t before = ql.calls;
    flatmin::step_report r;
    if (closure) {
      r = opt.step(ql.objective(m));
    } else {
      if (gradient_first) ql.eval(m);
      const auto a = opt.ascend();
      if (a.perturbed || !gradient_first) ql.eval(m);
      r = opt.descend();
    }
    CHECK_FALSE(r.skipped);
    CHECK(ql.calls - before == calls_at(static_cast<std::size_t>(s)));
    FLATMIN_CHECK_CLOSE(m.weights(), w, tol);
  }
}

/// The float64 Friendly-SAM step, re-deriving nblt/F-SAM utils.py (at 0867879),
/// FriendlySAM.first_step: m set to the first g (that step perturbs along g), afterwards
/// d = g − σ·m, then m ← λ·m + (1−λ)·g with the RAW g; ε = ρ d/(‖d‖ + 1e-12); then SAM's descent.
struct friendly_ref {
  double rho, xi, sigma, lambda;
  ref::vec m{};
  template <class Base>
  void step(ref::vec& w, const ref::opts_vec& o, Base& base, quadratic& q) {
    const ref::vec g = q.grad(w);
    const ref::vec d = m.empty() ? g : axpy(g, -sigma, m);
    if (m.empty())
      m = g;
    else
      for (std::size_t i = 0; i < m.size(); ++i) m[i] = lambda * m[i] + (1 - lambda) * g[i];
    base.step(w, q.grad(axpy(w, 1, ref::sam_epsilon(d, o, rho, xi))), o);
  }
};

template <class Backend, class T>
void friendly_case(int steps, bool closure, std::uint64_t seed) {
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.01};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, seed));
  const auto q = quadratic::random(m.numel, seed, 0.5, 2.0, 0.3);
  auto opt = flatmin::friendly_sam<Backend>(m.params, base, {.rho = 0.1, .sigma = 0.8, .lambda = 0.6});
  ref::sgd rb = to_ref(base);
  friendly_ref r{0.1, 1e-12, 0.8, 0.6};
  against(
      m, opt, [&](ref::vec& w, quadratic& qr) { r.step(w, m.opts, rb, qr); }, q, steps, closure,
      [](std::size_t) { return 2u; }, std::is_same_v<T, float> ? 2e-5 : 1e-11);
  CHECK(opt.perturbation_state().has_momentum());
  const auto mom = opt.perturbation_state().momentum();
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-11;
  FLATMIN_CHECK_CLOSE(ref::vec(mom.begin(), mom.end()), r.m, tol);
}

/// The float64 Momentum-SAM step, re-deriving MarlonBecker/MSAM (at 780fa4f), optimizer/msam.py
/// `MSAM.step`: the weights rest at w − ρ·v·inv, inv = 1/(‖v‖ + 1e-12) of the previous step's v (0
/// before the first step), where the gradient is taken; they move back by +ρ·v·inv, torch's SGD
/// momentum step follows (buffer from zeros: v = μv + g), then the new rest point along the new v
/// (`param.sub_(buf, alpha=rho*inverse_norm_buffer)`). adamW_msam.py does the same along exp_avg.
/// Kept here in that resting form: `eps` is the rest point's offset from w. The official SGD adds
/// weight decay at the rest point (flatmin: at w), so the SGD case runs without weight decay.
struct msam_ref {
  double rho, xi;
  ref::vec eps{};
  template <class Base, class Moment>
  void step(ref::vec& w, const ref::opts_vec& o, Base& base, quadratic& q, Moment moment) {
    const ref::vec g = q.grad(eps.empty() ? w : axpy(w, 1, eps));  // the one gradient, at the rest point
    base.step(w, g, o);                                             // moved back, then the base step
    ref::vec minus_v = moment(base);
    for (double& x : minus_v) x = -x;
    eps = ref::sam_epsilon(minus_v, o, rho, xi);  // the next rest point, over the perturbed tensors
  }
};

/// `moment(ref_base)`: the reference base's momentum (ref::sgd::buf, ref::adam::m).
template <class Backend, class T, class Base, class Moment>
void msam_case(const Base& base, double rho, Moment moment, int steps, bool closure, std::uint64_t seed) {
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, seed));
  const auto q = quadratic::random(m.numel, seed, 0.5, 2.0, 0.3);
  auto opt = flatmin::msam<Backend>(m.params, base, {.rho = rho});
  auto rb = to_ref(base);
  msam_ref r{rho, 1e-12};
  against(
      m, opt, [&](ref::vec& w, quadratic& qr) { r.step(w, m.opts, rb, qr, moment); }, q, steps, closure,
      [](std::size_t) { return 1u; }, std::is_same_v<T, float> ? 2e-5 : 1e-11, false);
}

template <class Backend, class T>
void gsam_case(int steps, bool closure, std::uint64_t seed) {
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.01};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, seed));
  const auto q = quadratic::random(m.numel, seed);
  auto opt = flatmin::gsam<Backend>(m.params, base, {.rho = 0.1, .alpha = 0.6});
  ref::sgd rb = to_ref(base);
  const gsam_ref g{0.1, 1e-12, 0.6};
  against(
      m, opt, [&](ref::vec& w, quadratic& qr) { g.step(w, m.opts, rb, qr); }, q, steps, closure,
      [](std::size_t) { return 2u; });
}

template <class Backend, class T>
void wsam_case(int steps, bool closure, bool decouple, std::uint64_t seed) {
  const flatmin::base::adam base{.lr = 0.01, .weight_decay = 0.01};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, seed));
  const auto q = quadratic::random(m.numel, seed);
  auto opt = flatmin::wsam<Backend>(m.params, base, {.rho = 0.1, .gamma = 0.8, .decouple = decouple});
  ref::adam rb = to_ref(base);
  const wsam_ref r{0.1, 1e-12, 0.8, decouple};
  against(
      m, opt, [&](ref::vec& w, quadratic& qr) { r.step(w, m.opts, rb, qr); }, q, steps, closure,
      [](std::size_t) { return 2u; }, std::is_same_v<T, float> ? 2e-5 : 1e-11);
}

template <class Backend, class T>
void looksam_case(int steps, bool closure, std::uint64_t seed) {
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, seed));
  const auto q = quadratic::random(m.numel, seed);
  auto opt = flatmin::looksam<Backend>(m.params, base, {.rho = 0.1, .k = 3, .alpha = 0.5});
  ref::sgd rb = to_ref(base);
  looksam_ref r{0.1, 1e-12, 0.5, 3};
  // one gradient on the cheap steps: the objective is called once there, twice on steps 1, 4, 7, …
  against(
      m, opt, [&](ref::vec& w, quadratic& qr) { r.step(w, m.opts, rb, qr); }, q, steps, closure,
      [](std::size_t t) { return (t - 1) % 3 == 0 ? 2u : 1u; });
  if (steps > 1) {
    CHECK(opt.descent_state().has_gv());
    FLATMIN_CHECK_CLOSE1(opt.descent_state().gv_norm(), ref::norm(r.gv), 10 * rtol<T>);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("GSAM: 1 and 20 steps against the float64 re-derivation of big_vision's gsam.py", Backend,
                   FLATMIN_TEST_BACKENDS) {
  gsam_case<Backend, float>(1, true, 1601);
  gsam_case<Backend, double>(1, false, 1602);
  gsam_case<Backend, float>(20, false, 1603);
  gsam_case<Backend, double>(20, true, 1604);
}

TEST_CASE_TEMPLATE("GSAM: rho_t follows the base learning rate between lr_min and lr_max", Backend,
                   FLATMIN_TEST_BACKENDS) {
  using T = double;
  flatmin::base::sgd base{.lr = 0.1};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, 1605));
  auto q = quadratic::random(m.numel, 1605);
  auto opt = flatmin::gsam<Backend>(
      m.params, base, {.rho = 0.2, .alpha = 0.3, .rho_min = 0.05, .lr_max = 0.1, .lr_min = 0.01});
  const gsam_ref g{0.2, 1e-12, 0.3, 0.05, 0.1, 0.01};
  quadratic qr = q;
  ref::vec w = m.weights();
  ref::sgd rb = to_ref(base);
  for (int s = 1; s <= 10; ++s) {
    CAPTURE(s);
    const double lr = 0.1 - 0.009 * (s - 1);  // a linear decay from lr_max to lr_min
    opt.base().lr = lr;
    rb.lr = lr;
    const double eps_norm = g.step(w, m.opts, rb, qr);
    const auto r = opt.step(q.objective(m));
    // ‖ε‖ = ρ_t exactly where g ≠ 0: ρ_t = 0.05 + 0.15·(lr − 0.01)/0.09
    FLATMIN_CHECK_CLOSE1(r.perturbation_norm, 0.05 + 0.15 * (lr - 0.01) / 0.09, 1e-9);
    FLATMIN_CHECK_CLOSE1(r.perturbation_norm, eps_norm, 1e-12);
    FLATMIN_CHECK_CLOSE(m.weights(), w, rtol<T>);
  }
  // ρ < ρ_min and lr far above lr_max: ρ_t = 0.05 − 0.04·0.99/0.09 < 0, refused before w moves
  opt.perturbation().rho = 0.01;
  opt.base().lr = 1.0;
  const auto before = m.raw_weights();
  q.eval(m);
  CHECK_THROWS_AS(opt.ascend(), std::invalid_argument);
  CHECK(bitwise_equal(m.raw_weights(), before));
}

TEST_CASE_TEMPLATE("WSAM: coupled and decoupled, 1 and 20 steps against atorch's wsam.py re-derived", Backend,
                   FLATMIN_TEST_BACKENDS) {
  for (const bool decouple : {false, true}) {
    CAPTURE(decouple);
    wsam_case<Backend, float>(1, true, decouple, 1611);
    wsam_case<Backend, double>(1, false, decouple, 1612);
    wsam_case<Backend, float>(20, false, decouple, 1613);
    wsam_case<Backend, double>(20, true, decouple, 1614);
  }
}

TEST_CASE_TEMPLATE("LookSAM: 1 and 20 steps against float64, one objective call on the cheap steps", Backend,
                   FLATMIN_TEST_BACKENDS) {
  looksam_case<Backend, float>(1, true, 1621);
  looksam_case<Backend, double>(1, false, 1622);
  looksam_case<Backend, float>(20, false, 1623);
  looksam_case<Backend, double>(20, true, 1624);
}

TEST_CASE_TEMPLATE("LookSAM: g_v and its norm go through a checkpoint; the resumed run is bitwise the same",
                   Backend, FLATMIN_TEST_BACKENDS) {
  using T = float;
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9};
  const flatmin::looksam_options o{.rho = 0.1, .k = 3, .alpha = 0.5};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, 1631));
  auto q = quadratic::random(m.numel, 1631);
  auto opt = flatmin::looksam<Backend>(m.params, base, o);
  for (int s = 0; s < 5; ++s) opt.step(q.objective(m));  // full steps 1 and 4: g_v from step 4
  std::stringstream ck;
  opt.save(ck);
  const auto w5 = m.raw_weights();
  const double n5 = opt.descent_state().gv_norm();
  const auto gv5 = opt.descent_state().gv();
  const quadratic q5 = q;
  for (int s = 0; s < 4; ++s) opt.step(q.objective(m));  // 6 cheap (reuses g_v), 7 full, 8, 9 cheap
  const auto want = m.raw_weights();

  model<T> m2(family_layout, test_space<Backend>);
  m2.set_raw_weights(w5);
  auto q2 = q5;
  auto resumed = flatmin::looksam<Backend>(m2.params, base, o);
  CHECK_FALSE(resumed.descent_state().has_gv());
  resumed.load(ck);
  CHECK(resumed.descent_state().has_gv());
  CHECK(resumed.descent_state().gv_norm() == n5);
  CHECK(bitwise_equal(resumed.descent_state().gv(), gv5));
  for (int s = 0; s < 4; ++s) resumed.step(q2.objective(m2));
  CHECK(bitwise_equal(m2.raw_weights(), want));
}

TEST_CASE_TEMPLATE("Friendly-SAM: 1 and 20 steps against nblt/F-SAM's FriendlySAM re-derived in float64",
                   Backend, FLATMIN_TEST_BACKENDS) {
  friendly_case<Backend, float>(1, true, 1641);
  friendly_case<Backend, double>(1, false, 1642);
  friendly_case<Backend, float>(20, false, 1643);
  friendly_case<Backend, double>(20, true, 1644);
}

TEST_CASE_TEMPLATE("Friendly-SAM: the EMA goes through a checkpoint; a skipped or cancelled step leaves it",
                   Backend, FLATMIN_TEST_BACKENDS) {
  using T = double;
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9};
  const flatmin::friendly_sam_options o{.rho = 0.1, .lambda = 0.6};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, 1651));
  auto q = quadratic::random(m.numel, 1651, 0.5, 2.0, 0.3);
  auto opt = flatmin::friendly_sam<Backend>(m.params, base, o);
  for (int s = 0; s < 3; ++s) opt.step(q.objective(m));
  const auto m3 = opt.perturbation_state().momentum();
  // a cancelled ascent and a step skipped for a non-finite g_adv leave m as it was
  q.eval(m);
  opt.ascend();
  opt.cancel();
  CHECK(bitwise_equal(opt.perturbation_state().momentum(), m3));
  opt.ascend();
  m.g[0][0] = std::numeric_limits<T>::quiet_NaN();
  CHECK(opt.descend().skipped);
  CHECK(bitwise_equal(opt.perturbation_state().momentum(), m3));

  std::stringstream ck;
  opt.save(ck);
  const auto w3 = m.raw_weights();
  const quadratic q3 = q;
  for (int s = 0; s < 3; ++s) opt.step(q.objective(m));
  const auto want = m.raw_weights();

  model<T> m2(family_layout, test_space<Backend>);
  m2.set_raw_weights(w3);
  auto q2 = q3;
  auto resumed = flatmin::friendly_sam<Backend>(m2.params, base, o);
  resumed.load(ck);
  CHECK(resumed.perturbation_state().has_momentum());
  CHECK(bitwise_equal(resumed.perturbation_state().momentum(), m3));
  for (int s = 0; s < 3; ++s) resumed.step(q2.objective(m2));
  CHECK(bitwise_equal(m2.raw_weights(), want));
}

TEST_CASE_TEMPLATE("Friendly-SAM under a schedule: a step left unperturbed leaves the EMA", Backend,
                   FLATMIN_TEST_BACKENDS) {
  using T = double;
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, 1661));
  auto q = quadratic::random(m.numel, 1661, 0.5, 2.0, 0.3);
  const flatmin::friendly_sam_options o{.rho = 0.1, .lambda = 0.6};
  flatmin::friendly_sam_t<T, flatmin::base::sgd, Backend, flatmin::schedule::every_k> opt(
      m.params, o.compose(flatmin::base::sgd{.lr = 0.05}, flatmin::schedule::every_k{.k = 2}));
  std::vector<std::vector<T>> ms;
  for (int s = 1; s <= 4; ++s) {
    CHECK(opt.step(q.objective(m)).perturbed == (s % 2 == 1));
    ms.push_back(opt.perturbation_state().momentum());
  }
  CHECK(bitwise_equal(ms[1], ms[0]));  // step 2 is a base step: m_2 = m_1
  CHECK_FALSE(bitwise_equal(ms[2], ms[1]));
  CHECK(bitwise_equal(ms[3], ms[2]));
}

TEST_CASE_TEMPLATE("WSAM and GSAM under schedules: one objective call on the steps left unperturbed", Backend,
                   FLATMIN_TEST_BACKENDS) {
  using T = double;
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, 1671));
  const auto q = quadratic::random(m.numel, 1671);
  {  // WSAM every 3 steps from step 1; float64: its rule on steps 1, 4, 7, the base step on g between
    auto opt = flatmin::wsam<Backend>(m.params, base, flatmin::schedule::every_k{.k = 3}, {.rho = 0.1});
    ref::sgd rb = to_ref(base);
    const wsam_ref r{0.1, 1e-12, 0.9, true};
    std::size_t t = 0;
    against(
        m, opt,
        [&](ref::vec& w, quadratic& qr) {
          if (t++ % 3 == 0)
            r.step(w, m.opts, rb, qr);
          else
            rb.step(w, qr.grad(w), m.opts);
        },
        q, 8, true, [](std::size_t s) { return (s - 1) % 3 == 0 ? 2u : 1u; });
  }
  {  // GSAM from step 4 on (late phase)
    m.set_weights(random_vec(m.numel, 1672));
    auto opt = flatmin::gsam<Backend>(m.params, base, flatmin::schedule::from_step{.step = 4}, {.rho = 0.1});
    ref::sgd rb = to_ref(base);
    const gsam_ref g{0.1, 1e-12, 0.4};
    std::size_t t = 0;
    against(
        m, opt,
        [&](ref::vec& w, quadratic& qr) {
          if (++t >= 4)
            g.step(w, m.opts, rb, qr);
          else
            rb.step(w, qr.grad(w), m.opts);
        },
        q, 6, false, [](std::size_t s) { return s >= 4 ? 2u : 1u; });
  }
}

TEST_CASE_TEMPLATE("Momentum-SAM: 1 and 20 steps against MarlonBecker/MSAM's msam.py / adamW_msam.py in float64, "
                   "one objective call per step", Backend, FLATMIN_TEST_BACKENDS) {
  // SGD without weight decay: the official code adds it at the rest point, flatmin at w
  const flatmin::base::sgd sgd{.lr = 0.05, .momentum = 0.9};
  const auto buf = [](const ref::sgd& b) { return b.buf; };
  msam_case<Backend, float>(sgd, 0.3, buf, 1, true, 1711);
  msam_case<Backend, double>(sgd, 0.3, buf, 1, false, 1712);
  msam_case<Backend, float>(sgd, 0.3, buf, 20, false, 1713);
  msam_case<Backend, double>(sgd, 0.3, buf, 20, true, 1714);
  // AdamW (decay before the update, as torch.optim.AdamW) along exp_avg, adamW_msam.py's ρ = 1
  const flatmin::base::adamw adamw{.lr = 0.01, .weight_decay = 0.01};
  const auto exp_avg = [](const ref::adam& b) { return b.m; };
  msam_case<Backend, double>(adamw, 1.0, exp_avg, 1, true, 1715);
  msam_case<Backend, float>(adamw, 1.0, exp_avg, 20, true, 1716);
  msam_case<Backend, double>(adamw, 1.0, exp_avg, 20, false, 1717);
}

TEST_CASE_TEMPLATE("Momentum-SAM: ascend() reads no gradient; a non-finite g_adv skips and leaves w and v; "
                   "checkpoints resume bit for bit", Backend, FLATMIN_TEST_BACKENDS) {
  using T = double;
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, 1721));
  auto q = quadratic::random(m.numel, 1721);
  auto opt = flatmin::msam<Backend>(m.params, base);
  for (int s = 0; s < 3; ++s) opt.step(q.objective(m));
  // the views hold NaN (no gradient yet): ascend() must not read them
  for (std::size_t i = 0; i < m.numel; ++i) m.gat(i) = std::numeric_limits<T>::quiet_NaN();
  const auto w0 = m.raw_weights();
  const auto a = opt.ascend();
  CHECK_FALSE(a.skipped);
  CHECK(a.perturbed);
  CHECK(a.perturbation_norm > 0.29);  // ρ = 0.3 along v (the frozen tensor is not perturbed)
  CHECK(a.perturbation_norm < 0.3 + 1e-12);
  CHECK_FALSE(bitwise_equal(m.raw_weights(), w0));
  // a non-finite g_adv: skipped, w restored, the momentum (hence the next ε) unchanged
  q.eval(m);
  m.gat(3) = std::numeric_limits<T>::infinity();
  const auto r = opt.descend();
  CHECK(r.skipped);
  CHECK(bitwise_equal(m.raw_weights(), w0));
  CHECK(opt.steps() == 3);

  std::stringstream ck;
  opt.save(ck);
  const auto w3 = m.raw_weights();
  auto q2 = q;  // the same gradient noise from here on
  for (int s = 0; s < 4; ++s) opt.step(q.objective(m));
  const auto want = m.raw_weights();

  model<T> m2(family_layout, test_space<Backend>);
  m2.set_raw_weights(w3);
  auto resumed = flatmin::msam<Backend>(m2.params, base);
  resumed.load(ck);
  for (int s = 0; s < 4; ++s) resumed.step(q2.objective(m2));
  CHECK(bitwise_equal(m2.raw_weights(), want));
}

/// The float64 m-RWP step, re-deriving nblt/mARWP (at f12df73) train_mrwp_parallel.py `train`: a
/// parameter of two or more dimensions gets noise N(0, (σ‖W_row‖)²) per row of its first dimension
/// (`mp.view(sh[0], -1).norm(dim=1)`), a one-dimensional one N(0, (σ(‖W‖ + 1e-16))²); the two
/// gradients mix as the 2λ- and 2(1 − λ)-weighted losses averaged over the ranks, (1 − λ) g + λ g_ε;
/// then torch SGD. The draws z_i are the library's generator (kernels::standard_normal of
/// counter_hash(seed, noise_stream(t), i); checked against N(0, 1) in test_gaussian.cpp), laid
/// out here by hand for family_layout: fc.weight 7 rows of 5, fc.bias one row of 7, frozen none.
struct rwp_ref {
  double sigma, lambda;
  std::uint64_t seed;
  std::size_t t = 0;
  double expected_norm = 0;  ///< σ·√(Σ_r len_r ‖W_r‖²), what the report gives
  template <class Base>
  void step(ref::vec& w, const ref::opts_vec& o, Base& base, quadratic& q) {
    ++t;
    const ref::vec g = q.grad(w);
    ref::vec eps(w.size(), 0.0);
    const auto noise = [&](std::size_t first, std::size_t len, double tiny) {
      double s = 0;
      for (std::size_t j = 0; j < len; ++j) s += w[first + j] * w[first + j];
      const double sd = sigma * (std::sqrt(s) + tiny);
      expected_norm += static_cast<double>(len) * (std::sqrt(s) + tiny) * (std::sqrt(s) + tiny);
      for (std::size_t j = 0; j < len; ++j)
        eps[first + j] = sd * flatmin::kernels::standard_normal(flatmin::kernels::counter_hash(
                                  seed, flatmin::kernels::noise_stream(t), first + j));
    };
    expected_norm = 0;
    for (std::size_t r = 0; r < 7; ++r) noise(5 * r, 5, 0.0);  // fc.weight {7, 5}
    noise(35, 7, 1e-16);                                       // fc.bias {7}
    expected_norm = sigma * std::sqrt(expected_norm);
    const ref::vec ge = q.grad(axpy(w, 1, eps));
    ref::vec d(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) d[i] = (1 - lambda) * g[i] + lambda * ge[i];
    base.step(w, d, o);
  }
};

template <class Backend, class T>
void rwp_case(int steps, bool closure, std::uint64_t seed) {
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, seed));
  const auto q = quadratic::random(m.numel, seed, 0.5, 2.0, 0.3);
  // σ well above the official 0.01, so that a misplaced row or σ shows beyond the tolerance
  auto opt = flatmin::rwp<Backend>(m.params, base, {.sigma = 0.2, .lambda = 0.3, .seed = seed});
  ref::sgd rb = to_ref(base);
  rwp_ref r{0.2, 0.3, seed};
  against(
      m, opt, [&](ref::vec& w, quadratic& qr) { r.step(w, m.opts, rb, qr); }, q, steps, closure,
      [](std::size_t) { return 2u; }, std::is_same_v<T, float> ? 2e-5 : 1e-11);
  // the report's ‖ε‖ is the expected norm at the last ascent
  CHECK(opt.last_report().perturbation_norm == doctest::Approx(r.expected_norm).epsilon(1e-6));
}

TEST_CASE_TEMPLATE("RWP: 1 and 20 steps against nblt/mARWP's train_mrwp_parallel.py re-derived in float64, "
                   "two objective calls per step", Backend, FLATMIN_TEST_BACKENDS) {
  rwp_case<Backend, double>(1, true, 1731);
  rwp_case<Backend, float>(1, false, 1732);
  rwp_case<Backend, double>(20, false, 1733);
  rwp_case<Backend, float>(20, true, 1734);
}

TEST_CASE_TEMPLATE("RWP: the noise is regenerated from (seed, step): a resumed run is bitwise the same; "
                   "a non-finite g at w skips before w moves", Backend, FLATMIN_TEST_BACKENDS) {
  using T = double;
  const flatmin::base::adamw base{.lr = 0.01, .weight_decay = 0.01};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, 1741));
  auto q = quadratic::random(m.numel, 1741);
  auto opt = flatmin::rwp<Backend>(m.params, base, {.sigma = 0.05, .seed = 11});
  for (int s = 0; s < 3; ++s) opt.step(q.objective(m));
  // g at w non-finite: ascend() skips and leaves w (the descent would have mixed it in)
  q.eval(m);
  m.gat(2) = std::numeric_limits<T>::quiet_NaN();
  const auto w0 = m.raw_weights();
  const auto a = opt.ascend();
  CHECK(a.skipped);
  CHECK(bitwise_equal(m.raw_weights(), w0));
  opt.cancel();
  std::stringstream ck;
  opt.save(ck);
  auto q2 = q;
  for (int s = 0; s < 4; ++s) opt.step(q.objective(m));
  const auto want = m.raw_weights();
  model<T> m2(family_layout, test_space<Backend>);
  m2.set_raw_weights(w0);
  auto resumed = flatmin::rwp<Backend>(m2.params, base, {.sigma = 0.05, .seed = 11});
  const std::string blob = ck.str();
  std::istringstream in(blob);
  resumed.load(in);
  for (int s = 0; s < 4; ++s) resumed.step(q2.objective(m2));
  CHECK(bitwise_equal(m2.raw_weights(), want));
  // another seed draws another noise
  model<T> m3(family_layout, test_space<Backend>);
  m3.set_raw_weights(w0);
  auto other = flatmin::rwp<Backend>(m3.params, base, {.sigma = 0.05, .seed = 12});
  std::istringstream in2(blob);
  other.load(in2);
  auto q3 = q2;
  for (int s = 0; s < 4; ++s) other.step(q3.objective(m3));
  CHECK_FALSE(bitwise_equal(m3.raw_weights(), want));
}

TEST_CASE("RWP: options are checked and reach their policies") {
  model<double> m(family_layout, test_space<flatmin::backend::eigen>);
  const flatmin::base::sgd base{.lr = 0.1};
  auto opt = flatmin::rwp<flatmin::backend::eigen>(m.params, base, {.sigma = 0.03, .lambda = 0.25, .seed = 5});
  CHECK(opt.perturbation().sigma == 0.03);
  CHECK(opt.perturbation().seed == 5);
  CHECK(opt.descent().lambda == 0.25);
  CHECK_THROWS_AS(flatmin::rwp<flatmin::backend::eigen>(m.params, base, {.sigma = -0.1}), std::invalid_argument);
  CHECK_THROWS_AS(flatmin::rwp<flatmin::backend::eigen>(m.params, base, {.lambda = 1.5}), std::invalid_argument);
  opt.descent().lambda = std::numeric_limits<double>::quiet_NaN();  // between steps: refused before w moves
  const auto w0 = m.raw_weights();
  CHECK_THROWS_AS(opt.step([] { return 0.0; }), std::invalid_argument);
  CHECK(bitwise_equal(m.raw_weights(), w0));
}

/// Gradient centralisation over family_layout's rows by hand: fc.weight {7, 5} row by row (the
/// mean over every dimension but the first: kozistr/pytorch_optimizer gradient_centralization.py,
/// `grad.mean(dim=tuple(range(1, size)))`), fc.bias {7} and frozen {3} (one dimension) untouched.
ref::vec centralise(ref::vec g) {
  for (std::size_t r = 0; r < 7; ++r) {
    double m = 0;
    for (std::size_t j = 0; j < 5; ++j) m += g[5 * r + j];
    m /= 5;
    for (std::size_t j = 0; j < 5; ++j) g[5 * r + j] -= m;
  }
  return g;
}

/// The float64 GCSAM step (the paper's ε = ρ GC(g)/‖GC(g)‖, the norm over the perturbed tensors as
/// perturb::l2; `adaptive`: ASAM's ε from GC(g), perturb::centralized<perturb::adaptive>), then
/// SAM's descent on g_adv.
struct gcsam_ref {
  double rho, xi, eta = 0;
  bool adaptive = false;
  double last_norm = 0;
  template <class Base>
  void step(ref::vec& w, const ref::opts_vec& o, Base& base, quadratic& q) {
    const ref::vec gc = centralise(q.grad(w));
    const ref::vec eps = adaptive ? ref::asam_epsilon(w, gc, o, rho, eta, xi) : ref::sam_epsilon(gc, o, rho, xi);
    last_norm = ref::norm(eps);
    base.step(w, q.grad(axpy(w, 1, eps)), o);
  }
};

template <class Backend, class T>
void gcsam_case(int steps, bool closure, std::uint64_t seed) {
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, seed));
  const auto q = quadratic::random(m.numel, seed, 0.5, 2.0, 0.3);
  auto opt = flatmin::gcsam<Backend>(m.params, base, {.rho = 0.1});
  ref::sgd rb = to_ref(base);
  gcsam_ref r{0.1, 1e-12};
  against(
      m, opt, [&](ref::vec& w, quadratic& qr) { r.step(w, m.opts, rb, qr); }, q, steps, closure,
      [](std::size_t) { return 2u; }, std::is_same_v<T, float> ? 2e-5 : 1e-11);
  CHECK(opt.last_report().perturbation_norm == doctest::Approx(r.last_norm).epsilon(1e-5));
}

TEST_CASE_TEMPLATE("GCSAM: 1 and 20 steps against the float64 re-derivation (rows of the first dimension "
                   "centralised, biases not), two objective calls per step", Backend, FLATMIN_TEST_BACKENDS) {
  gcsam_case<Backend, double>(1, true, 1751);
  gcsam_case<Backend, float>(1, false, 1752);
  gcsam_case<Backend, double>(20, false, 1753);
  gcsam_case<Backend, float>(20, true, 1754);
}

TEST_CASE_TEMPLATE("GCSAM: centralized<adaptive> (an ASAM ε from GC(g)) against float64; the checkpoint "
                   "identity names the inner perturbation", Backend, FLATMIN_TEST_BACKENDS) {
  using T = double;
  using namespace flatmin;
  const base::sgd base{.lr = 0.05, .momentum = 0.9};
  model<T> m(family_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, 1761));
  const auto q = quadratic::random(m.numel, 1761, 0.5, 2.0, 0.3);
  using opt_t = sharpness_aware<T, Backend, perturb::centralized<perturb::adaptive>, mask::dense, base::sgd>;
  opt_t opt(m.params, {.base = base, .perturb = {{.rho = 0.3, .eta = 0.01}}});
  ref::sgd rb = to_ref(base);
  gcsam_ref r{0.3, 1e-12, 0.01, true};
  against(
      m, opt, [&](ref::vec& w, quadratic& qr) { r.step(w, m.opts, rb, qr); }, q, 6, true,
      [](std::size_t) { return 2u; }, 1e-11);
  std::stringstream ck;
  opt.save(ck);
  const std::string blob = ck.str();
  CHECK(blob.find("centralized<adaptive>") != std::string::npos);
  // a plain ASAM optimizer refuses it (another composition), and leaves its weights
  auto asam = flatmin::asam<Backend>(m.params, base, {.rho = 0.3, .eta = 0.01});
  const auto w0 = m.raw_weights();
  std::istringstream in(blob);
  CHECK_THROWS(asam.load(in));
  CHECK(bitwise_equal(m.raw_weights(), w0));
}

TEST_CASE("Momentum-SAM: the base must keep a momentum") {
  model<double> m(family_layout, test_space<flatmin::backend::eigen>);
  try {
    flatmin::msam<flatmin::backend::eigen>(m.params, flatmin::base::sgd{.lr = 0.1});
    FAIL("base::sgd without momentum was accepted");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("momentum") != std::string::npos);
  }
  auto opt = flatmin::msam<flatmin::backend::eigen>(m.params, flatmin::base::sgd{.lr = 0.1, .momentum = 0.9});
  opt.base().momentum = 0;  // turned off between steps: refused before anything moves
  CHECK_THROWS_AS(opt.step([] { return 0.0; }), std::invalid_argument);
  CHECK(opt.steps() == 0);
}

TEST_CASE("GSAM, WSAM, LookSAM, Friendly-SAM: every option reaches its policy; the official presets") {
  std::vector<double> w(6, 0.5), g(6, 0.0);
  flatmin::param_set<double> ps;
  ps.add("w", w, g);
  const flatmin::base::sgd sgd{.lr = 0.25};
  {
    auto o = flatmin::gsam(ps, sgd,
                           {.rho = 0.3,
                            .xi = 1e-9,
                            .alpha = 0.7,
                            .rho_min = 0.02,
                            .lr_max = 0.5,
                            .lr_min = 0.1,
                            .on_nonfinite = flatmin::nonfinite::raise});
    CHECK(o.perturbation().rho == 0.3);
    CHECK(o.perturbation().xi == 1e-9);
    CHECK(o.descent().alpha == 0.7);
    CHECK(o.descent().rho_min == 0.02);
    CHECK(o.descent().lr_max == 0.5);
    CHECK(o.descent().lr_min == 0.1);
    CHECK(o.options().on_nonfinite == flatmin::nonfinite::raise);
    // big_vision configs/proj/gsam/vit_i1k_gsam_no_aug.py: rho_max 0.6, rho_min 0.1, alpha 0.6,
    // lr_max = config.lr, lr_min = linear_end (0.01) · config.lr
    auto off = flatmin::gsam(ps, sgd, flatmin::official);
    CHECK(off.perturbation().rho == 0.6);
    CHECK(off.descent().rho_min == 0.1);
    CHECK(off.descent().alpha == 0.6);
    CHECK(off.descent().lr_max == 0.25);
    CHECK(off.descent().lr_min == doctest::Approx(0.0025).epsilon(1e-15));
  }
  {
    auto o = flatmin::wsam(ps, sgd, {.rho = 0.3, .xi = 1e-9, .gamma = 0.75, .decouple = false});
    CHECK(o.perturbation().rho == 0.3);
    CHECK(o.perturbation().xi == 1e-9);
    CHECK(o.descent().gamma == 0.75);
    CHECK(o.descent().alpha() == 3.0);
    CHECK_FALSE(o.descent().decouple);
    auto off = flatmin::wsam(ps, sgd, flatmin::official);  // wsam.py lines 28-33
    CHECK(off.descent().gamma == 0.88);
    CHECK(off.descent().decouple);
    CHECK(off.perturbation().rho == 0.05);
    CHECK_THROWS_AS(flatmin::wsam(ps, sgd, {.gamma = 1.0}), std::invalid_argument);
  }
  {
    auto o = flatmin::friendly_sam(ps, sgd, {.rho = 0.3, .xi = 1e-9, .sigma = 0.5, .lambda = 0.25});
    CHECK(o.perturbation().rho == 0.3);
    CHECK(o.perturbation().xi == 1e-9);
    CHECK(o.perturbation().sigma == 0.5);
    CHECK(o.perturbation().lambda == 0.25);
    auto off = flatmin::friendly_sam(ps, sgd, flatmin::official);  // FriendlySAM.__init__ defaults
    CHECK(off.perturbation().rho == 0.05);
    CHECK(off.perturbation().sigma == 1.0);
    CHECK(off.perturbation().lambda == 0.9);
    CHECK_THROWS_AS(flatmin::friendly_sam(ps, sgd, {.lambda = 1.5}), std::invalid_argument);
  }
  {
    auto o = flatmin::looksam(ps, sgd, {.rho = 0.3, .xi = 1e-9, .k = 7, .alpha = 0.2});
    CHECK(o.perturbation().rho == 0.3);
    CHECK(o.perturbation().xi == 1e-9);
    CHECK(o.schedule().k == 7);
    CHECK(o.schedule().first == 1);
    CHECK(o.descent().alpha == 0.2);
    CHECK_THROWS_AS(flatmin::looksam(ps, sgd, {.alpha = -1}), std::invalid_argument);
  }
}

TEST_CASE("WSAM: the decoupled form refuses master weights (it writes w after the base step)") {
  std::vector<flatmin::bfloat16> w(6, flatmin::bfloat16(1.0f)), g(6, flatmin::bfloat16(0.25f));
  flatmin::param_set<flatmin::bfloat16> ps;
  ps.add("w", w, g);
  auto decoupled = flatmin::wsam<flatmin::backend::eigen>(ps, flatmin::base::sgd{.lr = 0.1}, {.decouple = true});
  decoupled.options().master_weights = true;
  const auto before = w;
  CHECK_THROWS_AS(decoupled.step([] { return 0.0; }), std::invalid_argument);
  CHECK(std::memcmp(w.data(), before.data(), sizeof(flatmin::bfloat16) * w.size()) == 0);
  decoupled.options().master_weights = false;  // in place: the base step and the term both round to bf16
  CHECK_FALSE(decoupled.step([] { return 0.0; }).skipped);
  auto coupled = flatmin::wsam<flatmin::backend::eigen>(ps, flatmin::base::sgd{.lr = 0.1}, {.decouple = false});
  coupled.options().master_weights = true;
  CHECK_FALSE(coupled.step([] { return 0.0; }).skipped);
}
