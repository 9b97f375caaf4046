#pragma once
/// @file preconditioned.hpp
/// `perturb::preconditioned` — the perturbation of preconditioned SAM (Singh, Mobahi, Agarwala,
/// Dauphin, ICML 2025). **Library formulation** (shared/ALGORITHMS.md): the paper's full text could
/// not be checked; this is the library's definition, validated by the property below.
///
///     P = diag(√v̂ + ε_adam),  v̂ = v / (1 − β2ᵗ)   (the Adam / AdamW base optimizer's bias-corrected
///                                                    second moment after the previous step)
///     ε = ρ · P⁻¹g / (‖P⁻¹g‖ + ξ)
///
/// On the first step (no second moment yet) P = I: plain SAM. The ascent then follows the
/// geometry Adam descends in, so ε is not spent on directions Adam barely moves along.
/// Property (tests/unit/test_preconditioned.cpp): on an ill-conditioned quadratic with a known
/// second moment, ε's direction is P⁻¹g / ‖P⁻¹g‖.
/// Requires a base optimizer with a second moment (`has_second_moment == true`: base::adam,
/// base::adamw); any other is a compile error.
/// Options: ρ = `rho` (0.05), ξ = `xi` (1e-12).

#include <cmath>

#include "../config.hpp"
#include "../kernels/preconditioned_term.hpp"

namespace flatmin::perturb {

struct preconditioned {
  static constexpr const char* name = "preconditioned";  ///< in checkpoints' composition identity
  double rho = 0.05;                                     ///< radius ρ ≥ 0
  double xi = 1e-12;                                     ///< ξ ≥ 0 added to the norm

  static constexpr bool perturbs = true;
  /// Checked by `sharpness_aware` against `Base::has_second_moment`.
  static constexpr bool needs_second_moment = true;

  /// Throws std::invalid_argument unless the options are valid for an optimizer computing in T.
  template <class T = double>
  void validate() const {
    detail::check_option<T>("perturb::preconditioned", "rho", rho, detail::domain::non_negative);
    detail::check_option<T>("perturb::preconditioned", "xi", xi, detail::domain::non_negative);
  }

  /// P⁻¹ from `base`'s second moment after `steps_done` applied steps (P = I before the first).
  template <class T, class BaseState>
  kernels::preconditioned_term<T> term(const BaseState& base, std::size_t steps_done) const {
    if constexpr (requires {
                    base.second_moment();
                    base.second_moment_beta2();
                    base.second_moment_eps();
                  }) {
      if (steps_done == 0) return {nullptr, T(1), T(0)};
      const double bc2 = 1.0 - std::pow(base.second_moment_beta2(), static_cast<double>(steps_done));
      return {base.second_moment(), static_cast<T>(std::sqrt(bc2)), static_cast<T>(base.second_moment_eps())};
    } else {
      // Unreachable in a valid composition: sharpness_aware's static_assert has already fired.
      return {nullptr, T(1), T(0)};
    }
  }
};

}  // namespace flatmin::perturb
