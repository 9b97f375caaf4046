// Flat-LoRA (issue 16): perturb::flat_lora and flatmin::flat_lora against a float64 re-derivation
// of nblt/Flat-LoRA's logTrainer.py `FlatLoraTrainer.training_step` (lines 146-186 of the copy the
// project read: the cosine factor, σ_i = f·ρ/√n_in·‖(W + s·B·A)_i‖ per output row, the noise on the
// frozen base weight, subtracted after the backward), for 1 and 20 steps, both protocols, on every
// backend; one objective call per step; the restore (regenerated: bounded drift; exact: bitwise);
// skips, cancel, checkpoints; the registration's checks.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <flatmin/algorithms/flat_lora.hpp>
#include <flatmin/kernels/counter_hash.hpp>
#include <flatmin/kernels/gaussian.hpp>

#include "support/backends.hpp"
#include "support/problems.hpp"
#include "support/runner.hpp"

using namespace flatmin_test;

namespace {

/// The shapes of one LoRA pair: W {out, in}, A {r, in}, B {out, r}, merged W + s·B·A.
struct pair_shape {
  std::size_t out, in, r;
  double s;
};
const std::vector<pair_shape> shapes = {{5, 4, 2, 0.5}, {3, 6, 1, 2.0}};

/// The model as doubles, in the order the library's views are registered: per pair A then B, then
/// a bias of 5 (trained, weight decay off). `w` holds the frozen bases (not trained).
struct lora_state {
  std::vector<ref::vec> base;     // W per pair
  ref::vec trained;               // A0, B0, bias, A1, B1 (as registered)
  std::vector<std::size_t> a_at, b_at;
  std::size_t bias_at = 0;
};

/// The loss ½ Σ_p Σ_ij c_pij (M_pij − T_pij)² + ½ Σ_i d_i (bias_i − u_i)², M_p = W_p + s_p·B_p·A_p.
struct lora_problem {
  std::vector<ref::vec> c, target;
  ref::vec d, u;

  static lora_problem make(std::uint64_t seed) {
    lora_problem q;
    for (std::size_t p = 0; p < shapes.size(); ++p) {
      const std::size_t n = shapes[p].out * shapes[p].in;
      q.c.push_back(random_vec(n, seed * 11 + p, 0.5, 2.0));
      q.target.push_back(random_vec(n, seed * 13 + p));
    }
    q.d = random_vec(5, seed * 17, 0.5, 2.0);
    q.u = random_vec(5, seed * 19);
    return q;
  }

  /// The loss and its gradient over the trained entries (same order as lora_state::trained).
  double eval(const lora_state& st, const std::vector<ref::vec>& base, ref::vec& g) const {
    g.assign(st.trained.size(), 0.0);
    double loss = 0;
    for (std::size_t p = 0; p < shapes.size(); ++p) {
      const auto [out, in, r, s] = shapes[p];
      const double* A = &st.trained[st.a_at[p]];
      const double* B = &st.trained[st.b_at[p]];
      double* gA = &g[st.a_at[p]];
      double* gB = &g[st.b_at[p]];
      for (std::size_t i = 0; i < out; ++i)
        for (std::size_t j = 0; j < in; ++j) {
          double m = 0;
          for (std::size_t k = 0; k < r; ++k) m += B[i * r + k] * A[k * in + j];
          const double e = base[p][i * in + j] + s * m - target[p][i * in + j];
          const double G = c[p][i * in + j] * e;
          loss += 0.5 * G * e;
          for (std::size_t k = 0; k < r; ++k) {
            gA[k * in + j] += s * B[i * r + k] * G;
            gB[i * r + k] += s * G * A[k * in + j];
          }
        }
    }
    for (std::size_t i = 0; i < 5; ++i) {
      const double e = st.trained[st.bias_at + i] - u[i];
      loss += 0.5 * d[i] * e * e;
      g[st.bias_at + i] = d[i] * e;
    }
    return loss;
  }
};

/// The library's side: buffers of T registered as two LoRA pairs with frozen bases and a bias.
template <class T>
double to_d(T x) {
  if constexpr (std::is_same_v<T, double>)
    return x;
  else
    return static_cast<double>(static_cast<float>(x));
}
template <class T>
ref::vec to_dvec(const std::vector<T>& v) {
  ref::vec r;
  for (const T& x : v) r.push_back(to_d(x));
  return r;
}
template <class T>
std::vector<T> from_dvec(const ref::vec& v, std::size_t first, std::size_t n) {
  std::vector<T> r;
  for (std::size_t i = 0; i < n; ++i) r.push_back(static_cast<T>(v[first + i]));
  return r;
}

template <class T>
struct lora_model {
  std::vector<std::vector<T>> base, a, b, ga, gb;
  std::vector<T> bias, gbias;
  flatmin::param_set<T> params;
  lora_state layout;  // offsets only

