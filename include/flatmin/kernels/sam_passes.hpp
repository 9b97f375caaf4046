#pragma once
/// @file sam_passes.hpp
/// The passes of a SAM step, generic over the policies' per-element pieces:
/// statistics of g (norms, finiteness), the ascent w ← w + ε (saving w), the exact restore, and
/// the fused restore + regularize + base update of the descent.

#include "../backend/layout.hpp"
#include "math.hpp"

namespace flatmin::kernels {

using backend::elem;

/// Host reductions (`segment` members below) add partial sums in T over blocks of
/// `reduce_block` elements into double. A block's T partial sum of 64 terms, spread over vector
/// lanes, is within a few tens of ulp of T of the exact sum (in practice a few ulp); the blocks
/// and segments are then added in double in a fixed order, so the result is the same for any
/// thread count.
inline constexpr std::uint32_t reduce_block = 64;

/// Σ (s·g)² over one block of `reduce_block` elements, in T. Non-finite entries need no count
/// of their own: they make the sum non-finite (squares are ≥ 0, so inf − inf cannot happen), and
/// the callers then redo the block element by element. With GCC / Clang on the host: four
/// independent 16-byte vector accumulators (one would make the loop wait on the latency of each
/// add), added in a fixed order, so the result does not depend on -march either; elsewhere an
/// `omp simd` reduction.
template <class T>
inline T sum_squares_block(const T* g, T s) {
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
  typedef T V __attribute__((vector_size(16)));
  constexpr std::uint32_t w = 16 / sizeof(T);
  static_assert(reduce_block % (4 * w) == 0);
  const V sv = V{} + s;
  V a0{}, a1{}, a2{}, a3{};
  for (std::uint32_t r = 0; r < reduce_block; r += 4 * w) {
    V x0, x1, x2, x3;
    __builtin_memcpy(&x0, g + r, sizeof(V));
    __builtin_memcpy(&x1, g + r + w, sizeof(V));
    __builtin_memcpy(&x2, g + r + 2 * w, sizeof(V));
    __builtin_memcpy(&x3, g + r + 3 * w, sizeof(V));
    x0 *= sv;
    x1 *= sv;
    x2 *= sv;
    x3 *= sv;
    a0 += x0 * x0;
    a1 += x1 * x1;
    a2 += x2 * x2;
    a3 += x3 * x3;
  }
  const V at = (a0 + a1) + (a2 + a3);
  T sum = T(0);
  for (std::uint32_t l = 0; l < w; ++l) sum += at[l];
  return sum;
#else
  T g2 = 0;
#if defined(_OPENMP) || defined(FLATMIN_OPENMP_SIMD)
#pragma omp simd reduction(+ : g2)
#endif
  for (std::uint32_t q = 0; q < reduce_block; ++q) {
    const T x = g[q] * s;
    g2 += x * x;
  }
  return g2;
#endif
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

  /// Host fast path over one segment, as `stats_pass::segment`.
  grad_stats segment(T* /*w*/, T* g, std::uint32_t len, std::size_t /*index*/, std::uint32_t /*flags*/) const {
    grad_stats total;
    std::uint32_t j = 0;
    for (; j + reduce_block <= len; j += reduce_block) {
      grad_stats b;
      b.g2 = double(sum_squares_block(g + j, inv_scale));
      if (!is_finite(b.g2)) {  // a non-finite entry, or squares that overflow T
        b = grad_stats{};
        for (std::uint32_t q = j; q < j + reduce_block; ++q) b = b + block_element(g[q]);
      }
      total = total + b;
    }
    for (; j < len; ++j) total = total + block_element(g[j]);
    return total;
  }

 private:
  grad_stats block_element(T gq) const {
    const T x = gq * inv_scale;
    grad_stats s;
    s.bad = is_finite(x) ? 0.0 : 1.0;
    s.g2 = double(x) * double(x);
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

  /// The same sums over `len` consecutive elements of one tensor (global index `index`), for host
  /// backends: partial sums in T over blocks of `reduce_block` elements, added into double in a
  /// fixed order (so thread-count invariant), no branch per element. A block whose partials are not
  /// finite (a non-finite gradient, or squares that overflow T) is summed again element by element
  /// in double, so that the count of non-finite entries and the corner cases are exactly what
  /// operator() gives.
  grad_stats segment(T* w, T* g, std::uint32_t len, std::size_t index, std::uint32_t flags) const {
    if constexpr (gradient_only) {
      // SAM with every entry masked in: Σn² = Σd² = Σg² and kept = len on perturbed tensors,
      // the same sums in the same order, so one reduction gives all three
      grad_stats s = check_pass<T>{inv_scale}.segment(w, g, len, index, flags);
      if (flags & tensor_flags::perturb) {
        s.n2 = s.g2;
        s.d2 = s.g2;
        s.kept = double(len);
      }
      return s;
    }
    grad_stats total;
    const T pert = (flags & tensor_flags::perturb) ? T(1) : T(0);
    std::uint32_t j = 0;
    for (; j + reduce_block <= len; j += reduce_block) {
      T g2 = 0, n2 = 0, d2 = 0, kept = 0;
      // simd reduction: the compiler may reassociate these T partial sums into vector lanes
#if defined(_OPENMP) || defined(FLATMIN_OPENMP_SIMD)
#pragma omp simd reduction(+ : g2, n2, d2, kept)
#endif
      for (std::uint32_t q = j; q < j + reduce_block; ++q) {
        const std::size_t i = index + q;
        const T x = g[q] * inv_scale;
        const T in = pert * T(mask(i, flags) ? 1 : 0);
        const T norm_in = norm_over_mask ? in : pert;
        const T n = term.norm(w[q], x, i, flags), d = term.dir(w[q], x, i, flags);
        g2 += x * x;
        n2 += norm_in * (n * n);
        d2 += in * (d * d);
        kept += in;
      }
      grad_stats b{double(g2), double(n2), double(d2), 0.0, double(kept)};
      // a non-finite entry makes g2 non-finite; redo such blocks (and overflowing ones) exactly
      if (!(is_finite(b.g2) && is_finite(b.n2) && is_finite(b.d2))) {
        b = grad_stats{};
        for (std::uint32_t q = j; q < j + reduce_block; ++q)
          b = b + (*this)(elem<T>{w[q], g[q], index + q, index + q, 0, flags});
      }
      total = total + b;
    }
    for (; j < len; ++j) total = total + (*this)(elem<T>{w[j], g[j], index + j, index + j, 0, flags});
    return total;
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
