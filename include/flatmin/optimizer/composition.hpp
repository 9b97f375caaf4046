#pragma once
/// @file composition.hpp
/// `composition<Perturb, Mask, Base, Descent, Regularizer, Schedule>`: the one aggregate a
/// `sharpness_aware` is built from, a member per policy plus the optimizer's own options.
///
///     using opt_t = flatmin::sharpness_aware<float, flatmin::backend::eigen, flatmin::perturb::l2,
///                                            flatmin::mask::fisher, flatmin::base::adam>;
///     opt_t opt(params, {.base = {.lr = 1e-3}, .perturb = {.rho = 0.05}, .mask = {.keep = 0.1}});
///
/// Each option is declared once, in its policy (`perturb::l2::rho`, `mask::fisher::keep`,
/// `optimizer_options::on_nonfinite`); the members name the roles, so a designated initializer says
/// which policy an option belongs to. `base` is required (there is no default base optimizer: a
/// composition without one fails to compile, naming it); every other member defaults to the
/// policy's defaults. The named algorithms (algorithms/) build one of these from their options.

#include "../config.hpp"
#include "../descent/standard.hpp"
#include "loss_scaler.hpp"
#include "../regularize/none.hpp"
#include "../schedule/always.hpp"

namespace flatmin {

/// How the base step rounds 16-bit weights (bfloat16, half) it updates in place.
enum class rounding : std::uint8_t {
  nearest,    ///< to nearest, ties to even: an update under half a spacing is lost
  stochastic  ///< up or down with probabilities that make the rounding unbiased
};

/// Options of the optimizer itself (not of a policy). The precision options are here rather than
/// in `precision<W, G, S>` because they are run-time values (a seed; a mode a user switches per
/// run without a new type), and they act on the optimizer's own writes of the weights, which no
/// policy sees (params/precision.hpp describes the modes; both need 16-bit weights).
struct optimizer_options {
  nonfinite on_nonfinite = nonfinite::skip;  ///< skip the step (default) or throw
  /// Keep a copy of the weights in the state type, updated by the base step and rounded to nearest
  /// into the 16-bit weights (checkpointed as "master_weights"; `reload_master()` after the
  /// weights were overwritten). The ascent moves from the copy, the base step and a regularizer's
  /// adjustment read it; the perturbation's terms (ASAM's |w|) and the statistics passes read the
  /// 16-bit weights the model computes with. May be switched between steps (a factory's optimizer:
  /// `opt.options().master_weights = true`): on, the copy is taken from the weights as they are.
  bool master_weights = false;
  /// The base step's rounding of 16-bit weights (without master weights).
  rounding weight_rounding = rounding::nearest;
  /// The key of the stochastic rounding: the draw of entry i at step t is a pure function of
  /// (seed, t, i), the same on every backend and thread count, so a resumed run rounds the same.
  std::uint64_t rounding_seed = 0;
  /// Dynamic loss scaling (optimizer/loss_scaler.hpp); may be switched on or off between steps.
  dynamic_loss_scale loss_scale{};
  /// Global-norm clipping of the descent gradient (optimizer/clip.hpp): 0 = off; else g_adv, after
  /// unscaling, is scaled by min(1, clip_grad_norm / (‖g_adv‖ + 1e-6)) before the base step.
  double clip_grad_norm = 0;

  void validate() const {
    detail::check_option(on_nonfinite == nonfinite::skip || on_nonfinite == nonfinite::raise,
                         "optimizer_options", "on_nonfinite", static_cast<double>(on_nonfinite),
                         "nonfinite::skip or nonfinite::raise");
    detail::check_option(weight_rounding == rounding::nearest || weight_rounding == rounding::stochastic,
                         "optimizer_options", "weight_rounding", static_cast<double>(weight_rounding),
                         "rounding::nearest or rounding::stochastic");
    detail::check_option(!(master_weights && weight_rounding == rounding::stochastic), "optimizer_options",
                         "weight_rounding (with master_weights)", static_cast<double>(weight_rounding),
                         "rounding::nearest (the master copy keeps what rounding drops)");
    detail::check_option<double>("optimizer_options", "clip_grad_norm", clip_grad_norm,
                                 detail::domain::non_negative);
    if (!loss_scale.enabled) return;
    loss_scale.validate();
    // An overflow is how a dynamic scale finds its level: it must skip the step, not throw.
    detail::check_option(on_nonfinite == nonfinite::skip, "optimizer_options",
                         "on_nonfinite (with loss_scale.enabled)", static_cast<double>(on_nonfinite),
                         "nonfinite::skip when the dynamic loss scaler is on");
  }
};

namespace detail {
template <class>
inline constexpr bool missing_base = false;

/// The default member initializer of `composition::base`: instantiated only when `.base` is left
/// out, where it stops the compilation (a default-constructed base optimizer would silently run
/// with its default learning rate).
template <class Base>
Base required_base() {
  static_assert(missing_base<Base>,
                "flatmin::composition: .base is required (the base optimizer, e.g. "
                "{.base = flatmin::base::sgd{.lr = 0.1}, ...})");
  return Base{};
}
}  // namespace detail

template <class Perturb, class Mask, class Base, class Descent = descent::standard,
          class Regularizer = regularize::none, class Schedule = schedule::always>
struct composition {
  Base base = detail::required_base<Base>();  ///< the step applied to g_adv (required)
  Perturb perturb{};                          ///< how ε is formed (ρ, ξ, ...)
  Mask mask{};                                ///< which coordinates ε touches
  Descent descent{};                          ///< what the second gradient is
  Regularizer regularizer{};                  ///< what is added to g_adv
  Schedule schedule{};                        ///< whether a step perturbs
  optimizer_options options{};                ///< the optimizer's own (non-finite handling)
};

}  // namespace flatmin
