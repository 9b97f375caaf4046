// Differential test: every composition runs from the same inputs on backend::eigen and on
// backend::thrust for several steps (closure and ascend/descend protocols, one step with a
// non-finite gradient). Elementwise results — the weights and every state buffer (compared
// through save()) — must be bitwise equal; reduction-dependent report numbers within 1e-6
// relative. To cover a new composition, add one line to `compositions()` below. The float run
// forces backend::eigen's streaming stores (backend/host/stream_stores.hpp: the ascent's saved copy
// and the restored weights written by non-temporal stores, which these sizes would not choose),
// the double run leaves the choice to the size: each path against backend::thrust's.
#include <doctest/doctest.h>
#include <flatmin/flatmin.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/backends.hpp"
#include "support/buffers.hpp"
#include "support/sine_problem.hpp"
#include "support/streaming.hpp"

namespace {

namespace fm = flatmin;

// Tensor sizes straddle the segment size (4096) and include 1-element tensors; options vary, per-
// tensor lr / weight-decay multipliers included, and ρ multipliers in the `_rho` rows (the host
// backend resolves them once per run of segments, backend/layout.hpp's for_tensor; backend::thrust per
// element). The total (> 2^16) puts every pass
// of backend::thrust on its parallel path. Tensors 8 and 9 have tensor 6's options: the host
// backend resolves a pass's form once for consecutive segments of equal flags (a form by flags) or
// of one tensor (a form by tensor: RWP's row table), backend/host/tensor_forms.hpp.
const std::vector<std::size_t> sizes{1, 7, 4096, 4097, 10000, 3, 300, 50000, 33, 65};
fm::tensor_options options_of(std::size_t t, bool rho) {
  if (t >= 8) t = 6;
  return {.weight_decay = t % 2 == 0,
          .perturb = t != 5,
          .adaptive = t % 3 != 1,
          .mask_eligible = t != 1,
          .lr_scale = t == 3 ? 0.5 : t == 7 ? 0.3 : 1.0,
          .weight_decay_scale = t == 2 ? 0.25 : t == 7 ? 3.0 : 1.0,
          .rho_scale = !rho ? 1.0 : t == 4 ? 0.5 : t == 6 ? 0.0 : t == 7 ? 2.0 : 1.0};
}

// The loss of support/sine_problem.hpp over `sizes`, evaluated on the host in T.
template <class T>
struct problem : flatmin_test::sine_problem<T> {
  problem() : flatmin_test::sine_problem<T>(sizes, 20240611) {}
};

struct record {
  std::vector<std::vector<unsigned char>> weights;  // raw bytes of every tensor after the run
  std::string state;                                // save() blob: step count, base and mask state
  std::vector<fm::step_report> reports;
};

template <class T>
std::vector<unsigned char> bytes_of(const std::vector<T>& v) {
  std::vector<unsigned char> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// Runs `steps` steps of the optimizer made by `make(ps)` on Backend memory.
template <class Backend, class T, class Make>
record run(const problem<T>& p, const Make& make, int steps, bool rho) {
  using buf = flatmin_test::buffer_of<Backend, T>;
  std::vector<typename buf::type> w, g;
  w.reserve(sizes.size());
  g.reserve(sizes.size());
  fm::param_set<T> ps;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    w.push_back(buf::make(p.w0[t]));
    g.push_back(buf::make(std::vector<T>(sizes[t], T(0))));
    ps.add("t" + std::to_string(t), w.back(), g.back(), options_of(t, rho));
  }
  auto opt = make(ps, Backend{});
  int calls = 0;
  int poison_call = -1;  // this gradient evaluation gets a NaN entry
  auto objective = [&]() -> double {
    double loss = 0;
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      const std::vector<T> hw = buf::host(w[t]);
      std::vector<T> hg(hw.size());
      for (std::size_t j = 0; j < hw.size(); ++j) {
        const T d = hw[j] - p.c[t][j];
        hg[j] = p.a[t][j] * d + p.b[t][j] * std::cos(hw[j]);
        loss += double(p.a[t][j]) * double(d) * double(d) / 2 + double(p.b[t][j]) * std::sin(double(hw[j]));
      }
      if (calls == poison_call && t == 4) hg[17] = std::numeric_limits<T>::quiet_NaN();
      buf::assign(g[t], hg);
    }
    ++calls;
    return loss;
  };
  record r;
  for (int s = 0; s < steps; ++s) {
    if (s == 2) poison_call = calls + (s % 2);  // step 3: NaN in g (at w)
    if (s == 4) poison_call = calls + 1;        // step 5: NaN in g_adv (at w + ε) when it perturbs
    if (s % 3 == 1) {                           // the caller's own protocol
      objective();
      fm::step_report a = opt.ascend();
      if (!a.skipped && decltype(opt)::perturbs) objective();
      if constexpr (decltype(opt)::two_points)  // SAMPa: the gradient at its look-ahead point too
        if (a.perturbed && !a.skipped && !opt.second_point().skipped) objective();
      r.reports.push_back(opt.descend());
    } else {
      r.reports.push_back(opt.step(objective));
    }
  }
  for (std::size_t t = 0; t < sizes.size(); ++t) r.weights.push_back(bytes_of(buf::host(w[t])));
  std::ostringstream os;
  opt.save(os);
  r.state = os.str();
  return r;
}

