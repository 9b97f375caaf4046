#pragma once
/// @file gcsam.hpp
/// GCSAM — Hassan, Vakanski, Zhang, Xian, "GCSAM: Gradient Centralized Sharpness Aware
/// Minimization", 2025 (arXiv 2501.11584):
///
///     GC(g)_i = g_i − mean(g over the row of i);   ε = ρ GC(g)/(‖GC(g)‖ + ξ);
///     g_adv = ∇L(w + ε);   w ← saved w;   w ← Base(w, g_adv)
///
/// rows along the first dimension of a tensor of two or more dimensions; a tensor of one
/// dimension is not centralised (perturb/centralized.hpp). `perturb::centralized` wraps any
/// stateless perturbation that reads the gradient (compose `centralized<adaptive>` for an ASAM
/// variant); this is its composition with perturb::l2.
///
/// Reference code: the paper's repository (mhassann22/GCSAM) was not available to this library;
/// the broadest public catalogue, kozistr/pytorch_optimizer (optimizer/sam.py `SAM.first_step`
/// with `use_gc=True`, and gradient_centralization.py `centralize_gradient`: the mean over every
/// dimension but the first, for tensors of two or more dimensions) centralises the same way but
/// normalises ε by the norm of the gradient before centralisation, ρ GC(g)/(‖g‖ + ξ). flatmin
/// follows the paper's ε = ρ GC(g)/‖GC(g)‖, so ‖ε‖ = ρ. The descent step is SAM's (on g_adv as it
/// is); the tensors perturbed are those with `tensor_options::perturb`.
///
/// Defaults: ρ = 0.05, ξ = 1e-12 (SAM's; pytorch_optimizer's).

#include "../backend/default.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/centralized.hpp"
#include "../perturb/l2.hpp"
#include "../schedule/always.hpp"

namespace flatmin {

struct gcsam_options {
  double rho = 0.05;                         ///< perturb::l2::rho (ε's radius)
  double xi = 1e-12;                         ///< perturb::l2::xi
  nonfinite on_nonfinite = nonfinite::skip;  ///< optimizer_options::on_nonfinite

  template <class Base, class Schedule = schedule::always>
  composition<perturb::centralized<perturb::l2>, mask::dense, Base, descent::standard, regularize::none,
              Schedule>
  compose(Base base, Schedule schedule = {}) const {
    return {.base = std::move(base),
            .perturb = {{.rho = rho, .xi = xi}},
            .schedule = std::move(schedule),
            .options = {.on_nonfinite = on_nonfinite}};
  }
};

template <class T, class Base, class Backend = default_backend, class Schedule = schedule::always>
using gcsam_t = sharpness_aware<T, Backend, perturb::centralized<perturb::l2>, mask::dense, Base,
                                descent::standard, regularize::none, Schedule>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
gcsam_t<T, Base, Backend> gcsam(const param_set<W, G>& params, Base base, gcsam_options o = {}) {
  return gcsam_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

/// GCSAM on the steps `schedule` picks, the base step alone on the others.
template <class Backend = default_backend, class W, class G, class Base, schedule_policy Schedule,
          class T = detail::precision_for_t<W, G>>
gcsam_t<T, Base, Backend, Schedule> gcsam(const param_set<W, G>& params, Base base, Schedule schedule,
                                          gcsam_options o = {}) {
  return gcsam_t<T, Base, Backend, Schedule>(params, o.compose(std::move(base), std::move(schedule)));
}

}  // namespace flatmin
