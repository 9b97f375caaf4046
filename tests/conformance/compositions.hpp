#pragma once
/// @file compositions.hpp
/// THE list of compositions the conformance suite runs (tests/conformance/test_conformance.cpp),
/// crossed with every backend of FLATMIN_TEST_BACKENDS.
///
/// Adding a composition is one line in `compositions` below:
///
///     composition<perturb::l2, mask::fisher, base::adam>,
///
/// If a policy's own defaults do not suit the test problem (an ill-conditioned quadratic with
/// curvatures in [1, 100], a few hundred parameters, or ~10^5 for the thread check), specialise
/// `config<Policy>` next to the others. If the composition needs more than a plain objective
/// (per-sample losses, a functional objective, ...), give it a hooks type as the sixth argument:
/// see `plain_hooks` for what a hooks type provides. A schedule is the seventh (default: always).

#include <flatmin/flatmin.hpp>

#include <deque>
#include <numeric>
#include <span>
#include <tuple>
#include <utility>
#include <vector>

#include "support/problems.hpp"

namespace flatmin_test::conformance {

using namespace flatmin;

/// How the conformance runs configure a policy. The default is the policy's own defaults.
template <class P>
struct config {
  static P make() { return P{}; }
};
template <>
struct config<base::sgd> {
  static base::sgd make() { return {.lr = 0.008, .momentum = 0.9, .weight_decay = 1e-4}; }
};
template <>
struct config<base::adam> {
  static base::adam make() { return {.lr = 0.02}; }
};
template <>
struct config<base::adamw> {
  static base::adamw make() { return {.lr = 0.02, .weight_decay = 1e-3}; }
};
template <>
struct config<perturb::l2> {
  static perturb::l2 make() { return {.rho = 0.02}; }
};
template <>
struct config<perturb::centralized<perturb::l2>> {
  static perturb::centralized<perturb::l2> make() { return {{.rho = 0.02}}; }
};
template <>
struct config<perturb::preconditioned> {
  static perturb::preconditioned make() { return {.rho = 0.02}; }
};
template <>
struct config<regularize::balancedness> {
  static regularize::balancedness make() { return {.rho = 0.05}; }
};
template <>
struct config<perturb::momentum> {
  static perturb::momentum make() { return {.rho = 0.05}; }
};
template <>
struct config<perturb::adaptive> {
  static perturb::adaptive make() { return {.rho = 0.05, .eta = 0.01}; }
};

/// LookSAM's reuse adds α‖g‖ along a stale unit g_v: with SGD momentum 0.9 on the κ = 100 problem
/// α = 0.7 (the default) diverges (loss ×455 over 400 steps at k = 3); α ≤ 0.5 converges.
template <>
struct config<descent::looksam> {
  static descent::looksam make() { return {.alpha = 0.3}; }
};
template <>
struct config<perturb::flat_lora> {
  static perturb::flat_lora make() { return {.rho = 0.05, .exact_restore = true}; }
};
template <>
struct config<perturb::sampa> {
  static perturb::sampa make() { return {.rho = 0.02}; }
};
template <>
struct config<perturb::friendly> {
  static perturb::friendly make() { return {.rho = 0.02}; }
};

template <>
struct config<schedule::every_k> {
  static schedule::every_k make() { return {.k = 3}; }
};

template <>
struct config<mask::fisher> {
  static mask::fisher make() { return {.keep = 0.25, .refresh_every = 7}; }
};
template <>
struct config<mask::dynamic> {
  static mask::dynamic make() { return {.sparsity = 0.5, .refresh_every = 7, .total_steps = 400, .seed = 3}; }
};

/// How a composition is driven on a problem. A composition whose descent or mask needs more than
/// a plain objective provides its own hooks type with the same members.
struct plain_hooks {
  /// ascend() + cancel() + ascend() with the same g gives the same ε as one ascend() (no state,
  /// e.g. a mask's gradient accumulator, advanced by the abandoned ascend). A composition whose
  /// policy documents otherwise sets this to false.
  static constexpr bool cancel_leaves_no_trace = true;
  /// descend() applies the base step to the gradient in the views (g_adv), as the base optimizer
  /// alone would. False for a descent rule with state that changes that gradient (GSAM, WSAM,
  /// LookSAM: tests/unit/test_family.cpp checks their descent against float64 instead).
  static constexpr bool descent_is_base_on_g_adv = true;
  /// ascend() reads the gradient at w (and skips on a non-finite one). False for a perturbation
  /// that needs none (Momentum-SAM): a non-finite entry there is found in g_adv by descend().
  static constexpr bool ascent_reads_gradient = true;
  /// The objective of the closure protocol, step(objective).
  template <class T, class Problem>
  static auto objective(Problem& p, model<T>& m) {
    return p.objective(m);
  }
  /// Two-call protocol: what the caller computes before ascend() (g at w) and before descend()
  /// (g_adv at w + ε); both write the gradient views of `m`.
  template <class T, class Problem>
  static void first_gradient(Problem& p, model<T>& m) {
    p.eval(m);
  }
  template <class T, class Problem>
  static void second_gradient(Problem& p, model<T>& m) {
    p.eval(m);
  }
  /// Builds the optimizer (the default: every policy from config<>).
  template <class Opt, class C, class T>
  static Opt make(const param_set<T>& ps) {
    return Opt(ps, {.base = config<typename C::base>::make(),
                    .perturb = config<typename C::perturb>::make(),
                    .mask = config<typename C::mask>::make(),
                    .descent = config<typename C::descent>::make(),
                    .regularizer = config<typename C::regularizer>::make(),
                    .schedule = config<typename C::schedule>::make()});
  }
};

/// Sparse masks at block granularity (`block` entries per unit).
template <std::size_t Block>
struct block_hooks : plain_hooks {
  template <class Opt, class C, class T>
  static Opt make(const param_set<T>& ps) {
    auto mask = config<typename C::mask>::make();
    mask.block = Block;
    return Opt(ps, {.base = config<typename C::base>::make(),
                    .perturb = config<typename C::perturb>::make(),
                    .mask = mask,
                    .descent = config<typename C::descent>::make(),
                    .regularizer = config<typename C::regularizer>::make()});
  }
};

/// SSAM-F: the objective also gives per-example gradients (here: the problem's gradient with
/// the example's own noise draw), so the Fisher mask uses its per-example estimate.
struct example_hooks : plain_hooks {
  template <class T, class Problem>
  struct objective_t {
    Problem* p;
    model<T>* m;
    double operator()() { return p->eval(*m); }
    void example_gradient(std::size_t) { p->eval(*m); }
  };
  template <class T, class Problem>
  static auto objective(Problem& p, model<T>& m) {
    return objective_t<T, Problem>{&p, &m};
  }
  template <class Opt, class C, class T>
  static Opt make(const param_set<T>& ps) {
    auto mask = config<typename C::mask>::make();
    mask.source = mask::fisher_estimator::per_example;
    mask.examples = 4;
    return Opt(ps, {.base = config<typename C::base>::make(),
                    .perturb = config<typename C::perturb>::make(),
                    .mask = mask,
                    .descent = config<typename C::descent>::make(),
                    .regularizer = config<typename C::regularizer>::make()});
  }
};

/// ESAM's data selection: the problem seen as a batch of 8 samples, sample i adding
/// s_i ⟨u, w⟩ to the loss with Σ s_i = 0 (so the batch mean is the problem itself); the gradient
/// over a subset S adds mean_S(s) u.
struct sample_hooks : plain_hooks {
  template <class T, class Problem>
  struct objective_t {
    Problem* p;
    model<T>* m;
    static constexpr std::size_t batch = 8;
    static double s(std::size_t i) { return 0.05 * (static_cast<double>(i) - 3.5); }
    static double u(std::size_t j) { return static_cast<double>((j * 2654435761u) % 1000u) / 1000.0 - 0.5; }
    double dot() const {
      double d = 0;
      std::size_t i = 0;
      for (const auto& t : m->w)
        for (const T x : t) d += u(i++) * static_cast<double>(x);
      return d;
    }
    std::size_t batch_size() const { return batch; }
    double losses_and_gradient(std::span<double> l) {
      const double base = p->eval(*m), d = dot();
      for (std::size_t i = 0; i < batch; ++i) l[i] = base + s(i) * d;
      return base;
    }
    void losses(std::span<double> l) {
      const double base = p->loss(m->weights()), d = dot();
      for (std::size_t i = 0; i < batch; ++i) l[i] = base + s(i) * d;
    }
    void subset_gradient(std::span<const std::size_t> idx) {
      p->eval(*m);
      double ms = 0;
      for (std::size_t i : idx) ms += s(i) / static_cast<double>(idx.size());
      std::size_t k = 0;
      for (auto& t : m->g)  // in double, rounded once to T (T may be a 16-bit storage type)
        for (T& x : t) x = static_cast<T>(static_cast<double>(x) + ms * u(k++));
    }
  };
  template <class T, class Problem>
  static auto objective(Problem& p, model<T>& m) {
    return objective_t<T, Problem>{&p, &m};
  }
};

/// Functional-SAM (descent::functional) on the conformance problems. They are ℓ(F(w)) with
/// F(w) = w, so J = I, the output cotangent c(w) is the gradient itself, and g_fsam =
/// J(w + ε)ᵀ c(w) = c(w): the perturbed pass writes back the cotangent the clean pass saved.
struct functional_hooks : plain_hooks {
  template <class T, class Problem>
  struct functional_objective_of {
    Problem* p;
    model<T>* m;
    std::vector<T> saved;  // c(w) from the clean pass
    double operator()() {
      const double l = p->eval(*m);
      saved = m->raw_grads();
      return l;
    }
    void functional_backward() { m->set_raw_grads(saved); }
  };
  template <class T, class Problem>
  static auto objective(Problem& p, model<T>& m) {
    return functional_objective_of<T, Problem>{&p, &m, {}};
  }
  /// Two-call protocol: ascend() never writes the gradient views, so after it they still hold
  /// c(w), which is J(w + ε)ᵀ c(w) here.
  template <class T, class Problem>
  static void second_gradient(Problem&, model<T>&) {}
};

/// A descent rule with state (descent/state.hpp): the base step is taken on the rule's gradient,
/// not on g_adv, so the restore check compares the weights restored by cancel() only.
struct rule_hooks : plain_hooks {
  static constexpr bool descent_is_base_on_g_adv = false;
};

/// Momentum-SAM (perturb::momentum): ascend() takes no gradient at w.
struct no_clean_gradient_hooks : plain_hooks {
  static constexpr bool ascent_reads_gradient = false;
};

/// Hooks that build the optimizer (and the base-alone one it is compared with) over a copy of the
/// views in which `Derived::paired` registers the model's first and last tensors as a LoRA pair;
/// the tensors between keep their place after it (`add_middle`).
template <class Derived, class Hooks>
struct repaired_hooks : Hooks {
  template <class T>
  static void add_middle(param_set<T>& out, const param_set<T>& ps) {
    const auto& ts = ps.tensors();
    for (std::size_t t = 1; t + 1 < ts.size(); ++t)
      out.add(ts[t].name, ts[t].value, ts[t].grad, ts[t].shape, ts[t].options, ts[t].space);
  }
  template <class Opt, class C, class T>
  static Opt make(const param_set<T>& ps) {
    return plain_hooks::make<Opt, C, T>(Derived::paired(ps));
  }
  template <class Opt, class C, class T>
  static Opt make_base_alone(const param_set<T>& ps) {
    return Opt(Derived::paired(ps), {.base = config<typename C::base>::make(),
                                     .regularizer = config<typename C::regularizer>::make()});
  }
};

/// BAR (regularize::balancedness) needs LoRA pairs: the optimizer (and the base-alone optimizer it
/// is compared with) is built over a copy of the views in which the model's first and last tensors
/// (fc1.weight, fc2.weight in the conformance layout) are registered as one pair. The pair is not
/// a real factorisation; the suite checks the mechanics (convergence, restore, non-finite, threads).
struct lora_pair_hooks : repaired_hooks<lora_pair_hooks, plain_hooks> {
  template <class T>
  static param_set<T> paired(const param_set<T>& ps) {
    param_set<T> out;
    const auto& ts = ps.tensors();
    if (ts.size() < 2) return ps;
    const auto& x = ts.front();
    const auto& y = ts.back();
    out.add_lora_pair("pair", x.value, x.grad, x.shape, y.value, y.grad, y.shape, x.options, x.space);
    add_middle(out, ps);
    return out;
  }
};

/// SAMPa (perturb::sampa): no gradient at w, and the descent mixes its two gradients.
struct sampa_hooks : no_clean_gradient_hooks {
  static constexpr bool descent_is_base_on_g_adv = false;
};

/// What the two-call protocol needs between the perturbed gradient and descend() for a
/// composition with two gradient points (SAMPa: second_point(), then the gradient there); nothing
/// for the others.
template <class Hooks, class Opt, class T, class Problem>
void second_point(Opt& opt, Problem& q, model<T>& m) {
  if constexpr (Opt::two_points) {
    opt.second_point();
    Hooks::second_gradient(q, m);
  }
}

/// Flat-LoRA (perturb::flat_lora) perturbs the frozen base weight of LoRA pairs: the model's first
/// and last tensors are registered as one pair, A {r, a/r} and B {b/r, r} with r = gcd(a, b) (a, b
/// their sizes), over a frozen base W {b/r, a/r} held here. The conformance objectives do not read
/// W, so the suite checks the mechanics (no trained entry perturbed, restore, non-finite, threads);
/// tests/unit/test_flat_lora.cpp checks the noise and the gradient it changes against float64.
struct flat_lora_hooks : repaired_hooks<flat_lora_hooks, no_clean_gradient_hooks> {
  template <class T>
  static param_set<T> paired(const param_set<T>& ps) {
    static std::deque<std::vector<T>> bases;  // alive as long as any optimizer built here
    param_set<T> out;
    const auto& ts = ps.tensors();
    const auto& x = ts.front();
    const auto& y = ts.back();
    const std::size_t r = std::gcd(x.size, y.size);
    auto& w = bases.emplace_back();
    for (std::size_t j = 0; j < (x.size / r) * (y.size / r); ++j)
      w.push_back(static_cast<T>(0.25 * static_cast<double>(j % 7) - 0.75));
    out.add_lora_pair("pair", x.value, x.grad, {r, x.size / r}, y.value, y.grad, {y.size / r, r},
                      lora_base<T>{w.data(), 0.5}, x.options, x.space);
    add_middle(out, ps);
    return out;
  }
};

template <class Perturb, class Mask, class Base, class Descent = descent::standard, class Regularizer = regularize::none,
          class Hooks = plain_hooks, class Schedule = schedule::always>
struct composition {
  using perturb = Perturb;
  using mask = Mask;
  using base = Base;
  using descent = Descent;
  using regularizer = Regularizer;
  using hooks = Hooks;
  using schedule = Schedule;

