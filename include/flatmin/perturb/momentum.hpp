#pragma once
/// @file momentum.hpp
/// `perturb::momentum` — Momentum-SAM's perturbation (Becker, Altrock, Risse, "Momentum-SAM:
/// Sharpness Aware Minimization without Computational Overhead", 2024): the ascent follows the
/// base optimizer's momentum instead of the gradient, so a step needs ONE gradient, at w + ε:
///
///     ε = −ρ v_{t−1} / (‖v_{t−1}‖ + ξ)     (‖·‖ over the perturbed tensors, as perturb::l2)
///     g_adv = ∇L(w + ε);  w ← saved w;  w ← Base(w, g_adv)
///
/// v is the base optimizer's momentum as it stands after the last applied step: base::sgd's
/// momentum buffer (momentum > 0 required) or base::adam / adamw's first moment m (not
/// bias-corrected). On the first step v is 0 and so is ε (the step is the base step on ∇L(w)).
///
/// The protocol: `ascend()` needs no gradient (call it first, then one backward at w + ε, then
/// `descend()`); `step(obj)` calls the objective once. The weights do NOT rest in the perturbed
/// state between steps (the official code leaves them at w + ε and has `move_back_from_
/// momentumAscent()` for evaluation): between steps they are w, so evaluation and checkpoints need
/// nothing, for one more pass per step (the ascent writes w + ε and saves w; the restore is fused
/// into the base step as for SAM). Composes with mask::dense and descent::standard only (masks and
/// descent rules that read g at w have none to read).
///
/// Official code: MarlonBecker/MSAM (at 780fa4f), optimizer/msam.py `MSAM.step` (SGD: the move
/// back by ρ·v·inverse_norm_buffer, the torch SGD momentum step, then the new ascent
/// −ρ·v/(‖v‖ + 1e-12); defaults lr 0.1, momentum 0.9, weight decay 1e-2, ρ 0.3) and
/// optimizer/adamW_msam.py (the same along exp_avg; default ρ 1). Departures: the official SGD
/// adds weight decay to the gradient with the weights still perturbed (flatmin's base step sees
/// the restored w, as for every composition); the official AdamW applies its decoupled decay after
/// the Adam update (base::adamw follows torch.optim.AdamW: before); ξ is the library's (the
/// official 1e-12 is the same). The norm runs over the perturbed tensors (`tensor_options::
/// perturb`); the official code has every tensor with a gradient.
///
/// Options: ρ = `rho` (0.3), ξ = `xi` (1e-12). No state of its own (the base's momentum is it).

#include <cstddef>
#include <cstdint>

#include "../config.hpp"

namespace flatmin::kernels {

/// Momentum-SAM's term: norm and direction −v (0 before the base has a momentum). It reads no
/// gradient: the statistics pass then counts no non-finite g (there is none yet) and no ‖g‖.
template <class T>
struct momentum_term {
  const T* v;  ///< the base's momentum, global index; nullptr before the first applied step
  static constexpr bool reads_gradient = false;
  static constexpr bool reads_buffer = true;  ///< norm = dir = −v[i] (a host group form sums v²)
  FLATMIN_HD T norm(T /*w*/, T /*g*/, std::size_t i, std::uint32_t /*flags*/) const {
    return v ? -v[i] : T(0);
  }
  FLATMIN_HD T dir(T w, T g, std::size_t i, std::uint32_t flags) const { return norm(w, g, i, flags); }
};

}  // namespace flatmin::kernels

namespace flatmin::perturb {

struct momentum {
  static constexpr const char* name = "momentum";  ///< in checkpoints' composition identity
  double rho = 0.3;                                ///< radius ρ ≥ 0
  double xi = 1e-12;                               ///< ξ ≥ 0 added to the norm

  static constexpr bool perturbs = true;
  /// ascend() reads no gradient at w (sharpness_aware: step() calls the objective once).
  static constexpr bool needs_clean_gradient = false;

  template <class T = double>
  void validate() const {
    using flatmin::detail::domain;
    flatmin::detail::check_option<T>("perturb::momentum", "rho", rho, domain::non_negative);
    flatmin::detail::check_option<T>("perturb::momentum", "xi", xi, domain::non_negative);
  }

  /// The base optimizer must keep a momentum: base::sgd with momentum > 0 (checked with the
  /// options), base::adam / adamw (always).
  template <class Base>
  void check_base(const Base& b) const {
    if constexpr (requires { b.momentum; })
      flatmin::detail::check_option(b.momentum > 0, "perturb::momentum (Momentum-SAM)", "the base's momentum",
                                    static_cast<double>(b.momentum),
                                    "> 0 (the ascent follows the momentum buffer)");
  }

  /// `steps_done`: applied steps so far (0: no momentum yet, ε = 0).
  template <class T, class BaseState>
  kernels::momentum_term<T> term(const BaseState& base, std::size_t steps_done) const {
    static_assert(requires { base.first_moment(); },
                  "perturb::momentum (Momentum-SAM): the base optimizer's state has no first moment");
    return {steps_done == 0 ? nullptr : base.first_moment()};
  }
};

}  // namespace flatmin::perturb
