#pragma once
/// @file bar.hpp
/// BAR — Li, Zhang, He, "Implicit Regularization of Sharpness-Aware Minimization for
/// Scale-Invariant Problems", NeurIPS 2024: balancedness-aware regularization for LoRA pairs.
/// **Library formulation** (see regularize/balancedness.hpp and shared/ALGORITHMS.md): the paper's
/// full text could not be checked.
///
///     per LoRA pair (x, y):  c = α ρ (‖g_x‖² − ‖g_y‖²) / ((‖g‖ + ξ)(‖x‖² + ‖y‖²))
///                            g_x ← g_x − c x,  g_y ← g_y + c y;   then w ← Base(w, g)
///
/// One gradient per step (no perturbed pass: `perturbs == false`, ascend() may be left out);
/// tensors outside a pair (registered with `param_set::add_lora_pair`) get the plain base step.
/// Defaults: ρ = 0.05, α = 1, ξ = 1e-12 (library defaults), no α schedule.
///
///     ps.add_lora_pair("q", A.data(), gA.data(), {r, k}, B.data(), gB.data(), {n, r});
///     auto opt = flatmin::bar(ps, flatmin::base::adamw{.lr = 1e-3}, {.rho = 0.05});
///     backward();  opt.descend();            // or opt.step(objective)

#include <functional>

#include "../backend/default.hpp"
#include "../descent/standard.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/none.hpp"
#include "../regularize/balancedness.hpp"

namespace flatmin {

struct bar_options {
  double rho = 0.05;                                    ///< regularize::balancedness::rho
  double alpha = 1.0;                                   ///< regularize::balancedness::alpha
  double xi = 1e-12;                                    ///< regularize::balancedness::xi
  std::function<double(std::size_t)> alpha_schedule{};  ///< regularize::balancedness::alpha_schedule
  nonfinite on_nonfinite = nonfinite::skip;             ///< optimizer_options::on_nonfinite

  template <class Base>
  composition<perturb::none, mask::dense, Base, descent::standard, regularize::balancedness> compose(
      Base base) const {
    return {.base = std::move(base),
            .regularizer = {.rho = rho, .alpha = alpha, .xi = xi, .alpha_schedule = alpha_schedule},
            .options = {.on_nonfinite = on_nonfinite}};
  }
};

template <class T, class Base, class Backend = default_backend>
using bar_t = sharpness_aware<T, Backend, perturb::none, mask::dense, Base, descent::standard,
                              regularize::balancedness>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
bar_t<T, Base, Backend> bar(const param_set<W, G>& params, Base base, bar_options o = {}) {
  return bar_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

}  // namespace flatmin
