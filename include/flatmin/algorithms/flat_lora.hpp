#pragma once
/// @file flat_lora.hpp
/// Flat-LoRA — T. Li et al., "Flat-LoRA: Low-Rank Adaptation over a Flat Loss
/// Landscape", ICML 2025 (the perturbation: perturb/flat_lora.hpp):
///
///     W′ = W + s·B·A;  σ_i = f_t ρ ‖W′_i‖/√n_in;  W ← W + σ ⊙ z  (W the frozen base weight)
///     g = ∇L(perturbed model);  W ← W − σ ⊙ z;  (A, B, …) ← Base(·, g)
///
/// One gradient per step: `opt.step(obj)` calls the objective once; in the two-call protocol
/// `ascend()` comes BEFORE the backward. Register each adapter with its frozen base weight:
///
///     ps.add_lora_pair("q", A, gA, {r, in}, B, gB, {out, r}, flatmin::lora_base{W, alpha / r});
///     auto opt = flatmin::flat_lora(ps, flatmin::base::adamw{.lr = 2e-4}, {.rho = 0.05,
///                                   .ramp_steps = total_steps});
///
/// Official code: nblt/Flat-LoRA, logTrainer.py `FlatLoraTrainer.training_step` (built on
/// LoRA-GA's trainer; the index that served this project held the repository's README and a copy
/// of this file, so the line numbers below are of that copy): f = ½(1 − cos(π c/cnt)), c the
/// micro-batch counter, cnt the run's micro-batches (l. 146-148); per LoRA linear layer
/// W′ = W + scaling·B·A in the weight's dtype, σ = f·(ρ + 1e-16)/√in·‖W′‖ per row (dim 1, l. 160-161),
/// `torch.normal(0, σ)` of the weight's shape added to the base weight (l. 163-164); after the
/// backward the generator is re-seeded and the same noise subtracted (l. 173-186); A, B, biases
/// and non-LoRA layers get none. README: enabled by `rho=0.05`.
///
/// Departures: the draws are flatmin's counter-based generator (kernels/gaussian.hpp), not torch's
/// global generator seeded from the clock; the ramp counts applied steps (`ramp_steps`: set it to
/// the run's total steps to follow the official cnt; 0 keeps f = 1) and the official gradient-
/// accumulation window is the caller's (accumulate, then one step); ‖W′_i‖ is computed in double
/// from the values in T (the official code: in the weight's dtype); ρ is used as given (the
/// official + 1e-16 keeps ρ = 0 from dividing by zero elsewhere; it is refused there, allowed and
/// noise-free here); `exact_restore` is an addition (bit-exact restore for one copy of the bases).
///
/// Defaults: ρ = 0.05 (the README's), no ramp, seed 0, the official regenerate-and-subtract
/// restore.

#include <cstddef>
#include <cstdint>

#include "../backend/default.hpp"
#include "../descent/standard.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/flat_lora.hpp"
#include "../schedule/always.hpp"

namespace flatmin {

struct flat_lora_options {
  double rho = 0.05;                         ///< perturb::flat_lora::rho
  std::size_t ramp_steps = 0;                ///< perturb::flat_lora::ramp_steps
  std::uint64_t seed = 0;                    ///< perturb::flat_lora::seed
  bool exact_restore = false;                ///< perturb::flat_lora::exact_restore
  nonfinite on_nonfinite = nonfinite::skip;  ///< optimizer_options::on_nonfinite

  template <class Base, class Schedule = schedule::always>
  composition<perturb::flat_lora, mask::dense, Base, descent::standard, regularize::none, Schedule> compose(
      Base base, Schedule schedule = {}) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .ramp_steps = ramp_steps, .seed = seed, .exact_restore = exact_restore},
            .schedule = std::move(schedule),
            .options = {.on_nonfinite = on_nonfinite}};
  }
};

template <class T, class Base, class Backend = default_backend, class Schedule = schedule::always>
using flat_lora_t = sharpness_aware<T, Backend, perturb::flat_lora, mask::dense, Base, descent::standard,
                                    regularize::none, Schedule>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
flat_lora_t<T, Base, Backend> flat_lora(const param_set<W, G>& params, Base base, flat_lora_options o = {}) {
  return flat_lora_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

/// Flat-LoRA on the steps `schedule` picks, the base step alone on the others (one gradient either
/// way).
template <class Backend = default_backend, class W, class G, class Base, schedule_policy Schedule,
          class T = detail::precision_for_t<W, G>>
flat_lora_t<T, Base, Backend, Schedule> flat_lora(const param_set<W, G>& params, Base base, Schedule schedule,
                                                  flat_lora_options o = {}) {
  return flat_lora_t<T, Base, Backend, Schedule>(params, o.compose(std::move(base), std::move(schedule)));
}

}  // namespace flatmin
