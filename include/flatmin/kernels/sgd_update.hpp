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
  /// scales(): three per slot, rho_scale last); null when every tensor has (1, 1, 1). Set by the
  /// optimizer after prepare().
  const T* scales = nullptr;
  /// True in the copy `for_tensor` makes: lr and weight_decay are that tensor's.
  bool resolved = false;

  /// This update for the elements of one tensor (backend/layout.hpp's `for_tensor`): lr and λ
  /// multiplied by the tensor's multipliers, λ 0 when the tensor has no decay, so that the element
  /// loop depends on no per-tensor bit or table (`resolved` is set unconditionally, so the compiler
  /// knows it in that loop). Bit for bit the same update. Idempotent.
  FLATMIN_HD sgd_update for_tensor(std::uint32_t flags) const {
    sgd_update r = *this;
    T lambda = weight_decay;
    if (scales != nullptr) {
      const T* s = scales + 3 * (flags >> tensor_flags::scale_shift);
      r.lr = lr * s[0];
      lambda = weight_decay * s[1];
    }
    r.weight_decay = (flags & tensor_flags::weight_decay) != 0 ? lambda : T(0);
    r.scales = nullptr;
    r.resolved = true;
    return r;
  }

  /// One element (the Thrust backend resolves the tensor's coefficients here, per element).
  FLATMIN_HD void operator()(T& w, T g, std::size_t i, std::uint32_t flags) const {
    if (resolved) {
      apply(w, g, i);
    } else {
      for_tensor(flags).apply(w, g, i);
    }
  }

  /// The w this update would give for g, its state left as it is (SAMPa's look-ahead point,
  /// perturb/sampa.hpp): the same arithmetic as the update, without the buffer's write.
  FLATMIN_HD T peek(T w, T g, std::size_t i, std::uint32_t flags) const {
    if (resolved) {
      apply<false>(w, g, i);
    } else {
      for_tensor(flags).template apply<false>(w, g, i);
    }
    return w;
  }

 private:
  // No branch on a run-time option inside the element loop: the options pick coefficients (a
  // zero factor leaves a finite value unchanged) and the loop runs the same arithmetic for every
  // element, which the host compiler vectorises (with -ftrapping-math it does not speculate a
  // floating-point operation guarded by a branch). buf[i] is read on the first step too: it is
  // zero-initialised and its cache line is fetched for the write anyway.
  template <bool Commit = true>
  FLATMIN_HD void apply(T& w, T g, std::size_t i) const {
    g = g + weight_decay * w;
    if (buf != nullptr) {
      const T mu = first ? T(0) : momentum;               // b ← g on the first step
      const T damp = T(1) - (first ? T(0) : dampening);  // else μ b + (1 − τ) g (a select, then
                                                         // the subtraction: no guarded FP op)
      const T b = mu * buf[i] + damp * g;
      if constexpr (Commit) buf[i] = b;
      g = (nesterov ? g : T(0)) + (nesterov ? momentum : T(1)) * b;
    }
    w = w - lr * g;
  }
};

}  // namespace flatmin::kernels
