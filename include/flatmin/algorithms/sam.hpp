#pragma once
/// @file sam.hpp
/// SAM — Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for Efficiently
/// Improving Generalization", ICLR 2021 (for language models: Bahri et al., ACL 2022).
///
///     ε = ρ g / (‖g‖ + ξ);  g_adv = ∇L(w + ε);  w ← saved w;  w ← Base(w, g_adv)
///
/// Defaults: ρ = 0.05, ξ = 1e-12 (as davda54/sam). Any base optimizer; its state is updated once
/// per step, with g_adv only.

#include "../backend/default.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/l2.hpp"

namespace flatmin {

struct sam_options {
  double rho = 0.05;
  double xi = 1e-12;
  nonfinite on_nonfinite = nonfinite::skip;
};

template <class T, class Base, class Backend = default_backend>
using sam_t = sharpness_aware<T, Backend, perturb::l2, mask::dense, Base>;

template <class Backend = default_backend, class T, class Base>
sam_t<T, Base, Backend> sam(const param_set<T>& params, Base base, sam_options o = {}) {
  return sam_t<T, Base, Backend>(params, std::move(base), perturb::l2{o.rho, o.xi}, {}, {o.on_nonfinite});
}

}  // namespace flatmin
