#pragma once
/// @file report.hpp
/// What each call of the step protocol returns.

#include <cstddef>
#include <limits>
#include <optional>

namespace flatmin {

/// Why a step was skipped.
enum class skip_reason {
  none,
  nonfinite_gradient,            ///< g at w had a NaN or Inf entry (or its norm overflowed)
  nonfinite_perturbed_gradient,  ///< g at w + ε had a NaN or Inf entry
  found_inf,                     ///< the caller said so (`step_args::found_inf`), e.g. a loss scaler
  nonfinite_example_gradient     ///< a per-example gradient of the mask's estimate (SSAM-F) had a NaN or Inf
};

inline const char* to_string(skip_reason r) {
  switch (r) {
    case skip_reason::none:
      return "none";
    case skip_reason::nonfinite_gradient:
      return "non-finite gradient at w";
    case skip_reason::nonfinite_perturbed_gradient:
      return "non-finite gradient at w + eps";
    case skip_reason::found_inf:
      return "found_inf set by the caller";
    case skip_reason::nonfinite_example_gradient:
      return "non-finite per-example gradient (mask estimate)";
  }
  return "?";
}

/// Per-call arguments for mixed precision.
struct step_args {
  /// The gradients in the views are multiplied by this (a loss scale); the optimizer divides it
  /// out on the fly, once, in every pass (never unscaling twice, never writing the gradients).
  double grad_scale = 1.0;
  /// If set, the caller has already checked the gradient for non-finite values (a loss scaler's
  /// found_inf): the optimizer trusts it and skips its own check pass in descend().
  std::optional<bool> found_inf{};
};

/// The report of a step (filled in as the protocol advances).
struct step_report {
  std::size_t step = 0;  ///< 1-based index of this step (applied steps so far + 1)
  double loss = std::numeric_limits<double>::quiet_NaN();       ///< clean loss (closure protocol only)
  double grad_norm = std::numeric_limits<double>::quiet_NaN();  ///< ‖g‖ at w, all tensors
  double perturbed_grad_norm = std::numeric_limits<double>::quiet_NaN();  ///< ‖g_adv‖ at w + ε
  /// ‖ε‖; NaN when a perturbed tensor has `tensor_options::rho_scale` other than 1 (not computed).
  double perturbation_norm = 0;
  double mask_density = 0;  ///< perturbed entries / perturbable entries
  /// The factor the descent gradient was scaled by (`optimizer_options::clip_grad_norm`; 1 when
  /// not clipped). The norms above are the pre-clip ones.
  double clip_scale = 1;
  /// Whether w was moved to w + ε this step: false when the composition never perturbs, when its
  /// schedule leaves the step unperturbed (the base step then applies to g), or when g was non-finite.
  bool perturbed = false;
  bool skipped = false;
  /// The factor this step's gradients carried (step_args::grad_scale, or the dynamic loss scale).
  double loss_scale = 1.0;
  skip_reason reason = skip_reason::none;
};

}  // namespace flatmin
