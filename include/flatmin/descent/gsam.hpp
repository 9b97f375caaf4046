#pragma once
/// @file gsam.hpp
/// `descent::gsam` — the descent rule of GSAM, Surrogate Gap Guided SAM (Zhuang, Gong, Yuan, Cui,
/// Adam, Dvornek, Tatikonda, Duncan, Liu, "Surrogate Gap Minimization Improves Sharpness-Aware
/// Training", ICLR 2022). With g the clean gradient and g_adv = ∇L(w + ε):
///
///     ρ_t   = ρ_min + (ρ − ρ_min)(lr_t − lr_min)/(lr_max − lr_min)   (ρ_t = ρ when lr_max = lr_min)
///     ε     = ρ_t g / (‖g‖ + ξ)                                     (the perturbation, perturb::l2)
///     g⊥    = g − (⟨g, g_adv⟩ / ‖g_adv‖²) g_adv                     (g's part orthogonal to g_adv)
///     d     = g_adv − α g⊥,   then the base step on d
///
/// ρ is the perturbation's `rho` (ρ_max), lr_t the base optimizer's `lr` at the step (change it
/// between steps for a learning-rate schedule: ρ_t follows it).
/// Official code: google-research/big_vision, big_vision/trainers/proj/gsam/gsam.py (at 0a83553):
/// the ρ schedule at lines 72-75, ε at lines 82-83, the decomposition and d at lines 92-105
/// (`minimize_fp = True`, the paper's GSAM). Its ViT-B/32 ImageNet configuration
/// (configs/proj/gsam/vit_i1k_gsam_no_aug.py) uses ρ_max = 0.6, ρ_min = 0.1, α = 0.6,
/// lr_min = 0.01·lr_max with Adam; `flatmin::gsam` takes the library's SAM radius by default.
/// Departures: when ‖g_adv‖ = 0 the projection is taken as 0 (d = g_adv − α g; big_vision divides
/// by zero); the ρ schedule is skipped when lr_max = lr_min (big_vision's rule, line 72), and a ρ_t
/// below 0 (an lr far outside [lr_min, lr_max]) is refused: std::invalid_argument from the
/// optimizer's validation, before the weights move.
/// `adaptive_perturbation = True` is ASAM-like: compose with perturb::adaptive instead.
///
/// Cost: one copy pass of g at the ascent, one reduction (⟨g, g_adv⟩, ‖g_adv‖²) before the
/// descent, N values of T of scratch. A step the schedule leaves unperturbed applies the base step
/// to g. Options: α = `alpha` (0.4), `rho_min` (0), `lr_max` (0), `lr_min` (0).

#include <cmath>
#include <cstddef>
#include <limits>

#include "../backend/layout.hpp"
#include "../concepts/roles.hpp"
#include "../config.hpp"
#include "../kernels/descent_terms.hpp"
#include "standard.hpp"
#include "state.hpp"

namespace flatmin::descent {

struct gsam {
  static constexpr const char* name = "gsam";  ///< in checkpoints' composition identity
  double alpha = 0.4;                          ///< weight α ≥ 0 of the orthogonal component removed
  double rho_min = 0;                          ///< ρ at lr = lr_min, ≥ 0
  double lr_max = 0;                           ///< learning rate at which ρ_t = ρ (the perturbation's rho)
  double lr_min = 0;  ///< learning rate at which ρ_t = ρ_min; lr_max = lr_min: no schedule

  /// The two gradients of the closure protocol are descent::standard's (g at w, g_adv at w + ε).
  template <objective O>
  double first_gradient(O& obj) {
    return standard{}.first_gradient(obj);
  }
  template <objective O>
  void second_gradient(O& obj) {
    standard{}.second_gradient(obj);
  }

  template <class T = double>
  void validate() const {
    using flatmin::detail::domain;
    flatmin::detail::check_option<T>("descent::gsam", "alpha", alpha, domain::non_negative);
    flatmin::detail::check_option<T>("descent::gsam", "rho_min", rho_min, domain::non_negative);
    flatmin::detail::check_option<T>("descent::gsam", "lr_min", lr_min, domain::non_negative);
    flatmin::detail::check_option<T>("descent::gsam", "lr_max", lr_max, domain::non_negative);
    flatmin::detail::check_option(lr_max >= lr_min, "descent::gsam", "lr_max", lr_max, ">= lr_min");
  }

  /// ρ_t for this step from the perturbation's ρ and the base optimizer's current lr.
  template <class Base>
  double radius(double rho, const Base& base) const {
    if (lr_max == lr_min) return rho;
    return rho_min + (rho - rho_min) * (flatmin::detail::lr_of(base) - lr_min) / (lr_max - lr_min);
  }

  template <class T, class Backend>
  class state {
   public:
    state(const gsam&, const backend::layout<T, Backend>& l)
        : clean_(Backend::template make_vector<T>(l.numel())) {}

    void on_ascent(const backend::layout<T, Backend>& l, const ascent_stats&, T inv) {
      Backend::for_each(l.full(), kernels::copy_gradient_pass<T>{Backend::data(clean_), inv});
    }

    kernels::gsam_adjust<T> prepare(const gsam& o, const backend::layout<T, Backend>& l,
                                    const step_context& c) {
      if (!c.perturbed) return {Backend::data(clean_), T(0), T(0), false};
      const T inv = static_cast<T>(c.inv_scale);
      const auto s = Backend::template reduce<kernels::pair_sums>(
          l.full(), kernels::pair_sums_pass<T>{Backend::data(clean_), inv});
      const double k = s.aa > 0 ? s.ca / s.aa : 0.0;
      // k is applied in T: one past T's range (a subnormal g_adv) would write ±inf into d
      last_projection_ = std::fabs(k) <= static_cast<double>(std::numeric_limits<T>::max()) ? k : 0.0;
      return {Backend::data(clean_), static_cast<T>(o.alpha), static_cast<T>(last_projection_), true};
    }

    /// ⟨g, g_adv⟩ / ‖g_adv‖² of the last applied perturbed step.
    double projection() const { return last_projection_; }
    std::size_t bytes() const { return clean_.size() * sizeof(T); }

   private:
    typename Backend::template vector<T> clean_;
    double last_projection_ = 0;
  };
};

}  // namespace flatmin::descent