  explicit lora_model(const lora_state& st, bool with_base = true) : layout(st) {
    base.resize(shapes.size());
    a.resize(shapes.size());
    b.resize(shapes.size());
    ga.resize(shapes.size());
    gb.resize(shapes.size());
    for (std::size_t p = 0; p < shapes.size(); ++p) {
      const auto [out, in, r, s] = shapes[p];
      base[p] = from_dvec<T>(st.base[p], 0, out * in);
      a[p] = from_dvec<T>(st.trained, st.a_at[p], r * in);
      b[p] = from_dvec<T>(st.trained, st.b_at[p], out * r);
      ga[p].assign(r * in, T(0.0));
      gb[p].assign(out * r, T(0.0));
    }
    bias = from_dvec<T>(st.trained, st.bias_at, 5);
    gbias.assign(5, T(0.0));
    for (std::size_t p = 0; p < shapes.size(); ++p) {
      const auto [out, in, r, s] = shapes[p];
      const std::string name = "layer" + std::to_string(p);
      if (with_base)
        params.add_lora_pair(name, a[p].data(), ga[p].data(), {r, in}, b[p].data(), gb[p].data(), {out, r},
                             flatmin::lora_base<T>{base[p].data(), s});
      else
        params.add_lora_pair(name, a[p].data(), ga[p].data(), {r, in}, b[p].data(), gb[p].data(), {out, r});
      if (p == 0) params.add("bias", bias.data(), gbias.data(), {5}, {.weight_decay = false});
    }
  }

  /// The trained values as doubles, in lora_state order.
  ref::vec trained() const {
    ref::vec v(layout.trained.size());
    const auto put = [&](const std::vector<T>& x, std::size_t at) {
      for (std::size_t j = 0; j < x.size(); ++j) v[at + j] = to_d(x[j]);
    };
    for (std::size_t p = 0; p < shapes.size(); ++p) {
      put(a[p], layout.a_at[p]);
      put(b[p], layout.b_at[p]);
    }
    put(bias, layout.bias_at);
    return v;
  }
  std::vector<ref::vec> bases() const {
    std::vector<ref::vec> r;
    for (const auto& w : base) r.push_back(to_dvec(w));
    return r;
  }
  /// Writes ∇L at the current values (bases as they are now: perturbed inside a step).
  double eval(const lora_problem& q, int& calls) {
    ++calls;
    lora_state st = layout;
    st.trained = trained();
    ref::vec g;
    const double loss = q.eval(st, bases(), g);
    for (std::size_t p = 0; p < shapes.size(); ++p) {
      for (std::size_t j = 0; j < ga[p].size(); ++j) ga[p][j] = static_cast<T>(g[layout.a_at[p] + j]);
      for (std::size_t j = 0; j < gb[p].size(); ++j) gb[p][j] = static_cast<T>(g[layout.b_at[p] + j]);
    }
    for (std::size_t i = 0; i < 5; ++i) gbias[i] = static_cast<T>(g[layout.bias_at + i]);
    return loss;
  }
};

lora_state initial_state(std::uint64_t seed) {
  lora_state st;
  std::size_t at = 0;
  for (std::size_t p = 0; p < shapes.size(); ++p) {
    const auto [out, in, r, s] = shapes[p];
    st.base.push_back(random_vec(out * in, seed * 23 + p));
    st.a_at.push_back(at);
    at += r * in;
    st.b_at.push_back(at);
    at += out * r;
    if (p == 0) {
      st.bias_at = at;
      at += 5;
    }
  }
  st.trained = random_vec(at, seed * 29, -0.5, 0.5);
  return st;
}

ref::opts_vec trained_opts(const lora_state& st) {
  ref::opts_vec o(st.trained.size());
  for (std::size_t i = 0; i < 5; ++i) o[st.bias_at + i].weight_decay = false;
  return o;
}

/// The float64 Flat-LoRA step (logTrainer.py l. 146-186, re-derived): f_t = ½(1 − cos(π·min(t − 1,
/// T)/T)) (1 without a ramp), σ_i = f_t ρ ‖W′_i‖ / √n_in with W′ = W + s·B·A, the noise σ_i z_e on
/// W (z_e the library's generator, e numbering the entries of every base in registration order),
/// the gradient at the perturbed model, the bases back to W, the base step on the trained tensors.
struct flat_lora_ref {
  double rho;
  std::size_t ramp;
  std::uint64_t seed;
  std::size_t t = 0;
  double expected_norm = 0;
  template <class Base>
  void step(lora_state& st, const ref::opts_vec& o, Base& base, const lora_problem& q) {
    ++t;
    const double f = ramp == 0 ? 1.0
                               : 0.5 * (1.0 - std::cos(3.14159265358979323846 *
                                                       static_cast<double>(std::min(t - 1, ramp)) /
                                                       static_cast<double>(ramp)));
    std::vector<ref::vec> pert = st.base;
    std::uint64_t e = 0;
    double e2 = 0;
    for (std::size_t p = 0; p < shapes.size(); ++p) {
      const auto [out, in, r, s] = shapes[p];
      for (std::size_t i = 0; i < out; ++i) {
        double n2 = 0;
        for (std::size_t j = 0; j < in; ++j) {
          double m = 0;
          for (std::size_t k = 0; k < r; ++k)
            m += st.trained[st.b_at[p] + i * r + k] * st.trained[st.a_at[p] + k * in + j];
          const double x = st.base[p][i * in + j] + s * m;
          n2 += x * x;
        }
        const double sigma = f * rho * std::sqrt(n2) / std::sqrt(static_cast<double>(in));
        e2 += static_cast<double>(in) * sigma * sigma;
        for (std::size_t j = 0; j < in; ++j, ++e)
          pert[p][i * in + j] += sigma * flatmin::kernels::standard_normal(flatmin::kernels::counter_hash(
                                             seed, flatmin::kernels::noise_stream(t), e));
      }
    }
    expected_norm = std::sqrt(e2);
    ref::vec g;
    q.eval(st, pert, g);
    base.step(st.trained, g, o);
  }
};

double max_rel(const ref::vec& a, const ref::vec& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]) / (1.0 + std::fabs(b[i])));
  return m;
}

