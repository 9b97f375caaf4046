// optimizer_options::clip_grad_norm (optimizer/clip.hpp) and the per-tensor lr / weight-decay / ρ
// multipliers of tensor_options (lr_scale, weight_decay_scale, rho_scale), against float64
// re-derivations in this file. The clipping reference is torch.nn.utils.clip_grad_norm_ as torch/nn/utils/clip_grad.py
// (pytorch/pytorch v1.13.0, lines 42-60) computes it: total = ‖(‖g_t‖)_t‖₂, coef = max / (total +
// 1e-6), grads multiplied by min(coef, 1). The multipliers are torch.optim's param groups: a tensor
// in a group with lr_g = lr · s_lr and weight_decay_g = λ · s_wd.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <flatmin/flatmin.hpp>

#include "support/backends.hpp"

namespace {

/// L(w) = ½ Σ a_i (w_i − c_i)² + ¼ Σ b_i w_i⁴ (non-quadratic: SAM's g_adv is not a rescaled g).
struct problem {
  std::vector<double> a, c, b;
  explicit problem(std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      a.push_back(0.5 + 0.37 * static_cast<double>(i % 7));
      c.push_back(std::sin(1.3 * static_cast<double>(i) + 0.2) * 3.0);
      b.push_back(0.05 * static_cast<double>(i % 3));
    }
  }
  std::vector<double> grad(const std::vector<double>& w) const {
    std::vector<double> g(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) g[i] = a[i] * (w[i] - c[i]) + b[i] * w[i] * w[i] * w[i];
    return g;
  }
};

double norm(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

/// Two tensors of sizes 5 and 7 over one weight vector.
struct model {
  std::vector<double> w, g;
  std::vector<double> w0;
  explicit model(std::size_t n) : w(n), g(n) {
    for (std::size_t i = 0; i < n; ++i) w[i] = 0.5 * std::cos(0.7 * static_cast<double>(i));
    w0 = w;
  }
  /// Writes ∇L into the bound gradient buffer (never reallocating it).
  template <class P>
  void set_grad(const P& p) {
    const auto v = p.grad(w);
    std::copy(v.begin(), v.end(), g.begin());
  }
  flatmin::param_set<double> params(flatmin::tensor_options first = {}, flatmin::tensor_options second = {}) {
    flatmin::param_set<double> ps;
    ps.add("first", w.data(), g.data(), {5}, first);
    ps.add("second", w.data() + 5, g.data() + 5, {w.size() - 5}, second);
    return ps;
  }
};

/// torch's clip_grad_norm_ factor (the reference; optimizer/clip.hpp is what is tested).
double torch_clip(double max_norm, const std::vector<double>& g) {
  const double coef = max_norm / (norm(g) + 1e-6);
  return std::min(coef, 1.0);
}

}  // namespace

TEST_CASE_TEMPLATE("clip_grad_norm: SAM + SGD(momentum, weight decay) clips g_adv as clip_grad_norm_", B,
                   FLATMIN_TEST_BACKENDS) {
  const std::size_t n = 12;
  const problem p(n);
  model m(n);
  const double lr = 0.05, mu = 0.9, wd = 0.01, rho = 0.1, max_norm = 5.0;
  auto opt = flatmin::sam<B>(m.params(), flatmin::base::sgd{.lr = lr, .momentum = mu, .weight_decay = wd},
                             {.rho = rho});
  opt.options().clip_grad_norm = max_norm;

  std::vector<double> w = m.w0, buf(n, 0.0);
  int clipped = 0, unclipped = 0;
  for (int step = 1; step <= 25; ++step) {
    CAPTURE(step);
    // reference: ε from the unclipped g, clip g_adv, then torch.optim.SGD
    const auto g = p.grad(w);
    const double gn = norm(g);
    std::vector<double> we(n);
    for (std::size_t i = 0; i < n; ++i) we[i] = w[i] + rho * g[i] / (gn + 1e-12);
    auto ga = p.grad(we);
    const double an = norm(ga), coef = torch_clip(max_norm, ga);
    (coef < 1 ? clipped : unclipped)++;
    for (std::size_t i = 0; i < n; ++i) {
      const double d = ga[i] * coef + wd * w[i];
      buf[i] = step == 1 ? d : mu * buf[i] + d;
      w[i] -= lr * buf[i];
    }
    const auto r = opt.step([&] {
      m.set_grad(p);
      return 0.0;
    });
    CHECK(r.perturbed_grad_norm == doctest::Approx(an).epsilon(1e-12));  // the pre-clip norm
    CHECK(r.clip_scale == doctest::Approx(coef).epsilon(1e-12));
    for (std::size_t i = 0; i < n; ++i) CHECK(m.w[i] == doctest::Approx(w[i]).epsilon(1e-12));
  }
  // the bound is met on some steps and not on others: both branches were compared
  CHECK(clipped > 0);
  CHECK(unclipped > 0);
}

