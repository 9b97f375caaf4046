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

  FLATMIN_HD void operator()(T& w, T g, std::size_t i, std::uint32_t flags) const {
    if (flags & tensor_flags::weight_decay) g = g + weight_decay * w;
    if (buf != nullptr) {
      const T b = first ? g : momentum * buf[i] + (T(1) - dampening) * g;
      buf[i] = b;
      g = nesterov ? g + momentum * b : b;
    }
    w = w - lr * g;
  }
};

}  // namespace flatmin::kernels