  template <class T, class Backend>
  using optimizer = sharpness_aware<T, Backend, Perturb, Mask, Base, Descent, Regularizer, Schedule>;
  /// The same base optimizer (and regularizer) without perturbation, run alongside to check that
  /// descend() is exactly "restore w, then the base step with g_adv".
  template <class T, class Backend>
  using base_alone = sharpness_aware<T, Backend, flatmin::perturb::none, flatmin::mask::dense, Base,
                                    flatmin::descent::standard, Regularizer>;

  template <class T, class Backend>
  static optimizer<T, Backend> make(const param_set<T>& ps) {
    return Hooks::template make<optimizer<T, Backend>, composition, T>(ps);
  }
  template <class T, class Backend>
  static base_alone<T, Backend> make_base_alone(const param_set<T>& ps) {
    if constexpr (requires { Hooks::template make_base_alone<base_alone<T, Backend>, composition, T>(ps); })
      return Hooks::template make_base_alone<base_alone<T, Backend>, composition, T>(ps);
    else
      return base_alone<T, Backend>(
          ps, {.base = config<Base>::make(), .regularizer = config<Regularizer>::make()});
  }
};

// clang-format off
/// Every composition the conformance suite checks. Later issues append theirs here.
using compositions = std::tuple<
    composition<perturb::l2,       mask::dense, base::sgd>,
    composition<perturb::l2,       mask::dense, base::adam>,
    composition<perturb::l2,       mask::dense, base::adamw>,
    composition<perturb::adaptive, mask::dense, base::sgd>,
    composition<perturb::adaptive, mask::dense, base::adam>,
    composition<perturb::adaptive, mask::dense, base::adamw>,
    composition<perturb::none,     mask::dense, base::sgd>,
    composition<perturb::none,     mask::dense, base::adam>,
    composition<perturb::none,     mask::dense, base::adamw>,
    // issue 3: FSAM, SSAM-F, SSAM-D, ESAM (and a sparse mask under ASAM's perturbation)
    composition<perturb::l2,       mask::fisher,  base::adam>,
    composition<perturb::l2,       mask::fisher,  base::sgd, descent::standard, regularize::none, block_hooks<32>>,
    composition<perturb::l2,       mask::fisher,  base::sgd, descent::standard, regularize::none, example_hooks>,
    composition<perturb::l2,       mask::dynamic, base::sgd>,
    composition<perturb::l2,       mask::dynamic, base::sgd, descent::standard, regularize::none, block_hooks<16>>,
    composition<perturb::l2,       mask::random,  base::sgd, select::sharpness_sensitive, regularize::none, sample_hooks>,
    composition<perturb::adaptive, mask::fisher,  base::sgd>,
    // issue 4: preconditioned SAM, Functional-SAM, preconditioned Functional-SAM, BAR
    composition<perturb::preconditioned, mask::dense, base::adam>,
    composition<perturb::preconditioned, mask::dense, base::adamw>,
    composition<perturb::l2,             mask::dense, base::adamw, descent::functional, regularize::none, functional_hooks>,
    composition<perturb::preconditioned, mask::dense, base::adamw, descent::functional, regularize::none, functional_hooks>,
    composition<perturb::none,           mask::dense, base::sgd,   descent::standard, regularize::balancedness, lora_pair_hooks>,
    composition<perturb::none,           mask::dense, base::adamw, descent::standard, regularize::balancedness, lora_pair_hooks>,
    // issue 11: a schedule (SAM on steps 1, 4, 7, ..., the base step alone in between)
    composition<perturb::l2,             mask::dense, base::sgd,   descent::standard, regularize::none, plain_hooks, schedule::every_k>,
    // issue 16: GSAM, WSAM (decoupled), LookSAM (SAM on steps 1, 4, 7, ..., one gradient in between)
    composition<perturb::l2,             mask::dense, base::sgd,   descent::gsam,     regularize::none, rule_hooks>,
    composition<perturb::l2,             mask::dense, base::adam,  descent::wsam,     regularize::none, rule_hooks>,
    composition<perturb::l2,             mask::dense, base::sgd,   descent::looksam,  regularize::none, rule_hooks, schedule::every_k>,
    // issue 16: Friendly-SAM (a perturbation with state); Momentum-SAM (no gradient at w)
    composition<perturb::friendly,       mask::dense, base::sgd>,
    composition<perturb::momentum,       mask::dense, base::adamw, descent::standard, regularize::none, no_clean_gradient_hooks>,
    // issue 16: RWP (a random perturbation, not rescaled; the λ-mix of the two gradients)
    composition<perturb::gaussian,       mask::dense, base::sgd,   descent::mix,      regularize::none, rule_hooks>,
    // issue 16: GCSAM (the ascent's gradient centralised row by row)
    composition<perturb::centralized<perturb::l2>, mask::dense, base::sgd>,
    // issue 16: Flat-LoRA (noise on the frozen bases of LoRA pairs, one gradient per step)
    composition<perturb::flat_lora,      mask::dense, base::adamw, descent::standard, regularize::none, flat_lora_hooks>,
    // issue 16: SAMPa (two independent gradients: at x + ε from the kept g_y, and at the look-ahead y)
    composition<perturb::sampa,          mask::dense, base::sgd,   descent::standard, regularize::none, sampa_hooks>
>;
// clang-format on

/// One conformance case: a composition on a backend.
template <class Composition, class Backend>
struct conformance_case {
  using composition = Composition;
  using backend = Backend;
};

template <class Compositions, class Backends>
struct cross;
template <class... C, class... B>
struct cross<std::tuple<C...>, std::tuple<B...>> {
  template <class X>
  using row = std::tuple<conformance_case<X, B>...>;
  using type = decltype(std::tuple_cat(std::declval<row<C>>()...));
};

}  // namespace flatmin_test::conformance
