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
#include "../regularize/none.hpp"
#include "../schedule/always.hpp"

namespace flatmin {

/// Options of the optimizer itself (not of a policy).
struct optimizer_options {
  nonfinite on_nonfinite = nonfinite::skip;  ///< skip the step (default) or throw
  /// Global-norm clipping of the descent gradient (optimizer/clip.hpp): 0 = off; else g_adv, after
  /// unscaling, is scaled by min(1, clip_grad_norm / (‖g_adv‖ + 1e-6)) before the base step.
  double clip_grad_norm = 0;

  void validate() const {
    detail::check_option(on_nonfinite == nonfinite::skip || on_nonfinite == nonfinite::raise,
                         "optimizer_options", "on_nonfinite", static_cast<double>(on_nonfinite),
                         "nonfinite::skip or nonfinite::raise");
    detail::check_option<double>("optimizer_options", "clip_grad_norm", clip_grad_norm,
                                 detail::domain::non_negative);
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
