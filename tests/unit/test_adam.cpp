// base::adam (coupled L2) and base::adamw (decoupled decay) against float64 references of
// torch.optim.Adam / AdamW, on every unit layout, one step and twenty steps.
#include <doctest/doctest.h>

#include "support/runner.hpp"

using namespace flatmin_test;

TEST_CASE_TEMPLATE("base::adam: one and twenty steps match torch.optim.Adam", T, float, double) {
  const flatmin::base::adam cases[] = {
      {.lr = 0.01},
      {.lr = 0.05, .beta1 = 0.8, .beta2 = 0.99},
      {.lr = 0.02, .weight_decay = 0.1},
      {.lr = 0.02, .beta1 = 0.0, .beta2 = 0.5, .eps = 1e-3, .weight_decay = 0.3},
  };
  std::uint64_t seed = 100;
  for (const auto& o : cases)
    for (const auto& l : unit_layouts())
      for (int steps : {1, 20}) {
        CAPTURE(o.lr);
        CAPTURE(o.weight_decay);
        CAPTURE(describe(l));
        CAPTURE(steps);
        model<T> m(l);
        m.set_weights(random_vec(m.numel, ++seed));
        const auto q = quadratic::random(m.numel, seed);
        auto opt = flatmin::adam(m.params, o);
        run_against_reference(m, opt, to_ref(o), std::nullopt, q, steps);
      }
}

TEST_CASE_TEMPLATE("base::adamw: one and twenty steps match torch.optim.AdamW", T, float, double) {
  const flatmin::base::adamw cases[] = {
      {.lr = 0.01},
      {.lr = 0.05, .beta1 = 0.8, .beta2 = 0.99, .weight_decay = 0.0},
      {.lr = 0.02, .weight_decay = 0.5},
      {.lr = 0.03, .beta1 = 0.5, .beta2 = 0.9, .eps = 1e-2, .weight_decay = 0.1},
  };
  std::uint64_t seed = 200;
  for (const auto& o : cases)
    for (const auto& l : unit_layouts())
      for (int steps : {1, 20}) {
        CAPTURE(o.lr);
        CAPTURE(o.weight_decay);
        CAPTURE(describe(l));
        CAPTURE(steps);
        model<T> m(l);
        m.set_weights(random_vec(m.numel, ++seed));
        const auto q = quadratic::random(m.numel, seed);
        auto opt = flatmin::adamw(m.params, o);
        run_against_reference(m, opt, to_ref(o), std::nullopt, q, steps);
      }
}

TEST_CASE("base::adam and base::adamw: hand-worked first steps") {
  // lr = 0.1, λ = 0.5, w = 1, g = 2, first step (m̂/√v̂ = d/|d| up to ε):
  //   Adam:  d = 2 + 0.5 = 2.5, w = 1 − 0.1·2.5/(2.5 + 1e-8) ≈ 0.9 (exactly 1 − 0.1/(1 + 4e-9))
  //   AdamW: w = 1·(1 − 0.05) = 0.95, then w = 0.95 − 0.1·2/(2 + 1e-8) ≈ 0.85
  std::vector<double> w{1.0}, g{2.0};
  flatmin::param_set<double> ps;
  ps.add("w", w, g);
  auto a = flatmin::adam(ps, {.lr = 0.1, .weight_decay = 0.5});
  a.descend();
  CHECK(w[0] == doctest::Approx(1.0 - 0.1 / (1.0 + 4e-9)).epsilon(1e-14));
  w[0] = 1.0;
  auto aw = flatmin::adamw(ps, {.lr = 0.1, .weight_decay = 0.5});
  aw.descend();
  CHECK(w[0] == doctest::Approx(0.95 - 0.1 / (1.0 + 5e-9)).epsilon(1e-14));
}

TEST_CASE_TEMPLATE("base::adam with decoupled decay: the float64 AdamW reference, bitwise base::adamw", T,
                   float, double) {
  using flatmin::base::weight_decay_mode;
  const flatmin::base::adamw w_cases[] = {
      {.lr = 0.02, .weight_decay = 0.5},
      {.lr = 0.03, .beta1 = 0.5, .beta2 = 0.9, .eps = 1e-2, .weight_decay = 0.1},
  };
  std::uint64_t seed = 300;
  for (const auto& ow : w_cases)
    for (const auto& l : unit_layouts()) {
      CAPTURE(ow.weight_decay);
      CAPTURE(describe(l));
      const flatmin::base::adam oa{.lr = ow.lr, .beta1 = ow.beta1, .beta2 = ow.beta2, .eps = ow.eps,
                                   .weight_decay = ow.weight_decay, .decay = weight_decay_mode::decoupled};
      model<T> a(l), b(l);
      a.set_weights(random_vec(a.numel, ++seed));
      b.set_weights(random_vec(b.numel, seed));
      const auto q = quadratic::random(a.numel, seed);
      auto opt_a = flatmin::adam(a.params, oa);
      run_against_reference(a, opt_a, to_ref(ow), std::nullopt, q, 20);
      auto opt_b = flatmin::adamw(b.params, ow);
      run_against_reference(b, opt_b, to_ref(ow), std::nullopt, q, 20);
      CHECK(a.raw_weights() == b.raw_weights());
    }
  // an option error names the policy as AdamW
  std::vector<T> w{1}, g{1};
  flatmin::param_set<T> ps;
  ps.add("w", w, g);
  try {
    flatmin::adam(ps, {.lr = -1, .decay = weight_decay_mode::decoupled});
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("flatmin::base::adamw: lr must be finite and > 0") == 0);
  }
}
