#pragma once
/// @file adamw.hpp
/// `base::adamw` — AdamW (Loshchilov & Hutter 2019), decoupled weight decay, semantics of
/// PyTorch's `torch.optim.AdamW` (no amsgrad):
///
///     w ← w (1 − lr λ)                    (tensors with weight decay on)
///     m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
///     w ← w − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
///
/// Options: lr (1e-3), beta1 (0.9), beta2 (0.999), eps (1e-8), weight_decay λ (1e-2).
/// Same kernel and state as `base::adam`.

#include "adam.hpp"

namespace flatmin::base {

struct adamw {
  static constexpr const char* name = "adamw";  ///< in checkpoints' composition identity
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;

  static constexpr bool has_second_moment = true;

  void validate() const { detail::validate_adam("base::adamw", lr, beta1, beta2, eps, weight_decay); }

  template <class T, class Backend>
  class state : public detail::adam_state<T, Backend> {
   public:
    state(const adamw& o, std::size_t n) : detail::adam_state<T, Backend>(n, o.beta2, o.eps) {}
    kernels::adam_update<T> prepare(const adamw& o, std::size_t t) {
      return this->make(o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, true, t);
    }
  };
};

}  // namespace flatmin::base
