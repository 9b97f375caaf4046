#pragma once
/// @file clip.hpp
/// Global-norm gradient clipping (`optimizer_options::clip_grad_norm`), as torch.nn.utils'
/// clip_grad_norm_ does it: with n = ‖g_adv‖₂ over every entry of the parameter set (after
/// unscaling by 1/grad_scale), the descent gradient is scaled by c = min(1, max_norm / (n + 1e-6)).
///
/// What is clipped: the gradient the base step receives (g_adv, or g on an unperturbed step),
/// before the regularizer adds its term and before the base optimizer's weight decay: the same
/// place as clip_grad_norm_ between backward() and optimizer.step(). The ascent gradient is not
/// clipped: ε = ρ·dir(g)/‖norm(g)‖ is invariant under a scalar scale of g for SAM, ASAM and the
/// preconditioned direction (up to ξ), so clipping g at w would change nothing but ξ's weight; a
/// torch SAM loop that clips calls clip_grad_norm_ once, before the second step. n is computed
/// by the finiteness check the descent runs anyway (no extra pass, except when the caller
/// passes `found_inf` and that check is skipped); `step_report` keeps the pre-clip norm in
/// `grad_norm` / `perturbed_grad_norm` and the factor in `clip_scale`.

#include <cmath>

namespace flatmin::detail {

/// The factor c applied to the descent gradient: 1 when clipping is off (max_norm = 0) or the
/// norm is within the bound, so that an unclipped step is bit-identical to one without the option.
inline double clip_coefficient(double max_norm, double norm) {
  if (!(max_norm > 0)) return 1.0;
  const double c = max_norm / (norm + 1e-6);
  return c < 1.0 ? c : 1.0;
}

}  // namespace flatmin::detail
