#pragma once
/// @file looksam.hpp
/// `descent::looksam` — the descent rule of LookSAM (Liu, Mai, Chen, Hsieh, You, "Towards Efficient
/// and Scalable Sharpness-Aware Minimization", CVPR 2022, Algorithm 1). On the steps the schedule
/// perturbs (every k-th: `flatmin::looksam` composes it with schedule::every_k), a full SAM step
/// that also keeps the part of g_adv orthogonal to g:
///
///     g_v = g_adv − (⟨g, g_adv⟩ / ‖g‖²) g,        then the base step on g_adv
///
/// and on the other steps ONE gradient (the objective is called once: the schedule leaves the step
/// unperturbed), the base step on
///
///     d = g + α (‖g‖ / ‖g_v‖) g_v                  (d = g while there is no g_v, or ‖g_v‖ = 0)
///
/// ‖·‖ and the projection run over every entry of every tensor, as one vector (the paper's
/// global form; its layer-wise Look-LayerSAM is not provided). Any schedule works: g_v is the one
/// of the last perturbed step that was applied.
/// Official code: none was published. The two public ports read restore a stale copy of the
/// weights between full steps and evaluate the objective on every step; here a cheap step really
/// costs one gradient, one reduction (‖g‖) and one fused pass.
/// The reused term has norm α‖g‖ along a stale direction: with heavy momentum on an ill-conditioned
/// problem a large α can diverge (SGD with momentum 0.9 on a κ = 100 quadratic: α = 0.7 does,
/// α ≤ 0.5 does not; tests/conformance/compositions.hpp).
/// State (checkpointed): g_v (N values of T), ‖g_v‖ and whether g_v exists; scratch: the clean g
/// (N values of T) kept at the ascent. Options: α = `alpha` (0.7, ≥ 0), the common default of the
/// public ports (k = 5 is `flatmin::looksam`'s).

#include <cmath>
#include <cstddef>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "../backend/layout.hpp"
#include "../concepts/roles.hpp"
#include "../config.hpp"
#include "../kernels/descent_terms.hpp"
#include "standard.hpp"
#include "state.hpp"

namespace flatmin::descent {

struct looksam {
  static constexpr const char* name = "looksam";  ///< in checkpoints' composition identity
  double alpha = 0.7;                             ///< weight α ≥ 0 of the reused orthogonal component

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
    flatmin::detail::check_option<T>("descent::looksam", "alpha", alpha,
                                     flatmin::detail::domain::non_negative);
  }

  template <class T, class Backend>
  class state {
   public:
    state(const looksam&, const backend::layout<T, Backend>& l)
        : clean_(Backend::template make_vector<T>(l.numel())),
          gv_(Backend::template make_vector<T>(l.numel())) {}

    void on_ascent(const backend::layout<T, Backend>& l, const ascent_stats&, T inv) {
      Backend::for_each(l.full(), kernels::copy_gradient_pass<T>{Backend::data(clean_), inv});
    }

    /// Full step: the projection and ‖g_v‖ (two reductions); g_v itself is written by the fused
    /// pass. Cheap step: ‖g‖ (one reduction). The last to run before the pass: nothing after it
    /// throws, so the new ‖g_v‖ is committed here.
    kernels::looksam_adjust<T> prepare(const looksam& o, const backend::layout<T, Backend>& l,
                                       const step_context& c) {
      const T inv = static_cast<T>(c.inv_scale);
      const double top = static_cast<double>(std::numeric_limits<T>::max());
      if (c.perturbed) {
        const auto s = Backend::template reduce<kernels::pair_sums>(
            l.full(), kernels::pair_sums_pass<T>{Backend::data(clean_), inv});
        double k = s.cc > 0 ? s.ca / s.cc : 0.0;
        if (!(std::fabs(k) <= top)) k = 0.0;
        const T kt = static_cast<T>(k);
        const double n2 = Backend::template reduce<double>(
            l.full(), kernels::residual_norm_pass<T>{Backend::data(clean_), kt, inv});
        gv_norm_ = std::sqrt(n2);
        has_gv_ = true;
        return {Backend::data(clean_), Backend::data(gv_), kt, T(0), true};
      }
      double s = 0;
      if (has_gv_ && gv_norm_ > 0) {
        const auto a =
            Backend::template reduce<kernels::pair_sums>(l.full(), kernels::pair_sums_pass<T>{nullptr, inv});
        s = o.alpha * std::sqrt(a.aa) / gv_norm_;
        if (!(s <= top)) s = 0.0;  // a g_v of subnormal norm: reuse nothing rather than overflow
      }
      return {Backend::data(clean_), Backend::data(gv_), T(0), static_cast<T>(s), false};
    }

    /// Whether a g_v is kept (a perturbed step was applied), and its norm.
    bool has_gv() const { return has_gv_; }
    double gv_norm() const { return gv_norm_; }
    /// g_v on the host (tests, inspection).
    std::vector<T> gv() const { return Backend::to_host(gv_); }
    std::size_t bytes() const { return (clean_.size() + gv_.size()) * sizeof(T); }

    template <class F>
    void visit(F&& f) {
      f("looksam.g_v", gv_);
      f("looksam.g_v_norm", gv_norm_);
      f("looksam.has_g_v", has_gv_);
    }
    template <class Staged>
    void check_load(const Staged& st) const {
      const double n = st.template scalar<double>("looksam.g_v_norm");
      if (!(std::isfinite(n) && n >= 0))
        throw std::invalid_argument("flatmin: load(): LookSAM's ||g_v|| " + std::to_string(n) +
                                    " is not finite and >= 0");
    }

   private:
    typename Backend::template vector<T> clean_, gv_;
    double gv_norm_ = 0;
    bool has_gv_ = false;
  };
};

}  // namespace flatmin::descent
