#pragma once
/// @file looksam.hpp
/// LookSAM — Liu, Mai, Chen, Hsieh, You, "Towards Efficient and Scalable Sharpness-Aware
/// Minimization", CVPR 2022 (the rule: descent/looksam.hpp). SAM every k steps, keeping g_v, the
/// part of g_adv orthogonal to g; one gradient on the steps between:
///
///     t ≡ 1 (mod k):  ε = ρ g/(‖g‖ + ξ);  g_adv = ∇L(w + ε);  g_v = g_adv − (⟨g, g_adv⟩/‖g‖²) g;
///                     w ← saved w;  w ← Base(w, g_adv)
///     otherwise:      w ← Base(w, g + α (‖g‖/‖g_v‖) g_v)          (the objective called once)
///
/// Defaults: ρ = 0.05, ξ = 1e-12, k = 5, α = 0.7 (the values the public ports use). The full steps
/// are 1, 1 + k, 1 + 2k, … (schedule::every_k with first = 1). No official code was published, so
/// there is no official preset.

#include <cstddef>

#include "../backend/default.hpp"
#include "../descent/looksam.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/l2.hpp"
#include "../schedule/every_k.hpp"

namespace flatmin {

struct looksam_options {
  double rho = 0.05;                         ///< perturb::l2::rho
  double xi = 1e-12;                         ///< perturb::l2::xi
  std::size_t k = 5;                         ///< schedule::every_k::k (a full SAM step every k)
  double alpha = 0.7;                        ///< descent::looksam::alpha
  nonfinite on_nonfinite = nonfinite::skip;  ///< optimizer_options::on_nonfinite

  template <class Base>
  composition<perturb::l2, mask::dense, Base, descent::looksam, regularize::none, schedule::every_k> compose(
      Base base) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .xi = xi},
            .descent = {.alpha = alpha},
            .schedule = {.k = k, .first = 1},
            .options = {.on_nonfinite = on_nonfinite}};
  }
};

template <class T, class Base, class Backend = default_backend>
using looksam_t = sharpness_aware<T, Backend, perturb::l2, mask::dense, Base, descent::looksam,
                                  regularize::none, schedule::every_k>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
looksam_t<T, Base, Backend> looksam(const param_set<W, G>& params, Base base, looksam_options o = {}) {
  return looksam_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

}  // namespace flatmin
