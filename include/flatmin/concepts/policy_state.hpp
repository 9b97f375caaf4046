#pragma once
/// @file policy_state.hpp
/// "The policy's state, or an empty one": a policy `P` (a descent rule, a perturbation) may declare
/// `template <class T, class Backend> class state`, constructible from
/// `(const P&, const backend::layout<T, Backend>&)`. `state_of_t<P, T, Backend>` is that class, or
/// `no_state<P, T, Backend>` (constructible the same way, holding nothing) for a policy without
/// one; `has_state<P, T, Backend>` says which. What the optimizer asks of each kind of state is
/// described with its seam (descent/state.hpp, perturb/state.hpp).

#include "../backend/layout.hpp"

namespace flatmin::detail {

/// Whether the policy declares `state<T, Backend>`.
template <class P, class T, class Backend>
concept has_state = requires { typename P::template state<T, Backend>; };

/// The state of a policy that declares none.
template <class P, class T, class Backend>
struct no_state {
  no_state(const P&, const backend::layout<T, Backend>&) {}
};

template <class P, class T, class Backend>
struct state_of {
  using type = no_state<P, T, Backend>;
};
template <class P, class T, class Backend>
  requires has_state<P, T, Backend>
struct state_of<P, T, Backend> {
  using type = typename P::template state<T, Backend>;
};
template <class P, class T, class Backend>
using state_of_t = typename state_of<P, T, Backend>::type;

}  // namespace flatmin::detail
