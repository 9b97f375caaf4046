#include <doctest/doctest.h>
#include <flatmin/flatmin.hpp>

#include <vector>

// Hand-worked SAM step, ρ = 0.5, SGD lr = 0.1, L(w) = ½‖w‖², w = (3, 4):
//   g = (3, 4), ‖g‖ = 5, ε = 0.5·(3, 4)/5 = (0.3, 0.4), w + ε = (3.3, 4.4) = g_adv
//   w ← (3, 4) − 0.1·(3.3, 4.4) = (2.67, 3.56)
TEST_CASE("sam: a hand-worked step on L = ½‖w‖²") {
  std::vector<float> w{3.f, 4.f}, g(2);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  auto opt = flatmin::sam(ps, flatmin::base::sgd{.lr = 0.1}, {.rho = 0.5});
  auto obj = [&] {
    g[0] = w[0];
    g[1] = w[1];
    return 0.5 * (w[0] * w[0] + w[1] * w[1]);
  };
  obj();
  auto r = opt.ascend();
  CHECK(r.grad_norm == doctest::Approx(5.0));
  CHECK(r.perturbation_norm == doctest::Approx(0.5));
  CHECK(w[0] == doctest::Approx(3.3f));
  CHECK(w[1] == doctest::Approx(4.4f));
  obj();
  r = opt.descend();
  CHECK(w[0] == doctest::Approx(2.67f));
  CHECK(w[1] == doctest::Approx(3.56f));
  CHECK(r.perturbed_grad_norm == doctest::Approx(5.5));
  CHECK_FALSE(r.skipped);
}
