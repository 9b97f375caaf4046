#pragma once
/// @file state.hpp
/// The seam for a perturbation with state (Friendly-SAM's gradient EMA): a perturbation `P` may
/// declare `template <class T, class Backend> class state`, constructible from
/// `(const P&, const backend::layout<T, Backend>&)`. The optimizer then builds the per-element
/// term of the ascent from it, `state.term(options, base_state, steps_done)`, in place of
/// `P::term`, and calls, each only if the state has it: `before_statistics(options, layout,
/// inv_scale)` before the ascent's statistics pass (g is in the views: perturb::centralized's row
/// means), `perturbation_norm()` for the report's ‖ε‖ when the statistics do not give it
/// (perturb::gaussian), `identity(options)` for the checkpoint's composition identity,
/// `on_ascent(options, layout, ascent_stats, inv_scale)` (the ascent hook of concepts/roles.hpp
/// with the options first: g is in the views; what it computes is scratch for the step),
/// `commit_step()` once a perturbed step is applied (never for a skipped, cancelled or unperturbed
/// step), and `visit(f)`, `check_load(staged)`, `bytes()` for checkpoints. A perturbation without
/// `state` gets `detail::no_state` (concepts/policy_state.hpp) and runs exactly as before.

#include <cstddef>
#include <utility>

#include "../backend/layout.hpp"
#include "../concepts/policy_state.hpp"

namespace flatmin::detail {

/// The type of the per-element term of the ascent: the state's, else the policy's.
template <class P, class T, class Backend, class BaseState>
struct perturb_term_of {
  using type =
      decltype(std::declval<const P&>().template term<T>(std::declval<const BaseState&>(), std::size_t{}));
};
template <class P, class T, class Backend, class BaseState>
  requires has_state<P, T, Backend>
struct perturb_term_of<P, T, Backend, BaseState> {
  using type = decltype(std::declval<const typename P::template state<T, Backend>&>().term(
      std::declval<const P&>(), std::declval<const BaseState&>(), std::size_t{}));
};

}  // namespace flatmin::detail
