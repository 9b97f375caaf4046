#pragma once
/// @file adaptive.hpp
/// `perturb::adaptive` — ASAM's perturbation (Kwon et al., ICML 2021).
///
///     T_w = |w| + η  (elementwise; T_w = 1 on tensors with `.adaptive = false`)
///     ε   = ρ · T_w² ⊙ g / (‖T_w ⊙ g‖ + ξ)
///
/// The official code scales only tensors whose name contains "weight"; here that is the per-tensor
/// option `tensor_options::adaptive` (set it to false for biases to match, or use the official
/// preset, `flatmin::asam(params, base, flatmin::official)`, which applies the name rule).
/// Options: ρ = `rho` (0.5), η = `eta` (0.01), ξ = `xi` (1e-12).

#include "../config.hpp"
#include "../kernels/perturb_terms.hpp"

namespace flatmin::perturb {

struct adaptive {
  static constexpr const char* name = "adaptive";  ///< in checkpoints' composition identity
  double rho = 0.5;                                ///< radius ρ ≥ 0
  double eta = 0.01;                               ///< η ≥ 0
  double xi = 1e-12;                               ///< ξ ≥ 0

  static constexpr bool perturbs = true;

  /// Throws std::invalid_argument unless the options are valid for an optimizer computing in T.
  template <class T = double>
  void validate() const {
    detail::check_option<T>("perturb::adaptive", "rho", rho, detail::domain::non_negative);
    detail::check_option<T>("perturb::adaptive", "eta", eta, detail::domain::non_negative);
    detail::check_option<T>("perturb::adaptive", "xi", xi, detail::domain::non_negative);
    // The direction is T_w² g with T_w ≥ η: an η² past T's range makes every step non-finite.
    detail::check_derived<T>("perturb::adaptive", "eta * eta", eta * eta);
  }

  template <class T, class BaseState>
  kernels::adaptive_term<T> term(const BaseState& /*base*/, std::size_t /*steps_done*/) const {
    return {static_cast<T>(eta)};
  }
};

}  // namespace flatmin::perturb
