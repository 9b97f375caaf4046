#pragma once
/// @file sampa.hpp
/// SAMPa's per-element pieces (perturb/sampa.hpp): the ascent's term, which reads the kept
/// gradient at the last look-ahead point instead of the gradient in the views, and the pass that
/// moves the weights to the next look-ahead point.

#include <cstddef>
#include <cstdint>

#include "../backend/layout.hpp"
#include "../config.hpp"
#include "../params/tensor_view.hpp"

namespace flatmin::kernels {

/// norm = dir = g_y[i], the kept ∇L(y_t) (0 before the first applied step: v null). Reads no
/// gradient (`reads_gradient == false`): ε = ρ g_y/(‖g_y‖ + ξ) is set before any backward of the
/// step; `reads_buffer`: the host sums Σg_y² in one vectorised pass (reduce_forms.hpp).
template <class T>
struct sampa_term {
  const T* v;
  static constexpr bool reads_gradient = false;
  static constexpr bool reads_buffer = true;
  FLATMIN_HD T norm(T /*w*/, T /*g*/, std::size_t i, std::uint32_t /*flags*/) const {
    return v ? v[i] : T(0);
  }
  FLATMIN_HD T dir(T w, T g, std::size_t i, std::uint32_t flags) const { return norm(w, g, i, flags); }
};

/// w ← Base.peek(x, g_y): the weights the base optimizer's step on g_y would give from x, its state
/// untouched (kernels/sgd_update.hpp, adam_update.hpp `peek`), on the perturbed tensors; x is the
/// saved w (or the master copy), the views hold x̃ = x + ε now. The point is rounded once to W
/// (nearest; the master copy is not written).
template <class T, class Update, class W, class Store>
struct lookahead_pass {
  Update update;
  const T* gy;
  const W* saved;
  Store store{};

  FLATMIN_HD lookahead_pass for_tensor(std::uint32_t flags) const {
    lookahead_pass r = *this;
    r.update = backend::for_tensor(update, flags, 0u);
    return r;
  }

  template <class G>
  FLATMIN_HD void operator()(const backend::elem<W, G>& e) const {
    if (!(e.flags & tensor_flags::perturb)) return;  // per tensor: predictable
    const T x = Store::master ? store.read(e) : static_cast<T>(saved[e.k]);
    const T y = update.peek(x, gy[e.i], e.i, e.flags);
    e.w = static_cast<W>(y);
  }
};

}  // namespace flatmin::kernels
