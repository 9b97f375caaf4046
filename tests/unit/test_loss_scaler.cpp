// The dynamic loss scaler (optimizer/loss_scaler.hpp). Its rule is re-derived from PyTorch's
// `_amp_update_scale_` (aten/src/ATen/native/cuda/AmpKernels.cu, amp_update_scale_cuda_kernel; the
// CPU kernel in aten/src/ATen/native/cpu/AmpGradScalerKernels.cpp is the same): on found_inf the
// scale is multiplied by backoff_factor and the tracker reset; otherwise the tracker counts up and,
// on reaching growth_interval, the scale is multiplied by growth_factor if that stays finite and
// the tracker resets. Here: a hand-worked sequence, the float rounding of the products, the
// optimizer driving the scaler from its skip path against a float64 SAM reference that applies
// only the steps whose fp16-emulated gradients did not overflow, the errors, and checkpoints.
#include <doctest/doctest.h>
#include <flatmin/flatmin.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "support/reference.hpp"

namespace {

namespace fm = flatmin;
namespace ref = flatmin_test::ref;

using sam_sgd = fm::sharpness_aware<float, fm::backend::eigen, fm::perturb::l2, fm::mask::dense, fm::base::sgd>;

}  // namespace

TEST_CASE("loss_scaler: a hand-worked sequence of overflows and growths") {
  const fm::dynamic_loss_scale o{.enabled = true, .init_scale = 8, .growth_factor = 2, .backoff_factor = 0.5,
                                 .growth_interval = 3};
  fm::loss_scaler s(o);
  CHECK(s.scale() == 8.0f);
  // found_inf per step, and the scale / tracker after it, worked by hand from the rule above.
  struct row {
    bool inf;
    float scale;
    std::uint64_t tracker;
  };
  const row rows[] = {
      {false, 8, 1}, {false, 8, 2}, {false, 16, 0},  // the third applied step in a row grows it
      {true, 8, 0},  {false, 8, 1}, {true, 4, 0},    // an overflow resets the count
      {true, 2, 0},  {false, 2, 1}, {false, 2, 2},  {false, 4, 0}, {false, 4, 1},
  };
  int k = 0;
  for (const auto& r : rows) {
    CAPTURE(k++);
    s.update(r.inf, o);
    CHECK(s.scale() == r.scale);
    CHECK(s.growth_tracker() == r.tracker);
  }
}

TEST_CASE("loss_scaler: products are formed in double and rounded to float once; growth stops at the float max") {
  fm::dynamic_loss_scale o{.enabled = true, .init_scale = 3, .growth_factor = 3, .backoff_factor = 0.1,
                           .growth_interval = 1};
  fm::loss_scaler s(o);
  s.update(true, o);
  // 3 · 0.1 = 0.30000000000000004 in double, whose nearest float is 0.3f (0x3e99999a).
  CHECK(s.scale() == 0.3f);
  s.update(false, o);  // 0.3f · 3 in double = 0.90000003576278687, nearest float 0.90000004f
  CHECK(s.scale() == static_cast<float>(0.90000003576278687));
  CHECK(s.scale() != 0.9f);

  o.growth_factor = 2;
  fm::loss_scaler big(fm::dynamic_loss_scale{.enabled = true, .init_scale = 0x1p127, .growth_factor = 2,
                                             .growth_interval = 1});
  big.update(false, o);  // 2^128 is not a float: the scale stays, the tracker resets
  CHECK(big.scale() == 0x1p127f);
  CHECK(big.growth_tracker() == 0);
}

namespace {

// A quadratic per entry, g_i = a_i (w_i − c_i), written into the gradients multiplied by the loss
// scale as an fp16 backward pass would hold it: an entry whose scaled value exceeds fp16's largest
// finite number (65504) becomes +-inf.
struct fp16_problem {
  std::vector<double> a, c;
  explicit fp16_problem(std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      a.push_back(0.5 + 0.37 * static_cast<double>(i % 5));
      c.push_back(0.25 * static_cast<double>(i % 3) - 0.3);
    }
  }
  double grad(std::size_t i, double w) const { return a[i] * (w - c[i]); }
  // The scaled gradient, or inf where fp16 would overflow.
  static double scaled(double g, double scale) {
    const double x = g * scale;
    return std::abs(x) > 65504.0 ? std::copysign(std::numeric_limits<double>::infinity(), x) : x;
  }
};

}  // namespace

