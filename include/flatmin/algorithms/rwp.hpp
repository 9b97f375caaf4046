#pragma once
/// @file rwp.hpp
/// RWP — random weight perturbation, Li, Tao, Suykens, Huang, "Revisiting Random Weight
/// Perturbation for Efficiently Improving Generalization", TMLR 2024 (m-RWP, the mixed form):
///
///     ε_i = σ ‖W_r(i)‖ z_i  (filter-wise Gaussian, perturb/gaussian.hpp);   g = ∇L(w);
///     g_ε = ∇L(w + ε);   w ← saved w;   w ← Base(w, (1 − λ) g + λ g_ε)   (descent/mix.hpp)
///
/// Two gradients per step, as SAM, but independent of each other: ε needs no gradient, so they
/// may be computed in parallel (the official code runs them on two data-parallel ranks). In one
/// process `opt.step(obj)` calls the objective at w, then at w + ε; the two-call protocol is
/// SAM's (backward at w, `ascend()`, backward at w + ε, `descend()`). The objective decides the
/// batch of each call: the official code's two gradients come from different batches (different
/// ranks), which an objective drawing a new batch per call reproduces.
///
/// Official code: nblt/mARWP (at f12df73), train_mrwp_parallel.py `train`: the noise per
/// parameter (a tensor of two or more dimensions: N(0, (σ·‖W_row‖)²) per row of its first
/// dimension; otherwise N(0, (σ·(‖W‖ + 1e-16))²)), added before the forward pass on the odd ranks
/// and subtracted after the backward; the losses weighted 2λ there and 2(1 − λ) on the even ranks,
/// averaged by DDP, then torch SGD (momentum 0.9, weight decay 1e-4). Defaults `--sigma 0.01`,
/// `--lambda 0.5`. Departures: flatmin restores w from its saved copy (bit-exact) instead of
/// subtracting the noise (w + ε − ε is not w in floating point); its draws come from its counter-
/// based generator (kernels/gaussian.hpp), not torch's; the tensors perturbed are those with
/// `tensor_options::perturb` (the official code perturbs every parameter).
///
/// Defaults: σ = 0.01, λ = 0.5, seed 0 — the official ones.

#include <cstdint>

#include "../backend/default.hpp"
#include "../descent/mix.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/gaussian.hpp"
#include "../schedule/always.hpp"

namespace flatmin {

struct rwp_options {
  double sigma = 0.01;                       ///< perturb::gaussian::sigma
  double lambda = 0.5;                       ///< descent::mix::lambda
  std::uint64_t seed = 0;                    ///< perturb::gaussian::seed
  nonfinite on_nonfinite = nonfinite::skip;  ///< optimizer_options::on_nonfinite

  template <class Base, class Schedule = schedule::always>
  composition<perturb::gaussian, mask::dense, Base, descent::mix, regularize::none, Schedule> compose(
      Base base, Schedule schedule = {}) const {
    return {.base = std::move(base),
            .perturb = {.sigma = sigma, .seed = seed},
            .descent = {.lambda = lambda},
            .schedule = std::move(schedule),
            .options = {.on_nonfinite = on_nonfinite}};
  }
};

template <class T, class Base, class Backend = default_backend, class Schedule = schedule::always>
using rwp_t = sharpness_aware<T, Backend, perturb::gaussian, mask::dense, Base, descent::mix,
                              regularize::none, Schedule>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
rwp_t<T, Base, Backend> rwp(const param_set<W, G>& params, Base base, rwp_options o = {}) {
  return rwp_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

/// RWP on the steps `schedule` picks, the base step alone on the others.
template <class Backend = default_backend, class W, class G, class Base, schedule_policy Schedule,
          class T = detail::precision_for_t<W, G>>
rwp_t<T, Base, Backend, Schedule> rwp(const param_set<W, G>& params, Base base, Schedule schedule,
                                      rwp_options o = {}) {
  return rwp_t<T, Base, Backend, Schedule>(params, o.compose(std::move(base), std::move(schedule)));
}

}  // namespace flatmin
