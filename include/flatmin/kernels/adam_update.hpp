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
  /// scales(): three per slot, rho_scale last); null when every tensor has (1, 1, 1). Set by the
  /// optimizer after prepare().
  const T* scales = nullptr;
  /// True in the copy `for_tensor` makes: lr, step_size and weight_decay are that tensor's, and
  /// so are the two coefficients below.
  bool resolved = false;
  /// The decay's coefficients, set by `for_tensor`: λ in the gradient (Adam) or 0, and the
  /// shrink factor 1 − lr λ (AdamW) or 1. Chosen there, once per tensor: a choice between two
  /// floating-point values inside the element loop is control flow GCC may sink into the loop
  /// (it did with 16-bit weights), which keeps the loop from vectorising.
  T coupled = T(0);
  T shrink = T(1);

  /// This update for the elements of one tensor (backend/layout.hpp's `for_tensor`): lr,
  /// step_size and weight_decay multiplied by the tensor's multipliers, and weight_decay 0 when
  /// the tensor has no decay, so that the element loop depends on no per-tensor bit or table and
  /// vectorises (`resolved` is set unconditionally, so the compiler knows it in that loop). Bit
  /// for bit the same update: a zero λ gives coupled = 0 and shrink = 1 exactly. Idempotent.
  FLATMIN_HD adam_update for_tensor(std::uint32_t flags) const {
    adam_update r = *this;
    T lambda = weight_decay;
    if (scales != nullptr) {
      const T* s = scales + 3 * (flags >> tensor_flags::scale_shift);
      r.lr = lr * s[0];
      r.step_size = step_size * s[0];
      lambda = weight_decay * s[1];
    }
    r.weight_decay = (flags & tensor_flags::weight_decay) != 0 ? lambda : T(0);
    r.coupled = decoupled ? T(0) : r.weight_decay;
    r.shrink = decoupled ? T(1) - r.lr * r.weight_decay : T(1);
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

  /// The w this update would give for g, m and v left as they are (SAMPa's look-ahead point,
  /// perturb/sampa.hpp): the same arithmetic as the update, without the moments' writes.
  FLATMIN_HD T peek(T w, T g, std::size_t i, std::uint32_t flags) const {
    if (resolved) {
      apply<false>(w, g, i);
    } else {
      for_tensor(flags).template apply<false>(w, g, i);
    }
    return w;
  }

 private:
  // Weight decay by coefficients (0 and 1 leave a finite value unchanged) rather than branches,
  // so that the host loop runs the same arithmetic for every element and vectorises. Only on a
  // copy `for_tensor` made (the coefficients are its).
  template <bool Commit = true>
  FLATMIN_HD void apply(T& w, T g, std::size_t i) const {
    g = g + coupled * w;
    w = w * shrink;
    const T mi = beta1 * m[i] + (T(1) - beta1) * g;
    const T vi = beta2 * v[i] + (T(1) - beta2) * g * g;
    if constexpr (Commit) {
      m[i] = mi;
      v[i] = vi;
    }
    w = w - step_size * mi / (fm_sqrt(vi) / bc2_sqrt + eps);
  }
};

}  // namespace flatmin::kernels