TEST_CASE("loss_scaler: the optimizer backs off on overflow, skips, grows, and matches a float64 reference") {
  constexpr std::size_t n = 6;
  const fp16_problem p(n);
  std::vector<float> w{3.0f, -2.0f, 1.5f, 4.0f, -1.0f, 2.5f}, g(n, 0.0f);
  fm::param_set<float> ps;
  ps.add("w", w, g);
  const fm::dynamic_loss_scale ls{.enabled = true, .init_scale = 0x1p16, .growth_factor = 2,
                                  .backoff_factor = 0.5, .growth_interval = 2};
  sam_sgd opt(ps, {.base = {.lr = 0.1}, .perturb = {.rho = 0.05}, .options = {.loss_scale = ls}});

  // Reference: the same rule by hand, SAM over SGD in double, rounding w to float where the
  // optimizer writes it (the perturbed and the updated weights).
  ref::vec rw(w.begin(), w.end());
  double rscale = 0x1p16;
  std::uint64_t rtracker = 0;
  int skipped = 0, grown = 0;
  for (int step = 0; step < 40; ++step) {
    CAPTURE(step);
    const double scale = opt.loss_scale();
    REQUIRE(scale == rscale);
    int calls = 0;
    auto obj = [&] {
      ++calls;
      for (std::size_t i = 0; i < n; ++i)
        g[i] = static_cast<float>(fp16_problem::scaled(p.grad(i, w[i]), opt.loss_scale()));
      return 0.0;
    };
    const auto r = opt.step(obj);
    CHECK(r.loss_scale == scale);

    // Reference step: g at w (scaled, maybe overflowed); if finite, ε, g_adv at round(w + ε).
    ref::vec gs(n), g1(n);
    bool overflow = false;
    for (std::size_t i = 0; i < n; ++i) {
      gs[i] = static_cast<float>(fp16_problem::scaled(p.grad(i, rw[i]), scale));
      overflow |= !std::isfinite(gs[i]);
      g1[i] = static_cast<double>(static_cast<float>(gs[i] * static_cast<float>(1.0 / scale)));
    }
    if (!overflow) {
      double n2 = 0;
      for (double x : g1) n2 += x * x;
      const double k = 0.05 / (std::sqrt(n2) + 1e-12);
      ref::vec wp(n);
      for (std::size_t i = 0; i < n; ++i)
        wp[i] = static_cast<float>(static_cast<float>(rw[i]) + static_cast<float>(k) * static_cast<float>(g1[i]));
      for (std::size_t i = 0; i < n; ++i) {
        const double ga = static_cast<float>(fp16_problem::scaled(p.grad(i, wp[i]), scale));
        overflow |= !std::isfinite(ga);
        g1[i] = static_cast<float>(static_cast<float>(ga) * static_cast<float>(1.0 / scale));
      }
      if (!overflow)
        for (std::size_t i = 0; i < n; ++i) rw[i] = static_cast<float>(rw[i] - 0.1 * g1[i]);
    }
    CHECK(r.skipped == overflow);
    CHECK(calls == (r.perturbed ? 2 : 1));
    if (overflow) {
      ++skipped;
      rscale *= 0.5;
      rtracker = 0;
    } else if (++rtracker == 2) {
      ++grown;
      rscale *= 2;
      rtracker = 0;
    }
    CHECK(opt.scaler().growth_tracker() == rtracker);
    for (std::size_t i = 0; i < n; ++i) CHECK(static_cast<double>(w[i]) == doctest::Approx(rw[i]).epsilon(1e-6));
  }
  // The run exercised both directions (2^16 · |g| overflows fp16 at first; the scale settles).
  CHECK(skipped >= 3);
  CHECK(grown >= 3);
}

TEST_CASE("loss_scaler: errors — a second scale, raise, bad options") {
  std::vector<float> w{1.0f, 2.0f}, g{0.5f, -0.5f};
  fm::param_set<float> ps;
  ps.add("w", w, g);
  sam_sgd opt(ps, {.base = {.lr = 0.1}, .options = {.loss_scale = {.enabled = true}}});
  CHECK(opt.loss_scale() == 65536.0);
  CHECK_THROWS_AS(opt.ascend({.grad_scale = 1024}), fm::usage_error);
  CHECK_FALSE(opt.ascended());
  CHECK(w == std::vector<float>{1.0f, 2.0f});
  opt.options().loss_scale.growth_factor = 1.0;
  CHECK_THROWS_AS(opt.ascend(), std::invalid_argument);
  opt.options().loss_scale.growth_factor = 2.0;
  CHECK(w == std::vector<float>{1.0f, 2.0f});

  using o = fm::dynamic_loss_scale;
  CHECK_THROWS_AS(sam_sgd(ps, {.base = {.lr = 0.1},
                               .options = {.on_nonfinite = fm::nonfinite::raise, .loss_scale = o{.enabled = true}}}),
                  std::invalid_argument);
  CHECK_THROWS_AS(sam_sgd(ps, {.base = {.lr = 0.1}, .options = {.loss_scale = o{.enabled = true, .backoff_factor = 1}}}),
                  std::invalid_argument);
  CHECK_THROWS_AS(sam_sgd(ps, {.base = {.lr = 0.1}, .options = {.loss_scale = o{.enabled = true, .growth_interval = 0}}}),
                  std::invalid_argument);
  CHECK_THROWS_AS(sam_sgd(ps, {.base = {.lr = 0.1}, .options = {.loss_scale = o{.enabled = true, .init_scale = 1e39}}}),
                  std::invalid_argument);
  // Off, the options are not checked (they are not used): the defaults of a disabled scaler.
  CHECK_NOTHROW(sam_sgd(ps, {.base = {.lr = 0.1}, .options = {.loss_scale = o{.growth_interval = 0}}}));
}

