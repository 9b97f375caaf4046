#pragma once
/// @file adam_update.hpp
/// The Adam / AdamW update rule (PyTorch `torch.optim.Adam` / `AdamW` semantics), one element at
/// a time. One source for both: `decoupled` selects where weight decay goes.

#include <cstdint>

#include "../params/tensor_view.hpp"
#include "math.hpp"

namespace flatmin::kernels {

/// Adam:  d = g + λw;  AdamW: w ← w (1 − lr λ), d = g   (tensors with weight decay on)
/// m ← β1 m + (1 − β1) d;   v ← β2 v + (1 − β2) d²
/// w ← w − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)
template <class T>
struct adam_update {
  T lr, beta1, beta2, eps, weight_decay;
  T step_size;     ///< lr / (1 − β1ᵗ)
  T bc2_sqrt;      ///< √(1 − β2ᵗ)
  bool decoupled;  ///< AdamW
  T* m;
  T* v;
  /// Per-tensor (lr, weight decay) multipliers by the slot in `flags` (backend/layout.hpp's
  /// scales()); null when every tensor has (1, 1). Set by the optimizer after prepare().
  const T* scales = nullptr;

  // Weight decay by coefficients (0 and 1 leave a finite value unchanged) rather than branches,
  // so that the host loop runs the same arithmetic for every element and vectorises.
  FLATMIN_HD void operator()(T& w, T g, std::size_t i, std::uint32_t flags) const {
    const bool wd = (flags & tensor_flags::weight_decay) != 0;
    T rate = lr, size = step_size, lambda = weight_decay;
    if (scales != nullptr) {  // per tensor: predictable; ×1 leaves the coefficients unchanged
      const T* s = scales + 2 * (flags >> tensor_flags::scale_shift);
      rate = lr * s[0];
      size = step_size * s[0];
      lambda = weight_decay * s[1];
    }
    const T coupled = (wd && !decoupled) ? lambda : T(0);
    const T shrink = (wd && decoupled) ? T(1) - rate * lambda : T(1);
    g = g + coupled * w;
    w = w * shrink;
    const T mi = beta1 * m[i] + (T(1) - beta1) * g;
    const T vi = beta2 * v[i] + (T(1) - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    w = w - size * mi / (fm_sqrt(vi) / bc2_sqrt + eps);
  }
};

}  // namespace flatmin::kernels
