// base::sgd (through flatmin::sgd, the plain composition) against the float64 reference of
// torch.optim.SGD: plain, momentum (first-step buffer = d), dampening, Nesterov, coupled weight
// decay, on every unit layout, one step and twenty steps.
#include <doctest/doctest.h>

#include "support/runner.hpp"

using namespace flatmin_test;

namespace {
struct sgd_case {
  const char* name;
  flatmin::base::sgd o;
};
const sgd_case sgd_cases[] = {
    {"plain", {.lr = 0.1}},
    {"momentum", {.lr = 0.05, .momentum = 0.9}},
    {"momentum + dampening", {.lr = 0.05, .momentum = 0.8, .dampening = 0.3}},
    {"nesterov", {.lr = 0.05, .momentum = 0.9, .nesterov = true}},
    {"weight decay", {.lr = 0.1, .weight_decay = 0.1}},
    {"momentum + dampening + weight decay", {.lr = 0.05, .momentum = 0.7, .dampening = 0.5, .weight_decay = 0.05}},
    {"nesterov + weight decay", {.lr = 0.03, .momentum = 0.95, .weight_decay = 0.2, .nesterov = true}},
};
}  // namespace

TEST_CASE_TEMPLATE("base::sgd: one and twenty steps match torch.optim.SGD", T, float, double) {
  std::uint64_t seed = 11;
  for (const auto& c : sgd_cases)
    for (const auto& l : unit_layouts())
      for (int steps : {1, 20}) {
        CAPTURE(c.name);
        CAPTURE(describe(l));
        CAPTURE(steps);
        model<T> m(l);
        m.set_weights(random_vec(m.numel, ++seed));
        const auto q = quadratic::random(m.numel, seed);
        auto opt = flatmin::sgd(m.params, c.o);
        run_against_reference(m, opt, to_ref(c.o), std::nullopt, q, steps);
      }
}

TEST_CASE("base::sgd: a hand-worked momentum step with dampening") {
  // lr = 0.1, μ = 0.5, τ = 0.5, λ = 0.1, w = 2, g = 1 (then g = 3):
  //   step 1: d = 1 + 0.1·2 = 1.2, b = d = 1.2 (no dampening on the first step), w = 2 − 0.12 = 1.88
  //   step 2: d = 3 + 0.188 = 3.188, b = 0.5·1.2 + 0.5·3.188 = 2.194, w = 1.88 − 0.2194 = 1.6606
  std::vector<double> w{2.0}, g{1.0};
  flatmin::param_set<double> ps;
  ps.add("w", w, g);
  auto opt = flatmin::sgd(ps, {.lr = 0.1, .momentum = 0.5, .dampening = 0.5, .weight_decay = 0.1});
  opt.descend();
  CHECK(w[0] == doctest::Approx(1.88).epsilon(1e-14));
  g[0] = 3.0;
  opt.descend();
  CHECK(w[0] == doctest::Approx(1.6606).epsilon(1e-14));
}

TEST_CASE_TEMPLATE("base::sgd: momentum switched off and on between steps, as torch.optim.SGD", T, float, double) {
  // momentum 0 ignores the buffer and the dampening; switched back on, the kept buffer continues
  model<T> m(unit_layouts()[1]);
  m.set_weights(random_vec(m.numel, 50));
  auto ql = quadratic::random(m.numel, 50), qr = ql;
  flatmin::base::sgd o{.lr = 0.05, .momentum = 0.9, .dampening = 0.5, .weight_decay = 0.01};
  auto opt = flatmin::sgd(m.params, o);
  auto r = to_ref(o);
  ref::vec w = m.weights();
  const double schedule[] = {0.9, 0.9, 0.0, 0.0, 0.8, 0.9};
  for (double mu : schedule) {
    CAPTURE(mu);
    opt.base().momentum = mu;
    r.momentum = mu;
    ql.eval(m);
    opt.descend();
    ref::base_step(w, m.opts, r, [&](const ref::vec& x) { return qr.grad(x); });
    FLATMIN_CHECK_CLOSE(m.weights(), w, rtol<T>);
  }
}
