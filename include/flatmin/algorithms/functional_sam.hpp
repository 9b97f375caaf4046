#pragma once
/// @file functional_sam.hpp
/// Functional-SAM and preconditioned Functional-SAM — Singh, Mobahi, Agarwala, Dauphin, "Avoiding
/// spurious sharpness minimization broadens applicability of SAM", ICML 2025. **Library
/// formulation** (see descent/functional.hpp and shared/ALGORITHMS.md): the paper's full text could
/// not be checked.
///
///     g = J(w)ᵀ c(w);  ε = ρ g/(‖g‖+ξ)  (or ρ P⁻¹g/(‖P⁻¹g‖+ξ));  g_fsam = J(w + ε)ᵀ c(w)
///     w ← saved w;  w ← Base(w, g_fsam)
///
/// The objective is a `flatmin::functional_objective`: `obj()` is the clean pass and saves the
/// output cotangent c(w); `obj.functional_backward()` back-propagates that saved cotangent through
/// the outputs at w + ε. With ascend()/descend(), the caller does the same (descent/functional.hpp).
/// Defaults: ρ = 0.05, ξ = 1e-12 (library defaults, as SAM's). preconditioned_functional_sam needs
/// base::adam or base::adamw (a compile error otherwise); its first step uses P = I.
///
///     auto opt = flatmin::functional_sam(params, flatmin::base::adamw{.lr = 3e-4});
///     opt.step(model_objective);   // model_objective() and model_objective.functional_backward()

#include "../backend/default.hpp"
#include "../descent/functional.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/l2.hpp"
#include "../perturb/preconditioned.hpp"
#include "../regularize/none.hpp"
#include "sam.hpp"

namespace flatmin {

/// Functional-SAM's options are SAM's (ρ, ξ, on_nonfinite, with SAM's defaults).
using functional_sam_options = sam_options;

template <class T, class Base, class Backend = default_backend>
using functional_sam_t = sharpness_aware<T, Backend, perturb::l2, mask::dense, Base, descent::functional>;

template <class T, class Base, class Backend = default_backend>
using preconditioned_functional_sam_t =
    sharpness_aware<T, Backend, perturb::preconditioned, mask::dense, Base, descent::functional>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
functional_sam_t<T, Base, Backend> functional_sam(const param_set<W, G>& params, Base base,
                                                  functional_sam_options o = {}) {
  return functional_sam_t<T, Base, Backend>(params,
                                            o.compose<perturb::l2, descent::functional>(std::move(base)));
}

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
preconditioned_functional_sam_t<T, Base, Backend> preconditioned_functional_sam(
    const param_set<W, G>& params, Base base, functional_sam_options o = {}) {
  return preconditioned_functional_sam_t<T, Base, Backend>(
      params, o.compose<perturb::preconditioned, descent::functional>(std::move(base)));
}

}  // namespace flatmin
