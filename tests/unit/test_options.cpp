// Options checked in the precision the optimizer computes in (issue 18): every real option of
// every policy probed with NaN, ±inf, −1, 0, 1e-50, 1e39, 1e300 (and values inside its range) is
// rejected with std::invalid_argument naming it, at construction and when set between steps,
// exactly when it does not fit its rule as a T; the weights never move on a refusal. Block sizes
// are checked before any mask state is built (block 0 was a SIGFPE, 2^63 + 1 an endless loop), and
// a granularity change after construction is refused at the next call.
//
// The reference is the hand-written table `expected_valid` below: for each rule and each probe,
// whether it is valid in float and in double (smallest normal float 1.18e-38, largest 3.4e38).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "support/backends.hpp"
#include "support/runner.hpp"

using namespace flatmin_test;

namespace {
const double nan_v = std::numeric_limits<double>::quiet_NaN();
const double inf_v = std::numeric_limits<double>::infinity();

const layout_spec layout = {{"fc.weight", {6, 5}},
                            {"fc.bias", {6}, {.weight_decay = false, .adaptive = false}},
                            {"frozen", {3}, {.perturb = false}}};

enum class rule { positive, non_negative, unit, unit_open, unit_positive };

const std::vector<double> probes = {nan_v, inf_v, -inf_v, -1.0, 0.0, 1e-50, 1e39, 1e300, 0.5, 1.0, 1e-30, 1e30};

/// Hand-worked: is `v` valid for `r` in float (is_float) or double?
bool expected_valid(rule r, double v, bool is_float) {
  if (v != v || v == inf_v || v == -inf_v || v < 0) return false;
  if (v == 1e-50) return !is_float;  // below float's smallest normal: 0 or a subnormal as a float
  if (v == 1e39 || v == 1e300) return !is_float && (r == rule::positive || r == rule::non_negative);
  switch (r) {
    case rule::positive: return v > 0;
    case rule::non_negative: return true;
    case rule::unit: return v <= 1;
    case rule::unit_open: return v < 1;
    case rule::unit_positive: return v > 0 && v <= 1;
  }
  return false;
}

template <class F>
std::string invalid_message(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

/// One option of one composition: how to set it in the options given to the constructor, and on a
/// live optimizer.
template <class Opt>
struct option_case {
  const char* name;
  rule r;
  std::function<Opt(const flatmin::param_set<typename Opt::value_type>&, double)> make;  // built with v
  std::function<void(Opt&, double)> set;                                                // set on a live one
};

/// Runs every probe of every case: at construction, and set between steps (ascend(), descend()
/// and step() each refuse it before anything moves; the original value makes it usable again).
template <class Opt>
void run_cases(const std::vector<option_case<Opt>>& cases, double derived_max = inf_v) {
  using T = typename Opt::value_type;
  using B = typename Opt::backend_type;
  const bool is_float = std::is_same_v<T, float>;
  for (const auto& c : cases) {
    for (const double v : probes) {
      const std::string name = c.name;
      CAPTURE(name);
      CAPTURE(v);
      model<T> m(layout, test_space<B>);
      m.set_weights(random_vec(m.numel, 3));
      m.set_grads(random_vec(m.numel, 4));
      const auto w0 = m.raw_weights();
      bool want = expected_valid(c.r, v, is_float);
      if (v > derived_max) want = false;  // a quantity derived from it overflows T
      const std::string msg = invalid_message([&] { static_cast<void>(c.make(m.params, v)); });
      CHECK((msg.empty()) == want);
      if (!msg.empty()) {
        CAPTURE(msg);
        CHECK(msg.find(c.name) != std::string::npos);
      }
      CHECK(bitwise_equal(m.raw_weights(), w0));

      // between steps: a good optimizer, one step, then the probe
      auto opt = c.make(m.params, 0.5);
      auto q = quadratic::random(m.numel, 5, 0.5, 2.0, 0.0);
      opt.step(q.objective(m));
      const auto w1 = m.raw_weights();
      c.set(opt, v);
      if (!want) {
        CHECK(invalid_message([&] { opt.ascend(); }).find(c.name) != std::string::npos);
        CHECK(invalid_message([&] { opt.step(q.objective(m)); }).find(c.name) != std::string::npos);
        if constexpr (!Opt::perturbs) CHECK(invalid_message([&] { opt.descend(); }).find(c.name) != std::string::npos);
        CHECK(bitwise_equal(m.raw_weights(), w1));
        CHECK_FALSE(opt.ascended());
        CHECK(opt.steps() == 1);
        c.set(opt, 0.5);
      }
      // valid: the step is applied, or skipped cleanly (ρ = 1e300 in double overflows ‖g_adv‖)
      const auto r = opt.step(q.objective(m));
      CHECK(opt.steps() == (r.skipped ? 1u : 2u));
      const auto w2 = m.weights();
      CHECK(std::all_of(w2.begin(), w2.end(), [](double x) { return std::isfinite(x); }));
    }
  }
}
}  // namespace

TEST_CASE_TEMPLATE("options: base optimizers' options are checked as T", T, float, double) {
  using B = flatmin::backend::eigen;
  using namespace flatmin::base;
  using sgd_opt = flatmin::sam_t<T, sgd, B>;
  using adam_opt = flatmin::sam_t<T, adam, B>;
  using adamw_opt = flatmin::sam_t<T, adamw, B>;
  using P = flatmin::param_set<T>;
  run_cases<sgd_opt>({
      {"lr", rule::positive, [](const P& p, double v) { return sgd_opt(p, {.base = sgd{.lr = v}}); },
       [](sgd_opt& o, double v) { o.base().lr = v; }},
      {"momentum", rule::unit_open,
       [](const P& p, double v) { return sgd_opt(p, {.base = sgd{.momentum = v}}); },
       [](sgd_opt& o, double v) { o.base().momentum = v; }},
      {"dampening", rule::unit,
       [](const P& p, double v) { return sgd_opt(p, {.base = sgd{.dampening = v}}); },
       [](sgd_opt& o, double v) { o.base().dampening = v; }},
      {"weight_decay", rule::non_negative,
       [](const P& p, double v) { return sgd_opt(p, {.base = sgd{.weight_decay = v}}); },
       [](sgd_opt& o, double v) { o.base().weight_decay = v; }},
  });
  auto adam_cases = [](auto tag) {
    using Opt = typename decltype(tag)::type;
    using Base = typename Opt::base_type;
    return std::vector<option_case<Opt>>{
        {"lr", rule::positive,
         [](const P& p, double v) { return Opt(p, {.base = Base{.lr = v, .weight_decay = 0}}); },
         [](Opt& o, double v) { o.base().lr = v; }},
        {"beta1", rule::unit_open, [](const P& p, double v) { return Opt(p, {.base = Base{.beta1 = v}}); },
         [](Opt& o, double v) { o.base().beta1 = v; }},
        {"beta2", rule::unit_open, [](const P& p, double v) { return Opt(p, {.base = Base{.beta2 = v}}); },
         [](Opt& o, double v) { o.base().beta2 = v; }},
        {"eps", rule::positive, [](const P& p, double v) { return Opt(p, {.base = Base{.eps = v}}); },
         [](Opt& o, double v) { o.base().eps = v; }},
        {"weight_decay", rule::non_negative,
         [](const P& p, double v) { return Opt(p, {.base = Base{.lr = 1e-3, .weight_decay = v}}); },
         [](Opt& o, double v) { o.base().weight_decay = v; }},
    };
  };
  run_cases<adam_opt>(adam_cases(std::type_identity<adam_opt>{}));
  run_cases<adamw_opt>(adam_cases(std::type_identity<adamw_opt>{}));
}

TEST_CASE_TEMPLATE("options: perturbations' options are checked as T", T, float, double) {
  using B = flatmin::backend::eigen;
  using flatmin::base::sgd;
  using sam_opt = flatmin::sam_t<T, sgd, B>;
  using asam_opt = flatmin::asam_t<T, sgd, B>;
  using P = flatmin::param_set<T>;
  run_cases<sam_opt>({
      {"rho", rule::non_negative,
       [](const P& p, double v) {
         return sam_opt(p, {.base = sgd{}, .perturb = flatmin::perturb::l2{.rho = v}});
       },
       [](sam_opt& o, double v) { o.perturbation().rho = v; }},
      {"xi", rule::non_negative,
       [](const P& p, double v) {
         return sam_opt(p, {.base = sgd{}, .perturb = flatmin::perturb::l2{.xi = v}});
       },
       [](sam_opt& o, double v) { o.perturbation().xi = v; }},
  });
  run_cases<asam_opt>({
      {"rho", rule::non_negative,
       [](const P& p, double v) {
         return asam_opt(p, {.base = sgd{}, .perturb = flatmin::perturb::adaptive{.rho = v}});
       },
       [](asam_opt& o, double v) { o.perturbation().rho = v; }},
      {"xi", rule::non_negative,
       [](const P& p, double v) {
         return asam_opt(p, {.base = sgd{}, .perturb = flatmin::perturb::adaptive{.xi = v}});
       },
       [](asam_opt& o, double v) { o.perturbation().xi = v; }},
  });
  // η: T_w² = (|w| + η)² must fit T too, so η ≤ √max(T) (1.84e19 in float, 1.34e154 in double):
  // 1e30 fails in float, 1e300 in double
  run_cases<asam_opt>({{"eta", rule::non_negative,
                        [](const P& p, double v) {
                          return asam_opt(p,
                                          {.base = sgd{}, .perturb = flatmin::perturb::adaptive{.eta = v}});
                        },
                        [](asam_opt& o, double v) { o.perturbation().eta = v; }}},
                      std::is_same_v<T, float> ? 1.84e19 : 1.34e154);
}

TEST_CASE_TEMPLATE("options: masks, selection and BAR options are checked as T", T, float, double) {
  using B = flatmin::backend::eigen;
  using flatmin::base::sgd;
  using P = flatmin::param_set<T>;
  using fisher_opt = flatmin::sharpness_aware<T, B, flatmin::perturb::l2, flatmin::mask::fisher, sgd>;
  using dynamic_opt = flatmin::sharpness_aware<T, B, flatmin::perturb::l2, flatmin::mask::dynamic, sgd>;
  using random_opt = flatmin::sharpness_aware<T, B, flatmin::perturb::l2, flatmin::mask::random, sgd>;
  using bar_opt = flatmin::bar_t<T, sgd, B>;
  run_cases<fisher_opt>({{"keep", rule::unit,
                          [](const P& p, double v) {
                            return fisher_opt(p, {.base = sgd{}, .mask = flatmin::mask::fisher{.keep = v}});
                          },
                          [](fisher_opt& o, double v) { o.mask().keep = v; }}});
  run_cases<dynamic_opt>({
      {"sparsity", rule::unit,
       [](const P& p, double v) {
         return dynamic_opt(p, {.base = sgd{}, .mask = flatmin::mask::dynamic{.sparsity = v}});
       },
       [](dynamic_opt& o, double v) { o.mask().sparsity = v; }},
      {"death_rate", rule::unit,
       [](const P& p, double v) {
         return dynamic_opt(p, {.base = sgd{}, .mask = flatmin::mask::dynamic{.death_rate = v}});
       },
       [](dynamic_opt& o, double v) { o.mask().death_rate = v; }},
  });
  run_cases<random_opt>({{"beta", rule::unit_positive,
                          [](const P& p, double v) {
                            return random_opt(p, {.base = sgd{}, .mask = flatmin::mask::random{.beta = v}});
                          },
                          [](random_opt& o, double v) { o.mask().beta = v; }}});
  run_cases<bar_opt>({
      {"rho", rule::non_negative,
       [](const P& p, double v) {
         return bar_opt(p, {.base = sgd{}, .regularizer = flatmin::regularize::balancedness{.rho = v}});
       },
       [](bar_opt& o, double v) { o.regularizer().rho = v; }},
      {"alpha", rule::non_negative,
       [](const P& p, double v) {
         return bar_opt(p, {.base = sgd{}, .regularizer = flatmin::regularize::balancedness{.alpha = v}});
       },
       [](bar_opt& o, double v) { o.regularizer().alpha = v; }},
      {"xi", rule::non_negative,
       [](const P& p, double v) {
         return bar_opt(p, {.base = sgd{}, .regularizer = flatmin::regularize::balancedness{.xi = v}});
       },
       [](bar_opt& o, double v) { o.regularizer().xi = v; }},
  });
  // γ of ESAM's selection
  for (const double v : probes) {
    CAPTURE(v);
    const bool want = expected_valid(rule::unit_positive, v, std::is_same_v<T, float>);
    const std::string msg = invalid_message([&] { flatmin::select::sharpness_sensitive{.gamma = v}.template validate<T>(); });
    CHECK(msg.empty() == want);
    if (!want) CHECK(msg.find("gamma") != std::string::npos);
  }
}

TEST_CASE_TEMPLATE("options: quantities derived from several options must fit T", T, float, double) {
  using B = flatmin::backend::eigen;
  using flatmin::base::adamw;
  using flatmin::base::sgd;
  model<T> m(layout);
  m.set_weights(random_vec(m.numel, 6));
  const auto w0 = m.raw_weights();
  const double big = std::is_same_v<T, float> ? 1e20 : 1e160;  // fits T alone, not squared
  // AdamW's shrink 1 − lr λ and Adam's largest step lr / (1 − β1)
  CHECK(invalid_message([&] {
          flatmin::sam_t<T, adamw, B>(m.params, {.base = adamw{.lr = big, .weight_decay = big}});
        }).find("lr * weight_decay") != std::string::npos);
  const double lr_top = std::is_same_v<T, float> ? 1e38 : 1e308;  // fits T; lr / (1 − 0.9) does not
  CHECK(invalid_message([&] {
          flatmin::sam_t<T, adamw, B>(m.params, {.base = adamw{.lr = lr_top, .weight_decay = 0}});
        }).find("lr / (1 - beta1)") != std::string::npos);
  CHECK_NOTHROW(
      flatmin::sam_t<T, adamw, B>(m.params, {.base = adamw{.lr = lr_top / 100, .weight_decay = 0}}));
  CHECK(invalid_message([&] {
          flatmin::sam_t<T, sgd, B>(m.params, {.base = sgd{.lr = big, .weight_decay = big}});
        }).find("lr * weight_decay") != std::string::npos);
  // BAR's ρ α
  CHECK(invalid_message([&] {
          flatmin::bar_t<T, sgd, B>(
              m.params,
              {.base = sgd{}, .regularizer = flatmin::regularize::balancedness{.rho = big, .alpha = big}});
        }).find("rho * alpha") != std::string::npos);
  // the same values one at a time are fine
  CHECK_NOTHROW(flatmin::sam_t<T, adamw, B>(m.params, {.base = adamw{.lr = 1e-3, .weight_decay = big}}));
  CHECK_NOTHROW(flatmin::bar_t<T, sgd, B>(
      m.params, {.base = sgd{}, .regularizer = flatmin::regularize::balancedness{.rho = big}}));
  CHECK(bitwise_equal(m.raw_weights(), w0));
}

TEST_CASE_TEMPLATE("options: grad_scale and 1 / grad_scale must both be normal numbers of T", T, float, double) {
  using B = flatmin::backend::eigen;
  const bool is_float = std::is_same_v<T, float>;
  model<T> m(layout);
  m.set_weights(random_vec(m.numel, 7));
  m.set_grads(random_vec(m.numel, 8));
  const auto w0 = m.raw_weights();
  auto opt = flatmin::sam_t<T, flatmin::base::sgd, B>(m.params, {.base = flatmin::base::sgd{.lr = 0.1}});
  // (scale, valid in float, valid in double), worked by hand: float normals span [1.18e-38, 3.4e38]
  struct probe {
    double s;
    bool f, d;
  };
  for (const probe p : {probe{nan_v, false, false}, {inf_v, false, false}, {-1, false, false}, {0, false, false},
                        {1e-40, false, true}, {1e-30, true, true}, {1e39, false, true}, {1e300, false, true},
                        {1e-320, false, false}, {65536, true, true},
                        {3e38, false, true}}) {  // 3e38 fits float, 1 / 3e38 does not
    CAPTURE(p.s);
    const bool want = is_float ? p.f : p.d;
    const std::string msg = invalid_message([&] { opt.ascend({.grad_scale = p.s}); });
    CHECK(msg.empty() == want);
    if (!want) CHECK(msg.find("grad_scale") != std::string::npos);
    if (want) opt.cancel();
    CHECK(bitwise_equal(m.raw_weights(), w0));
    CHECK_FALSE(opt.ascended());
  }
}

TEST_CASE_TEMPLATE("options: block sizes are checked before any mask state is built", B, FLATMIN_TEST_BACKENDS) {
  using flatmin::base::sgd;
  model<float> m(layout, test_space<B>);
  const std::size_t huge = (std::size_t{1} << 63) + 1;  // the shift loop never ended
  for (const std::size_t block : {std::size_t{0}, std::size_t{3}, std::size_t{2048}, huge}) {
    CAPTURE(block);
    // ESAM with block units: block 0 divided by zero in the units table (SIGFPE)
    CHECK(invalid_message([&] {
            flatmin::esam<B>(m.params, sgd{}, {.unit = flatmin::mask::granularity::block, .block = block});
          }).find("block") != std::string::npos);
    CHECK(invalid_message([&] { flatmin::ssam_f<B>(m.params, sgd{}, {.block = block}); }).find("block") !=
          std::string::npos);
    CHECK(invalid_message([&] { flatmin::ssam_d<B>(m.params, sgd{}, {.block = block}); }).find("block") !=
          std::string::npos);
    // the units table refuses it by itself
    auto opt = flatmin::sam<B>(m.params, sgd{});
    CHECK(invalid_message([&] {
            flatmin::mask::detail::units<float, B>(opt.layout(), flatmin::mask::detail::unit_kind::block, block);
          }).find("block") != std::string::npos);
  }
}

TEST_CASE_TEMPLATE("options: a granularity change after construction is refused at the next call", B,
                   FLATMIN_TEST_BACKENDS) {
  using flatmin::base::sgd;
  using flatmin::mask::granularity;
  model<double> m(layout, test_space<B>);
  m.set_weights(random_vec(m.numel, 9));
  auto q = quadratic::random(m.numel, 9, 0.5, 2.0, 0.0);
  auto fisher = flatmin::ssam_f<B>(m.params, sgd{.lr = 0.1}, {.refresh_every = 1, .block = 1});
  auto dyn = flatmin::ssam_d<B>(m.params, sgd{.lr = 0.1}, {.refresh_every = 1, .block = 4});
  auto esam_tensor = flatmin::esam<B>(m.params, sgd{.lr = 0.1}, {.unit = granularity::tensor});
  auto esam_block = flatmin::esam<B>(m.params, sgd{.lr = 0.1}, {.unit = granularity::block, .block = 8});

  auto refused = [&](auto& opt, auto change, auto undo) {
    const auto w = m.raw_weights();
    const std::size_t steps = opt.steps();
    change(opt.mask());
    q.eval(m);
    CHECK(invalid_message([&] { opt.ascend(); }).find("after construction") != std::string::npos);
    CHECK(bitwise_equal(m.raw_weights(), w));
    CHECK_FALSE(opt.ascended());
    undo(opt.mask());
    opt.ascend();  // usable again with the original granularity
    q.eval(m);
    opt.descend();
    CHECK(opt.steps() == steps + 1);
  };
  refused(fisher, [](auto& k) { k.block = 4; }, [](auto& k) { k.block = 1; });
  refused(dyn, [](auto& k) { k.block = 8; }, [](auto& k) { k.block = 4; });
  refused(dyn, [](auto& k) { k.block = 1; }, [](auto& k) { k.block = 4; });
  refused(esam_tensor, [](auto& k) { k.unit = granularity::element; }, [](auto& k) { k.unit = granularity::tensor; });
  refused(esam_block, [](auto& k) { k.block = 16; }, [](auto& k) { k.block = 8; });
  // a block option that does not matter for tensor units may change freely (it sizes nothing)
  esam_tensor.mask().block = 64;
  q.eval(m);
  CHECK_NOTHROW(esam_tensor.ascend());
  esam_tensor.cancel();
}

TEST_CASE("options: enumerations outside their values are refused") {
  model<float> m(layout);
  CHECK(invalid_message([&] {
          flatmin::sam(m.params, flatmin::base::sgd{}, {.on_nonfinite = static_cast<flatmin::nonfinite>(7)});
        }).find("on_nonfinite") != std::string::npos);
  CHECK(invalid_message([&] {
          flatmin::sharpness_aware<float, flatmin::backend::eigen, flatmin::perturb::l2,
                                   flatmin::mask::fisher, flatmin::base::sgd>(
              m.params, {.base = flatmin::base::sgd{},
                         .mask = {.source = static_cast<flatmin::mask::fisher_estimator>(9)}});
        }).find("source") != std::string::npos);
  CHECK(invalid_message([&] {
          flatmin::esam(m.params, flatmin::base::sgd{}, {.unit = static_cast<flatmin::mask::granularity>(5)});
        }).find("unit") != std::string::npos);
}

TEST_CASE("options: the message names the option, the rule, the type and the value as given") {
  model<float> m(layout);
  const std::string msg = invalid_message([&] { flatmin::adam(m.params, {.eps = 1e-50}); });
  CAPTURE(msg);
  CHECK(msg.find("base::adam") != std::string::npos);
  CHECK(msg.find("eps") != std::string::npos);
  CHECK(msg.find("float") != std::string::npos);
  CHECK(msg.find("1e-50") != std::string::npos);  // not "0.000000"
}
