// SAM (perturb::l2) over each base optimizer against the float64 reference step
//   g = ∇L(w);  ε = ρ g/(‖g‖ + ξ) (norm over the perturbed tensors only);  g_adv = ∇L(w + ε);
//   w ← saved w;  w ← base(w, g_adv)
// on every unit layout (tensors with perturb / weight_decay / adaptive off), one and twenty steps,
// plus the edge cases of shared/ALGORITHMS.md: zero gradient (ε = 0, also with ξ = 0) and no
// perturbed tensor at all.
#include <doctest/doctest.h>

#include <limits>

#include "support/runner.hpp"

using namespace flatmin_test;

namespace {
template <class T, class Base>
void sam_over(const Base& base, std::uint64_t seed) {
  const flatmin::sam_options radii[] = {{.rho = 0.05}, {.rho = 0.5, .xi = 0.0}, {.rho = 0.2, .xi = 1e-3}};
  for (const auto& so : radii)
    for (const auto& l : unit_layouts())
      for (int steps : {1, 20}) {
        CAPTURE(so.rho);
        CAPTURE(so.xi);
        CAPTURE(describe(l));
        CAPTURE(steps);
        model<T> m(l);
        m.set_weights(random_vec(m.numel, ++seed));
        const auto q = quadratic::random(m.numel, seed);
        auto opt = flatmin::sam(m.params, base, so);
        run_against_reference(m, opt, to_ref(base), ref::sam_perturbation(so.rho, so.xi), q, steps);
      }
}
}  // namespace

TEST_CASE_TEMPLATE("sam over base::sgd matches the reference", T, float, double) {
  sam_over<T>(flatmin::base::sgd{.lr = 0.1}, 1000);
  sam_over<T>(flatmin::base::sgd{.lr = 0.05, .momentum = 0.9, .dampening = 0.2, .weight_decay = 0.05}, 1100);
  sam_over<T>(flatmin::base::sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.1, .nesterov = true}, 1200);
}

TEST_CASE_TEMPLATE("sam over base::adam matches the reference", T, float, double) {
  sam_over<T>(flatmin::base::adam{.lr = 0.02, .weight_decay = 0.1}, 1300);
}

TEST_CASE_TEMPLATE("sam over base::adamw matches the reference", T, float, double) {
  sam_over<T>(flatmin::base::adamw{.lr = 0.02, .beta1 = 0.8, .weight_decay = 0.2}, 1400);
}

TEST_CASE_TEMPLATE("sam: zero gradient gives ε = 0, also with ξ = 0", T, float, double) {
  for (double xi : {1e-12, 0.0})
    for (const auto& l : unit_layouts()) {
      CAPTURE(xi);
      CAPTURE(describe(l));
      model<T> m(l);
      auto q = quadratic::random(m.numel, 7, 0.5, 2.0, 0.0);
      m.set_weights(q.c);  // at the minimum: g = 0 exactly
      const auto before = m.raw_weights();
      auto opt = flatmin::sam(m.params, flatmin::base::sgd{.lr = 0.1, .momentum = 0.9}, {.rho = 0.1, .xi = xi});
      q.eval(m);
      const auto r = opt.ascend();
      CHECK_FALSE(r.skipped);
      CHECK(r.grad_norm == 0.0);
      CHECK(r.perturbation_norm == 0.0);
      CHECK(bitwise_equal(m.raw_weights(), before));
      q.eval(m);
      const auto r2 = opt.descend();
      CHECK_FALSE(r2.skipped);
      CHECK(bitwise_equal(m.raw_weights(), before));  // g_adv = 0 and no weight decay
      CHECK(all_finite(m.raw_weights()));
    }
}

TEST_CASE_TEMPLATE("sam: zero gradient on the perturbed tensors only gives ε = 0 (ξ = 0)", T, float, double) {
  // Tensors with perturb = false have a gradient; they are not part of the norm, so the norm is 0.
  const layout_spec l = {{"frozen", {9}, {.perturb = false}}, {"w", {12}}};
  model<T> m(l);
  auto q = quadratic::random(m.numel, 8, 0.5, 2.0, 0.0);
  ref::vec w0 = q.c;
  for (std::size_t i = 0; i < 9; ++i) w0[i] += 0.5;
  m.set_weights(w0);
  const auto before = m.raw_weights();
  auto opt = flatmin::sam(m.params, flatmin::base::sgd{.lr = 0.1}, {.rho = 0.1, .xi = 0.0});
  q.eval(m);
  const auto r = opt.ascend();
  CHECK(r.grad_norm > 0);
  CHECK(r.perturbation_norm == 0.0);
  CHECK(bitwise_equal(m.raw_weights(), before));
}

TEST_CASE_TEMPLATE("sam: with every tensor perturb = false the step is the base step", T, float, double) {
  layout_spec l = unit_layouts()[2];
  for (auto& t : l) t.options.perturb = false;
  model<T> m(l);
  m.set_weights(random_vec(m.numel, 9));
  const auto q = quadratic::random(m.numel, 9);
  const flatmin::base::adam base{.lr = 0.01, .weight_decay = 0.1};
  auto opt = flatmin::sam(m.params, base, {.rho = 0.3});
  // The reference step with ε = 0 everywhere is the base step with the gradient at w (drawn twice).
  run_against_reference(m, opt, to_ref(base), ref::sam_perturbation(0.3), q, 5);
  CHECK(opt.last_report().perturbation_norm == 0.0);
  CHECK(opt.last_report().mask_density == 0.0);
}

TEST_CASE("sam: mask_density counts the perturbed entries") {
  const layout_spec l = {{"frozen", {10}, {.perturb = false}}, {"w", {30}}};
  model<float> m(l);
  m.set_weights(random_vec(m.numel, 10));
  auto q = quadratic::random(m.numel, 10);
  auto opt = flatmin::sam(m.params, flatmin::base::sgd{.lr = 0.1});
  q.eval(m);
  // dense mask: every perturbable entry is perturbed
  CHECK(opt.ascend().mask_density == 1.0);
  opt.cancel();
}

TEST_CASE_TEMPLATE("sam and asam: a vanishing gradient with ξ = 0 never writes non-finite weights", T, float, double) {
  // ρ/‖g‖ overflows T when ‖g‖ is below ρ/max(T) (subnormal gradients): ε must stay finite.
  const T tiny = std::numeric_limits<T>::denorm_min() * T(16);
  for (int which : {0, 1}) {
    CAPTURE(which);
    std::vector<T> w{T(0.5), T(-0.25), T(2)}, g{tiny, T(0), -tiny};
    flatmin::param_set<T> ps;
    ps.add("w", w, g);
    auto check = [&](auto& opt) {
      const auto r = opt.ascend();
      CHECK_FALSE(r.skipped);
      CHECK(all_finite(w));
      CHECK(std::isfinite(r.perturbation_norm));
      CHECK(r.perturbation_norm <= 0.5 * 2 * (1 + 1e-6));  // ‖ε‖ ≤ ρ max T (ASAM, η = 0)
      opt.descend();
      CHECK(all_finite(w));
    };
    if (which == 0) {
      auto opt = flatmin::sam(ps, flatmin::base::sgd{.lr = 0.1}, {.rho = 0.5, .xi = 0.0});
      check(opt);
    } else {
      auto opt = flatmin::asam(ps, flatmin::base::sgd{.lr = 0.1}, {.rho = 0.5, .eta = 0.0, .xi = 0.0});
      check(opt);
    }
  }
}
