#pragma once
/// @file mix.hpp
/// `descent::mix` — the base step on a λ-mix of the two gradients of a step:
///
///     d = g + λ (g_adv − g)  = (1 − λ) g + λ g_adv,   then the base step on d
///
/// g the gradient at w, g_adv the one at w + ε. RWP's descent (algorithms/rwp.hpp): its official
/// code gets the mix by averaging, over a data-parallel group, losses weighted 2(1 − λ) at w and
/// 2λ at w + ε. λ = 1 is the descent on g_adv alone (descent::standard), λ = 0 the base optimizer
/// on g. WSAM's coupled form is the same rule with λ = γ/(1 − γ) (descent/wsam.hpp; both use
/// kernels::wsam_adjust).
///
/// Cost: one copy pass of g at the ascent and N values of T of scratch. A step the schedule leaves
/// unperturbed applies the base step to g alone. Options: λ = `lambda` (0.5, in [0, 1]).

#include <cstddef>

#include "../backend/layout.hpp"
#include "../concepts/roles.hpp"
#include "../config.hpp"
#include "../kernels/descent_terms.hpp"
#include "standard.hpp"
#include "state.hpp"

namespace flatmin::descent {

struct mix {
  static constexpr const char* name = "mix";  ///< in checkpoints' composition identity
  double lambda = 0.5;                        ///< λ ∈ [0, 1], the weight of g_adv

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
    flatmin::detail::check_option<T>("descent::mix", "lambda", lambda, flatmin::detail::domain::unit);
  }

  template <class T, class Backend>
  class state {
   public:
    state(const mix&, const backend::layout<T, Backend>& l)
        : clean_(Backend::template make_vector<T>(l.numel())) {}

    void on_ascent(const backend::layout<T, Backend>& l, const ascent_stats&, T inv) {
      Backend::for_each(l.full(), kernels::copy_gradient_pass<T>{Backend::data(clean_), inv});
    }

    kernels::wsam_adjust<T> prepare(const mix& o, const backend::layout<T, Backend>&, const step_context& c) {
      return {Backend::data(clean_), static_cast<T>(o.lambda), c.perturbed, false};
    }

    std::size_t bytes() const { return clean_.size() * sizeof(T); }

   private:
    typename Backend::template vector<T> clean_;
  };
};

}  // namespace flatmin::descent
