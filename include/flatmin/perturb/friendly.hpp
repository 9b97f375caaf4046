#pragma once
/// @file friendly.hpp
/// `perturb::friendly` — Friendly-SAM's perturbation (Li, Zhou, He, Cheng, Huang, "Friendly
/// Sharpness-Aware Minimization", CVPR 2024): the ascent direction drops the full-gradient component
/// estimated by an EMA m of past gradients, keeping the batch-specific part:
///
///     d   = g − σ m_{t−1}                  (d = g on the first step, where m_1 = g)
///     ε   = ρ d / (‖d‖ + ξ)                (‖·‖ over the perturbed tensors, as perturb::l2)
///     m_t = λ m_{t−1} + (1 − λ) g           (the RAW g, after d was formed)
///
/// then SAM's descent (g_adv = ∇L(w + ε), w restored, the base step on g_adv).
/// Official code: nblt/F-SAM, utils.py (at 0867879), `FriendlySAM.first_step`: m initialised to the
/// first g, then `p.grad -= m·σ` followed by `m = m·λ + grad·(1 − λ)` with `grad` the clone taken
/// before the subtraction (the raw g); constructor defaults ρ 0.05, σ 1, λ 0.9. One public port
/// updates m with the corrected gradient g − σm instead; flatmin follows the official order.
/// Departures: m advances only when a step is applied (a skipped, cancelled or unperturbed step
/// leaves it as it was; the official code has no skipped steps and perturbs every step), and ξ is
/// the library's (the official 1e-12 is the same).
///
/// State (perturb/state.hpp, checkpointed): m (N values of T) and whether it is set; scratch: the
/// next m, computed at the ascent (one pass) and swapped in when the step is applied.
/// Options: ρ = `rho` (0.05), ξ = `xi` (1e-12), σ = `sigma` (1), λ = `lambda` (0.9, in [0, 1]).

#include <cstddef>
#include <cstdint>
#include <vector>

#include "../backend/layout.hpp"
#include "../concepts/roles.hpp"
#include "../config.hpp"
#include "../kernels/math.hpp"

namespace flatmin::kernels {

/// Friendly-SAM's term: norm and direction g − σ m (g alone before m exists).
template <class T>
struct friendly_term {
  const T* m;
  T sigma;
  bool has_m;
  FLATMIN_HD T norm(T /*w*/, T g, std::size_t i, std::uint32_t /*flags*/) const {
    return has_m ? g - sigma * m[i] : g;
  }
  FLATMIN_HD T dir(T w, T g, std::size_t i, std::uint32_t flags) const { return norm(w, g, i, flags); }
};

/// next[i] = λ m[i] + (1 − λ) g (or g when there is no m yet), g the clean gradient in the views.
template <class T>
struct friendly_ema_pass {
  const T* m;
  T* next;
  T lambda;
  T inv_scale;
  bool has_m;
  template <class W, class G>
  FLATMIN_HD void operator()(const backend::elem<W, G>& e) const {
    const T g = static_cast<T>(e.g) * inv_scale;
    next[e.i] = has_m ? lambda * m[e.i] + (T(1) - lambda) * g : g;
  }
};

}  // namespace flatmin::kernels

namespace flatmin::perturb {

struct friendly {
  static constexpr const char* name = "friendly";  ///< in checkpoints' composition identity
  double rho = 0.05;                               ///< radius ρ ≥ 0
  double xi = 1e-12;                               ///< ξ ≥ 0 added to the norm
  double sigma = 1.0;                              ///< σ ≥ 0, the weight of m removed from g
  double lambda = 0.9;                             ///< λ ∈ [0, 1], the EMA's decay

  static constexpr bool perturbs = true;

  template <class T = double>
  void validate() const {
    using flatmin::detail::domain;
    flatmin::detail::check_option<T>("perturb::friendly", "rho", rho, domain::non_negative);
    flatmin::detail::check_option<T>("perturb::friendly", "xi", xi, domain::non_negative);
    flatmin::detail::check_option<T>("perturb::friendly", "sigma", sigma, domain::non_negative);
    flatmin::detail::check_option<T>("perturb::friendly", "lambda", lambda, domain::unit);
  }

  template <class T, class Backend>
  class state {
   public:
    state(const friendly&, const backend::layout<T, Backend>& l)
        : m_(Backend::template make_vector<T>(l.numel())),
          next_(Backend::template make_vector<T>(l.numel())) {}

    template <class BaseState>
    kernels::friendly_term<T> term(const friendly& o, const BaseState&, std::size_t) const {
      return {Backend::data(m_), static_cast<T>(o.sigma), has_m_};
    }
    /// The next m from the clean g, kept aside until the step is applied.
    void on_ascent(const friendly& o, const backend::layout<T, Backend>& l, const ascent_stats&, T inv) {
      Backend::for_each(l.full(), kernels::friendly_ema_pass<T>{Backend::data(m_), Backend::data(next_),
                                                                static_cast<T>(o.lambda), inv, has_m_});
    }
    void commit_step() noexcept {
      m_.swap(next_);
      has_m_ = true;
    }
    bool has_momentum() const { return has_m_; }
    std::vector<T> momentum() const { return Backend::to_host(m_); }
    std::size_t bytes() const { return (m_.size() + next_.size()) * sizeof(T); }
    template <class F>
    void visit(F&& f) {
      f("friendly.momentum", m_);
      f("friendly.has_momentum", has_m_);
    }

   private:
    typename Backend::template vector<T> m_, next_;
    bool has_m_ = false;
  };
};

}  // namespace flatmin::perturb
