// Schedules (schedule::always, every_k, from_step): which steps perturb, against a float64
// reference trajectory (SAM steps on the scheduled steps, the plain base step on the others) over
// 20 steps with the objective calls counted (1 on unperturbed steps, 2 on perturbed ones); the
// two-call protocol on an unperturbed step (ascend() reports it did nothing, descend() is the base
// step on g, cancel()); the bit-exact restore on perturbed steps; skipped steps and checkpoints
// (the schedule reads only the applied step count); option validation.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "support/backends.hpp"
#include "support/runner.hpp"

using namespace flatmin_test;

namespace {

const layout_spec sched_layout = {{"fc.weight", {6, 5}},
                                  {"fc.bias", {6}, {.weight_decay = false, .adaptive = false}},
                                  {"frozen", {4}, {.perturb = false}}};

/// The perturbed steps among 1..n, written out by hand from each schedule's definition.
std::vector<bool> expected_steps(const std::vector<int>& perturbed, int n) {
  std::vector<bool> p(static_cast<std::size_t>(n) + 1, false);
  for (int t : perturbed) p[static_cast<std::size_t>(t)] = true;
  return p;
}

/// `steps` closure-protocol steps of `opt` against the float64 reference: on the steps `want`
/// marks, g, ε = ρg/(‖g‖ + ξ), g_adv at w + ε and the base step on g_adv; on the others the base
/// step on g. Counts the objective's calls per step.
template <class T, class Opt>
void run_schedule(model<T>& m, Opt& opt, ref::sgd rb, const ref::perturbation& p, const quadratic& q,
                  const std::vector<bool>& want, int steps) {
  quadratic ql = q, qr = q;
  ref::vec w = m.weights();
  auto grad = [&](const ref::vec& x) { return qr.grad(x); };
  int calls = 0;
  auto obj = [&] {
    ++calls;
    return ql.eval(m);
  };
  for (int s = 1; s <= steps; ++s) {
    CAPTURE(s);
    const bool sam_step = want[static_cast<std::size_t>(s)];
    if (sam_step)
      ref::sharpness_aware_step(w, m.opts, p, rb, grad);
    else
      ref::base_step(w, m.opts, rb, grad);
    calls = 0;
    const auto r = opt.step(obj);
    CHECK_FALSE(r.skipped);
    CHECK(r.perturbed == sam_step);
    CHECK(calls == (sam_step ? 2 : 1));
    CHECK(r.step == static_cast<std::size_t>(s));
    FLATMIN_CHECK_CLOSE(m.weights(), w, rtol<T>);
  }
  CHECK(ql.calls == qr.calls);
}

template <class Backend, class T, class Schedule>
void schedule_against_reference(const Schedule& schedule, const std::vector<int>& perturbed, std::uint64_t seed) {
  constexpr int steps = 20;
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.01};
  model<T> m(sched_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, seed));
  const auto q = quadratic::random(m.numel, seed);
  auto opt = flatmin::sam<Backend>(m.params, base, schedule, {.rho = 0.1});
  run_schedule(m, opt, to_ref(base), ref::sam_perturbation(0.1, 1e-12), q, expected_steps(perturbed, steps), steps);
}

}  // namespace

