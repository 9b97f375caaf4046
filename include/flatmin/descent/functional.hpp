#pragma once
/// @file functional.hpp
/// `descent::functional` — the second gradient of Functional-SAM (Singh, Mobahi, Agarwala,
/// Dauphin, ICML 2025). **Library formulation** (shared/ALGORITHMS.md): the paper's full text could
/// not be checked; this is the library's definition, validated by the properties below.
///
/// With network outputs F(w) on the batch and the output cotangent c(w) = ∂ℓ/∂F at the clean point:
///
///     g      = J(w)ᵀ c(w)                 (clean pass: the objective also SAVES c(w))
///     ε      = Perturb(g)                 (perturb::l2, or perturb::preconditioned)
///     g_fsam = J(w + ε)ᵀ c(w)             (perturbed pass: forward at w + ε, back-propagate the
///                                          SAVED cotangent, not the one of the loss at w + ε)
///
/// Standard SAM uses J(w + ε)ᵀ c(w + ε); the two differ by J(w+ε)ᵀ (c(w+ε) − c(w)) ≈ Jᵀ H_ℓ J ε,
/// the logit-curvature term, which is what Functional-SAM leaves out.
/// Properties (tests/unit/test_functional.cpp): for a model linear in w, g_fsam equals the clean
/// gradient exactly; on a two-layer network it matches a float64 reference and differs from
/// SAM's g_adv by the logit-curvature term (checked against finite differences).
///
/// Closure protocol: `opt.step(obj)` with a `functional_objective`: `obj()` runs the clean
/// forward/backward, writes g and saves c(w), returns the loss; `obj.functional_backward()` runs
/// the forward at the current (perturbed) weights and back-propagates the saved c(w), writing
/// g_fsam into the gradient views.
///
/// Caller protocol (own backward pass), the same two calls spelled out:
///
///     loss = forward(w);  c = dloss_doutputs;  backward(c);   // g in the grads; keep c
///     opt.ascend();                                            // w ← w + ε
///     forward(w);  backward(c);                                // g_fsam: SAVED c, not a new one
///     opt.descend();                                           // w ← saved w, base step
///
/// No options.

#include <concepts>

#include "../concepts/objective.hpp"

namespace flatmin::descent {

struct functional {
  static constexpr const char* name = "functional";  ///< in checkpoints' composition identity
  void validate() const {}

  /// Clean pass: g and the saved cotangent c(w); returns the loss.
  template <class O>
  double first_gradient(O& obj) {
    static_assert(
        functional_objective<O>,
        "flatmin::descent::functional: the objective is not a flatmin::functional_objective: it needs "
        "operator()() (clean pass: gradient, saves the output cotangent, returns the loss) AND "
        "functional_backward() (forward at w + eps, back-propagates the saved cotangent)");
    return static_cast<double>(obj());
  }
  /// Perturbed pass: g_fsam = J(w + ε)ᵀ c(w) into the gradient views.
  template <class O>
  void second_gradient(O& obj) {
    if constexpr (functional_objective<O>) obj.functional_backward();
  }
};

}  // namespace flatmin::descent
