// Exception safety of the step protocol (issue 18): an exception thrown by the objective at w or
// at w + ε, by a policy in descend() (a base optimizer's prepare()) or by a schedule (BAR's α
// schedule) leaves the weights bit-identical to what they were before the step and the optimizer
// idle, in the closure protocol (step()) and in the two-call protocol (ascend() / descend()). The
// reference is an uninterrupted run on a second copy of the model: the steps after the exception
// must match it bitwise, so nothing of the abandoned step (w + ε, a momentum update, a step count)
// survives.
#include <doctest/doctest.h>

#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "support/backends.hpp"
#include "support/runner.hpp"

using namespace flatmin_test;

namespace {
struct boom {};  // not a std::exception: the optimizer must not depend on the type

const layout_spec layout = {{"conv.weight", {4, 3, 3}},
                            {"conv.bias", {4}, {.weight_decay = false, .adaptive = false}},
                            {"head.weight", {5, 4}},
                            {"frozen", {3}, {.perturb = false}}};

/// SGD with momentum whose prepare() throws while `fail` is set (a policy throwing in descend()).
struct flaky_sgd : flatmin::base::sgd {
  std::shared_ptr<bool> fail = std::make_shared<bool>(false);

  template <class T, class Backend>
  class state : public flatmin::base::sgd::template state<T, Backend> {
    using inner = flatmin::base::sgd::template state<T, Backend>;

   public:
    state(const flaky_sgd& o, std::size_t n) : inner(o, n) {}
    flatmin::kernels::sgd_update<T> prepare(const flaky_sgd& o, std::size_t t) {
      if (*o.fail) throw boom{};
      return inner::prepare(o, t);
    }
  };
};

/// The quadratic's gradient (no noise: it depends on w only, so two runs see the same gradients),
/// throwing on the call numbered `fail_at` (0-based, counted over the objective's life).
template <class T>
struct flaky_objective {
  quadratic& q;
  model<T>& m;
  std::size_t calls = 0, fail_at = static_cast<std::size_t>(-1);
  double operator()() {
    if (calls++ == fail_at) throw boom{};
    return q.eval(m);
  }
};

template <class T>
void prepare(model<T>& m) {
  m.set_weights(random_vec(m.numel, 21));
  m.set_grads(random_vec(m.numel, 22));
}

/// Runs `steps` steps on a and b; on a, `interrupt(opt, obj)` runs first, before step `at`, and must
/// throw boom leaving the weights and the step count as they were. After every step, a == b bitwise.
template <class T, class MakeOpt, class Interrupt>
void against_uninterrupted(MakeOpt make, Interrupt interrupt, int at, int steps = 3) {
  using backend = typename std::invoke_result_t<MakeOpt, model<T>&>::backend_type;
  model<T> a(layout, test_space<backend>), b(layout, test_space<backend>);
  prepare(a);
  prepare(b);
  auto qa = quadratic::random(a.numel, 23, 0.5, 2.0, 0.0), qb = qa;
  auto oa = make(a);
  auto ob = make(b);
  flaky_objective<T> fa{qa, a}, fb{qb, b};
  for (int s = 1; s <= steps; ++s) {
    CAPTURE(s);
    if (s == at) {
      const auto before = a.raw_weights();
      const std::size_t done = oa.steps();
      CHECK_THROWS_AS(interrupt(oa, fa), boom);
      CHECK(bitwise_equal(a.raw_weights(), before));
      CHECK_FALSE(oa.ascended());
      CHECK(oa.steps() == done);
    }
    const auto ra = oa.step(fa);
    const auto rb = ob.step(fb);
    CHECK_FALSE(ra.skipped);
    CHECK(ra.step == rb.step);
    CHECK(bitwise_equal(a.raw_weights(), b.raw_weights()));
    CHECK(oa.steps() == ob.steps());
  }
}

/// The ways a step can be interrupted, for an optimizer over a flaky_sgd base.
template <class Opt, class T>
void throw_in_first_call(Opt& o, flaky_objective<T>& f) {
  f.fail_at = f.calls;
  o.step(f);
}
template <class Opt, class T>
void throw_in_second_call(Opt& o, flaky_objective<T>& f) {
  f.fail_at = f.calls + 1;
  o.step(f);
}
template <class Opt, class T>
void throw_in_prepare_closure(Opt& o, flaky_objective<T>& f) {
  *o.base().fail = true;
  try {
    o.step(f);
  } catch (...) {
    *o.base().fail = false;
    throw;
  }
}
template <class Opt, class T>
void throw_in_prepare_two_call(Opt& o, flaky_objective<T>& f) {
  f.q.eval(f.m);
  o.ascend();
  f.q.eval(f.m);
  *o.base().fail = true;
  try {
    o.descend();
  } catch (...) {
    *o.base().fail = false;
    throw;
  }
}
}  // namespace

