#pragma once
/// @file wsam.hpp
/// WSAM — Yue et al., "Sharpness-Aware Minimization Revisited: Weighted Sharpness as a
/// Regularization Term", KDD 2023 (the rule and its official code: descent/wsam.hpp).
///
///     ε = ρ g / (‖g‖ + ξ);  g_adv = ∇L(w + ε);  α = γ/(1 − γ);  w ← saved w;
///     coupled:    w ← Base(w, g + α(g_adv − g))
///     decoupled:  w ← Base(w, g);  w ← w − lr·α·(g_adv − g)
///
/// Defaults: ρ = 0.05, ξ = 1e-12, γ = 0.9, decoupled (the official README's example).
/// Official preset, `flatmin::wsam(params, base, flatmin::official)` (`wsam_official_options`):
/// the official constructor's defaults (atorch/atorch/optimizers/wsam.py, lines 28-33): γ = 0.88,
/// ρ = 0.05, ξ = 1e-12, decoupled; its gradient clipping is not reproduced (descent/wsam.hpp).

#include "../backend/default.hpp"
#include "../descent/wsam.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/l2.hpp"
#include "../schedule/always.hpp"
#include "official.hpp"

namespace flatmin {

template <preset P>
struct wsam_preset_options {
  double rho = 0.05;                                  ///< perturb::l2::rho
  double xi = 1e-12;                                  ///< perturb::l2::xi
  double gamma = P == preset::official ? 0.88 : 0.9;  ///< descent::wsam::gamma
  bool decouple = true;                               ///< descent::wsam::decouple
  nonfinite on_nonfinite = nonfinite::skip;           ///< optimizer_options::on_nonfinite

  template <class Base, class Schedule = schedule::always>
  composition<perturb::l2, mask::dense, Base, descent::wsam, regularize::none, Schedule> compose(
      Base base, Schedule schedule = {}) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .xi = xi},
            .descent = {.gamma = gamma, .decouple = decouple},
            .schedule = std::move(schedule),
            .options = {.on_nonfinite = on_nonfinite}};
  }
};
using wsam_options = wsam_preset_options<preset::library>;
using wsam_official_options = wsam_preset_options<preset::official>;

template <class T, class Base, class Backend = default_backend, class Schedule = schedule::always>
using wsam_t =
    sharpness_aware<T, Backend, perturb::l2, mask::dense, Base, descent::wsam, regularize::none, Schedule>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
wsam_t<T, Base, Backend> wsam(const param_set<W, G>& params, Base base, wsam_options o = {}) {
  return wsam_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

/// WSAM on the steps `schedule` picks (schedule::every_k, schedule::from_step), the base step
/// alone on the others.
template <class Backend = default_backend, class W, class G, class Base, schedule_policy Schedule,
          class T = detail::precision_for_t<W, G>>
wsam_t<T, Base, Backend, Schedule> wsam(const param_set<W, G>& params, Base base, Schedule schedule,
                                        wsam_options o = {}) {
  return wsam_t<T, Base, Backend, Schedule>(params, o.compose(std::move(base), std::move(schedule)));
}

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
wsam_t<T, Base, Backend> wsam(const param_set<W, G>& params, Base base, official_t,
                              wsam_official_options o = {}) {
  return wsam_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

}  // namespace flatmin
