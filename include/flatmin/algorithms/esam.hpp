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
/// compile. Differs from the official code: exactly ⌈γ|B|⌉ samples are kept (the official strict
/// cutoff keeps one fewer), ties to the lower index.

#include "../backend/default.hpp"
#include "../mask/random.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/l2.hpp"
#include "../select/sharpness_sensitive.hpp"

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
  return esam_t<T, Base, Backend>(params, std::move(base), perturb::l2{o.rho, o.xi},
                                  mask::random{.beta = o.beta, .unit = o.unit, .block = o.block, .seed = o.seed},
                                  {o.on_nonfinite}, select::sharpness_sensitive{.gamma = o.gamma});
}

}  // namespace flatmin
