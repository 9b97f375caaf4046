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
/// Official preset, `flatmin::sam(params, base, flatmin::official)` (`sam_official_options`, an
/// alias of `sam_options`):
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

/// SAM's options: ρ and ξ of the perturbation (perturb::l2, or the radius of functional_sam and
/// preconditioned_sam, which share this struct), the optimizer's on_nonfinite.
struct sam_options {
  double rho = 0.05;                         ///< perturb::l2::rho
  double xi = 1e-12;                         ///< perturb::l2::xi
  nonfinite on_nonfinite = nonfinite::skip;  ///< optimizer_options::on_nonfinite

  /// The composition these options stand for: `Perturb` is the radius's policy (perturb::l2,
  /// perturb::preconditioned), `Descent` and `Schedule` the algorithm's.
  template <class Perturb, class Descent = descent::standard, class Base, class Schedule = schedule::always>
  composition<Perturb, mask::dense, Base, Descent, regularize::none, Schedule> compose(
      Base base, Schedule schedule = {}) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .xi = xi},
            .schedule = std::move(schedule),
            .options = {.on_nonfinite = on_nonfinite}};
  }
};

template <class T, class Base, class Backend = default_backend, class Schedule = schedule::always>
using sam_t = sharpness_aware<T, Backend, perturb::l2, mask::dense, Base, descent::standard, regularize::none,
                              Schedule>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
sam_t<T, Base, Backend> sam(const param_set<W, G>& params, Base base, sam_options o = {}) {
  return sam_t<T, Base, Backend>(params, o.compose<perturb::l2>(std::move(base)));
}

/// SAM on the steps `schedule` picks (schedule::every_k, schedule::from_step), the base step alone
/// on the others.
template <class Backend = default_backend, class W, class G, class Base, schedule_policy Schedule,
          class T = detail::precision_for_t<W, G>>
sam_t<T, Base, Backend, Schedule> sam(const param_set<W, G>& params, Base base, Schedule schedule,
                                      sam_options o = {}) {
  return sam_t<T, Base, Backend, Schedule>(params,
                                           o.compose<perturb::l2>(std::move(base), std::move(schedule)));
}

/// The official preset's options: davda54/sam's defaults are the library's, so they are the same struct.
using sam_official_options = sam_options;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
sam_t<T, Base, Backend> sam(const param_set<W, G>& params, Base base, official_t,
                            sam_official_options o = {}) {
  return sam<Backend>(params, std::move(base), o);
}

}  // namespace flatmin
