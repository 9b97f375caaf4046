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

  // Weight decay by coefficients (0 and 1 leave a finite value unchanged) rather than branches,
  // so that the host loop runs the same arithmetic for every element and vectorises.
  FLATMIN_HD void operator()(T& w, T g, std::size_t i, std::uint32_t flags) const {
    const bool wd = (flags & tensor_flags::weight_decay) != 0;
    const T coupled = (wd && !decoupled) ? weight_decay : T(0);
    const T shrink = (wd && decoupled) ? T(1) - lr * weight_decay : T(1);
    g = g + coupled * w;
    w = w * shrink;
    const T mi = beta1 * m[i] + (T(1) - beta1) * g;
    const T vi = beta2 * v[i] + (T(1) - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    w = w - step_size * mi / (fm_sqrt(vi) / bc2_sqrt + eps);
  }
};

}  // namespace flatmin::kernels