// The same views with tensors 4 (10000 = {100, 100}) and 7 (50000 = {500, 100}) registered as one
// LoRA pair, A {r, in} and B {out, r} with r = 100, at tensor 4's place (with its options): BAR's
// balancedness term (regularize::balancedness) acts on pairs only.
template <class T>
fm::param_set<T> paired(const fm::param_set<T>& ps) {
  fm::param_set<T> out;
  const auto& ts = ps.tensors();
  for (std::size_t t = 0; t < ts.size(); ++t)
    if (t == 4)
      out.add_lora_pair("pair", ts[4].value, ts[4].grad, {100, 100}, ts[7].value, ts[7].grad, {500, 100},
                        ts[4].options, ts[4].space);
    else if (t != 7)
      out.add(ts[t].name, ts[t].value, ts[t].grad, ts[t].shape, ts[t].options, ts[t].space);
  return out;
}

bool close(double x, double y) {
  if (std::isnan(x) || std::isnan(y)) return std::isnan(x) && std::isnan(y);
  return std::fabs(x - y) <= 1e-6 * std::max(std::fabs(x), std::fabs(y));
}

template <class Other, class T, class Make>
void compare(const char* name, const Make& make, bool rho = false) {
  const std::string row = name;  // a string: doctest prints a const char* as its address
  CAPTURE(row);
  CAPTURE(sizeof(T));
  const problem<T> p;
  const int steps = 6;
  const record e = run<fm::backend::eigen>(p, make, steps, rho);
  const record o = run<Other>(p, make, steps, rho);
  if (rho) {  // the multipliers reach this ascent: tensor 4 (ρ × 0.5) ends elsewhere without them
    const record plain = run<fm::backend::eigen>(p, make, steps, false);
    CHECK(plain.weights[4] != e.weights[4]);
  }
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    CAPTURE(t);
    CHECK(e.weights[t] == o.weights[t]);
  }
  CHECK(e.state == o.state);
  REQUIRE(e.reports.size() == o.reports.size());
  bool skipped_any = false;
  for (std::size_t s = 0; s < e.reports.size(); ++s) {
    CAPTURE(s);
    const auto &x = e.reports[s], &y = o.reports[s];
    CHECK(x.step == y.step);
    CHECK(x.skipped == y.skipped);
    CHECK(x.reason == y.reason);
    CHECK(close(x.loss, y.loss));
    CHECK(close(x.grad_norm, y.grad_norm));
    CHECK(close(x.perturbed_grad_norm, y.perturbed_grad_norm));
    CHECK(close(x.perturbation_norm, y.perturbation_norm));
    CHECK(close(x.mask_density, y.mask_density));
    skipped_any = skipped_any || x.skipped;
  }
  CHECK(skipped_any);  // the NaN steps were exercised
  // The run must have moved the weights, else equality proves nothing.
  CHECK(e.weights[4] != bytes_of(p.w0[4]));
}

