#pragma once
/// @file wsam.hpp
/// `descent::wsam` — the descent rule of WSAM, Weighted SAM (Yue, Jiang, Ye, Gao, Liu, Zhang,
/// "Sharpness-Aware Minimization Revisited: Weighted Sharpness as a Regularization Term", KDD 2023):
/// the loss L(w) + γ/(1 − γ)·(L(w + ε) − L(w)), whose gradient with α = γ/(1 − γ) is
///
///     coupled:    d = g + α (g_adv − g),   then the base step on d
///     decoupled:  the base step on g, then w ← w − lr·α·(g_adv − g)     (the default)
///
/// g the clean gradient, g_adv = ∇L(w + ε), lr the base optimizer's current `lr`. γ = 1/2 (α = 1) is
/// SAM in the coupled form; γ = 0 the base optimizer alone.
/// Official code: intelligent-machine-learning/dlrover, atorch/atorch/optimizers/wsam.py (at
/// 05e4f76): α = γ/(1−γ) at line 42, the coupled mix α·g_adv + (1−α)·g at lines 96-99, the
/// decoupled sharpness g_adv − g kept and the gradient reset to g at lines 100-104, the base step
/// at line 106, then w −= lr·α·sharpness at lines 108-115. Constructor defaults: γ = 0.88,
/// decouple = True (line 29, 32); its README's example passes γ = 0.9, the library's default.
/// Departures: the official code clips g and g_adv to norm `max_norm` (1.0 by default; lines 67-68
/// and 89-90): flatmin does not clip (clip the gradients in the objective if wanted). In the
/// decoupled form the sharpness term reaches every tensor, as the official code does (a tensor
/// with `.perturb = false` still has g_adv ≠ g); it writes w directly, after the base step.
///
/// Cost: one copy pass of g at the ascent, N values of T of scratch, and in the decoupled form
/// one more pass over w after the base step. A step the schedule leaves unperturbed applies the
/// base step to g alone. Options: γ = `gamma` (0.9, in [0, 1)), `decouple` (true).

#include <cstddef>

#include "../backend/layout.hpp"
#include "../concepts/roles.hpp"
#include "../config.hpp"
#include "../kernels/descent_terms.hpp"
#include "standard.hpp"
#include "state.hpp"

namespace flatmin::descent {

struct wsam {
  static constexpr const char* name = "wsam";  ///< in checkpoints' composition identity
  double gamma = 0.9;    ///< weight γ ∈ [0, 1) of the sharpness term: α = γ/(1 − γ)
  bool decouple = true;  ///< sharpness term applied to w after the base step (else mixed into d)

  double alpha() const { return gamma / (1 - gamma); }

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
    flatmin::detail::check_option(gamma >= 0 && gamma < 1, "descent::wsam", "gamma", gamma, "in [0, 1)");
    flatmin::detail::check_derived<T>("descent::wsam", "gamma / (1 - gamma)", alpha());
  }

  template <class T, class Backend>
  class state {
   public:
    state(const wsam&, const backend::layout<T, Backend>& l)
        : clean_(Backend::template make_vector<T>(l.numel())) {}

    void on_ascent(const backend::layout<T, Backend>& l, const ascent_stats&, T inv) {
      Backend::for_each(l.full(), kernels::copy_gradient_pass<T>{Backend::data(clean_), inv});
    }

    kernels::wsam_adjust<T> prepare(const wsam& o, const backend::layout<T, Backend>&,
                                    const step_context& c) {
      return {Backend::data(clean_), static_cast<T>(o.alpha()), c.perturbed, o.decouple};
    }

    /// The decoupled sharpness term, after the base step.
    void finish(const wsam& o, const backend::layout<T, Backend>& l, const step_context& c) {
      if (!c.perturbed || !o.decouple) return;
      Backend::for_each(
          l.full(), kernels::wsam_decoupled_pass<T>{Backend::data(clean_), static_cast<T>(c.lr * o.alpha()),
                                                    static_cast<T>(c.inv_scale)});
    }

    std::size_t bytes() const { return clean_.size() * sizeof(T); }

   private:
    typename Backend::template vector<T> clean_;
  };
};

}  // namespace flatmin::descent
