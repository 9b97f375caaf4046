// The step protocol and its errors: misuse (usage_error), invalid options at construction and
// after mutation (invalid_argument), grad_scale / found_inf, non-finite gradients at w and at
// w + ε (skip or raise; weights and optimizer state untouched), cancel(), objectives that throw,
// baselines without ascend().
#include <doctest/doctest.h>

#include <limits>
#include <string>

#include "support/runner.hpp"

using namespace flatmin_test;

namespace {
const double nan_v = std::numeric_limits<double>::quiet_NaN();
const double inf_v = std::numeric_limits<double>::infinity();

const layout_spec small_layout = {{"fc.weight", {4, 5}},
                                  {"fc.bias", {4}, {.weight_decay = false, .adaptive = false}},
                                  {"frozen", {3}, {.perturb = false}}};

/// Calls f(), expects std::invalid_argument whose message names `option`.
template <class F>
void expect_invalid(F&& f, const std::string& option) {
  CAPTURE(option);
  bool thrown = false;
  try {
    f();
  } catch (const std::invalid_argument& e) {
    thrown = true;
    const std::string what = e.what();
    CAPTURE(what);
    CHECK(what.find(option) != std::string::npos);
  }
  CHECK(thrown);
}

template <class T>
void fill(model<T>& m, std::uint64_t seed) {
  m.set_weights(random_vec(m.numel, seed));
  m.set_grads(random_vec(m.numel, seed + 1));
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// Protocol misuse
// ---------------------------------------------------------------------------------------------

TEST_CASE("protocol: descend() without ascend() throws usage_error and leaves the weights alone") {
  model<float> m(small_layout);
  fill(m, 1);
  const auto before = m.raw_weights();
  auto opt = flatmin::sam(m.params, flatmin::base::sgd{.lr = 0.1, .momentum = 0.9});
  CHECK_THROWS_AS(opt.descend(), flatmin::usage_error);
  CHECK(bitwise_equal(m.raw_weights(), before));
  CHECK(opt.steps() == 0);
  // and after a completed step, a second descend() is misuse too
  opt.ascend();
  opt.descend();
  const auto after = m.raw_weights();
  CHECK_THROWS_AS(opt.descend(), flatmin::usage_error);
  CHECK(bitwise_equal(m.raw_weights(), after));
  CHECK(opt.steps() == 1);
}

TEST_CASE("protocol: ascend() twice throws usage_error and leaves the perturbed weights alone") {
  model<float> m(small_layout);
  fill(m, 2);
  const auto before = m.raw_weights();
  auto opt = flatmin::asam(m.params, flatmin::base::adamw{});
  opt.ascend();
  const auto perturbed = m.raw_weights();
  CHECK_FALSE(bitwise_equal(perturbed, before));
  CHECK_THROWS_AS(opt.ascend(), flatmin::usage_error);
  CHECK(bitwise_equal(m.raw_weights(), perturbed));
  CHECK(opt.ascended());
  opt.cancel();  // the step can still be abandoned cleanly
  CHECK(bitwise_equal(m.raw_weights(), before));
  CHECK_FALSE(opt.ascended());
}

TEST_CASE("protocol: momentum turned on after construction is refused by ascend(), before w moves") {
  model<float> m(small_layout);
  fill(m, 3);
  const auto before = m.raw_weights();
  auto opt = flatmin::sam(m.params, flatmin::base::sgd{.lr = 0.1});  // no momentum buffer
  opt.base().momentum = 0.9;
  CHECK_THROWS_AS(opt.ascend(), flatmin::usage_error);
  CHECK(bitwise_equal(m.raw_weights(), before));
  CHECK_FALSE(opt.ascended());
  opt.base().momentum = 0;  // back to what the state fits: steps work again
  opt.ascend();
  opt.descend();
  CHECK(opt.steps() == 1);
}

TEST_CASE("protocol: cancel() restores the weights bit-exactly and the next step is as if nothing happened") {
  model<float> a(small_layout), b(small_layout);
  fill(a, 3);
  fill(b, 3);
  auto qa = quadratic::random(a.numel, 3, 0.5, 2.0, 0.0), qb = qa;
  auto oa = flatmin::sam(a.params, flatmin::base::adam{.lr = 0.01});
  auto ob = flatmin::sam(b.params, flatmin::base::adam{.lr = 0.01});
  const auto before = a.raw_weights();
  qa.eval(a);
  oa.ascend();
  oa.cancel();
  CHECK(bitwise_equal(a.raw_weights(), before));
  CHECK(oa.steps() == 0);
  oa.cancel();  // idle: no-op
  CHECK(bitwise_equal(a.raw_weights(), before));
  for (int s = 0; s < 3; ++s) {
    oa.step(qa.objective(a));
    ob.step(qb.objective(b));
    CHECK(bitwise_equal(a.raw_weights(), b.raw_weights()));
  }
}

// ---------------------------------------------------------------------------------------------
// Invalid options
// ---------------------------------------------------------------------------------------------

TEST_CASE("options: every invalid option throws invalid_argument at construction, naming the option") {
  model<float> m(small_layout);
  fill(m, 4);
  const auto before = m.raw_weights();
  using flatmin::base::adam;
  using flatmin::base::adamw;
  using flatmin::base::sgd;
  const auto& ps = m.params;

  // base::sgd
  for (double lr : {0.0, -1.0, nan_v, inf_v}) expect_invalid([&] { flatmin::sgd(ps, {.lr = lr}); }, "lr");
  for (double mu : {-0.1, 1.0, 2.0, nan_v}) expect_invalid([&] { flatmin::sgd(ps, {.momentum = mu}); }, "momentum");
  for (double d : {-0.1, 1.5, nan_v})
    expect_invalid([&] { flatmin::sgd(ps, {.momentum = 0.9, .dampening = d}); }, "dampening");
  for (double wd : {-1e-3, nan_v, inf_v}) expect_invalid([&] { flatmin::sgd(ps, {.weight_decay = wd}); }, "weight_decay");
  expect_invalid([&] { flatmin::sgd(ps, {.nesterov = true}); }, "nesterov");
  expect_invalid([&] { flatmin::sgd(ps, {.momentum = 0.9, .dampening = 0.1, .nesterov = true}); }, "nesterov");

  // base::adam and base::adamw
  for (double lr : {0.0, -1.0, nan_v, inf_v}) {
    expect_invalid([&] { flatmin::adam(ps, {.lr = lr}); }, "lr");
    expect_invalid([&] { flatmin::adamw(ps, {.lr = lr}); }, "lr");
  }
  for (double b : {-0.1, 1.0, 1.5, nan_v}) {
    expect_invalid([&] { flatmin::adam(ps, {.beta1 = b}); }, "beta1");
    expect_invalid([&] { flatmin::adam(ps, {.beta2 = b}); }, "beta2");
    expect_invalid([&] { flatmin::adamw(ps, {.beta1 = b}); }, "beta1");
    expect_invalid([&] { flatmin::adamw(ps, {.beta2 = b}); }, "beta2");
  }
  for (double e : {0.0, -1e-8, nan_v, inf_v}) {
    expect_invalid([&] { flatmin::adam(ps, {.eps = e}); }, "eps");
    expect_invalid([&] { flatmin::adamw(ps, {.eps = e}); }, "eps");
  }
  for (double wd : {-0.1, nan_v, inf_v}) {
    expect_invalid([&] { flatmin::adam(ps, {.weight_decay = wd}); }, "weight_decay");
    expect_invalid([&] { flatmin::adamw(ps, {.weight_decay = wd}); }, "weight_decay");
  }

  // perturb::l2 (SAM) and perturb::adaptive (ASAM)
  for (double bad : {-0.01, nan_v, inf_v, -inf_v}) {
    expect_invalid([&] { flatmin::sam(ps, sgd{}, {.rho = bad}); }, "rho");
    expect_invalid([&] { flatmin::sam(ps, sgd{}, {.xi = bad}); }, "xi");
    expect_invalid([&] { flatmin::asam(ps, adamw{}, {.rho = bad}); }, "rho");
    expect_invalid([&] { flatmin::asam(ps, adamw{}, {.eta = bad}); }, "eta");
    expect_invalid([&] { flatmin::asam(ps, adamw{}, {.xi = bad}); }, "xi");
  }
  // the values on the border are valid
  CHECK_NOTHROW(flatmin::sam(ps, sgd{.lr = 1e-30}, {.rho = 0.0, .xi = 0.0}));
  CHECK_NOTHROW(flatmin::asam(ps, adam{.beta1 = 0.0, .beta2 = 0.0}, {.rho = 0.0, .eta = 0.0, .xi = 0.0}));
  CHECK_NOTHROW(flatmin::sgd(ps, {.momentum = 0.5, .dampening = 1.0}));
  CHECK(bitwise_equal(m.raw_weights(), before));
}

TEST_CASE("options: an option made invalid between steps throws at the next call, weights untouched") {
  using mutator = std::function<void(flatmin::sam_t<float, flatmin::base::sgd>&)>;
  const std::pair<const char*, mutator> cases[] = {
      {"lr", [](auto& o) { o.base().lr = -1; }},
      {"lr", [](auto& o) { o.base().lr = nan_v; }},
      {"momentum", [](auto& o) { o.base().momentum = 1.0; }},
      {"dampening", [](auto& o) { o.base().dampening = -1.0; }},
      {"weight_decay", [](auto& o) { o.base().weight_decay = nan_v; }},
      {"nesterov", [](auto& o) { o.base().nesterov = true, o.base().dampening = 0.5; }},
      {"rho", [](auto& o) { o.perturbation().rho = -0.1; }},
      {"xi", [](auto& o) { o.perturbation().xi = nan_v; }},
  };
  for (const auto& c : cases) {  // not a structured binding: clang 14 cannot capture one (CAPTURE)
    const char* const name = c.first;
    const mutator& mutate = c.second;
    CAPTURE(name);
    model<float> m(small_layout);
    fill(m, 5);
    auto opt = flatmin::sam(m.params, flatmin::base::sgd{.lr = 0.1, .momentum = 0.9});
    opt.ascend();
    opt.descend();  // one good step first
    const auto before = m.raw_weights();
    const auto good_base = opt.base();
    const auto good_perturb = opt.perturbation();

    mutate(opt);  // before ascend()
    expect_invalid([&] { opt.ascend(); }, name);
    CHECK(bitwise_equal(m.raw_weights(), before));
    CHECK_FALSE(opt.ascended());

    opt.base() = good_base;  // between ascend() and descend()
    opt.perturbation() = good_perturb;
    opt.ascend();
    CHECK_FALSE(bitwise_equal(m.raw_weights(), before));
    mutate(opt);
    // issue 18: an exception after the ascent restores w and leaves the optimizer idle (it used
    // to leave w + eps in the weights and the step pending)
    expect_invalid([&] { opt.descend(); }, name);
    CHECK(bitwise_equal(m.raw_weights(), before));
    CHECK_FALSE(opt.ascended());
    CHECK(opt.steps() == 1);
    opt.base() = good_base;
    opt.perturbation() = good_perturb;
    opt.cancel();
    CHECK(bitwise_equal(m.raw_weights(), before));
  }
  // and a plain base optimizer, descend() alone
  model<double> m(small_layout);
  fill(m, 6);
  auto opt = flatmin::adamw(m.params);
  const auto before = m.raw_weights();
  opt.base().beta2 = 1.0;
  expect_invalid([&] { opt.descend(); }, "beta2");
  CHECK(bitwise_equal(m.raw_weights(), before));
  CHECK(opt.steps() == 0);
}

TEST_CASE("options: an invalid grad_scale throws invalid_argument, weights untouched") {
  model<float> m(small_layout);
  fill(m, 7);
  const auto before = m.raw_weights();
  auto opt = flatmin::sam(m.params, flatmin::base::sgd{.lr = 0.1});
  for (double s : {0.0, -2.0, nan_v, inf_v}) {
    expect_invalid([&] { opt.ascend({.grad_scale = s}); }, "grad_scale");
    CHECK(bitwise_equal(m.raw_weights(), before));
    CHECK_FALSE(opt.ascended());
  }
  opt.ascend();
  expect_invalid([&] { opt.descend({.grad_scale = 0.0}); }, "grad_scale");
  CHECK(bitwise_equal(m.raw_weights(), before));  // issue 18: restored, idle (was: w + eps kept)
  CHECK_FALSE(opt.ascended());
  opt.cancel();
}

// ---------------------------------------------------------------------------------------------
// Mixed precision: grad_scale, found_inf
// ---------------------------------------------------------------------------------------------

TEST_CASE_TEMPLATE("grad_scale: gradients scaled by S with grad_scale = S give the unscaled step", T, float, double) {
  for (double S : {1024.0, 1000.0, 1.0 / 64}) {
    CAPTURE(S);
    model<T> a(small_layout), b(small_layout);
    a.set_weights(random_vec(a.numel, 8));
    b.set_weights(random_vec(b.numel, 8));
    auto qa = quadratic::random(a.numel, 8), qb = qa;
    auto oa = flatmin::asam(a.params, flatmin::base::adam{.lr = 0.01, .weight_decay = 0.1});
    auto ob = flatmin::asam(b.params, flatmin::base::adam{.lr = 0.01, .weight_decay = 0.1});
    auto scaled = [&](model<T>& m) {
      for (auto& t : m.g)
        for (T& x : t) x = static_cast<T>(x * S);
    };
    for (int s = 0; s < 5; ++s) {
      qa.eval(a);
      const auto ra = oa.ascend();
      qb.eval(b);
      scaled(b);
      const auto rb = ob.ascend({.grad_scale = S});
      FLATMIN_CHECK_CLOSE1(rb.grad_norm, ra.grad_norm, rtol<T>);
      FLATMIN_CHECK_CLOSE1(rb.perturbation_norm, ra.perturbation_norm, rtol<T>);
      qa.eval(a);
      oa.descend();
      qb.eval(b);
      scaled(b);
      const auto gb = b.raw_grads();
      ob.descend({.grad_scale = S});
      CHECK(bitwise_equal(b.raw_grads(), gb));  // the gradients are never written
      FLATMIN_CHECK_CLOSE(b.weights(), a.weights(), rtol<T>);
      if (S == 1024.0) CHECK(bitwise_equal(b.raw_weights(), a.raw_weights()));  // a power of two is exact
    }
  }
}

TEST_CASE("found_inf: the caller's verdict skips the step, weights and state untouched") {
  model<float> a(small_layout), b(small_layout);
  fill(a, 9);
  fill(b, 9);
  auto qa = quadratic::random(a.numel, 9, 0.5, 2.0, 0.0), qb = qa;
  auto oa = flatmin::sam(a.params, flatmin::base::sgd{.lr = 0.05, .momentum = 0.9});
  auto ob = flatmin::sam(b.params, flatmin::base::sgd{.lr = 0.05, .momentum = 0.9});
  oa.step(qa.objective(a));
  ob.step(qb.objective(b));
  const auto before = a.raw_weights();

  // found_inf at ascend(): nothing perturbed, descend() returns the skipped report
  qa.eval(a);
  auto r = oa.ascend({.found_inf = true});
  CHECK(r.skipped);
  CHECK(r.reason == flatmin::skip_reason::found_inf);
  CHECK(bitwise_equal(a.raw_weights(), before));
  r = oa.descend();
  CHECK(r.skipped);
  CHECK(r.reason == flatmin::skip_reason::found_inf);
  CHECK(bitwise_equal(a.raw_weights(), before));

  // found_inf at descend(): restored, skipped
  qa.eval(a);
  oa.ascend({.found_inf = false});
  qa.eval(a);
  r = oa.descend({.found_inf = true});
  CHECK(r.skipped);
  CHECK(r.reason == flatmin::skip_reason::found_inf);
  CHECK(bitwise_equal(a.raw_weights(), before));
  CHECK(oa.steps() == 1);

  // found_inf = false is a promise: the step is the ordinary one
  for (int s = 0; s < 3; ++s) {
    qa.eval(a);
    oa.ascend({.found_inf = false});
    qa.eval(a);
    CHECK_FALSE(oa.descend({.found_inf = false}).skipped);
    ob.step(qb.objective(b));
    CHECK(bitwise_equal(a.raw_weights(), b.raw_weights()));
  }
}

// ---------------------------------------------------------------------------------------------
// Non-finite gradients
// ---------------------------------------------------------------------------------------------

namespace {
/// Runs `good` steps on a and b, then a bad step on a only (bad value `v` injected at entry `at`
/// of g (`where == 0`) or of g_adv (`where == 1`)), then `good` more steps on both: the bad step
/// must change nothing, neither the weights nor the optimizer state.
template <class T, class MakeOpt>
void bad_step_changes_nothing(MakeOpt make, double v, int where, std::size_t at) {
  CAPTURE(v);
  CAPTURE(where);
  CAPTURE(at);
  model<T> a(small_layout), b(small_layout);
  a.set_weights(random_vec(a.numel, 10));
  b.set_weights(random_vec(b.numel, 10));
  auto q = quadratic::random(a.numel, 10, 0.5, 2.0, 0.0);  // no noise: g depends on w only
  auto oa = make(a), ob = make(b);
  constexpr bool perturbs = decltype(oa)::perturbs;
  for (int s = 0; s < 3; ++s) {
    oa.step(q.objective(a));
    ob.step(q.objective(b));
  }
  const auto before = a.raw_weights();
  const auto grads_at = [&] {
    q.eval(a);
  };
  flatmin::step_report r;
  if (where == 0 || !perturbs) {
    grads_at();
    a.gat(at) = static_cast<T>(v);
    if constexpr (perturbs) {
      r = oa.ascend();
      CHECK(r.skipped);
      CHECK(r.reason == flatmin::skip_reason::nonfinite_gradient);
      CHECK(bitwise_equal(a.raw_weights(), before));
    }
    r = oa.descend();
    CHECK(r.reason == flatmin::skip_reason::nonfinite_gradient);
  } else {
    grads_at();
    r = oa.ascend();
    CHECK_FALSE(r.skipped);
    CHECK_FALSE(bitwise_equal(a.raw_weights(), before));
    grads_at();
    a.gat(at) = static_cast<T>(v);
    r = oa.descend();
    CHECK(r.reason == flatmin::skip_reason::nonfinite_perturbed_gradient);
  }
  CHECK(r.skipped);
  CHECK(std::string(flatmin::to_string(r.reason)).find("non-finite") != std::string::npos);
  CHECK(bitwise_equal(a.raw_weights(), before));
  CHECK(oa.steps() == 3);
  CHECK_FALSE(oa.ascended());
  for (int s = 0; s < 4; ++s) {
    const auto ra = oa.step(q.objective(a));
    const auto rb = ob.step(q.objective(b));
    CHECK_FALSE(ra.skipped);
    CHECK(bitwise_equal(a.raw_weights(), b.raw_weights()));
    CHECK(bitwise_equal(ra.grad_norm, rb.grad_norm));
    CHECK(ra.step == rb.step);
  }
}
}  // namespace

TEST_CASE_TEMPLATE("non-finite g or g_adv: the step is skipped, weights and state untouched", T, float, double) {
  using flatmin::base::adam;
  using flatmin::base::adamw;
  using flatmin::base::sgd;
  const std::size_t n = 20 + 4 + 3;
  for (double v : {nan_v, inf_v, -inf_v})
    for (int where : {0, 1})
      for (std::size_t at : {std::size_t{0}, std::size_t{21}, n - 1}) {  // weight, bias, frozen tensor
        bad_step_changes_nothing<T>([](model<T>& m) { return flatmin::sam(m.params, sgd{.lr = 0.05, .momentum = 0.9}); },
                                    v, where, at);
        bad_step_changes_nothing<T>([](model<T>& m) { return flatmin::sam(m.params, adam{.lr = 0.01}); }, v, where, at);
        bad_step_changes_nothing<T>([](model<T>& m) { return flatmin::asam(m.params, adamw{.lr = 0.01}); }, v, where,
                                    at);
        bad_step_changes_nothing<T>([](model<T>& m) { return flatmin::adamw(m.params, adamw{.lr = 0.01}); }, v, where,
                                    at);
        bad_step_changes_nothing<T>(
            [](model<T>& m) { return flatmin::sgd(m.params, sgd{.lr = 0.05, .momentum = 0.9, .nesterov = true}); }, v,
            where, at);
      }
}

TEST_CASE("non-finite gradient with nonfinite::raise: non_finite_error, weights restored") {
  for (int where : {0, 1}) {
    CAPTURE(where);
    model<float> m(small_layout);
    fill(m, 11);
    auto q = quadratic::random(m.numel, 11);
    auto opt = flatmin::sam(m.params, flatmin::base::adamw{.lr = 0.01},
                            {.rho = 0.1, .on_nonfinite = flatmin::nonfinite::raise});
    opt.step(q.objective(m));
    const auto before = m.raw_weights();
    q.eval(m);
    if (where == 0) {
      m.gat(3) = std::numeric_limits<float>::quiet_NaN();
      CHECK_THROWS_AS(opt.ascend(), flatmin::non_finite_error);
    } else {
      opt.ascend();
      q.eval(m);
      m.gat(3) = std::numeric_limits<float>::infinity();
      CHECK_THROWS_AS(opt.descend(), flatmin::non_finite_error);
    }
    CHECK(bitwise_equal(m.raw_weights(), before));
    CHECK_FALSE(opt.ascended());
    CHECK(opt.steps() == 1);
    CHECK_NOTHROW(opt.step(q.objective(m)));  // usable afterwards
    CHECK(opt.steps() == 2);
  }
  // the plain baselines too
  model<double> m(small_layout);
  fill(m, 12);
  auto opt = flatmin::sgd(m.params, {.lr = 0.1}, {.on_nonfinite = flatmin::nonfinite::raise});
  const auto before = m.raw_weights();
  m.gat(0) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(opt.descend(), flatmin::non_finite_error);
  CHECK(bitwise_equal(m.raw_weights(), before));
}

// ---------------------------------------------------------------------------------------------
// The closure protocol
// ---------------------------------------------------------------------------------------------

TEST_CASE("step(objective): calls the objective at w and at w + ε and reports the clean loss") {
  model<double> a(small_layout), b(small_layout);
  fill(a, 13);
  fill(b, 13);
  auto qa = quadratic::random(a.numel, 13), qb = qa;
  auto oa = flatmin::sam(a.params, flatmin::base::sgd{.lr = 0.1});
  auto ob = flatmin::sam(b.params, flatmin::base::sgd{.lr = 0.1});
  for (int s = 0; s < 3; ++s) {
    const double clean = qa.loss(a.weights());
    int calls = 0;
    const auto r = oa.step([&] {
      ++calls;
      return qa.eval(a);
    });
    CHECK(calls == 2);
    CHECK(r.loss == clean);
    CHECK(oa.last_report().loss == clean);
    // the same as the two-call protocol
    qb.eval(b);
    ob.ascend();
    qb.eval(b);
    ob.descend();
    CHECK(bitwise_equal(a.raw_weights(), b.raw_weights()));
  }
  // a plain baseline calls it once
  auto plain = flatmin::adam(a.params, {.lr = 0.01});
  int calls = 0;
  plain.step([&] {
    ++calls;
    return qa.eval(a);
  });
  CHECK(calls == 1);
}

TEST_CASE("step(objective): an objective that throws at w + ε leaves the weights restored") {
  model<float> m(small_layout);
  fill(m, 14);
  auto q = quadratic::random(m.numel, 14);
  auto opt = flatmin::asam(m.params, flatmin::base::sgd{.lr = 0.1, .momentum = 0.9});
  opt.step(q.objective(m));
  const auto before = m.raw_weights();
  int calls = 0;
  auto throws_second = [&] {
    if (++calls == 2) throw std::runtime_error("out of memory in the perturbed pass");
    return q.eval(m);
  };
  CHECK_THROWS_AS(opt.step(throws_second), std::runtime_error);
  CHECK(bitwise_equal(m.raw_weights(), before));
  CHECK_FALSE(opt.ascended());
  CHECK(opt.steps() == 1);
  // throwing at w: nothing happened at all
  auto throws_first = []() -> double { throw std::runtime_error("bad batch"); };
  CHECK_THROWS_AS(opt.step(throws_first), std::runtime_error);
  CHECK(bitwise_equal(m.raw_weights(), before));
  CHECK_FALSE(opt.ascended());
  CHECK_NOTHROW(opt.step(q.objective(m)));
  CHECK(opt.steps() == 2);
}

TEST_CASE("baselines: flatmin::sgd / adamw work with descend() alone, ascend() optional") {
  model<float> a(small_layout), b(small_layout);
  fill(a, 15);
  fill(b, 15);
  auto qa = quadratic::random(a.numel, 15), qb = qa;
  auto oa = flatmin::adamw(a.params, {.lr = 0.01});
  auto ob = flatmin::adamw(b.params, {.lr = 0.01});
  for (int s = 1; s <= 3; ++s) {
    qa.eval(a);
    const auto r = oa.descend();
    CHECK(r.step == static_cast<std::size_t>(s));
    CHECK(r.grad_norm > 0);
    qb.eval(b);
    const auto r0 = ob.ascend();  // allowed, does nothing
    CHECK(r0.perturbation_norm == 0.0);
    ob.descend();
    CHECK(bitwise_equal(a.raw_weights(), b.raw_weights()));
  }
  CHECK(oa.steps() == 3);
  auto s = flatmin::sgd(a.params, {.lr = 0.1, .momentum = 0.9});
  qa.eval(a);
  CHECK_NOTHROW(s.descend());
  CHECK_NOTHROW(s.descend());
  CHECK(s.steps() == 2);
}
