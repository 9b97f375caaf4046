// ASAM (perturb::adaptive) over each base optimizer against the float64 reference step
//   T = |w| + η on adaptive tensors, 1 elsewhere;  ε = ρ T² g/(‖T g‖ + ξ), norm over the perturbed
//   tensors only;  g_adv = ∇L(w + ε);  w ← saved w;  w ← base(w, g_adv)
// with several η (0 included) and the per-tensor opt-outs (adaptive = false, perturb = false).
#include <doctest/doctest.h>

#include "support/runner.hpp"

using namespace flatmin_test;

namespace {
template <class T, class Base>
void asam_over(const Base& base, std::uint64_t seed) {
  const flatmin::asam_options radii[] = {{}, {.rho = 0.1, .eta = 0.0}, {.rho = 0.5, .eta = 0.5, .xi = 0.0}};
  for (const auto& ao : radii)
    for (const auto& l : unit_layouts())
      for (int steps : {1, 20}) {
        CAPTURE(ao.rho);
        CAPTURE(ao.eta);
        CAPTURE(describe(l));
        CAPTURE(steps);
        model<T> m(l);
        m.set_weights(random_vec(m.numel, ++seed));
        const auto q = quadratic::random(m.numel, seed);
        auto opt = flatmin::asam(m.params, base, ao);
        run_against_reference(m, opt, to_ref(base), ref::asam_perturbation(ao.rho, ao.eta, ao.xi), q, steps);
      }
}
}  // namespace

TEST_CASE_TEMPLATE("asam over base::sgd matches the reference", T, float, double) {
  asam_over<T>(flatmin::base::sgd{.lr = 0.1}, 2000);
  asam_over<T>(flatmin::base::sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.05, .nesterov = true}, 2100);
}

TEST_CASE_TEMPLATE("asam over base::adam matches the reference", T, float, double) {
  asam_over<T>(flatmin::base::adam{.lr = 0.02, .weight_decay = 0.1}, 2200);
}

TEST_CASE_TEMPLATE("asam over base::adamw matches the reference", T, float, double) {
  asam_over<T>(flatmin::base::adamw{.lr = 0.02, .weight_decay = 0.2}, 2300);
}

TEST_CASE("asam: a hand-worked step with η and both opt-outs") {
  // L = ½‖w‖² (g = w), ρ = 0.3, η = 1, ξ = 0, SGD lr = 0.5. Tensors:
  //   a = (1, −1) adaptive:       T = |a| + 1 = (2, 2),  T g = (2, −2)
  //   b = (1)     adaptive=false: T = 1,                 T g = 1
  //   c = (5)     perturb=false:  left out of ε and of the norm
  //   ‖T g‖ = √(4 + 4 + 1) = 3, so ε = 0.3 T² g / 3 = 0.1 T² g:
  //   ε_a = (0.4, −0.4), ε_b = 0.1, ε_c = 0, ‖ε‖ = √0.33
  //   w + ε = (1.4, −1.4 | 1.1 | 5) = g_adv
  //   w ← w − 0.5 g_adv = (0.3, −0.3 | 0.45 | 2.5)
  std::vector<double> a{1.0, -1.0}, ga(2), b{1.0}, gb(1), c{5.0}, gc(1);
  flatmin::param_set<double> ps;
  ps.add("a", a, ga);
  ps.add("b", b, gb, {.adaptive = false});
  ps.add("c", c, gc, {.perturb = false});
  auto opt = flatmin::asam(ps, flatmin::base::sgd{.lr = 0.5}, {.rho = 0.3, .eta = 1.0, .xi = 0.0});
  auto grad = [&] {
    ga = a;
    gb = b;
    gc = c;
    return 0.5 * (a[0] * a[0] + a[1] * a[1] + b[0] * b[0] + c[0] * c[0]);
  };
  grad();
  const auto r = opt.ascend();
  CHECK(r.perturbation_norm == doctest::Approx(std::sqrt(0.33)).epsilon(1e-14));
  CHECK(a[0] == doctest::Approx(1.4).epsilon(1e-14));
  CHECK(a[1] == doctest::Approx(-1.4).epsilon(1e-14));
  CHECK(b[0] == doctest::Approx(1.1).epsilon(1e-14));
  CHECK(c[0] == 5.0);
  grad();
  opt.descend();
  CHECK(a[0] == doctest::Approx(0.3).epsilon(1e-14));
  CHECK(a[1] == doctest::Approx(-0.3).epsilon(1e-14));
  CHECK(b[0] == doctest::Approx(0.45).epsilon(1e-14));
  CHECK(c[0] == doctest::Approx(2.5).epsilon(1e-14));
}

TEST_CASE_TEMPLATE("asam: zero gradient gives ε = 0, also with ξ = 0", T, float, double) {
  for (double xi : {1e-12, 0.0}) {
    CAPTURE(xi);
    model<T> m(unit_layouts()[2]);
    auto q = quadratic::random(m.numel, 21, 0.5, 2.0, 0.0);
    m.set_weights(q.c);
    const auto before = m.raw_weights();
    auto opt = flatmin::asam(m.params, flatmin::base::adamw{.lr = 0.1, .weight_decay = 0.0}, {.xi = xi});
    q.eval(m);
    const auto r = opt.ascend();
    CHECK_FALSE(r.skipped);
    CHECK(r.perturbation_norm == 0.0);
    CHECK(bitwise_equal(m.raw_weights(), before));
    q.eval(m);
    CHECK_FALSE(opt.descend().skipped);
    CHECK(all_finite(m.raw_weights()));
  }
}

TEST_CASE_TEMPLATE("asam: with every tensor perturb = false the step is the base step", T, float, double) {
  layout_spec l = unit_layouts()[1];
  for (auto& t : l) t.options.perturb = false;
  model<T> m(l);
  m.set_weights(random_vec(m.numel, 22));
  const auto q = quadratic::random(m.numel, 22);
  const flatmin::base::sgd base{.lr = 0.1, .momentum = 0.9};
  auto opt = flatmin::asam(m.params, base);
  run_against_reference(m, opt, to_ref(base), ref::asam_perturbation(), q, 5);
}
