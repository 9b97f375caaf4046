#pragma once
/// @file friendly_sam.hpp
/// Friendly-SAM — Li, Zhou, He, Cheng, Huang, "Friendly Sharpness-Aware Minimization", CVPR 2024
/// (the perturbation and its official code: perturb/friendly.hpp).
///
///     d = g − σ m_{t−1};  ε = ρ d/(‖d‖ + ξ);  m_t = λ m_{t−1} + (1 − λ) g;
///     g_adv = ∇L(w + ε);  w ← saved w;  w ← Base(w, g_adv)
///
/// Defaults: ρ = 0.05, ξ = 1e-12, σ = 1, λ = 0.9: the official constructor's (nblt/F-SAM,
/// utils.py, `FriendlySAM.__init__`), so the official preset, `friendly_sam(params, base,
/// flatmin::official)`, is the same (its CIFAR runs use ρ 0.2 and λ 0.6 or 0.95: pass them).

#include "../backend/default.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/friendly.hpp"
#include "../schedule/always.hpp"
#include "official.hpp"

namespace flatmin {

struct friendly_sam_options {
  double rho = 0.05;                         ///< perturb::friendly::rho
  double xi = 1e-12;                         ///< perturb::friendly::xi
  double sigma = 1.0;                        ///< perturb::friendly::sigma
  double lambda = 0.9;                       ///< perturb::friendly::lambda
  nonfinite on_nonfinite = nonfinite::skip;  ///< optimizer_options::on_nonfinite

  template <class Base, class Schedule = schedule::always>
  composition<perturb::friendly, mask::dense, Base, descent::standard, regularize::none, Schedule> compose(
      Base base, Schedule schedule = {}) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .xi = xi, .sigma = sigma, .lambda = lambda},
            .schedule = std::move(schedule),
            .options = {.on_nonfinite = on_nonfinite}};
  }
};
/// The official defaults are the library's.
using friendly_sam_official_options = friendly_sam_options;

template <class T, class Base, class Backend = default_backend, class Schedule = schedule::always>
using friendly_sam_t = sharpness_aware<T, Backend, perturb::friendly, mask::dense, Base, descent::standard,
                                       regularize::none, Schedule>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
friendly_sam_t<T, Base, Backend> friendly_sam(const param_set<W, G>& params, Base base,
                                              friendly_sam_options o = {}) {
  return friendly_sam_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

/// Friendly-SAM on the steps `schedule` picks (schedule::every_k, schedule::from_step), the base
/// step alone on the others (m is left as it was there).
template <class Backend = default_backend, class W, class G, class Base, schedule_policy Schedule,
          class T = detail::precision_for_t<W, G>>
friendly_sam_t<T, Base, Backend, Schedule> friendly_sam(const param_set<W, G>& params, Base base,
                                                        Schedule schedule, friendly_sam_options o = {}) {
  return friendly_sam_t<T, Base, Backend, Schedule>(params, o.compose(std::move(base), std::move(schedule)));
}

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
friendly_sam_t<T, Base, Backend> friendly_sam(const param_set<W, G>& params, Base base, official_t,
                                              friendly_sam_official_options o = {}) {
  return friendly_sam<Backend>(params, std::move(base), o);
}

}  // namespace flatmin
