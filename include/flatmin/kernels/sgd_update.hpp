#pragma once
/// @file sgd_update.hpp
/// The SGD update rule (PyTorch `torch.optim.SGD` semantics), one element at a time.

#include <cstdint>

#include "../params/tensor_view.hpp"

namespace flatmin::kernels {

/// d = g + λw (coupled decay, tensors with weight decay on);
/// b ← d on the first step, else μ b + (1 − τ) d;  d ← d + μ b (Nesterov) or b;  w ← w − lr d.
template <class T>
struct sgd_update {
  T lr, momentum, dampening, weight_decay;
  bool nesterov, first;
  T* buf;  ///< momentum buffer (global index), null when momentum == 0
  /// Per-tensor (lr, weight decay) multipliers by the slot in `flags` (backend/layout.hpp's
  /// scales()); null when every tensor has (1, 1). Set by the optimizer after prepare().
  const T* scales = nullptr;

  // No branch on a run-time option inside the element loop: the options pick coefficients (a
  // zero factor leaves a finite value unchanged) and the loop runs the same arithmetic for every
  // element, which the host compiler vectorises (with -ftrapping-math it does not speculate a
  // floating-point operation guarded by a branch). buf[i] is read on the first step too: it is
  // zero-initialised and its cache line is fetched for the write anyway.
  FLATMIN_HD void operator()(T& w, T g, std::size_t i, std::uint32_t flags) const {
    T rate = lr, wd = (flags & tensor_flags::weight_decay) ? weight_decay : T(0);
    if (scales != nullptr) {  // per tensor: predictable; ×1 leaves lr and λ unchanged
      const T* s = scales + 2 * (flags >> tensor_flags::scale_shift);
      rate = lr * s[0];
      wd = wd * s[1];
    }
    g = g + wd * w;
    if (buf != nullptr) {
      const T mu = first ? T(0) : momentum;            // b ← g on the first step
      const T damp = first ? T(1) : T(1) - dampening;  // else μ b + (1 − τ) g
      const T b = mu * buf[i] + damp * g;
      buf[i] = b;
      g = (nesterov ? g : T(0)) + (nesterov ? momentum : T(1)) * b;
    }
    w = w - rate * g;
  }
};

}  // namespace flatmin::kernels
