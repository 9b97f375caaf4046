#pragma once
/// @file standard.hpp
/// `descent::standard` — the second gradient is the ordinary gradient at w + ε:
/// g_adv = ∇L_B(w + ε). In the closure protocol the objective is simply called again.

#include <utility>

#include "../optimizer/concepts.hpp"

namespace flatmin::descent {

struct standard {
  void validate() const {}
  /// Computes g_adv at the current (perturbed) weights.
  template <objective O>
  void second_gradient(O& obj) const {
    static_cast<void>(obj());
  }
};

}  // namespace flatmin::descent
