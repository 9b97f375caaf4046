#pragma once
/// @file sam.hpp
/// SAM — Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for Efficiently
/// Improving Generalization", ICLR 2021 (for language models: Bahri et al., ACL 2022).
///
///     ε = ρ g / (‖g‖ + ξ);  g_adv = ∇L(w + ε);  w ← saved w;  w ← Base(w, g_adv)
///
/// Defaults: ρ = 0.05, ξ = 1e-12 (as davda54/sam). Any base optimizer; its state is updated once
/// per step, with g_adv only.
///
/// Official preset, `flatmin::sam(params, base, flatmin::official)` (`sam_official_options`):
/// davda54/sam, the PyTorch SAM most ports follow (sam.py at 87a9604): ε = ρ g / (‖g‖ + 1e-12),
/// ξ added to the norm (lines 19 and 24; ‖g‖ is the norm of the per-tensor norms, line 53), w
/// restored from a saved copy (line 34), then the base step. That is the library's default, so the
/// preset changes nothing; it exists so that every algorithm has one. The authors' JAX code
/// (google-research/sam, sam_jax/training_utils/flax_training.py, `dual_vector`) adds no ξ: pass
/// `.xi = 0` for it. davda54's `adaptive = True` mode is an ASAM flavour: see asam.hpp.
///
/// SAM on some steps only: `flatmin::sam(params, base, schedule::every_k{.k = 4})` (SAM every 4th
/// step, the base step alone in between) or `schedule::from_step{.step = s}` (late-phase SAM); see
/// schedule/.

#include "../backend/default.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/l2.hpp"
#include "../schedule/always.hpp"
#include "official.hpp"

namespace flatmin {

struct sam_options {
  double rho = 0.05;
  double xi = 1e-12;
  nonfinite on_nonfinite = nonfinite::skip;
};

template <class T, class Base, class Backend = default_backend, class Schedule = schedule::always>
using sam_t = sharpness_aware<T, Backend, perturb::l2, mask::dense, Base, descent::standard, regularize::none,
                              Schedule>;

template <class Backend = default_backend, class T, class Base>
sam_t<T, Base, Backend> sam(const param_set<T>& params, Base base, sam_options o = {}) {
  return sam_t<T, Base, Backend>(params, std::move(base), perturb::l2{o.rho, o.xi}, {}, {o.on_nonfinite});
}

/// SAM on the steps `schedule` picks (schedule::every_k, schedule::from_step), the base step alone
/// on the others.
template <class Backend = default_backend, class T, class Base, schedule_policy Schedule>
sam_t<T, Base, Backend, Schedule> sam(const param_set<T>& params, Base base, Schedule schedule,
                                      sam_options o = {}) {
  return sam_t<T, Base, Backend, Schedule>(params, std::move(base), perturb::l2{o.rho, o.xi}, {},
                                           {o.on_nonfinite}, {}, {}, std::move(schedule));
}

/// The official preset's options (davda54/sam's defaults, the library's as well).
struct sam_official_options {
  double rho = 0.05;
  double xi = 1e-12;
  nonfinite on_nonfinite = nonfinite::skip;
};

template <class Backend = default_backend, class T, class Base>
sam_t<T, Base, Backend> sam(const param_set<T>& params, Base base, official_t, sam_official_options o = {}) {
  return sam_t<T, Base, Backend>(params, std::move(base), perturb::l2{o.rho, o.xi}, {}, {o.on_nonfinite});
}

}  // namespace flatmin