template <class Backend, class T, class Base>
void flat_lora_case(const Base& base, int steps, bool closure, std::size_t ramp, bool exact,
                    std::uint64_t seed) {
  CAPTURE(steps);
  CAPTURE(closure);
  CAPTURE(ramp);
  CAPTURE(exact);
  const lora_state start = initial_state(seed);
  const lora_problem q = lora_problem::make(seed);
  lora_model<T> m(start);
  // ρ well above the official 0.05, so that a misplaced row, σ or draw shows beyond the tolerance
  auto opt = flatmin::flat_lora<Backend>(m.params, base,
                                         {.rho = 0.3, .ramp_steps = ramp, .seed = seed, .exact_restore = exact});
  auto rb = to_ref(base);
  flat_lora_ref r{0.3, ramp, seed};
  lora_state st = start;
  const ref::opts_vec o = trained_opts(start);
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-11;
  int calls = 0;
  for (int s = 0; s < steps; ++s) {
    const int before = calls;
    if (closure) {
      opt.step([&] { return m.eval(q, calls); });
    } else {
      const auto a = opt.ascend();
      CHECK(a.perturbed);
      CHECK(opt.perturbation_state().applied());
      m.eval(q, calls);
      opt.descend();
    }
    CHECK(calls - before == 1);  // one gradient per step
    CHECK_FALSE(opt.perturbation_state().applied());
    r.step(st, o, rb, q);
    REQUIRE(max_rel(m.trained(), st.trained) < tol);
  }
  CHECK(opt.last_report().perturbation_norm == doctest::Approx(r.expected_norm).epsilon(1e-5));
  // the bases are back: bitwise with the exact restore, within rounding otherwise
  for (std::size_t p = 0; p < shapes.size(); ++p) {
    const std::vector<T> w0(start.base[p].begin(), start.base[p].end());
    if (exact)
      CHECK(bitwise_equal(m.base[p], w0));
    else
      CHECK(max_rel(ref::vec(m.base[p].begin(), m.base[p].end()), ref::vec(w0.begin(), w0.end())) <
            steps * 4 * std::numeric_limits<T>::epsilon());
  }
}

}  // namespace

TEST_CASE_TEMPLATE("Flat-LoRA: 1 and 20 steps against nblt/Flat-LoRA's logTrainer.py re-derived in float64, "
                   "one objective call per step",
                   Backend, FLATMIN_TEST_BACKENDS) {
  const flatmin::base::sgd sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3};
  const flatmin::base::adamw adamw{.lr = 0.01, .weight_decay = 0.01};
  flat_lora_case<Backend, double>(sgd, 1, true, 0, false, 1801);
  flat_lora_case<Backend, float>(sgd, 1, false, 0, true, 1802);
  flat_lora_case<Backend, double>(sgd, 20, false, 0, false, 1803);
  flat_lora_case<Backend, float>(adamw, 20, true, 0, false, 1804);
  flat_lora_case<Backend, double>(adamw, 20, true, 8, true, 1805);  // the cosine ramp, past its end
  flat_lora_case<Backend, float>(sgd, 20, false, 30, false, 1806);  // inside it
}