// Every composition that exists, one line each: name and how to build it on backend B.
template <class Other, class T>
void compositions() {
  using fm::base::adam;
  using fm::base::adamw;
  using fm::base::sgd;
  const sgd momentum{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3};
  const sgd nesterov{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3, .nesterov = true};
  const adam ad{.lr = 0.01, .weight_decay = 1e-3};
  const adamw adw{.lr = 0.01, .weight_decay = 0.05};
#define FLATMIN_DIFF(name, ...) \
  compare<Other, T>(name, [&](const fm::param_set<T>& ps, auto b) { return __VA_ARGS__; })
  using fm::sam;
  FLATMIN_DIFF("sgd", fm::sgd<decltype(b)>(ps, momentum));
  FLATMIN_DIFF("sgd-nesterov", fm::sgd<decltype(b)>(ps, nesterov));
  FLATMIN_DIFF("adam", fm::adam<decltype(b)>(ps, ad));
  FLATMIN_DIFF("adamw", fm::adamw<decltype(b)>(ps, adw));
  FLATMIN_DIFF("sam-sgd-momentum", fm::sam<decltype(b)>(ps, momentum, {.rho = 0.1}));
  FLATMIN_DIFF("sam-adam", fm::sam<decltype(b)>(ps, ad, {.rho = 0.1}));
  FLATMIN_DIFF("sam-adamw", fm::sam<decltype(b)>(ps, adw, {.rho = 0.1}));
  FLATMIN_DIFF("asam-sgd-momentum", fm::asam<decltype(b)>(ps, momentum, {.rho = 0.5, .eta = 0.01}));
  FLATMIN_DIFF("asam-adam", fm::asam<decltype(b)>(ps, ad, {.rho = 0.5}));
  FLATMIN_DIFF("asam-adamw", fm::asam<decltype(b)>(ps, adw, {.rho = 0.5}));
  // the statistics over the momentum (the host's vectorised form, reduce_forms.hpp) set ε's scale
  FLATMIN_DIFF("msam-sgd-momentum", fm::msam<decltype(b)>(ps, momentum, {.rho = 0.3}));
  FLATMIN_DIFF("msam-adamw", fm::msam<decltype(b)>(ps, adw, {.rho = 1}));
  // the draws and the row norms (kernels/gaussian.hpp, perturb/gaussian.hpp) on both backends
  FLATMIN_DIFF("rwp-sgd-momentum", fm::rwp<decltype(b)>(ps, momentum, {.sigma = 0.05, .seed = 3}));
  // the row means of g and the centralised term (perturb::centralized)
  FLATMIN_DIFF("gcsam-adamw", fm::gcsam<decltype(b)>(ps, adw, {.rho = 0.1}));
  // sparse masks: the Fisher mask by elements (backend::eigen's segment forms read the bits eight
  // at a time; backend::thrust tests one bit per entry) and by blocks (compact lists), and SSAM-D's
  // dynamic mask (its magnitude scores and drawn regrowth), refreshed every other step
  FLATMIN_DIFF("fsam-sgd-momentum",
               fm::fsam<decltype(b)>(ps, momentum, {.rho = 0.1, .keep = 0.3, .refresh_every = 2}));
  FLATMIN_DIFF("fsam-adamw-blocks",
               fm::fsam<decltype(b)>(ps, adw, {.rho = 0.1, .keep = 0.3, .refresh_every = 2, .block = 128}));
  FLATMIN_DIFF("ssam-d-adam", fm::ssam_d<decltype(b)>(ps, ad, {.rho = 0.1, .refresh_every = 2, .seed = 5}));
  // LookSAM: full SAM steps 1 and 4 (g_v kept), the reuse g + α(‖g‖/‖g_v‖)g_v on 2, 3, 5, 6
  FLATMIN_DIFF("looksam-sgd-momentum",
               fm::looksam<decltype(b)>(ps, momentum, {.rho = 0.1, .k = 3, .alpha = 0.3}));
  // the descent rules with state (descent/state.hpp): GSAM's g_adv − α g⊥, WSAM's both forms
  FLATMIN_DIFF("gsam-sgd-momentum", fm::gsam<decltype(b)>(ps, momentum, {.rho = 0.1, .alpha = 0.4}));
  FLATMIN_DIFF("gsam-adamw", fm::gsam<decltype(b)>(ps, adw, {.rho = 0.1, .alpha = 0.4}));
  FLATMIN_DIFF("wsam-sgd-momentum", fm::wsam<decltype(b)>(ps, momentum, {.rho = 0.1, .gamma = 0.9}));
  FLATMIN_DIFF("wsam-adam-coupled",
               fm::wsam<decltype(b)>(ps, ad, {.rho = 0.1, .gamma = 0.8, .decouple = false}));
  // SAMPa: ε from the kept g_y, the look-ahead (kernels/sampa.hpp) and the (1 − λ)g̃ + λg_y mix
  FLATMIN_DIFF("sampa-sgd-momentum", fm::sampa<decltype(b)>(ps, momentum, {.rho = 0.1, .lambda = 0.2}));
  // Friendly-SAM: ε along g − σm, m the EMA of g
  FLATMIN_DIFF("friendly-sam-adamw", fm::friendly_sam<decltype(b)>(ps, adw, {.rho = 0.1, .lambda = 0.6}));
  // preconditioned SAM: ε along P⁻¹g, P from Adam's second moment (plain SAM on step 1)
  FLATMIN_DIFF("preconditioned-sam-adam", fm::preconditioned_sam<decltype(b)>(ps, ad, {.rho = 0.1}));
  FLATMIN_DIFF("preconditioned-sam-adamw", fm::preconditioned_sam<decltype(b)>(ps, adw, {.rho = 0.1}));
  // BAR: one gradient a step, the pair's gradients moved along ∓c·(x, y) (kernels/balancedness.hpp)
  FLATMIN_DIFF("bar-sgd-momentum", fm::bar<decltype(b)>(paired(ps), momentum, {.rho = 0.5}));
  // per-tensor ρ multipliers (tensor_options::rho_scale) through each kind of ascent term
#define FLATMIN_DIFF_RHO(name, ...) \
  compare<Other, T>(name, [&](const fm::param_set<T>& ps, auto b) { return __VA_ARGS__; }, true)
  FLATMIN_DIFF_RHO("sam-sgd-momentum_rho", fm::sam<decltype(b)>(ps, momentum, {.rho = 0.1}));
  FLATMIN_DIFF_RHO("asam-adamw_rho", fm::asam<decltype(b)>(ps, adw, {.rho = 0.5}));
  FLATMIN_DIFF_RHO("msam-adamw_rho", fm::msam<decltype(b)>(ps, adw, {.rho = 1}));
  FLATMIN_DIFF_RHO("rwp-sgd-momentum_rho", fm::rwp<decltype(b)>(ps, momentum, {.sigma = 0.05, .seed = 3}));
  FLATMIN_DIFF_RHO("gcsam-adamw_rho", fm::gcsam<decltype(b)>(ps, adw, {.rho = 0.1}));
#undef FLATMIN_DIFF_RHO
#undef FLATMIN_DIFF
}

}  // namespace

#if defined(FLATMIN_TEST_WITH_THRUST)
TEST_CASE("differential: every composition, eigen (streaming stores) vs thrust, float") {
  const flatmin_test::forced_streaming on(fm::backend::host::stream_stores::on);
  compositions<fm::backend::thrust, float>();
}
TEST_CASE("differential: every composition, eigen vs thrust, double") {
  compositions<fm::backend::thrust, double>();
}
#endif

// Without a second backend the harness still runs eigen against itself (the test must be able
// to fail only on nondeterminism there, but it keeps the harness compiling in every build).
TEST_CASE("differential: eigen against itself") {
  compositions<fm::backend::eigen, float>();
}
