#pragma once
/// @file gsam.hpp
/// GSAM — Zhuang et al., "Surrogate Gap Minimization Improves Sharpness-Aware Training", ICLR 2022
/// (the rule and its official code: descent/gsam.hpp).
///
///     ε = ρ_t g / (‖g‖ + ξ);  g_adv = ∇L(w + ε);  g⊥ = g − (⟨g, g_adv⟩/‖g_adv‖²) g_adv;
///     w ← saved w;  w ← Base(w, g_adv − α g⊥)
///
/// ρ_t follows the base optimizer's lr between lr_min (ρ_t = ρ_min) and lr_max (ρ_t = ρ); with
/// lr_max = lr_min (the default) ρ_t = ρ. Defaults: ρ = 0.05, ξ = 1e-12, α = 0.4, no ρ schedule.
///
/// Official preset, `flatmin::gsam(params, base, flatmin::official)` (`gsam_official_options`):
/// google-research/big_vision's ViT-B/32 ImageNet configuration
/// (big_vision/configs/proj/gsam/vit_i1k_gsam_no_aug.py): ρ_max = 0.6, ρ_min = 0.1, α = 0.6 and
/// ρ_t following the lr from lr_max = the base optimizer's lr at construction down to
/// lr_min = 0.01·lr_max (`lr_min_fraction`, the configuration's `linear_end`).

#include "../backend/default.hpp"
#include "../descent/gsam.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/l2.hpp"
#include "../schedule/always.hpp"
#include "official.hpp"

namespace flatmin {

template <preset P>
struct gsam_preset_options {
  static constexpr bool official = P == preset::official;
  double rho = official ? 0.6 : 0.05;     ///< perturb::l2::rho (ρ_max)
  double xi = 1e-12;                      ///< perturb::l2::xi
  double alpha = official ? 0.6 : 0.4;    ///< descent::gsam::alpha
  double rho_min = official ? 0.1 : 0.0;  ///< descent::gsam::rho_min
  double lr_max = 0;                      ///< descent::gsam::lr_max
  double lr_min = 0;                      ///< descent::gsam::lr_min
  /// When > 0 and lr_max = lr_min = 0: lr_max = the base's lr, lr_min = lr_min_fraction · lr_max.
  double lr_min_fraction = official ? 0.01 : 0.0;
  nonfinite on_nonfinite = nonfinite::skip;  ///< optimizer_options::on_nonfinite

  template <class Base, class Schedule = schedule::always>
  composition<perturb::l2, mask::dense, Base, descent::gsam, regularize::none, Schedule> compose(
      Base base, Schedule schedule = {}) const {
    double hi = lr_max, lo = lr_min;
    if (lr_min_fraction > 0 && hi == 0 && lo == 0) {
      hi = flatmin::detail::lr_of(base);
      lo = lr_min_fraction * hi;
    }
    return {.base = std::move(base),
            .perturb = {.rho = rho, .xi = xi},
            .descent = {.alpha = alpha, .rho_min = rho_min, .lr_max = hi, .lr_min = lo},
            .schedule = std::move(schedule),
            .options = {.on_nonfinite = on_nonfinite}};
  }
};
using gsam_options = gsam_preset_options<preset::library>;
using gsam_official_options = gsam_preset_options<preset::official>;

template <class T, class Base, class Backend = default_backend, class Schedule = schedule::always>
using gsam_t =
    sharpness_aware<T, Backend, perturb::l2, mask::dense, Base, descent::gsam, regularize::none, Schedule>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
gsam_t<T, Base, Backend> gsam(const param_set<W, G>& params, Base base, gsam_options o = {}) {
  return gsam_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

/// GSAM on the steps `schedule` picks (schedule::every_k, schedule::from_step), the base step
/// alone on the others.
template <class Backend = default_backend, class W, class G, class Base, schedule_policy Schedule,
          class T = detail::precision_for_t<W, G>>
gsam_t<T, Base, Backend, Schedule> gsam(const param_set<W, G>& params, Base base, Schedule schedule,
                                        gsam_options o = {}) {
  return gsam_t<T, Base, Backend, Schedule>(params, o.compose(std::move(base), std::move(schedule)));
}

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
gsam_t<T, Base, Backend> gsam(const param_set<W, G>& params, Base base, official_t,
                              gsam_official_options o = {}) {
  return gsam_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

}  // namespace flatmin
