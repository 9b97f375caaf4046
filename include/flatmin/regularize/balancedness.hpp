#pragma once
/// @file balancedness.hpp
/// `regularize::balancedness` — BAR, balancedness-aware regularization for LoRA (Li, Zhang, He,
/// NeurIPS 2024). **Library formulation** (shared/ALGORITHMS.md): the paper's full text could not
/// be checked; this is the library's definition, validated by the property below.
///
/// For a LoRA pair (x, y) with update x yᵀ (or xᵀy), the balancedness B = ½(‖x‖² − ‖y‖²) is
/// conserved by gradient descent to first order, while SAM drives it at the rate
/// ρ (‖g_x‖² − ‖g_y‖²)/‖g‖. BAR reproduces that drift with ONE gradient per step, per pair:
///
///     c   = α ρ (‖g_x‖² − ‖g_y‖²) / ((‖g‖ + ξ)(‖x‖² + ‖y‖²))
///     g_x ← g_x − c x,   g_y ← g_y + c y,   then the base optimizer step
///
/// (c = 0 when ‖x‖² + ‖y‖² = 0 or ‖g‖ + ξ = 0, or when c is not finite as a T). ‖g‖ is the
/// global norm SAM would normalise by: over every tensor with `.perturb = true` (all, by
/// default). Pairs are those registered with
/// `param_set::add_lora_pair`; every other tensor gets the plain base step. Compose with
/// `perturb::none` (flatmin::bar does): no second gradient.
/// Property (tests/unit/test_balancedness.cpp): on ½‖x yᵀ − (A + σN)‖² with fresh noise each step,
/// |B| under BAR follows SAM's trajectory far more closely than SGD's, one objective call per step.
///
/// Cost per step: one reduction over all tensors for ‖g‖ plus one per LoRA factor (2 per pair),
/// each through the backend's `reduce`; the adjustment itself is fused into the descent pass.
///
/// Options: ρ = `rho` (0.05), α = `alpha` (1), ξ = `xi` (1e-12), `alpha_schedule` (none): when
/// set, the multiplier at step t (1-based) is α · alpha_schedule(t).

#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <vector>

#include "../backend/layout.hpp"
#include "../config.hpp"
#include "../kernels/balancedness.hpp"

namespace flatmin::regularize {

struct balancedness {
  static constexpr const char* name = "balancedness";   ///< in checkpoints' composition identity
  double rho = 0.05;                                    ///< SAM radius whose drift is reproduced, ρ ≥ 0
  double alpha = 1.0;                                   ///< multiplier α ≥ 0
  double xi = 1e-12;                                    ///< ξ ≥ 0 added to ‖g‖
  std::function<double(std::size_t)> alpha_schedule{};  ///< optional factor on α at step t (1-based)

  /// Throws std::invalid_argument unless the options are valid for an optimizer computing in T.
  template <class T = double>
  void validate() const {
    detail::check_option<T>("regularize::balancedness", "rho", rho, detail::domain::non_negative);
    detail::check_option<T>("regularize::balancedness", "alpha", alpha, detail::domain::non_negative);
    detail::check_option<T>("regularize::balancedness", "xi", xi, detail::domain::non_negative);
    detail::check_derived<T>("regularize::balancedness", "rho * alpha", rho * alpha);
  }

  /// α at step t, schedule applied; throws std::invalid_argument for a non-finite or negative value.
  double alpha_at(std::size_t t) const {
    const double a = alpha_schedule ? alpha * alpha_schedule(t) : alpha;
    detail::check_option(detail::finite(a) && a >= 0, "regularize::balancedness", "alpha * alpha_schedule(t)",
                         a, "finite and >= 0");
    return a;
  }

  template <class T, class Backend>
  class state {
   public:
    using view = kernels::balancedness_adjust<T>;

    /// Finds the pairs: `add_lora_pair` registers x (lora_a) immediately followed by y (lora_b).
    state(const balancedness&, const backend::layout<T, Backend>& l) : host_coef_(l.tensor_count(), T(0)) {
      const auto& ts = l.host_tensors();
      const auto& segs = l.host_segments();
      // make_segments lists each tensor's segments contiguously, in tensor order.
      std::vector<std::size_t> first(ts.size() + 1, 0);
      for (const auto& s : segs) ++first[s.tensor + 1];
      for (std::size_t t = 0; t < ts.size(); ++t) first[t + 1] += first[t];
      auto slice = [&](std::size_t t) {
        return part{first[t], first[t + 1] - first[t], static_cast<std::size_t>(ts[t].size)};
      };
      for (std::size_t t = 0; t + 1 < ts.size(); ++t)
        if ((ts[t].flags & tensor_flags::lora_a) && (ts[t + 1].flags & tensor_flags::lora_b))
          pairs_.push_back({t, t + 1, slice(t), slice(t + 1)});
      coef_ = Backend::from_host(host_coef_);
      last_c_.assign(pairs_.size(), 0.0);
    }

    /// Computes every pair's coefficient c from the current w and g (one reduction per factor).
    view prepare(const balancedness& o, const backend::layout<T, Backend>& l, std::size_t t, T inv_scale) {
      if (pairs_.empty()) return {Backend::data(coef_)};
      const double a = o.alpha_at(t);
      detail::check_derived<T>("regularize::balancedness", "rho * alpha * alpha_schedule(t)", o.rho * a);
      const double g2 =
          Backend::template reduce<double>(l.full(), kernels::perturbable_g2_pass<T>{inv_scale});
      const double gn = std::sqrt(g2) + o.xi;
      const auto full = l.full();
      for (std::size_t p = 0; p < pairs_.size(); ++p) {
        const auto& pr = pairs_[p];
        const auto sx = sums(full, pr.x_part, inv_scale);
        const auto sy = sums(full, pr.y_part, inv_scale);
        const double den = gn * (sx.w2 + sy.w2);
        const double c = den > 0 ? a * o.rho * (sx.g2 - sy.g2) / den : 0.0;
        // c is applied in T: one past T's range would write ±inf into the weights.
        const double top = static_cast<double>(std::numeric_limits<T>::max());
        last_c_[p] = std::isfinite(c) && std::fabs(c) <= top ? c : 0.0;
        host_coef_[pr.x] = static_cast<T>(-last_c_[p]);
        host_coef_[pr.y] = static_cast<T>(last_c_[p]);
      }
      coef_ = Backend::from_host(host_coef_);
      return {Backend::data(coef_)};
    }

    /// Number of LoRA pairs found, and each pair's c of the last step (in pair order).
    std::size_t pair_count() const { return pairs_.size(); }
    const std::vector<double>& coefficients() const { return last_c_; }

   private:
    struct part {
      std::size_t first, count, elements;
    };
    struct pair {
      std::size_t x, y;
      part x_part, y_part;
    };
    static kernels::square_sums sums(const backend::range_of<T, Backend>& full, const part& s, T inv_scale) {
      const backend::range_of<T, Backend> r{full.tensors, full.segments + s.first, s.count, s.elements};
      return Backend::template reduce<kernels::square_sums>(r, kernels::square_sums_pass<T>{inv_scale});
    }

    std::vector<pair> pairs_;
    std::vector<T> host_coef_;
    typename Backend::template vector<T> coef_;
    std::vector<double> last_c_;
  };
};

}  // namespace flatmin::regularize
