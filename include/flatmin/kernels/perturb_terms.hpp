#pragma once
/// @file perturb_terms.hpp
/// Per-element pieces of a perturbation ε = ρ · dir / (‖norm‖ + ξ): the term whose L2 norm
/// normalises ε, and the direction.

#include <cstdint>

#include "../params/tensor_view.hpp"
#include "math.hpp"

namespace flatmin::kernels {

/// SAM: norm term g, direction g.
template <class T>
struct l2_term {
  /// norm and dir are g itself: a reduction may sum g² once for all three sums.
  static constexpr bool is_gradient = true;
  FLATMIN_HD T norm(T /*w*/, T g, std::size_t /*i*/, std::uint32_t /*flags*/) const { return g; }
  FLATMIN_HD T dir(T /*w*/, T g, std::size_t /*i*/, std::uint32_t /*flags*/) const { return g; }
};

/// ASAM: T_w = |w| + η on adaptive tensors (1 elsewhere); norm term T_w g, direction T_w² g.
template <class T>
struct adaptive_term {
  T eta;
  FLATMIN_HD T scale(T w, std::uint32_t flags) const {
    return (flags & tensor_flags::adaptive) ? fm_abs(w) + eta : T(1);
  }
  FLATMIN_HD T norm(T w, T g, std::size_t, std::uint32_t flags) const { return scale(w, flags) * g; }
  FLATMIN_HD T dir(T w, T g, std::size_t, std::uint32_t flags) const {
    const T s = scale(w, flags);
    return s * s * g;
  }
};

/// term.norm / term.dir of entry i of tensor `tensor`: with the tensor index when the term takes
/// it (a term that looks up per-tensor data: perturb::gaussian's, perturb::centralized's), else by
/// global index and flags.
template <class Term, class T>
FLATMIN_HD T call_norm(const Term& term, T w, T g, std::size_t i, std::uint32_t flags, std::uint32_t tensor) {
  if constexpr (requires { term.norm(w, g, i, flags, tensor); })
    return term.norm(w, g, i, flags, tensor);
  else
    return term.norm(w, g, i, flags);
}
template <class Term, class T>
FLATMIN_HD T call_dir(const Term& term, T w, T g, std::size_t i, std::uint32_t flags, std::uint32_t tensor) {
  if constexpr (requires { term.dir(w, g, i, flags, tensor); })
    return term.dir(w, g, i, flags, tensor);
  else
    return term.dir(w, g, i, flags);
}

}  // namespace flatmin::kernels
