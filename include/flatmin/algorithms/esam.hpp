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

struct esam_options {
  double rho = 0.05;
  double xi = 1e-12;
  double beta = 0.5;
  double gamma = 0.5;
  mask::granularity unit = mask::granularity::tensor;
  std::size_t block = 128;
  std::uint64_t seed = 0;
  nonfinite on_nonfinite = nonfinite::skip;
};

template <class T, class Base, class Backend = default_backend>
using esam_t = sharpness_aware<T, Backend, perturb::l2, mask::random, Base, select::sharpness_sensitive>;

template <class Backend = default_backend, class T, class Base>
esam_t<T, Base, Backend> esam(const param_set<T>& params, Base base, esam_options o = {}) {
  return esam_t<T, Base, Backend>(
      params, std::move(base), perturb::l2{o.rho, o.xi},
      mask::random{.beta = o.beta, .unit = o.unit, .block = o.block, .seed = o.seed}, {o.on_nonfinite},
      select::sharpness_sensitive{.gamma = o.gamma});
}

/// The official preset's options: the library's defaults but for ξ = 1e-7 and the strict cutoff.
struct esam_official_options {
  double rho = 0.05;
  double xi = 1e-7;
  double beta = 0.5;
  double gamma = 0.5;
  mask::granularity unit = mask::granularity::tensor;
  std::size_t block = 128;
  std::uint64_t seed = 0;
  nonfinite on_nonfinite = nonfinite::skip;
};

template <class Backend = default_backend, class T, class Base>
esam_t<T, Base, Backend> esam(const param_set<T>& params, Base base, official_t,
                              esam_official_options o = {}) {
  return esam_t<T, Base, Backend>(
      params, std::move(base), perturb::l2{o.rho, o.xi},
      mask::random{.beta = o.beta, .unit = o.unit, .block = o.block, .seed = o.seed}, {o.on_nonfinite},
      select::sharpness_sensitive{.gamma = o.gamma, .strict_cutoff = true});
}

}  // namespace flatmin
