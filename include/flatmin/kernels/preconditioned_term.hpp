#pragma once
/// @file preconditioned_term.hpp
/// Per-element term of the preconditioned perturbation ε = ρ P⁻¹g / (‖P⁻¹g‖ + ξ) with
/// P = diag(√v̂ + ε_adam), v̂ = v / (1 − β2ᵗ): the same denominator Adam divides its step by.

#include <cstdint>

#include "../params/tensor_view.hpp"
#include "math.hpp"

namespace flatmin::kernels {

/// Norm term and direction P⁻¹g. With `v == nullptr` (no second moment yet) P = I: plain SAM.
template <class T>
struct preconditioned_term {
  const T* v;  ///< Adam's second moment (global index), or nullptr
  T bc2_sqrt;  ///< √(1 − β2ᵗ), t = applied steps so far
  T eps;       ///< Adam's ε
  FLATMIN_HD T precondition(T g, std::size_t i) const {
    return v == nullptr ? g : g / (fm_sqrt(v[i]) / bc2_sqrt + eps);
  }
  FLATMIN_HD T norm(T /*w*/, T g, std::size_t i, std::uint32_t /*flags*/) const { return precondition(g, i); }
  FLATMIN_HD T dir(T /*w*/, T g, std::size_t i, std::uint32_t /*flags*/) const { return precondition(g, i); }
};

}  // namespace flatmin::kernels