TEST_CASE_TEMPLATE("exceptions: the objective throwing at w or at w + eps changes nothing", B, FLATMIN_TEST_BACKENDS) {
  auto sam = [](model<float>& m) {
    return flatmin::sam_t<float, flaky_sgd, B>(m.params, {.base = flaky_sgd{{.lr = 0.05, .momentum = 0.9}}});
  };
  auto asam = [](model<double>& m) {
    return flatmin::asam_t<double, flatmin::base::adamw, B>(m.params,
                                                            {.base = flatmin::base::adamw{.lr = 0.01}});
  };
  // block units of mask::random: the restore runs over the compact list of the kept blocks
  auto swp = [](model<double>& m) {
    return flatmin::sharpness_aware<double, B, flatmin::perturb::l2, flatmin::mask::random,
                                    flatmin::base::adam>(
        m.params, {.base = flatmin::base::adam{.lr = 0.01},
                   .mask = flatmin::mask::random{
                       .beta = 0.5, .unit = flatmin::mask::granularity::block, .block = 4, .seed = 3}});
  };
  auto baseline = [](model<float>& m) { return flatmin::sgd<B>(m.params, {.lr = 0.05, .momentum = 0.9}); };
  for (int at : {1, 2}) {
    CAPTURE(at);
    against_uninterrupted<float>(sam, [](auto& o, auto& f) { throw_in_first_call(o, f); }, at);
    against_uninterrupted<float>(sam, [](auto& o, auto& f) { throw_in_second_call(o, f); }, at);
    against_uninterrupted<double>(asam, [](auto& o, auto& f) { throw_in_first_call(o, f); }, at);
    against_uninterrupted<double>(asam, [](auto& o, auto& f) { throw_in_second_call(o, f); }, at);
    against_uninterrupted<double>(swp, [](auto& o, auto& f) { throw_in_second_call(o, f); }, at);
    against_uninterrupted<float>(baseline, [](auto& o, auto& f) { throw_in_first_call(o, f); }, at);
  }
}

TEST_CASE_TEMPLATE("exceptions: a policy throwing in descend() restores w, in both protocols", B,
                   FLATMIN_TEST_BACKENDS) {
  auto sam = [](model<float>& m) {
    return flatmin::sam_t<float, flaky_sgd, B>(m.params, {.base = flaky_sgd{{.lr = 0.05, .momentum = 0.9}}});
  };
  auto esam_blocks = [](model<double>& m) {
    return flatmin::sharpness_aware<double, B, flatmin::perturb::l2, flatmin::mask::random, flaky_sgd>(
        m.params, {.base = flaky_sgd{{.lr = 0.05, .momentum = 0.5}},
                   .mask = flatmin::mask::random{
                       .beta = 0.5, .unit = flatmin::mask::granularity::block, .block = 4, .seed = 5}});
  };
  auto baseline = [](model<double>& m) {
    return flatmin::sharpness_aware<double, B, flatmin::perturb::none, flatmin::mask::dense, flaky_sgd>(
        m.params, {.base = flaky_sgd{{.lr = 0.05, .momentum = 0.9}}});
  };
  for (int at : {1, 3}) {
    CAPTURE(at);
    against_uninterrupted<float>(sam, [](auto& o, auto& f) { throw_in_prepare_closure(o, f); }, at);
    against_uninterrupted<float>(sam, [](auto& o, auto& f) { throw_in_prepare_two_call(o, f); }, at);
    against_uninterrupted<double>(esam_blocks, [](auto& o, auto& f) { throw_in_prepare_closure(o, f); }, at);
    against_uninterrupted<double>(esam_blocks, [](auto& o, auto& f) { throw_in_prepare_two_call(o, f); }, at);
    against_uninterrupted<double>(baseline, [](auto& o, auto& f) { throw_in_prepare_closure(o, f); }, at);
  }
}

