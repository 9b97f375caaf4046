#pragma once
/// @file ssam.hpp
/// SSAM — Mi, Shen, Ren, Zhou, Sun, Ji, Tao, "Make Sharpness-Aware Minimization Stronger: A
/// Sparsified Perturbation Approach", NeurIPS 2022 (official code Mi-Peng/Sparse-Sharpness-Aware-
/// Minimization). ε = ρ (m ⊙ g) / (‖g‖ + ξ), sparsity s = 1 − keep, global top-k.
///
/// `ssam_f` (Fisher mask): F_j = Σ_{n<N_s} (∂ℓ_n/∂w_j)² over N_s single examples, m = top
/// ⌊(1 − s) N⌋ of F, refreshed every T_m steps. The per-example gradients come from an objective
/// with `example_gradient(n)` (`flatmin::example_objective`) in the closure protocol, or from
/// `opt.mask_state().add_example(...)` in the two-call protocol; with neither, the mask falls back
/// to FSAM's estimator (squared batch gradients accumulated since the last refresh). A non-finite
/// example gradient skips the step (`skip_reason::nonfinite_example_gradient`).
/// Defaults: s = 0.5, N_s = 16 (CIFAR; 128 for ImageNet), ρ = 0.1, T_m = 1 epoch — the library
/// counts steps: set `refresh_every` to the steps per epoch (default 1000).
/// Differs from the official code by default: the first mask is computed from the first step's
/// estimate, refreshes at steps 1, 1 + T_m, … (`empty_start = true`: no mask before step 1 + T_m);
/// the official timing — only step 1 unperturbed, new masks at steps 2, 2 + T_m, … — is
/// `schedule = mask::fisher_schedule::ssam_official`, and ξ = 1e-7 is the official code's. The
/// official code's first Fisher example also holds the previous step's g_adv (its gradients are
/// not zeroed before the Fisher pass); flatmin does not copy that.
///
/// `ssam_d` (dynamic mask): a random start with N − ⌈sN⌉ active entries; after the ascent of steps
/// 1, 1 + T_m, … keep the ⌊x (1 − dr)⌋ largest |g| among the active (x = N − sN) and grow
/// ⌊min(x · dr, sN)⌋ at random among the inactive, with the death rate dr₀ (1 + cos(π (t − 1) /
/// T)) / 2 — the official counts and timing (mask/dynamic.hpp), which do not keep the density
/// (117 of 195 entries after the first refresh at s = 0.2, dr = 0.5); `counts =
/// mask::dynamic_counts::constant` keeps N − ⌈sN⌉. Defaults: s = 0.5, dr₀ = 0.5, ρ = 0.1,
/// T_m = 5 epochs — set `refresh_every` (default 1000 steps) and `total_steps` (T; 0 keeps
/// dr = dr₀).
/// Both: `block` > 1 selects blocks of that many entries; the paper's base optimizer is SGD with
/// momentum (pass it).
///
/// Official presets, `ssam_f(params, base, flatmin::official, o)` and `ssam_d(params, base,
/// flatmin::official, o)`: the other options from `o`, with ξ = 1e-7 (solver/sam.py adds 1e-7 to
/// ‖g‖) and, for SSAM-F, the official timing (`fisher_schedule::ssam_official`); SSAM-D's default
/// counts and timing are already the official ones.

#include "../backend/default.hpp"
#include "../mask/dynamic.hpp"
#include "../mask/fisher.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/l2.hpp"
#include "official.hpp"

namespace flatmin {

/// SSAM-F's options; the official preset fixes `xi` and `schedule` of the same struct.
struct ssam_f_options {
  double rho = 0.1;                  ///< perturb::l2::rho
  double xi = 1e-12;                 ///< perturb::l2::xi
  double sparsity = 0.5;             ///< s, the fraction NOT perturbed: mask::fisher::keep = 1 − s
  std::size_t examples = 16;         ///< mask::fisher::examples
  std::size_t refresh_every = 1000;  ///< mask::fisher::refresh_every
  std::size_t block = 1;             ///< mask::fisher::block
  bool empty_start = false;          ///< mask::fisher::empty_start
  mask::fisher_schedule schedule = mask::fisher_schedule::library;  ///< mask::fisher::schedule
  nonfinite on_nonfinite = nonfinite::skip;                         ///< optimizer_options::on_nonfinite

  /// SSAM-F fixes the per-example estimator (`source = per_example`).
  template <class Base>
  composition<perturb::l2, mask::fisher, Base> compose(Base base) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .xi = xi},
            .mask = {.keep = 1 - sparsity,
                     .refresh_every = refresh_every,
                     .block = block,
                     .source = mask::fisher_estimator::per_example,
                     .examples = examples,
                     .empty_start = empty_start,
                     .schedule = schedule},
            .options = {.on_nonfinite = on_nonfinite}};
  }
};

template <class T, class Base, class Backend = default_backend>
using ssam_f_t = sharpness_aware<T, Backend, perturb::l2, mask::fisher, Base>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
ssam_f_t<T, Base, Backend> ssam_f(const param_set<W, G>& params, Base base, ssam_f_options o = {}) {
  return ssam_f_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

/// SSAM-F's official preset: `o` with ξ = 1e-7 and the official timing.
template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
ssam_f_t<T, Base, Backend> ssam_f(const param_set<W, G>& params, Base base, official_t,
                                  ssam_f_options o = {}) {
  o.xi = 1e-7;
  o.schedule = mask::fisher_schedule::ssam_official;
  return ssam_f<Backend>(params, std::move(base), o);
}

/// SSAM-D's options; the official preset fixes `xi` and `counts` of the same struct.
struct ssam_d_options {
  double rho = 0.1;                  ///< perturb::l2::rho
  double xi = 1e-12;                 ///< perturb::l2::xi
  double sparsity = 0.5;             ///< mask::dynamic::sparsity (s: the fraction NOT perturbed)
  double death_rate = 0.5;           ///< mask::dynamic::death_rate
  std::size_t refresh_every = 1000;  ///< mask::dynamic::refresh_every
  std::size_t total_steps = 0;       ///< mask::dynamic::total_steps
  std::size_t block = 1;             ///< mask::dynamic::block
  std::uint64_t seed = 0;            ///< mask::dynamic::seed
  mask::dynamic_counts counts = mask::dynamic_counts::official;  ///< mask::dynamic::counts
  nonfinite on_nonfinite = nonfinite::skip;                      ///< optimizer_options::on_nonfinite

  template <class Base>
  composition<perturb::l2, mask::dynamic, Base> compose(Base base) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .xi = xi},
            .mask = {.sparsity = sparsity,
                     .death_rate = death_rate,
                     .refresh_every = refresh_every,
                     .total_steps = total_steps,
                     .block = block,
                     .seed = seed,
                     .counts = counts},
            .options = {.on_nonfinite = on_nonfinite}};
  }
};

template <class T, class Base, class Backend = default_backend>
using ssam_d_t = sharpness_aware<T, Backend, perturb::l2, mask::dynamic, Base>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
ssam_d_t<T, Base, Backend> ssam_d(const param_set<W, G>& params, Base base, ssam_d_options o = {}) {
  return ssam_d_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

/// SSAM-D's official preset: `o` with ξ = 1e-7 and the official counts.
template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
ssam_d_t<T, Base, Backend> ssam_d(const param_set<W, G>& params, Base base, official_t,
                                  ssam_d_options o = {}) {
  o.xi = 1e-7;
  o.counts = mask::dynamic_counts::official;
  return ssam_d<Backend>(params, std::move(base), o);
}

}  // namespace flatmin
