#pragma once
/// @file sam_passes.hpp
/// The passes of a SAM step, generic over the policies' per-element pieces:
/// statistics of g (norms, finiteness), the ascent w ← w + ε (saving w), the exact restore, and
/// the fused restore + regularize + base update of the descent.

#include "../backend/layout.hpp"
#include "math.hpp"

namespace flatmin::kernels {

using backend::elem;

/// Σ (s·g)² over `len` consecutive gradients in exactly the order of `backend::eigen`'s element
/// reduction (and so of `backend::thrust`'s): four strands, element j in strand j mod 4 of the
/// full quads, the tail in strand 0, each summed in double in order, then (a0 + a1) + (a2 + a3).
/// Written as straight-line quads so that the host compiler vectorises the four strands as
/// lanes (no reassociation: each lane is still summed in order), which makes it bitwise equal to
/// summing `check_pass` element by element.
template <class T>
inline double sum_squares_strands(const T* g, std::uint32_t len, T s) {
  double a[4] = {0.0, 0.0, 0.0, 0.0};
  std::uint32_t j = 0;
  for (; j + 4 <= len; j += 4)
    for (std::uint32_t r = 0; r < 4; ++r) {
      const double x = double(g[j + r] * s);
      a[r] = a[r] + x * x;
    }
  for (; j < len; ++j) {
    const double x = double(g[j] * s);
    a[0] = a[0] + x * x;
  }
  return (a[0] + a[1]) + (a[2] + a[3]);
}

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

  /// Host fast path over one segment (used by backend::eigen): the same sums in the same order
  /// as element by element, vectorised. A non-finite entry makes Σg² non-finite (squares are
  /// ≥ 0), and only then are the entries counted.
  grad_stats segment(T* /*w*/, T* g, std::uint32_t len, std::size_t /*index*/, std::uint32_t /*flags*/) const {
    grad_stats s;
    s.g2 = sum_squares_strands(g, len, inv_scale);
    if (!is_finite(s.g2))
      for (std::uint32_t j = 0; j < len; ++j) s.bad += is_finite(g[j] * inv_scale) ? 0.0 : 1.0;
    return s;
  }

};


/// Reduction over g (scaled by 1/grad_scale): Σg², Σ(norm term)² over the norm's support,
/// Σ(direction)² and count over the perturbed support, and the count of non-finite entries.
template <class T, class Term, class Mask>
struct stats_pass {
  Term term;
  Mask mask;
  T inv_scale;
  bool norm_over_mask;  ///< the norm runs over the masked entries only (else over all perturbable)

  static constexpr bool gradient_only = requires { requires Term::is_gradient && Mask::all; };

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

  /// Host fast path over one segment (used by backend::eigen when present): SAM with every entry
  /// masked in, where Σn² = Σd² = Σg² (the same terms in the same order) and kept = len on
  /// perturbed tensors, so one vectorised sum gives all three, bitwise equal to the element path.
  /// Other terms and masks have no segment form and are summed element by element.
  grad_stats segment(T* w, T* g, std::uint32_t len, std::size_t index, std::uint32_t flags) const
    requires(gradient_only)
  {
    grad_stats s = check_pass<T>{inv_scale}.segment(w, g, len, index, flags);
    if (flags & tensor_flags::perturb) {
      s.n2 = s.g2;
      s.d2 = s.g2;
      s.kept = double(len);
    }
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
/// `Restore`: −1 reads the `restore` member at run time; 0 / 1 fix it at compile time, which the
/// optimizer does (a run-time flag guarding the read of `saved` is control flow that keeps the
/// host loop from vectorising once the body is too large for the compiler to unswitch).
template <class T, class Mask, class Adjust, class Base, int Restore = -1>
struct descend_pass {
  Mask mask;
  Adjust adjust;
  Base base;
  T inv_scale;
  const T* saved;
  bool restore;  ///< needs `saved` to hold a slot for every element of the range (dense storage)

  FLATMIN_HD void operator()(const elem<T>& e) const {
    T w = e.w;
    if (Restore < 0 ? restore : Restore == 1) {
      // read unconditionally and select, so that the host loop vectorises (see `restore`)
      const T s = saved[e.k];
      w = ((e.flags & tensor_flags::perturb) && mask(e.i, e.flags)) ? s : w;
    }
    const T g = adjust(w, e.g * inv_scale, e);
    base(w, g, e.i, e.flags);
    e.w = w;
  }
};

}  // namespace flatmin::kernels
