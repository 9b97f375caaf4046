#pragma once
/// @file descent_terms.hpp
/// Per-element pieces of the descent rules with state (descent/gsam.hpp, wsam.hpp, looksam.hpp):
/// the copy of the clean gradient taken at the ascent, the inner products of g and g_adv they
/// reduce over, and their elementwise adjusts of the descent gradient. Every reduction sums doubles
/// through Backend::reduce (deterministic, thread-count invariant: backend/summation.hpp).

#include "../backend/layout.hpp"
#include "math.hpp"

namespace flatmin::kernels {

/// dst[i] = g_i / grad_scale, in T (the clean gradient, kept for the descent).
template <class T>
struct copy_gradient_pass {
  T* dst;
  T inv_scale;
  template <class W, class G>
  FLATMIN_HD void operator()(const backend::elem<W, G>& e) const {
    dst[e.i] = static_cast<T>(e.g) * inv_scale;
  }
};

/// Σ c², Σ c·a, Σ a² of the kept clean gradient c and the views' gradient a (g_adv, or the clean g
/// of a cheap step), over every entry, in double.
struct pair_sums {
  double cc = 0;
  double ca = 0;
  double aa = 0;
  FLATMIN_HD friend pair_sums operator+(const pair_sums& x, const pair_sums& y) {
    return {x.cc + y.cc, x.ca + y.ca, x.aa + y.aa};
  }
};
template <class T>
struct pair_sums_pass {
  const T* clean;  ///< null: c = 0 (Σ a² alone)
  T inv_scale;
  template <class W, class G>
  FLATMIN_HD pair_sums operator()(const backend::elem<W, G>& e) const {
    const double a = static_cast<T>(e.g) * inv_scale;
    const double c = clean ? static_cast<double>(clean[e.i]) : 0.0;
    return {c * c, c * a, a * a};
  }
};

/// Σ (a − k·c)² with the difference rounded to T as `residual_adjust` stores it.
template <class T>
struct residual_norm_pass {
  const T* clean;
  T k;
  T inv_scale;
  template <class W, class G>
  FLATMIN_HD double operator()(const backend::elem<W, G>& e) const {
    const double r = static_cast<T>(static_cast<T>(e.g) * inv_scale - k * clean[e.i]);
    return r * r;
  }
};

/// GSAM: g' = a − α (c − k a), k = ⟨c, a⟩ / ‖a‖² (c − k a: the part of c orthogonal to a).
/// `on` false: g' = g (a step the schedule left unperturbed).
/// `clean` holds a slot for every entry on every step (the state's buffer), so c is read
/// unconditionally and `on` selects by integer masks (math.hpp's blend): with a branch, or a
/// select GCC turned back into one, the host loop vectorised only where GCC unswitched it, which
/// it did in one build and not in the next. The same adjustment, bit for bit.
template <class T>
struct gsam_adjust {
  const T* clean;
  T alpha;
  T k;
  bool on;
  template <class E>
  FLATMIN_HD T operator()(T /*w*/, T a, const E& e) const {
    const T c = clean[e.i];
    return blend(on, a - alpha * (c - k * a), a);
  }
};

/// WSAM: g' = c + α (a − c) (coupled), or g' = c (decoupled: the sharpness term is applied to w
/// after the base step, `wsam_decoupled_pass`). `on` false: g' = g. Also descent::mix's (RWP).
/// c read unconditionally and the flags selecting by masks, as in gsam_adjust (bench_passes'
/// opt_rwp_sgd: its descent ran scalar with a branch on `on`; CHANGELOG has the A/B).
template <class T>
struct wsam_adjust {
  const T* clean;
  T alpha;
  bool on;
  bool decoupled;
  template <class E>
  FLATMIN_HD T operator()(T /*w*/, T a, const E& e) const {
    const T c = clean[e.i];
    return blend(on, blend(decoupled, c, c + alpha * (a - c)), a);
  }
};

/// WSAM decoupled: w ← w − lr·α·(a − c), after the base step (the views still hold a = g_adv).
template <class T>
struct wsam_decoupled_pass {
  const T* clean;
  T step;  ///< lr·α
  T inv_scale;
  template <class W, class G>
  FLATMIN_HD void operator()(const backend::elem<W, G>& e) const {
    const T a = static_cast<T>(e.g) * inv_scale;
    e.w = static_cast<W>(static_cast<T>(e.w) - step * (a - clean[e.i]));
  }
};

/// LookSAM, full step: g_v ← a − k c (k = ⟨c, a⟩/‖c‖²: the part of g_adv orthogonal to g) is kept,
/// and g' = a. Cheap step (`full` false): g' = a + s·g_v, s = α‖g‖/‖g_v‖ (s = 0: g' = g).
template <class T>
struct looksam_adjust {
  const T* clean;
  T* gv;
  T k;
  T s;
  bool full;
  template <class E>
  FLATMIN_HD T operator()(T /*w*/, T a, const E& e) const {
    if (full) {
      gv[e.i] = a - k * clean[e.i];
      return a;
    }
    return s != T(0) ? a + s * gv[e.i] : a;
  }
};

}  // namespace flatmin::kernels
