#pragma once
/// @file preconditioned_sam.hpp
/// Preconditioned SAM — Singh, Mobahi, Agarwala, Dauphin, "Avoiding spurious sharpness minimization
/// broadens applicability of SAM", ICML 2025. **Library formulation** (see perturb/preconditioned.hpp
/// and shared/ALGORITHMS.md): the paper's full text could not be checked.
///
///     P = diag(√v̂ + ε_adam)  (the base optimizer's bias-corrected second moment, previous step)
///     ε = ρ P⁻¹g / (‖P⁻¹g‖ + ξ);  g_adv = ∇L(w + ε);  w ← saved w;  w ← Base(w, g_adv)
///
/// Base must be base::adam or base::adamw (a compile error otherwise). The first step is plain
/// SAM. Defaults: ρ = 0.05, ξ = 1e-12 (library defaults, as SAM's).
///
///     auto opt = flatmin::preconditioned_sam(params, flatmin::base::adamw{.lr = 3e-4}, {.rho = 0.05});

#include "../backend/default.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/preconditioned.hpp"
#include "sam.hpp"

namespace flatmin {

/// Preconditioned SAM's options are SAM's (ρ, ξ, on_nonfinite, with SAM's defaults).
using preconditioned_sam_options = sam_options;

template <class T, class Base, class Backend = default_backend>
using preconditioned_sam_t = sharpness_aware<T, Backend, perturb::preconditioned, mask::dense, Base>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
preconditioned_sam_t<T, Base, Backend> preconditioned_sam(const param_set<W, G>& params, Base base,
                                                          preconditioned_sam_options o = {}) {
  return preconditioned_sam_t<T, Base, Backend>(params, o.compose<perturb::preconditioned>(std::move(base)));
}

}  // namespace flatmin
