#pragma once
/// @file msam.hpp
/// Momentum-SAM — Becker, Altrock, Risse, "Momentum-SAM: Sharpness Aware Minimization without
/// Computational Overhead", 2024 (the perturbation, its protocol and official code:
/// perturb/momentum.hpp).
///
///     ε = −ρ v/(‖v‖ + ξ)   (v: the base optimizer's momentum after the last step);
///     g_adv = ∇L(w + ε);  w ← saved w;  w ← Base(w, g_adv)
///
/// One gradient per step: `opt.step(obj)` calls the objective once, and in the two-call protocol
/// `ascend()` comes BEFORE the backward (it reads no gradient). The base keeps a momentum:
/// base::sgd with momentum > 0 (else std::invalid_argument), base::adam or base::adamw.
/// Defaults: ρ = 0.3, ξ = 1e-12 — the official SGD optimizer's (MarlonBecker/MSAM, optimizer/
/// msam.py); its AdamW optimizer (adamW_msam.py) defaults to ρ = 1: pass `.rho = 1` with AdamW.

#include "../backend/default.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/momentum.hpp"
#include "../schedule/always.hpp"

namespace flatmin {

struct msam_options {
  double rho = 0.3;                          ///< perturb::momentum::rho
  double xi = 1e-12;                         ///< perturb::momentum::xi
  nonfinite on_nonfinite = nonfinite::skip;  ///< optimizer_options::on_nonfinite

  template <class Base, class Schedule = schedule::always>
  composition<perturb::momentum, mask::dense, Base, descent::standard, regularize::none, Schedule> compose(
      Base base, Schedule schedule = {}) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .xi = xi},
            .schedule = std::move(schedule),
            .options = {.on_nonfinite = on_nonfinite}};
  }
};

template <class T, class Base, class Backend = default_backend, class Schedule = schedule::always>
using msam_t = sharpness_aware<T, Backend, perturb::momentum, mask::dense, Base, descent::standard,
                               regularize::none, Schedule>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
msam_t<T, Base, Backend> msam(const param_set<W, G>& params, Base base, msam_options o = {}) {
  return msam_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

/// Momentum-SAM on the steps `schedule` picks (schedule::every_k, schedule::from_step), the base
/// step alone on the others (one gradient either way).
template <class Backend = default_backend, class W, class G, class Base, schedule_policy Schedule,
          class T = detail::precision_for_t<W, G>>
msam_t<T, Base, Backend, Schedule> msam(const param_set<W, G>& params, Base base, Schedule schedule,
                                        msam_options o = {}) {
  return msam_t<T, Base, Backend, Schedule>(params, o.compose(std::move(base), std::move(schedule)));
}

}  // namespace flatmin
