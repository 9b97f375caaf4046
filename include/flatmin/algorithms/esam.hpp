#pragma once
/// @file esam.hpp
/// ESAM — Du, Yan, Feng, Zhou, Zhen, Goh, Tan, "Efficient Sharpness-aware Minimization for
/// Improved Training of Neural Networks", ICLR 2022 (official code dydjw9/Efficient_SAM).
///
///     S ~ each unit kept with probability β (stochastic weight perturbation, `mask::random`)
///     ε_S = (ρ/β) g_S / (‖g_S‖ + ξ)
///     B⁺ = the ⌈γ|B|⌉ samples whose loss rises most from w to w + ε (`select::sharpness_sensitive`)
///     w ← Base(w, ∇L_{B⁺}(w + ε))
///
/// Defaults: β = 0.5, γ = 0.5, ρ = 0.05 (the CIFAR runs used 0.05–0.2), unit = whole tensors (as
/// the official code). The closure protocol needs a `flatmin::sample_objective` (per-sample
/// losses, forward-only losses, gradient on a subset); without one the composition does not
/// compile. Differs from the official code: exactly ⌈γ|B|⌉ samples are kept, ties to the lower
/// index (the official strict cutoff keeps ⌊γ|B|⌋ − 1, fewer on ties); ξ = 1e-12 (official 1e-7).
///
/// Official preset, `flatmin::esam(params, base, flatmin::official)` (`esam_official_options`):
/// dydjw9/Efficient_SAM, utils/Esam.py at 4c84cf5 —
/// - ξ = 1e-7, added to the norm: ε = ρ g / (‖g‖ + 1e-7) / β (line 26), as the library's formula;
/// - the strict cutoff (lines 97–104): the samples whose increase is strictly above the ⌊γ|B|⌋-th
///   largest (`select::sharpness_sensitive::strict_cutoff`; ⌊γ|B|⌋ − 1 samples without ties).
/// β, γ and ρ keep the library's (the paper's) defaults: the class defaults there are β = γ = 1.
/// Not reproduced: the random draw of the perturbed tensors (Python's `random.random() > β`
/// drawn after each step for the next one, line 60, so the first step perturbs every tensor; the
/// library hashes (seed, step, tensor)), and the restore w = (w + ε) − ε (line 57; the library
/// restores the saved w bit-exactly).

#include "../backend/default.hpp"
#include "../mask/random.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/l2.hpp"
#include "../select/sharpness_sensitive.hpp"
#include "official.hpp"

namespace flatmin {

/// ESAM's options, with the library's defaults (`esam_options`) or the official code's
/// (`esam_official_options`: ξ = 1e-7 and the strict cutoff).
template <preset P>
struct esam_preset_options {
  double rho = 0.05;                                   ///< perturb::l2::rho
  double xi = P == preset::official ? 1e-7 : 1e-12;    ///< perturb::l2::xi
  double beta = 0.5;                                   ///< mask::random::beta
  double gamma = 0.5;                                  ///< select::sharpness_sensitive::gamma
  mask::granularity unit = mask::granularity::tensor;  ///< mask::random::unit
  std::size_t block = 128;                             ///< mask::random::block
  std::uint64_t seed = 0;                              ///< mask::random::seed
  nonfinite on_nonfinite = nonfinite::skip;            ///< optimizer_options::on_nonfinite

  template <class Base>
  composition<perturb::l2, mask::random, Base, select::sharpness_sensitive> compose(Base base) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .xi = xi},
            .mask = {.beta = beta, .unit = unit, .block = block, .seed = seed},
            .descent = {.gamma = gamma, .strict_cutoff = P == preset::official},
            .options = {.on_nonfinite = on_nonfinite}};
  }
};
using esam_options = esam_preset_options<preset::library>;
using esam_official_options = esam_preset_options<preset::official>;

template <class T, class Base, class Backend = default_backend>
using esam_t = sharpness_aware<T, Backend, perturb::l2, mask::random, Base, select::sharpness_sensitive>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
esam_t<T, Base, Backend> esam(const param_set<W, G>& params, Base base, esam_options o = {}) {
  return esam_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
esam_t<T, Base, Backend> esam(const param_set<W, G>& params, Base base, official_t,
                              esam_official_options o = {}) {
  return esam_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

}  // namespace flatmin
