#pragma once
/// @file asam.hpp
/// ASAM — Kwon, Kim, Park, Choi, "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
/// Learning of Deep Neural Networks", ICML 2021.
///
///     T_w = |w| + η;  ε = ρ T_w² g / (‖T_w g‖ + ξ);  then as SAM
///
/// Defaults: ρ = 0.5, η = 0.01, ξ = 1e-12. Set `tensor_options::adaptive = false` on biases to
/// match the official code (which scales only tensors named "weight").

#include "../backend/default.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/adaptive.hpp"

namespace flatmin {

struct asam_options {
  double rho = 0.5;
  double eta = 0.01;
  double xi = 1e-12;
  nonfinite on_nonfinite = nonfinite::skip;
};

template <class T, class Base, class Backend = default_backend>
using asam_t = sharpness_aware<T, Backend, perturb::adaptive, mask::dense, Base>;

template <class Backend = default_backend, class T, class Base>
asam_t<T, Base, Backend> asam(const param_set<T>& params, Base base, asam_options o = {}) {
  return asam_t<T, Base, Backend>(params, std::move(base), perturb::adaptive{o.rho, o.eta, o.xi}, {},
                                  {o.on_nonfinite});
}

}  // namespace flatmin
