#pragma once
/// @file sampa.hpp
/// SAMPa — Xie, Pethick, Cevher, "SAMPa: Sharpness-aware Minimization Parallelized", NeurIPS 2024
/// (the perturbation, its protocol and its look-ahead: perturb/sampa.hpp):
///
///     x̃ = x + ρ g_y/(‖g_y‖ + ξ);  y′ = Base.peek(x, g_y);  g̃ = ∇L(x̃);  g_y ← ∇L(y′)
///     x ← Base(x, (1 − λ) g̃ + λ g_y)
///
/// The two gradients of a step are independent of each other (the paper computes them on two
/// devices at once); in one process `opt.step(obj)` calls the objective at x̃, then at y′. The
/// two-call protocol has a middle call:
///
///     opt.ascend();  backward();  opt.second_point();  backward();  opt.descend();
///
/// Official code: LIONS-EPFL/SAMPa (at 9fd7534), train.py: two ranks; the perturbed point from the
/// kept y-gradient with scale ρ/(‖g_y‖ + 1e-12) over all parameters (l. 52-58), its gradient on
/// the previous batch weighted (1 − λ) (l. 59-64); the look-ahead point x − lr·(g_y + wd·x + μ·b),
/// torch SGD's step on g_y, the decay and momentum terms only once a momentum buffer exists
/// (l. 67-81), its gradient on the current batch kept as the next g_y and weighted λ (l. 82-87);
/// the sum fed to torch SGD (l. 89-99). Defaults ρ 0.1, λ (`--og`) 0.2 (l. 153-154), SGD lr 0.1,
/// momentum 0.9, weight decay 5e-4.
///
/// Departures: one process (the distributed communicator may put the two gradients on two ranks
/// later); the objective decides each call's batch (the official code evaluates ∇L(x̃) on the
/// batch g_y came from and ∇L(y′) on a new one); the look-ahead is the base's own step arithmetic
/// (Base.peek): with base::sgd and momentum 0 it includes the weight decay, which the official
/// code leaves out when no momentum buffer exists; with Adam / AdamW it is Adam's step on g_y (the
/// official code has SGD only); the weights are restored to x from their saved copy, bit for bit
/// (the official code subtracts its offsets); the tensors perturbed are those with
/// `tensor_options::perturb` (the official: every parameter).

#include "../backend/default.hpp"
#include "../descent/standard.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/sampa.hpp"
#include "../schedule/always.hpp"

namespace flatmin {

struct sampa_options {
  double rho = 0.1;                          ///< perturb::sampa::rho
  double xi = 1e-12;                         ///< perturb::sampa::xi
  double lambda = 0.2;                       ///< perturb::sampa::lambda
  nonfinite on_nonfinite = nonfinite::skip;  ///< optimizer_options::on_nonfinite

  template <class Base, class Schedule = schedule::always>
  composition<perturb::sampa, mask::dense, Base, descent::standard, regularize::none, Schedule> compose(
      Base base, Schedule schedule = {}) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .xi = xi, .lambda = lambda},
            .schedule = std::move(schedule),
            .options = {.on_nonfinite = on_nonfinite}};
  }
};

template <class T, class Base, class Backend = default_backend, class Schedule = schedule::always>
using sampa_t = sharpness_aware<T, Backend, perturb::sampa, mask::dense, Base, descent::standard,
                                regularize::none, Schedule>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
sampa_t<T, Base, Backend> sampa(const param_set<W, G>& params, Base base, sampa_options o = {}) {
  return sampa_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

}  // namespace flatmin
