#pragma once
/// @file adamw.hpp
/// `base::adamw` — AdamW (Loshchilov & Hutter 2019), semantics of PyTorch's `torch.optim.AdamW`
/// (no amsgrad): `base::adam` with `.decay = weight_decay_mode::decoupled` and AdamW's default
/// weight decay, kept as its own option struct so that `base::adamw{.weight_decay = ...}` reads as
/// in PyTorch. Same state, kernel and checkpoint buffers as `base::adam`.
///
///     w ← w (1 − lr λ)                    (tensors with weight decay on)
///     m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
///     w ← w − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
///
/// Options: lr (1e-3), beta1 (0.9), beta2 (0.999), eps (1e-8), weight_decay λ (1e-2).

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

  /// The same optimizer spelled as `base::adam`.
  adam as_adam() const { return {lr, beta1, beta2, eps, weight_decay, weight_decay_mode::decoupled}; }

  /// Throws std::invalid_argument unless the options are valid for an optimizer computing in T.
  template <class T = double>
  void validate() const {
    as_adam().template validate<T>();
  }

  template <class T, class Backend>
  class state : public adam::state<T, Backend> {
   public:
    state(const adamw& o, std::size_t n) : adam::state<T, Backend>(o.as_adam(), n) {}
    kernels::adam_update<T> prepare(const adamw& o, std::size_t t) {
      return adam::state<T, Backend>::prepare(o.as_adam(), t);
    }
  };
};

}  // namespace flatmin::base
