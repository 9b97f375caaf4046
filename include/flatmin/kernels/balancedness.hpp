#pragma once
/// @file balancedness.hpp
/// Pieces of BAR (regularize::balancedness): the per-tensor sums its coefficient needs and the
/// per-element gradient adjustment g ← g + c_t · w (c_t = −c on a pair's x, +c on its y, 0 elsewhere).

#include "../backend/layout.hpp"
#include "math.hpp"

namespace flatmin::kernels {

/// Σw² and Σg² (g scaled by 1/grad_scale), accumulated in double.
struct square_sums {
  double w2 = 0;
  double g2 = 0;
  FLATMIN_HD friend square_sums operator+(const square_sums& a, const square_sums& b) {
    return {a.w2 + b.w2, a.g2 + b.g2};
  }
};

/// Reduction over one tensor: Σw², Σg².
template <class T>
struct square_sums_pass {
  T inv_scale;
  template <class W, class G>
  FLATMIN_HD square_sums operator()(const backend::elem<W, G>& e) const {
    const double w = static_cast<T>(e.w), g = static_cast<T>(e.g) * inv_scale;
    return {w * w, g * g};
  }
};

/// Reduction over every tensor: Σg² over the perturbable tensors (the norm SAM would divide by).
template <class T>
struct perturbable_g2_pass {
  T inv_scale;
  template <class W, class G>
  FLATMIN_HD double operator()(const backend::elem<W, G>& e) const {
    if (!(e.flags & tensor_flags::perturb)) return 0.0;
    const double g = static_cast<T>(e.g) * inv_scale;
    return g * g;
  }
};

/// g' = g + c[tensor] · w.
template <class T>
struct balancedness_adjust {
  const T* coef;
  template <class E>
  FLATMIN_HD T operator()(T w, T g, const E& e) const {
    return g + coef[e.tensor] * w;
  }
};

}  // namespace flatmin::kernels