TEST_CASE("loss_scaler: checkpoints carry the scale and tracker; a run resumes bit-exactly") {
  constexpr std::size_t n = 4;
  const fp16_problem p(n);
  auto make = [&](std::vector<float>& w, std::vector<float>& g) {
    fm::param_set<float> ps;
    ps.add("w", w, g);
    return ps;
  };
  const fm::dynamic_loss_scale ls{.enabled = true, .init_scale = 0x1p17, .growth_interval = 3};
  std::vector<float> w{3.0f, -2.0f, 1.5f, 4.0f}, g(n);
  sam_sgd a(make(w, g), {.base = {.lr = 0.1, .momentum = 0.9}, .options = {.loss_scale = ls}});
  auto run = [&](sam_sgd& opt, std::vector<float>& ww, std::vector<float>& gg, int steps) {
    for (int s = 0; s < steps; ++s)
      opt.step([&] {
        for (std::size_t i = 0; i < n; ++i)
          gg[i] = static_cast<float>(fp16_problem::scaled(p.grad(i, ww[i]), opt.loss_scale()));
        return 0.0;
      });
  };
  run(a, w, g, 5);
  REQUIRE(a.loss_scale() != 0x1p17);  // it moved: the file holds more than the initial value
  std::stringstream file;
  a.save(file);
  std::vector<float> w2 = w, g2(n);
  sam_sgd b(make(w2, g2), {.base = {.lr = 0.1, .momentum = 0.9}, .options = {.loss_scale = ls}});
  b.load(file);
  CHECK(b.loss_scale() == a.loss_scale());
  CHECK(b.scaler().growth_tracker() == a.scaler().growth_tracker());
  run(a, w, g, 7);
  run(b, w2, g2, 7);
  CHECK(w2 == w);
  CHECK(b.loss_scale() == a.loss_scale());

  // Another composition: the same optimizer without the scaler refuses the file (and the reverse).
  std::vector<float> w3 = w, g3(n);
  sam_sgd c(make(w3, g3), {.base = {.lr = 0.1, .momentum = 0.9}});
  file.clear();
  file.seekg(0);
  CHECK_THROWS_AS(c.load(file), std::invalid_argument);
  std::stringstream plain;
  c.save(plain);
  CHECK_THROWS_AS(b.load(plain), std::invalid_argument);
  CHECK(b.loss_scale() == a.loss_scale());
}

TEST_CASE("loss_scaler: switched on after construction (a factory's optimizer) and off again") {
  std::vector<float> w{1.0f, -2.0f, 0.5f}, g(3);
  fm::param_set<float> ps;
  ps.add("w", w, g);
  auto opt = fm::sam<fm::backend::eigen>(ps, fm::base::sgd{.lr = 0.1});
  CHECK(opt.loss_scale() == 1.0);
  opt.options().loss_scale = {.enabled = true, .init_scale = 512, .growth_interval = 1};
  CHECK(opt.loss_scale() == 512.0);  // before its first step: the scale the first backward uses
  auto obj = [&] {
    for (std::size_t i = 0; i < 3; ++i) g[i] = static_cast<float>(opt.loss_scale() * (w[i] - 0.25));
    return 0.0;
  };
  auto r = opt.step(obj);
  CHECK(r.loss_scale == 512.0);
  CHECK_FALSE(r.skipped);
  CHECK(opt.loss_scale() == 1024.0);  // growth_interval 1: every applied step doubles it
  std::stringstream on;
  opt.save(on);
  opt.options().loss_scale.enabled = false;
  CHECK(opt.loss_scale() == 1.0);
  r = opt.step(obj);
  CHECK(r.loss_scale == 1.0);
  std::stringstream off;
  opt.save(off);
  CHECK(off.str().size() < on.str().size());  // the scaler's entries left the checkpoint
  opt.options().loss_scale.enabled = true;  // back on: a fresh scaler, at init_scale
  CHECK(opt.loss_scale() == 512.0);
  opt.load(on);  // and the file saved while it was on loads, scale included
  CHECK(opt.loss_scale() == 1024.0);
}
