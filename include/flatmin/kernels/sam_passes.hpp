#pragma once
/// @file sam_passes.hpp
/// The passes of a SAM step, generic over the policies' per-element pieces:
/// statistics of g (norms, finiteness), the ascent w ← w + ε (saving w), the exact restore, and
/// the fused restore + regularize + base update of the descent.

#include "../backend/layout.hpp"
#include "math.hpp"

namespace flatmin::kernels {

using backend::elem;

/// Reduction over g (scaled by 1/grad_scale): Σg², Σ(norm term)² over the norm's support,
/// Σ(direction)² and count over the perturbed support, and the count of non-finite entries.
template <class T, class Term, class Mask>
struct stats_pass {
  Term term;
  Mask mask;
  T inv_scale;
  bool norm_over_mask;  ///< the norm runs over the masked entries only (else over all perturbable)

  FLATMIN_HD grad_stats operator()(const elem<T>& e) const {
    const T g = e.g * inv_scale;
    grad_stats s;
    s.bad = is_finite(g) ? 0.0 : 1.0;
    s.g2 = double(g) * double(g);
    if (e.flags & tensor_flags::perturb) {
      const bool in = mask(e.i, e.flags);
      if (in || !norm_over_mask) {
        const double n = term.norm(e.w, g, e.i, e.flags);
        s.n2 = n * n;
      }
      if (in) {
        const double d = term.dir(e.w, g, e.i, e.flags);
        s.d2 = d * d;
        s.kept = 1.0;
      }
    }
    return s;
  }
};

/// Reduction over g alone: Σg² and the count of non-finite entries.
template <class T>
struct check_pass {
  T inv_scale;
  FLATMIN_HD grad_stats operator()(const elem<T>& e) const {
    const T g = e.g * inv_scale;
    grad_stats s;
    s.bad = is_finite(g) ? 0.0 : 1.0;
    s.g2 = double(g) * double(g);
    return s;
  }
};

/// saved ← w;  w ← w + scale · dir(w, g)   on perturbed, masked entries.
template <class T, class Term, class Mask>
struct ascend_pass {
  Term term;
  Mask mask;
  T scale;
  T inv_scale;
  T* saved;

  FLATMIN_HD void operator()(const elem<T>& e) const {
    if (!(e.flags & tensor_flags::perturb) || !mask(e.i, e.flags)) return;
    const T w = e.w;
    saved[e.k] = w;
    e.w = w + scale * term.dir(w, e.g * inv_scale, e.i, e.flags);
  }
};

/// w ← saved   on perturbed, masked entries (bit-exact).
template <class T, class Mask>
struct restore_pass {
  Mask mask;
  const T* saved;
  FLATMIN_HD void operator()(const elem<T>& e) const {
    if ((e.flags & tensor_flags::perturb) && mask(e.i, e.flags)) e.w = saved[e.k];
  }
};

/// w ← saved (if `restore` and the entry was perturbed);  g ← adjust(w, g / grad_scale);
/// base(w, g)   — one pass, reading saved w, g_adv and the base state, writing w and the state.
template <class T, class Mask, class Adjust, class Base>
struct descend_pass {
  Mask mask;
  Adjust adjust;
  Base base;
  T inv_scale;
  const T* saved;
  bool restore;

  FLATMIN_HD void operator()(const elem<T>& e) const {
    T w = e.w;
    if (restore && (e.flags & tensor_flags::perturb) && mask(e.i, e.flags)) w = saved[e.k];
    const T g = adjust(w, e.g * inv_scale, e);
    base(w, g, e.i, e.flags);
    e.w = w;
  }
};

}  // namespace flatmin::kernels
