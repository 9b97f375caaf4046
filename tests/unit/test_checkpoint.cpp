// save() / load(): a run saved after k steps and resumed in a fresh optimizer over a copy of the
// weights continues bitwise identically to the uninterrupted run; a checkpoint of another
// parameter count or element type is rejected with invalid_argument and changes nothing.
#include <doctest/doctest.h>

#include <sstream>

#include "support/problems.hpp"

using namespace flatmin_test;

namespace {
const layout_spec ckpt_layout = {{"w", {40, 3}}, {"b", {40}, {.weight_decay = false, .adaptive = false}},
                                 {"frozen", {5}, {.perturb = false}}};

template <class T, class MakeOpt>
void resumes_exactly(MakeOpt make) {
  const int k = 4, more = 6;
  model<T> a(ckpt_layout);
  a.set_weights(random_vec(a.numel, 31));
  auto qa = quadratic::random(a.numel, 31, 0.5, 2.0, 0.2);
  auto oa = make(a);
  for (int s = 0; s < k; ++s) oa.step(qa.objective(a));

  std::stringstream ckpt;
  oa.save(ckpt);

  model<T> b(ckpt_layout);
  b.set_raw_weights(a.raw_weights());
  auto qb = qa;  // the same data stream from here on
  auto ob = make(b);
  ob.load(ckpt);
  CHECK(ob.steps() == static_cast<std::size_t>(k));

  for (int s = 0; s < more; ++s) {
    const auto ra = oa.step(qa.objective(a));
    const auto rb = ob.step(qb.objective(b));
    CHECK(rb.step == ra.step);
    CHECK(bitwise_equal(b.raw_weights(), a.raw_weights()));
    CHECK(bitwise_equal(rb.grad_norm, ra.grad_norm));
  }

  // without the checkpoint the resumed run differs (the state matters): the test can fail
  model<T> c(ckpt_layout);
  auto qc = quadratic::random(c.numel, 31, 0.5, 2.0, 0.2);
  c.set_weights(random_vec(c.numel, 31));
  auto oc = make(c);
  for (int s = 0; s < k; ++s) oc.step(qc.objective(c));
  model<T> d(ckpt_layout);
  d.set_raw_weights(c.raw_weights());
  auto qd = qc;
  auto od = make(d);  // fresh state, no load
  oc.step(qc.objective(c));
  od.step(qd.objective(d));
  CHECK_FALSE(bitwise_equal(d.raw_weights(), c.raw_weights()));
}
}  // namespace

TEST_CASE_TEMPLATE("checkpoint: save after k steps, load into a fresh optimizer, continue bitwise identically", T,
                   float, double) {
  SUBCASE("sam + sgd momentum") {
    resumes_exactly<T>([](model<T>& m) { return flatmin::sam(m.params, flatmin::base::sgd{.lr = 0.05, .momentum = 0.9}); });
  }
  SUBCASE("asam + adam") {
    resumes_exactly<T>([](model<T>& m) { return flatmin::asam(m.params, flatmin::base::adam{.lr = 0.01}); });
  }
  SUBCASE("adamw") {
    resumes_exactly<T>([](model<T>& m) { return flatmin::adamw(m.params, {.lr = 0.01}); });
  }
}

TEST_CASE("checkpoint: another parameter count or element type is rejected, the optimizer unchanged") {
  model<float> a(ckpt_layout);
  a.set_weights(random_vec(a.numel, 32));
  auto qa = quadratic::random(a.numel, 32);
  auto oa = flatmin::sam(a.params, flatmin::base::adam{.lr = 0.01});
  for (int s = 0; s < 3; ++s) oa.step(qa.objective(a));
  std::stringstream float_ckpt;
  oa.save(float_ckpt);

  // a reference run, and the one that sees the bad loads: both continue identically
  auto run_pair = [&](auto& victim_opt, model<float>& victim, auto& ref_opt, model<float>& refm) {
    auto q1 = quadratic::random(victim.numel, 33), q2 = q1;
    for (int s = 0; s < 3; ++s) {
      victim_opt.step(q1.objective(victim));
      ref_opt.step(q2.objective(refm));
      CHECK(bitwise_equal(victim.raw_weights(), refm.raw_weights()));
    }
  };

  // another parameter count
  layout_spec other = ckpt_layout;
  other[0].shape = {41, 3};
  model<float> o(other);
  auto oo = flatmin::sam(o.params, flatmin::base::adam{.lr = 0.01});
  std::stringstream other_ckpt;
  oo.save(other_ckpt);

  // another element type
  model<double> dm(ckpt_layout);
  auto od = flatmin::sam(dm.params, flatmin::base::adam{.lr = 0.01});
  std::stringstream double_ckpt;
  od.save(double_ckpt);

  model<float> v(ckpt_layout), r(ckpt_layout);
  v.set_raw_weights(a.raw_weights());
  r.set_raw_weights(a.raw_weights());
  auto ov = flatmin::sam(v.params, flatmin::base::adam{.lr = 0.01});
  auto orf = flatmin::sam(r.params, flatmin::base::adam{.lr = 0.01});
  float_ckpt.seekg(0);
  ov.load(float_ckpt);
  float_ckpt.seekg(0);
  orf.load(float_ckpt);

  CHECK_THROWS_AS(ov.load(other_ckpt), std::invalid_argument);
  CHECK_THROWS_AS(ov.load(double_ckpt), std::invalid_argument);
  std::stringstream garbage("this is not a checkpoint at all, just text");
  CHECK_THROWS_AS(ov.load(garbage), std::invalid_argument);
  std::stringstream truncated(float_ckpt.str().substr(0, float_ckpt.str().size() / 2));
  CHECK_THROWS_AS(ov.load(truncated), std::invalid_argument);
  // a checkpoint of another composition (SGD with momentum has other buffers)
  model<float> s(ckpt_layout);
  auto os = flatmin::sam(s.params, flatmin::base::sgd{.lr = 0.1, .momentum = 0.9});
  std::stringstream sgd_ckpt;
  os.save(sgd_ckpt);
  CHECK_THROWS_AS(ov.load(sgd_ckpt), std::invalid_argument);

  // SGD state saved without momentum, loaded where momentum is on (and the reverse)
  model<float> p0(ckpt_layout), p1(ckpt_layout);
  auto no_mom = flatmin::sam(p0.params, flatmin::base::sgd{.lr = 0.1});
  auto mom = flatmin::sam(p1.params, flatmin::base::sgd{.lr = 0.1, .momentum = 0.9});
  std::stringstream no_mom_ckpt, mom_ckpt;
  no_mom.save(no_mom_ckpt);
  mom.save(mom_ckpt);
  CHECK_THROWS_AS(mom.load(no_mom_ckpt), std::invalid_argument);
  CHECK_THROWS_AS(no_mom.load(mom_ckpt), std::invalid_argument);

  CHECK(ov.steps() == 3);
  CHECK(bitwise_equal(v.raw_weights(), r.raw_weights()));
  run_pair(ov, v, orf, r);
}

TEST_CASE("checkpoint: save() and load() between ascend() and descend() are usage errors") {
  model<float> a(ckpt_layout);
  a.set_weights(random_vec(a.numel, 34));
  auto q = quadratic::random(a.numel, 34);
  auto opt = flatmin::sam(a.params, flatmin::base::sgd{.lr = 0.1});
  q.eval(a);
  opt.ascend();
  std::stringstream ss;
  CHECK_THROWS_AS(opt.save(ss), flatmin::usage_error);
  CHECK_THROWS_AS(opt.load(ss), flatmin::usage_error);
  opt.cancel();
}