TEST_CASE_TEMPLATE("exceptions: a schedule throwing in descend() restores w (SAM + BAR)", B, FLATMIN_TEST_BACKENDS) {
  using opt_t = flatmin::sharpness_aware<double, B, flatmin::perturb::l2, flatmin::mask::dense, flatmin::base::sgd,
                                         flatmin::descent::standard, flatmin::regularize::balancedness>;
  // a LoRA pair, so that BAR's prepare() evaluates the schedule
  std::vector<double> x1{1.0, 2.0, -1.0}, gx1(3), y1{0.1, 0.2}, gy1(2), x2 = x1, gx2(3), y2 = y1, gy2(2);
  flatmin::param_set<double> p1, p2;
  p1.add_lora_pair("p", x1.data(), gx1.data(), {3, 1}, y1.data(), gy1.data(), {2, 1});
  p2.add_lora_pair("p", x2.data(), gx2.data(), {3, 1}, y2.data(), gy2.data(), {2, 1});
  auto fail = std::make_shared<bool>(false);
  auto make = [&](flatmin::param_set<double>& p) {
    return opt_t(p, {.base = flatmin::base::sgd{.lr = 0.1, .momentum = 0.9},
                     .perturb = flatmin::perturb::l2{.rho = 0.2},
                     .regularizer = flatmin::regularize::balancedness{
                         .rho = 0.5, .alpha_schedule = [fail](std::size_t t) {
                           if (*fail) throw boom{};
                           return 1.0 / static_cast<double>(t);
                         }}});
  };
  auto o1 = make(p1), o2 = make(p2);
  // g = ∇ ½‖x‖² + ½‖y − 1‖², depends on the weights only
  auto obj = [](std::vector<double>& x, std::vector<double>& gx, std::vector<double>& y, std::vector<double>& gy) {
    return [x = &x, gx = &gx, y = &y, gy = &gy] {
      for (std::size_t i = 0; i < x->size(); ++i) (*gx)[i] = (*x)[i];
      for (std::size_t i = 0; i < y->size(); ++i) (*gy)[i] = (*y)[i] - 1.0;
      return 0.0;
    };
  };
  for (int s = 1; s <= 3; ++s) {
    CAPTURE(s);
    if (s == 2) {
      const auto xb = x1, yb = y1;
      *fail = true;
      CHECK_THROWS_AS(o1.step(obj(x1, gx1, y1, gy1)), boom);  // closure protocol
      CHECK(x1 == xb);
      CHECK(y1 == yb);
      CHECK_FALSE(o1.ascended());
      obj(x1, gx1, y1, gy1)();
      o1.ascend();
      CHECK(x1 != xb);
      obj(x1, gx1, y1, gy1)();
      CHECK_THROWS_AS(o1.descend(), boom);  // two-call protocol
      CHECK(x1 == xb);
      CHECK(y1 == yb);
      CHECK_FALSE(o1.ascended());
      CHECK(o1.steps() == 1);
      *fail = false;
    }
    o1.step(obj(x1, gx1, y1, gy1));
    o2.step(obj(x2, gx2, y2, gy2));
    CHECK(x1 == x2);  // bitwise: == on doubles that are not NaN
    CHECK(y1 == y2);
  }
}

TEST_CASE("exceptions: options made invalid are refused by step() before the objective runs") {
  model<float> m(layout);
  prepare(m);
  auto q = quadratic::random(m.numel, 24, 0.5, 2.0, 0.0);
  auto opt = flatmin::sam(m.params, flatmin::base::sgd{.lr = 0.1});
  opt.step(q.objective(m));
  const auto before = m.raw_weights();
  const auto grads = m.raw_grads();
  opt.perturbation().rho = -1;
  std::size_t calls = 0;
  CHECK_THROWS_AS(opt.step([&] {
    ++calls;
    return q.eval(m);
  }),
                  std::invalid_argument);
  CHECK(calls == 0);
  CHECK(bitwise_equal(m.raw_grads(), grads));
  CHECK(bitwise_equal(m.raw_weights(), before));
  // and step() between ascend() and descend() is misuse, refused before the objective runs
  opt.perturbation().rho = 0.05;
  opt.ascend();
  CHECK_THROWS_AS(opt.step([&] {
    ++calls;
    return q.eval(m);
  }),
                  flatmin::usage_error);
  CHECK(calls == 0);
  CHECK(opt.ascended());
  opt.cancel();
  CHECK(bitwise_equal(m.raw_weights(), before));
}
