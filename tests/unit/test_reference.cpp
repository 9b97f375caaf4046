// The float64 references of tests/support/reference.hpp checked against hand-worked numbers, so
// that a test comparing the library with them compares with the right thing.
#include <doctest/doctest.h>

#include "support/reference.hpp"

using namespace flatmin_test;

TEST_CASE("reference: SAM ε and a whole SAM step, by hand") {
  // L = ½‖w‖², w = (3, 4): g = (3, 4), ‖g‖ = 5, ρ = 0.5 → ε = (0.3, 0.4); g_adv = (3.3, 4.4);
  // SGD lr 0.1: w = (2.67, 3.56). A third tensor with perturb = false (w = 1) is left out.
  ref::vec w{3, 4, 1};
  const ref::opts_vec o{{}, {}, {.perturb = false}};
  const auto e = ref::sam_epsilon(w, o, 0.5, 0.0);
  CHECK(e[0] == doctest::Approx(0.3));
  CHECK(e[1] == doctest::Approx(0.4));
  CHECK(e[2] == 0.0);
  ref::sgd sgd;
  sgd.lr = 0.1;
  const auto r = ref::sharpness_aware_step(w, o, ref::sam_perturbation(0.5, 0.0), sgd, [](const ref::vec& x) { return x; });
  CHECK(w[0] == doctest::Approx(2.67));
  CHECK(w[1] == doctest::Approx(3.56));
  CHECK(w[2] == doctest::Approx(0.9));
  CHECK(r.perturbation_norm == doctest::Approx(0.5));
  CHECK(r.grad_norm == doctest::Approx(std::sqrt(26.0)));
  // zero gradient, ξ = 0: ε = 0, no NaN
  const auto z = ref::sam_epsilon({0, 0, 5}, o, 0.5, 0.0);
  CHECK(z == ref::vec{0, 0, 0});
}

TEST_CASE("reference: ASAM ε with η and opt-outs, by hand") {
  // w = (1, −1 | 1 | 5), g = w, η = 1, ρ = 0.3; tensor 2 adaptive = false, tensor 3 perturb = false:
  // T g = (2, −2 | 1), ‖T g‖ = 3, ε = 0.1 T² g = (0.4, −0.4 | 0.1 | 0)
  const ref::vec w{1, -1, 1, 5};
  const ref::opts_vec o{{}, {}, {.adaptive = false}, {.perturb = false}};
  const auto e = ref::asam_epsilon(w, w, o, 0.3, 1.0, 0.0);
  CHECK(e[0] == doctest::Approx(0.4));
  CHECK(e[1] == doctest::Approx(-0.4));
  CHECK(e[2] == doctest::Approx(0.1));
  CHECK(e[3] == 0.0);
}

TEST_CASE("reference: SGD momentum, dampening, Nesterov, weight decay, by hand") {
  const ref::opts_vec o{{}, {.weight_decay = false}};
  ref::sgd s;
  s.lr = 0.1;
  s.momentum = 0.5;
  s.dampening = 0.5;
  s.weight_decay = 0.1;
  ref::vec w{2, 2};
  s.step(w, {1, 1}, o);  // d = (1.2, 1), b = d, w = (1.88, 1.9)
  CHECK(w[0] == doctest::Approx(1.88));
  CHECK(w[1] == doctest::Approx(1.9));
  s.step(w, {3, 3}, o);  // d0 = 3.188, b0 = 0.6 + 1.594 = 2.194; d1 = 3, b1 = 0.5 + 1.5 = 2
  CHECK(w[0] == doctest::Approx(1.88 - 0.2194));
  CHECK(w[1] == doctest::Approx(1.9 - 0.2));
  ref::sgd n;
  n.lr = 0.1;
  n.momentum = 0.9;
  n.nesterov = true;
  ref::vec v{1};
  n.step(v, {1}, {{}});  // b = 1, d = 1 + 0.9 = 1.9
  CHECK(v[0] == doctest::Approx(0.81));
}

TEST_CASE("reference: Adam's first step is lr·sign(d); AdamW decays first") {
  ref::adam a{0.1, 0.9, 0.999, 0.0 + 1e-300, 0.0, false, {}, {}, 0};
  ref::vec w{1, 1};
  a.step(w, {2, -3}, {{}, {}});
  CHECK(w[0] == doctest::Approx(0.9));
  CHECK(w[1] == doctest::Approx(1.1));
  auto aw = ref::adamw(0.1, 0.9, 0.999, 1e-300, 0.5);
  ref::vec u{1};
  aw.step(u, {2}, {{}});  // u = 0.95 − 0.1
  CHECK(u[0] == doctest::Approx(0.85));
  ref::adam c{0.1, 0.9, 0.999, 1e-300, 0.5, false, {}, {}, 0};
  ref::vec x{1};
  c.step(x, {-0.4}, {{}});  // d = −0.4 + 0.5 = 0.1 > 0: step down
  CHECK(x[0] == doctest::Approx(0.9));
}
