#pragma once
/// @file standard.hpp
/// `descent::standard` — the second gradient is the ordinary gradient at w + ε:
/// g_adv = ∇L_B(w + ε). In the closure protocol the objective is simply called again.

#include <utility>

#include "../concepts/objective.hpp"

namespace flatmin::descent {

struct standard {
  static constexpr const char* name = "standard";  ///< in checkpoints' composition identity
  void validate() const {}
  /// Computes g at the clean weights and returns the loss (closure protocol, first call).
  template <objective O>
  double first_gradient(O& obj) {
    return static_cast<double>(obj());
  }
  /// Computes g_adv at the current (perturbed) weights (closure protocol, second call).
  template <objective O>
  void second_gradient(O& obj) {
    static_cast<void>(obj());
  }
};

}  // namespace flatmin::descent