TEST_CASE("schedules: the perturbed steps, worked by hand") {
  const flatmin::schedule::always always;
  const flatmin::schedule::every_k every3{.k = 3};
  const flatmin::schedule::every_k composer4{.k = 4, .first = 4};  // composer's interval = 4
  const flatmin::schedule::from_step late{.step = 5};
  std::vector<std::size_t> a, e, c, l;
  for (std::size_t t = 1; t <= 12; ++t) {
    if (always.perturbs_at(t)) a.push_back(t);
    if (every3.perturbs_at(t)) e.push_back(t);
    if (composer4.perturbs_at(t)) c.push_back(t);
    if (late.perturbs_at(t)) l.push_back(t);
  }
  CHECK(a == std::vector<std::size_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  CHECK(e == std::vector<std::size_t>{1, 4, 7, 10});
  // mosaicml/composer, composer/algorithms/sam/sam.py at 0044af6, line 70: SAM when
  // (global_step + 1) % interval == 0, global_step counting from 0: steps 4, 8, 12 for interval 4.
  std::vector<std::size_t> composer;
  for (std::size_t global_step = 0; global_step < 12; ++global_step)
    if ((global_step + 1) % 4 == 0) composer.push_back(global_step + 1);
  CHECK(c == composer);
  CHECK(l == std::vector<std::size_t>{5, 6, 7, 8, 9, 10, 11, 12});
}

TEST_CASE_TEMPLATE("schedule::every_k matches the float64 reference over 20 steps", Backend, FLATMIN_TEST_BACKENDS) {
  schedule_against_reference<Backend, float>(flatmin::schedule::every_k{.k = 3}, {1, 4, 7, 10, 13, 16, 19}, 31);
  schedule_against_reference<Backend, double>(flatmin::schedule::every_k{.k = 3}, {1, 4, 7, 10, 13, 16, 19}, 32);
  schedule_against_reference<Backend, double>(flatmin::schedule::every_k{.k = 5, .first = 5}, {5, 10, 15, 20}, 33);
}

TEST_CASE_TEMPLATE("schedule::from_step matches the float64 reference over 20 steps", Backend, FLATMIN_TEST_BACKENDS) {
  const std::vector<int> late = {12, 13, 14, 15, 16, 17, 18, 19, 20};
  schedule_against_reference<Backend, float>(flatmin::schedule::from_step{.step = 12}, late, 41);
  schedule_against_reference<Backend, double>(flatmin::schedule::from_step{.step = 12}, late, 42);
}

TEST_CASE_TEMPLATE("schedule: ascend()/descend() on an unperturbed step; restore on perturbed steps", Backend,
                   FLATMIN_TEST_BACKENDS) {
  using T = float;
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.01};
  model<T> m(sched_layout, test_space<Backend>), b(sched_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, 51));
  b.set_raw_weights(m.raw_weights());
  auto q = quadratic::random(m.numel, 51);
  auto opt = flatmin::sam<Backend>(m.params, base, flatmin::schedule::every_k{.k = 2}, {.rho = 0.1});
  // The base optimizer alone, given the gradient the library's descend() should use.
  flatmin::sharpness_aware<T, Backend, flatmin::perturb::none, flatmin::mask::dense, flatmin::base::sgd>
      alone(b.params, {.base = base});
  for (int s = 1; s <= 6; ++s) {
    CAPTURE(s);
    const bool perturbs = s % 2 == 1;
    q.eval(m);
    const auto before = m.raw_weights();
    const auto g = m.raw_grads();

    const auto r0 = opt.ascend();
    CHECK(r0.perturbed == perturbs);
    CHECK_FALSE(r0.skipped);
    CHECK(opt.ascended());
    const auto moved = m.raw_weights();
    CHECK(bitwise_equal(moved, before) == !perturbs);  // nothing moves on an unperturbed step
    opt.cancel();
    CHECK_FALSE(opt.ascended());
    CHECK(bitwise_equal(m.raw_weights(), before));
    CHECK(bitwise_equal(m.raw_grads(), g));
    CHECK(opt.steps() == static_cast<std::size_t>(s - 1));

    const auto r1 = opt.ascend();
    CHECK(r1.perturbed == perturbs);
    CHECK(bitwise_equal(m.raw_weights(), moved));
    if (!perturbs) {
      CHECK(r1.perturbation_norm == 0.0);
      CHECK(r1.mask_density == 0.0);
    }
    if (perturbs) q.eval(m);  // g_adv at w + ε; on an unperturbed step the views keep g
    b.set_raw_grads(m.raw_grads());
    const auto r2 = opt.descend();
    CHECK_FALSE(r2.skipped);
    CHECK(r2.perturbed == perturbs);
    CHECK_FALSE(alone.descend().skipped);
    // descend() is the base step at the saved w with the gradient in the views, bitwise
    CHECK(bitwise_equal(m.raw_weights(), b.raw_weights()));
    double g2 = 0;
    for (T x : g) g2 += double(x) * double(x);
    if (!perturbs) {
      FLATMIN_CHECK_CLOSE1(r2.grad_norm, std::sqrt(g2), 1e-12);  // the norm of g, reported by descend()
      CHECK(std::isnan(r2.perturbed_grad_norm));
    }
    CHECK(opt.steps() == static_cast<std::size_t>(s));
  }
}

