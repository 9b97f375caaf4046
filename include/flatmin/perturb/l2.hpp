#pragma once
/// @file l2.hpp
/// `perturb::l2` — SAM's perturbation (Foret et al., ICLR 2021).
///
///     ε = ρ · g / (‖g‖ + ξ)
///
/// ‖·‖ is the global L2 norm over every perturbed tensor (tensors with `.perturb = false` are
/// neither perturbed nor part of the norm). With g = 0, ε = 0 (also when ξ = 0).
/// Options: ρ = `rho` (0.05), ξ = `xi` (1e-12).

#include "../config.hpp"
#include "../kernels/perturb_terms.hpp"

namespace flatmin::perturb {

struct l2 {
  static constexpr const char* name = "l2";  ///< in checkpoints' composition identity
  double rho = 0.05;                         ///< radius ρ ≥ 0
  double xi = 1e-12;                         ///< ξ ≥ 0 added to the norm

  static constexpr bool perturbs = true;

  /// Throws std::invalid_argument unless the options are valid for an optimizer computing in T.
  template <class T = double>
  void validate() const {
    detail::check_option<T>("perturb::l2", "rho", rho, detail::domain::non_negative);
    detail::check_option<T>("perturb::l2", "xi", xi, detail::domain::non_negative);
  }

  /// The per-element term; `base` and `steps_done` are unused by plain SAM.
  template <class T, class BaseState>
  kernels::l2_term<T> term(const BaseState& /*base*/, std::size_t /*steps_done*/) const {
    return {};
  }
};

}  // namespace flatmin::perturb
