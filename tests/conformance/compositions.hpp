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
/// see `plain_hooks` for what a hooks type provides.

#include <flatmin/flatmin.hpp>

#include <tuple>
#include <utility>

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
struct config<perturb::adaptive> {
  static perturb::adaptive make() { return {.rho = 0.05, .eta = 0.01}; }
};

/// How a composition is driven on a problem. A composition whose descent or mask needs more than
/// a plain objective provides its own hooks type with the same members.
struct plain_hooks {
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
    return Opt(ps, config<typename C::base>::make(), config<typename C::perturb>::make(),
               config<typename C::mask>::make(), optimizer_options{}, config<typename C::descent>::make(),
               config<typename C::regularizer>::make());
  }
};

template <class Perturb, class Mask, class Base, class Descent = descent::standard, class Regularizer = regularize::none,
          class Hooks = plain_hooks>
struct composition {
  using perturb = Perturb;
  using mask = Mask;
  using base = Base;
  using descent = Descent;
  using regularizer = Regularizer;
  using hooks = Hooks;

  template <class T, class Backend>
  using optimizer = sharpness_aware<T, Backend, Perturb, Mask, Base, Descent, Regularizer>;
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
    return base_alone<T, Backend>(ps, config<Base>::make(), {}, {}, optimizer_options{}, {},
                                  config<Regularizer>::make());
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
    composition<perturb::none,     mask::dense, base::adamw>
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