TEST_CASE("Flat-LoRA: the ramp's first step has no noise (the official f = 0 at the first micro-batch)") {
  const lora_state start = initial_state(1811);
  const lora_problem q = lora_problem::make(1811);
  lora_model<double> m(start);
  const flatmin::base::sgd sgd{.lr = 0.05};
  auto opt = flatmin::flat_lora<flatmin::backend::eigen>(m.params, sgd, {.rho = 0.3, .ramp_steps = 10});
  int calls = 0;
  opt.ascend();
  CHECK(opt.last_report().perturbation_norm == 0.0);
  for (std::size_t p = 0; p < shapes.size(); ++p)
    CHECK(bitwise_equal(m.base[p], std::vector<double>(start.base[p].begin(), start.base[p].end())));
  m.eval(q, calls);
  opt.descend();
  const flatmin::perturb::flat_lora pol{.ramp_steps = 10};
  CHECK(pol.factor(1) == 0.0);
  CHECK(pol.factor(6) == doctest::Approx(0.5));
  CHECK(pol.factor(11) == 1.0);
  CHECK(pol.factor(500) == 1.0);
  CHECK(flatmin::perturb::flat_lora{}.factor(1) == 1.0);
}

TEST_CASE_TEMPLATE("Flat-LoRA: a non-finite gradient skips and takes the noise off; cancel() too; a resumed run "
                   "is bitwise the same",
                   Backend, FLATMIN_TEST_BACKENDS) {
  using T = float;
  const lora_state start = initial_state(1821);
  const lora_problem q = lora_problem::make(1821);
  lora_model<T> m(start);
  const flatmin::base::adamw adamw{.lr = 0.01, .weight_decay = 0.01};
  const flatmin::flat_lora_options fo{.rho = 0.2, .seed = 5, .exact_restore = true};
  auto opt = flatmin::flat_lora<Backend>(m.params, adamw, fo);
  int calls = 0;
  for (int s = 0; s < 3; ++s) opt.step([&] { return m.eval(q, calls); });
  const auto trained0 = m.trained();
  const auto bases0 = m.base;
  // a NaN in the gradient at the perturbed model: skipped, bases and trained tensors as they were
  opt.ascend();
  CHECK_FALSE(bitwise_equal(m.base[0], bases0[0]));  // the noise is on
  m.eval(q, calls);
  m.gb[1][0] = std::numeric_limits<T>::quiet_NaN();
  const auto rep = opt.descend();
  CHECK(rep.skipped);
  CHECK(opt.steps() == 3);
  CHECK(m.trained() == trained0);
  for (std::size_t p = 0; p < shapes.size(); ++p) CHECK(bitwise_equal(m.base[p], bases0[p]));
  // cancel() between ascend() and descend()
  opt.ascend();
  opt.cancel();
  for (std::size_t p = 0; p < shapes.size(); ++p) CHECK(bitwise_equal(m.base[p], bases0[p]));
  // an objective that throws: the step is cancelled, the bases restored
  CHECK_THROWS_AS(opt.step([&]() -> double { throw std::runtime_error("boom"); }), std::runtime_error);
  for (std::size_t p = 0; p < shapes.size(); ++p) CHECK(bitwise_equal(m.base[p], bases0[p]));
  // a checkpoint: the step count fixes the noise stream
  std::stringstream ck;
  opt.save(ck);
  for (int s = 0; s < 4; ++s) opt.step([&] { return m.eval(q, calls); });
  const auto want = m.trained();
  lora_state mid = start;
  mid.trained = trained0;
  lora_model<T> m2(mid);
  auto resumed = flatmin::flat_lora<Backend>(m2.params, adamw, fo);
  resumed.load(ck);
  for (int s = 0; s < 4; ++s) resumed.step([&] { return m2.eval(q, calls); });
  CHECK(m2.trained() == want);
  // another seed draws other noise
  lora_model<T> m3(mid);
  auto other = flatmin::flat_lora<Backend>(m3.params, adamw, {.rho = 0.2, .seed = 6, .exact_restore = true});
  std::stringstream ck2;
  opt.save(ck2);  // any checkpoint of this composition: only the step count differs
  std::istringstream in(ck.str());
  other.load(in);
  for (int s = 0; s < 4; ++s) other.step([&] { return m3.eval(q, calls); });
  CHECK(m3.trained() != want);
}