TEST_CASE_TEMPLATE("schedule: a skipped step does not advance it; a checkpoint resumes it", Backend,
                   FLATMIN_TEST_BACKENDS) {
  using T = double;
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9};
  const flatmin::schedule::every_k every2{.k = 2};
  model<T> m(sched_layout, test_space<Backend>);
  m.set_weights(random_vec(m.numel, 61));
  auto q = quadratic::random(m.numel, 61);
  auto opt = flatmin::sam<Backend>(m.params, base, every2, {.rho = 0.1});
  int calls = 0;
  auto obj = [&] {
    ++calls;
    return q.eval(m);
  };
  CHECK(opt.step(obj).perturbed);  // step 1
  // step 2 (unperturbed) with a NaN in g: skipped, not applied
  q.eval(m);
  m.gat(3) = std::numeric_limits<T>::quiet_NaN();
  const auto before = m.raw_weights();
  CHECK_FALSE(opt.ascend().perturbed);
  const auto rs = opt.descend();
  CHECK(rs.skipped);
  CHECK(rs.reason == flatmin::skip_reason::nonfinite_gradient);
  CHECK(bitwise_equal(m.raw_weights(), before));
  CHECK(opt.steps() == 1);
  // the retry is step 2 again: one objective call, no perturbation
  calls = 0;
  auto r = opt.step(obj);
  CHECK_FALSE(r.perturbed);
  CHECK(r.step == 2);
  CHECK(calls == 1);
  calls = 0;
  r = opt.step(obj);  // step 3
  CHECK(r.perturbed);
  CHECK(calls == 2);

  // A checkpoint after step 3 resumes the schedule: a fresh optimizer loaded from it perturbs
  // step 4 or not exactly as the uninterrupted one, and both end at the same weights.
  std::stringstream ck;
  opt.save(ck);
  const auto w3 = m.raw_weights();
  const quadratic q3 = q;
  std::vector<bool> first_run;
  for (int s = 4; s <= 9; ++s) first_run.push_back(opt.step(obj).perturbed);
  const auto w9 = m.raw_weights();

  m.set_raw_weights(w3);
  q = q3;
  auto resumed = flatmin::sam<Backend>(m.params, base, every2, {.rho = 0.1});
  resumed.load(ck);
  std::vector<bool> second_run;
  for (int s = 4; s <= 9; ++s) second_run.push_back(resumed.step(obj).perturbed);
  CHECK(first_run == std::vector<bool>{false, true, false, true, false, true});
  CHECK(second_run == first_run);
  CHECK(bitwise_equal(m.raw_weights(), w9));
}

TEST_CASE("schedule: invalid options are rejected, naming the option and the value") {
  using T = float;
  model<T> m(sched_layout);
  auto expect_invalid = [](auto&& f, const std::string& what) {
    bool thrown = false;
    try {
      f();
    } catch (const std::invalid_argument& e) {
      thrown = true;
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.find(what) != std::string::npos);
      CHECK(msg.find("got 0") != std::string::npos);
    }
    CHECK(thrown);
  };
  const flatmin::base::sgd base{.lr = 0.1};
  expect_invalid([&] { flatmin::sam(m.params, base, flatmin::schedule::every_k{.k = 0}); }, "every_k: k must be >= 1");
  expect_invalid([&] { flatmin::sam(m.params, base, flatmin::schedule::every_k{.k = 2, .first = 0}); },
                 "every_k: first must be >= 1");
  expect_invalid([&] { flatmin::sam(m.params, base, flatmin::schedule::from_step{.step = 0}); },
                 "from_step: step must be >= 1");

  // Mutated between steps: the next call throws before anything moves.
  auto opt = flatmin::sam(m.params, base, flatmin::schedule::every_k{.k = 2});
  auto q = quadratic::random(m.numel, 71);
  m.set_weights(random_vec(m.numel, 71));
  opt.step(q.objective(m));
  opt.schedule().k = 0;
  const auto before = m.raw_weights();
  int calls = 0;
  expect_invalid(
      [&] {
        opt.step([&] {
          ++calls;
          return q.eval(m);
        });
      },
      "every_k: k must be >= 1");
  CHECK(calls == 0);
  expect_invalid([&] { opt.ascend(); }, "every_k: k must be >= 1");
  CHECK_FALSE(opt.ascended());
  CHECK(bitwise_equal(m.raw_weights(), before));
  opt.schedule().k = 2;
  CHECK_FALSE(opt.step(q.objective(m)).skipped);
  CHECK(opt.steps() == 2);
}