TEST_CASE_TEMPLATE("clip_grad_norm: plain AdamW, the two-call protocol and found_inf", B, FLATMIN_TEST_BACKENDS) {
  const std::size_t n = 12;
  const problem p(n);
  model m(n);
  const double lr = 0.02, b1 = 0.9, b2 = 0.99, eps = 1e-8, wd = 0.1, max_norm = 1.5;
  auto opt = flatmin::adamw<B>(m.params(), {.lr = lr, .beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd});
  opt.options().clip_grad_norm = max_norm;
  std::vector<double> w = m.w0, mo(n, 0.0), v(n, 0.0);
  for (int t = 1; t <= 10; ++t) {
    CAPTURE(t);
    auto g = p.grad(w);
    const double gn = norm(g), coef = torch_clip(max_norm, g);
    for (std::size_t i = 0; i < n; ++i) {
      const double gi = g[i] * coef;
      w[i] *= 1 - lr * wd;
      mo[i] = b1 * mo[i] + (1 - b1) * gi;
      v[i] = b2 * v[i] + (1 - b2) * gi * gi;
      const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
      w[i] -= lr / bc1 * mo[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
    }
    // a loss scale of 8: the gradient is unscaled before its norm is taken
    const auto gs = p.grad(m.w);
    for (std::size_t i = 0; i < n; ++i) m.g[i] = 8.0 * gs[i];
    // with found_inf given the finiteness check is the caller's, but clipping still needs the norm
    std::optional<bool> found_inf;
    if (t % 2) found_inf = false;
    const auto r = opt.descend({.grad_scale = 8.0, .found_inf = found_inf});
    CHECK(r.grad_norm == doctest::Approx(gn).epsilon(1e-12));
    CHECK(r.clip_scale == doctest::Approx(coef).epsilon(1e-12));
    for (std::size_t i = 0; i < n; ++i) CHECK(m.w[i] == doctest::Approx(w[i]).epsilon(1e-11));
  }
}

TEST_CASE("clip_grad_norm: off (0) and a bound never reached leave every bit as without it") {
  const std::size_t n = 12;
  const problem p(n);
  model a(n), b(n);
  auto oa = flatmin::sam(a.params(), flatmin::base::sgd{.lr = 0.05, .momentum = 0.9}, {.rho = 0.1});
  auto ob = flatmin::sam(b.params(), flatmin::base::sgd{.lr = 0.05, .momentum = 0.9}, {.rho = 0.1});
  ob.options().clip_grad_norm = 1e6;
  for (int s = 0; s < 5; ++s) {
    oa.step([&] {
      a.set_grad(p);
      return 0.0;
    });
    const auto r = ob.step([&] {
      b.set_grad(p);
      return 0.0;
    });
    CHECK(r.clip_scale == 1.0);
  }
  CHECK(a.w == b.w);
}

TEST_CASE("clip_grad_norm: a negative or non-finite bound is refused, naming the option") {
  model m(12);
  auto opt = flatmin::sgd(m.params(), {.lr = 0.1});
  for (double bad : {-1.0, std::nan(""), HUGE_VAL}) {
    opt.options().clip_grad_norm = bad;
    CHECK_THROWS_WITH_AS(opt.descend(), doctest::Contains("clip_grad_norm"), std::invalid_argument);
  }
  CHECK(m.w == m.w0);
}

TEST_CASE_TEMPLATE("lr_scale / weight_decay_scale: SGD with momentum and AdamW as torch param groups", B,
                   FLATMIN_TEST_BACKENDS) {
  const std::size_t n = 12;
  const problem p(n);
  // first: lr × 0.25 and weight decay × 3; second: the defaults
  const flatmin::tensor_options first{.lr_scale = 0.25, .weight_decay_scale = 3.0};
  const auto lr_of = [](std::size_t i, double lr) { return i < 5 ? 0.25 * lr : lr; };
  const auto wd_of = [](std::size_t i, double wd) { return i < 5 ? 3.0 * wd : wd; };
  SUBCASE("sgd") {
    model m(n);
    const double lr = 0.05, mu = 0.8, wd = 0.02;
    auto opt = flatmin::sgd<B>(m.params(first), {.lr = lr, .momentum = mu, .weight_decay = wd});
    std::vector<double> w = m.w0, buf(n);
    for (int t = 1; t <= 10; ++t) {
      const auto g = p.grad(w);
      for (std::size_t i = 0; i < n; ++i) {
        const double d = g[i] + wd_of(i, wd) * w[i];
        buf[i] = t == 1 ? d : mu * buf[i] + d;
        w[i] -= lr_of(i, lr) * buf[i];
      }
      m.set_grad(p);
      opt.descend();
    }
    for (std::size_t i = 0; i < n; ++i) CHECK(m.w[i] == doctest::Approx(w[i]).epsilon(1e-12));
  }
  SUBCASE("sam + adamw") {
    model m(n);
    const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.05, rho = 0.05;
    auto opt = flatmin::sam<B>(m.params(first), flatmin::base::adamw{.lr = lr, .weight_decay = wd}, {.rho = rho});
    std::vector<double> w = m.w0, mo(n), v(n);
    for (int t = 1; t <= 10; ++t) {
      const auto g = p.grad(w);
      const double gn = norm(g);
      std::vector<double> we(n);
      for (std::size_t i = 0; i < n; ++i) we[i] = w[i] + rho * g[i] / (gn + 1e-12);  // ρ is not scaled
      const auto ga = p.grad(we);
      for (std::size_t i = 0; i < n; ++i) {
        w[i] *= 1 - lr_of(i, lr) * wd_of(i, wd);
        mo[i] = b1 * mo[i] + (1 - b1) * ga[i];
        v[i] = b2 * v[i] + (1 - b2) * ga[i] * ga[i];
        const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
        w[i] -= lr_of(i, lr) / bc1 * mo[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
      }
      opt.step([&] {
        m.set_grad(p);
        return 0.0;
      });
    }
    for (std::size_t i = 0; i < n; ++i) CHECK(m.w[i] == doctest::Approx(w[i]).epsilon(1e-12));
  }
  SUBCASE("adam (coupled decay): a scaled tensor with its decay off keeps it off") {
    // torch: a param group with weight_decay = 0; the multiplier of a tensor without decay is moot
    model m(n);
    const double lr = 0.02, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    flatmin::tensor_options no_decay = first;
    no_decay.weight_decay = false;
    auto opt = flatmin::adam<B>(m.params(no_decay), {.lr = lr, .weight_decay = wd});
    std::vector<double> w = m.w0, mo(n), v(n);
    for (int t = 1; t <= 10; ++t) {
      const auto g = p.grad(w);
      for (std::size_t i = 0; i < n; ++i) {
        const double d = g[i] + (i < 5 ? 0.0 : wd) * w[i];
        mo[i] = b1 * mo[i] + (1 - b1) * d;
        v[i] = b2 * v[i] + (1 - b2) * d * d;
        const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
        w[i] -= lr_of(i, lr) / bc1 * mo[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
      }
      m.set_grad(p);
      opt.descend();
    }
    for (std::size_t i = 0; i < n; ++i) CHECK(m.w[i] == doctest::Approx(w[i]).epsilon(1e-12));
  }
}

TEST_CASE("lr_scale / weight_decay_scale: explicit 1 is bit-identical; the checkpoint ignores the scales") {
  const std::size_t n = 12;
  const problem p(n);
  model a(n), b(n), c(n);
  const flatmin::base::adam o{.lr = 0.01, .weight_decay = 0.01};
  // plain Adam: elementwise, so a tensor's trajectory depends on its own options only
  auto oa = flatmin::adam(a.params(), o);
  // a non-default table (slot 1 exists) with the first tensor on slot 0 through an explicit (1, 1)
  auto ob = flatmin::adam(b.params({.lr_scale = 1.0}, {.lr_scale = 0.5}), o);
  auto oc = flatmin::adam(c.params({.lr_scale = 1.0}), o);
  for (int s = 0; s < 4; ++s) {
    oa.step([&] { a.set_grad(p); return 0.0; });
    ob.step([&] { b.set_grad(p); return 0.0; });
    oc.step([&] { c.set_grad(p); return 0.0; });
  }
  CHECK(a.w == c.w);
  CHECK(std::equal(a.w.begin(), a.w.begin() + 5, b.w.begin()));  // slot-0 tensor untouched by slot 1
  CHECK_FALSE(std::equal(a.w.begin() + 5, a.w.end(), b.w.begin() + 5));
  std::stringstream state;
  ob.save(state);
  CHECK_NOTHROW(oa.load(state));  // other multipliers, same state layout
}

TEST_CASE("lr_scale / weight_decay_scale: negative or non-finite values are refused, naming the tensor") {
  model m(12);
  for (double bad : {-0.5, std::nan(""), HUGE_VAL}) {
    CHECK_THROWS_WITH_AS(m.params({.lr_scale = bad}), doctest::Contains("'first'"), std::invalid_argument);
    CHECK_THROWS_WITH_AS(m.params({}, {.weight_decay_scale = bad}), doctest::Contains("weight_decay_scale"),
                         std::invalid_argument);
  }
}

// rho_scale: torch's per-group ρ in the official SAM, davda54/sam sam.py (commit 03c7768, line 18):
// `scale = group["rho"] / (grad_norm + 1e-12)` with grad_norm = _grad_norm() over every group's
// gradients (lines 42-50), then p += p.grad · scale. A tensor in a group of ρ_g = ρ · s moves by
// ρ · s · g / (‖g‖ + ξ); the norm is not split by group.
TEST_CASE_TEMPLATE("rho_scale: per-group rho as the official SAM, with and without lr multipliers", B,
                   FLATMIN_TEST_BACKENDS) {
  const std::size_t n = 12;
  const problem p(n);
  const auto run = [&](flatmin::tensor_options first, flatmin::tensor_options second, bool adamw) {
    CAPTURE(first.rho_scale);
    CAPTURE(second.rho_scale);
    CAPTURE(adamw);
    model m(n);
    const double rho = 0.2, lr = adamw ? 0.01 : 0.05, mu = 0.9, wd = 0.03, b1 = 0.9, b2 = 0.999, eps = 1e-8;
    const auto rho_of = [&](std::size_t i) { return rho * (i < 5 ? first.rho_scale : second.rho_scale); };
    const auto lr_of = [&](std::size_t i) { return lr * (i < 5 ? first.lr_scale : second.lr_scale); };
    std::vector<double> w = m.w0, buf(n), mo(n), v(n);
    const auto reference_step = [&](int t) {
      const auto g = p.grad(w);
      const double gn = norm(g);  // over both tensors, whatever their ρ
      std::vector<double> we(n);
      for (std::size_t i = 0; i < n; ++i) we[i] = w[i] + rho_of(i) * g[i] / (gn + 1e-12);
      const auto ga = p.grad(we);
      for (std::size_t i = 0; i < n; ++i) {
        if (adamw) {
          w[i] *= 1 - lr_of(i) * wd;
          mo[i] = b1 * mo[i] + (1 - b1) * ga[i];
          v[i] = b2 * v[i] + (1 - b2) * ga[i] * ga[i];
          const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
          w[i] -= lr_of(i) / bc1 * mo[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
        } else {
          const double d = ga[i] + wd * w[i];
          buf[i] = t == 1 ? d : mu * buf[i] + d;
          w[i] -= lr_of(i) * buf[i];
        }
      }
    };
    const auto check = [&](auto& opt) {
      for (int t = 1; t <= 10; ++t) {
        CAPTURE(t);
        reference_step(t);
        const auto r = opt.step([&] {
          m.set_grad(p);
          return 0.0;
        });
        CHECK(r.perturbed);
        CHECK(std::isnan(r.perturbation_norm));  // not computed with per-tensor ρ (report.hpp)
        for (std::size_t i = 0; i < n; ++i) CHECK(m.w[i] == doctest::Approx(w[i]).epsilon(1e-12));
      }
    };
    if (adamw) {
      auto opt = flatmin::sam<B>(m.params(first, second), flatmin::base::adamw{.lr = lr, .weight_decay = wd},
                                 {.rho = rho});
      check(opt);
    } else {
      auto opt = flatmin::sam<B>(m.params(first, second),
                                 flatmin::base::sgd{.lr = lr, .momentum = mu, .weight_decay = wd}, {.rho = rho});
      check(opt);
    }
  };
  run({.rho_scale = 0.4}, {}, false);
  run({.rho_scale = 0.0}, {.rho_scale = 2.5}, false);  // 0: unperturbed, still in the norm
  run({.lr_scale = 0.5, .rho_scale = 3.0}, {.lr_scale = 2.0}, true);
  run({.lr_scale = 0.5}, {.lr_scale = 0.5, .rho_scale = 0.25}, true);  // one slot for (0.5, 1, 1)
}

TEST_CASE("rho_scale: an explicit 1 is bit-identical and keeps the perturbation norm; refusals name the tensor") {
  const std::size_t n = 12;
  const problem p(n);
  model a(n), b(n);
  const flatmin::base::sgd base{.lr = 0.05, .momentum = 0.9};
  auto oa = flatmin::sam(a.params(), base, {.rho = 0.1});
  // a non-default table (slot 1 exists, for a weight-decay multiplier SGD without decay ignores)
  auto ob = flatmin::sam(b.params({.rho_scale = 1.0}, {.weight_decay_scale = 2.0, .rho_scale = 1.0}), base,
                         {.rho = 0.1});
  for (int s = 0; s < 4; ++s) {
    const auto ra = oa.step([&] { a.set_grad(p); return 0.0; });
    const auto rb = ob.step([&] { b.set_grad(p); return 0.0; });
    CHECK(rb.perturbation_norm == ra.perturbation_norm);
    CHECK(ra.perturbation_norm == doctest::Approx(0.1).epsilon(1e-9));
  }
  CHECK(a.w == b.w);

  model m(n);
  for (double bad : {-0.5, std::nan(""), HUGE_VAL})
    CHECK_THROWS_WITH_AS(m.params({}, {.rho_scale = bad}), doctest::Contains("'second' has rho_scale"),
                         std::invalid_argument);
  // a composition that perturbs nothing would ignore it
  CHECK_THROWS_WITH_AS(flatmin::sgd(m.params({.rho_scale = 0.5}), {.lr = 0.1}),
                       doctest::Contains("'first' has rho_scale 0.5"), std::invalid_argument);
  CHECK_NOTHROW(flatmin::sgd(m.params({.rho_scale = 1.0}), {.lr = 0.1}));
}