TEST_CASE("Flat-LoRA: the regenerated restore drifts by rounding; the exact restore does not (bf16 bases)") {
  using W = flatmin::bfloat16;
  // 200 steps on bf16 weights (master weights off: the adapters step in bf16 too)
  const lora_state start = initial_state(1831);
  const lora_problem q = lora_problem::make(1831);
  std::size_t drift[2] = {0, 0};
  for (int exact = 0; exact < 2; ++exact) {
    lora_model<W> m(start);
    const auto w0 = m.base;
    auto opt = flatmin::flat_lora<flatmin::backend::eigen>(m.params, flatmin::base::sgd{.lr = 0.01},
                                                           {.rho = 0.05, .exact_restore = exact == 1});
    int calls = 0;
    for (int s = 0; s < 200; ++s) opt.step([&] { return m.eval(q, calls); });
    for (std::size_t p = 0; p < shapes.size(); ++p)
      for (std::size_t j = 0; j < w0[p].size(); ++j) drift[exact] += m.base[p][j].bits != w0[p][j].bits;
  }
  MESSAGE("bf16 base entries changed after 200 steps: regenerated " << drift[0] << " of 38, exact "
                                                                    << drift[1]);
  CHECK(drift[1] == 0);
  CHECK(drift[0] > 0);  // what exact_restore is for
}

TEST_CASE("Flat-LoRA: registration and options are checked") {
  const lora_state start = initial_state(1841);
  const flatmin::base::sgd sgd{.lr = 0.05};
  {  // no frozen base: nothing to perturb
    lora_model<double> m(start, false);
    CHECK_THROWS_WITH_AS(flatmin::flat_lora<flatmin::backend::eigen>(m.params, sgd),
                         doctest::Contains("registers none"), std::invalid_argument);
  }
  lora_model<double> m(start);
  CHECK(m.params.frozen().size() == 2);
  CHECK(m.params.frozen()[1].name == "layer1.base");
  CHECK(m.params.frozen()[1].rows == 3);
  CHECK(m.params.frozen()[1].cols == 6);
  CHECK(m.params.lora_pairs()[1].scale == 2.0);
  CHECK_THROWS_AS(flatmin::flat_lora<flatmin::backend::eigen>(m.params, sgd, {.rho = -0.1}), std::invalid_argument);
  auto opt = flatmin::flat_lora<flatmin::backend::eigen>(m.params, sgd, {.rho = 0.1, .ramp_steps = 7, .seed = 3});
  CHECK(opt.perturbation().rho == 0.1);
  CHECK(opt.perturbation().ramp_steps == 7);
  CHECK(opt.perturbation().seed == 3);
  CHECK(opt.perturbation_state().rows() == 8);
  CHECK(opt.perturbation_state().entries() == 38);
  CHECK(opt.extra_state_bytes() == 8 * sizeof(double));  // σ per row; no saved copy of anything
  // bad pairs
  std::vector<double> A(8), gA(8), B(10), gB(10), W(20), W2(20);
  flatmin::param_set<double> ps;
  CHECK_THROWS_AS(ps.add_lora_pair("p", A.data(), gA.data(), {8}, B.data(), gB.data(), {5, 2},
                                   flatmin::lora_base<double>{W.data(), 1.0}),
                  std::invalid_argument);  // A not 2-D
  CHECK_THROWS_AS(ps.add_lora_pair("p", A.data(), gA.data(), {2, 4}, B.data(), gB.data(), {2, 5},
                                   flatmin::lora_base<double>{W.data(), 1.0}),
                  std::invalid_argument);  // B's columns are not A's rows
  CHECK_THROWS_AS(ps.add_lora_pair("p", A.data(), gA.data(), {2, 4}, B.data(), gB.data(), {5, 2},
                                   flatmin::lora_base<double>{nullptr, 1.0}),
                  std::invalid_argument);
  CHECK_THROWS_AS(ps.add_lora_pair("p", A.data(), gA.data(), {2, 4}, B.data(), gB.data(), {5, 2},
                                   flatmin::lora_base<double>{W.data(), std::nan("")}),
                  std::invalid_argument);
  CHECK(ps.empty());  // nothing half-registered
  // a base overlapping a trained tensor
  ps.add_lora_pair("p", A.data(), gA.data(), {2, 4}, B.data(), gB.data(), {5, 2},
                   flatmin::lora_base<double>{gB.data() - 5, 1.0});
  CHECK_THROWS_WITH_AS(ps.validate(), doctest::Contains("overlaps"), std::invalid_argument);
}
