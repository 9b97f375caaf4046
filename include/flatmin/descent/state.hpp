#pragma once
/// @file state.hpp
/// The seam for a descent rule with state (GSAM, WSAM, LookSAM): what the optimizer asks of a
/// descent policy's optional `state<T, Backend>`, and the pieces it composes it with.
///
/// A descent rule `D` may declare `template <class T, class Backend> class state`, constructible
/// from `(const D&, const backend::layout<T, Backend>&)`: its per-element buffers are created
/// there, for the layout, once. The optimizer then calls, each only if the state has it:
///
///  - `on_ascent(layout, ascent_stats, inv_scale)`: the ascent-time hook (concepts/roles.hpp),
///    on every step that perturbs, with the clean g in the gradient views. Scratch for the step.
///  - `prepare(const D&, layout, const step_context&)`, after the regularizer's and the base's
///    prepare, once per applied step: runs the reductions the rule needs (through Backend::reduce,
///    the deterministic summation of backend/summation.hpp) and returns an elementwise
///    `(w, g, elem) -> g'`. It is applied in the fused descent pass to the descent gradient (g_adv,
///    or g on a step the schedule leaves unperturbed: `step_context::perturbed`) BEFORE the
///    regularizer's adjust. Nothing after it can throw, so it may update the state.
///  - `finish(const D&, layout, const step_context&)` after the descent pass (a decoupled term
///    applied to w after the base step, WSAM's).
///  - `visit(f)`, `check_load(staged)`, `identity(const D&)`, `bytes()`: checkpoint entries, their
///    checks, the identity's state-size options and the memory it holds, like the base states'.
///
/// A descent policy may also give `radius(double rho, const Base&)`: the ρ of this step's ascent
/// in place of the perturbation's (GSAM's ρ_t following the base learning rate).
/// A descent rule without `state` gets `detail::no_state` (concepts/policy_state.hpp): the optimizer then
/// runs exactly as before (the same passes, the same bits).

#include <cstddef>

#include "../backend/layout.hpp"
#include "../concepts/policy_state.hpp"
#include "../config.hpp"

namespace flatmin::descent {

/// What `prepare` and `finish` are told about the step being applied.
struct step_context {
  std::size_t step = 0;    ///< 1-based number of the step being applied
  bool perturbed = false;  ///< the views hold g_adv (else g: the schedule left the step unperturbed)
  double lr = 0;           ///< the base optimizer's `lr` (0 if it has none)
  double inv_scale = 1;    ///< 1 / grad_scale (the views hold the scaled gradient)
};

}  // namespace flatmin::descent

namespace flatmin::detail {

/// The descent rule's adjust, then the regularizer's: g' = reg(w, rule(w, g, e), e).
template <class T, class Rule, class Reg>
struct chained_adjust {
  Rule rule;
  Reg reg;
  template <class E>
  FLATMIN_HD T operator()(T w, T g, const E& e) const {
    return reg(w, rule(w, g, e), e);
  }
};

/// The base optimizer's learning rate, for rules that scale by it (0 for a base without one).
template <class Base>
double lr_of(const Base& b) {
  if constexpr (requires { b.lr; })
    return static_cast<double>(b.lr);
  else
    return 0.0;
}

}  // namespace flatmin::detail
