#pragma once
/// @file sam_passes.hpp
/// The passes of a SAM step, generic over the policies' per-element pieces:
/// statistics of g (norms, finiteness), the ascent w ← w + ε (saving w), the exact restore, and
/// the fused restore + regularize + base update of the descent.

#include <bit>
#include <concepts>

#include "../backend/layout.hpp"
#include "math.hpp"

namespace flatmin::kernels {

using backend::elem;

/// Σ (s·g)² over each of M runs of consecutive gradients (`g[m]`, `len[m]`), each in exactly the
/// order of every backend's element reduction (`backend::reduction_strands` strands, layout.hpp).
/// Written as straight-line blocks of K so that the host compiler vectorises the strands as lanes
/// (no reassociation: each lane is still summed in order), which makes each result bitwise equal
/// to summing `check_pass` element by element. The M runs are read side by side (M streams keep a
/// core's hardware prefetchers busier than one); each run's own order does not depend on M.
template <class T, std::uint32_t M>
inline void sum_squares_strands(const T* const (&g)[M], const std::uint32_t (&len)[M], T s,
                                double (&out)[M]) {
  constexpr std::uint32_t K = backend::reduction_strands;
  const auto sq = [s](T x) {
    const double y = double(x * s);
    return y * y;
  };
  double a[M][K] = {};
  std::uint32_t common = len[0];
  for (std::uint32_t m = 1; m < M; ++m) common = len[m] < common ? len[m] : common;
  common -= common % K;
  for (std::uint32_t j = 0; j < common; j += K)
    for (std::uint32_t m = 0; m < M; ++m)
      for (std::uint32_t r = 0; r < K; ++r) a[m][r] = a[m][r] + sq(g[m][j + r]);
  for (std::uint32_t m = 0; m < M; ++m) {  // what is left of each run, continuing its strands
    std::uint32_t j = common;
    for (; j + K <= len[m]; j += K)
      for (std::uint32_t r = 0; r < K; ++r) a[m][r] = a[m][r] + sq(g[m][j + r]);
    for (; j < len[m]; ++j) a[m][0] = a[m][0] + sq(g[m][j]);
    out[m] = backend::combine_strands<K>(a[m]);
  }
}

/// All-ones lanes for the set bits of a nibble: lane r of entry n is ~0 when bit r of n is set
/// (U: 32-bit lanes for float, 64-bit for double).
template <class U>
struct nibble_lanes {
  U lane[16][4];
};
template <class U>
inline constexpr nibble_lanes<U> make_nibble_lanes() {
  nibble_lanes<U> t{};
  for (unsigned n = 0; n < 16; ++n)
    for (unsigned r = 0; r < 4; ++r) t.lane[n][r] = ((n >> r) & 1u) ? ~U{0} : U{0};
  return t;
}
template <class U>
inline constexpr nibble_lanes<U> nibble_table = make_nibble_lanes<U>();

/// A mask view that hands out the bits of eight consecutive entries at once (mask::detail::bit_view
/// with element units), which the host segment forms below read instead of one lookup per entry.
template <class Mask>
concept element_bit_mask = requires(const Mask& m) {
  { m.element_units() } -> std::same_as<bool>;
  { m.bits8(std::size_t{}) } -> std::same_as<std::uint32_t>;
};

/// body(j, lane) for j in [0, len) of a run starting at global index `index` of a mask-eligible
/// tensor: lane is entry j's mask as an all-ones / zero integer of T's width, eight entries per
/// `bits8` and their lanes from `nibble_table`, so that the body's blends vectorise.
template <class T, class Mask, class Body>
inline void for_each_mask_lane(std::uint32_t len, std::uint64_t index, std::uint32_t flags, const Mask& mask,
                               const Body& body) {
  using U = lane_t<T>;
  std::uint32_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const std::uint32_t b = mask.bits8(index + j);
    const U* lo = nibble_table<U>.lane[b & 15u];
    const U* hi = nibble_table<U>.lane[b >> 4];
    for (std::uint32_t r = 0; r < 4; ++r) body(j + r, lo[r]);
    for (std::uint32_t r = 0; r < 4; ++r) body(j + 4 + r, hi[r]);
  }
  for (; j < len; ++j) body(j, U(0) - static_cast<U>(mask(index + j, flags)));
}

/// Σ (s·g)² over the entries of one run whose mask bit is set, and their count, in the order of
/// every backend's element reduction (strands of layout.hpp; an entry that is out adds +0 there,
/// which is what the AND with its bit's lane adds here). `bits8(j)` gives the bits of entries
/// j … j + 7 of the run, `bit(j)` one entry's.
template <class T, class Bits8, class Bit>
inline double masked_sum_squares_strands(const T* g, std::uint32_t len, T s, const Bits8& bits8,
                                         const Bit& bit, double& kept) {
  constexpr std::uint32_t K = backend::reduction_strands;
  static_assert(K == 8, "eight strands: one byte of mask bits per block");
  const auto sq = [s](T x) {
    const double y = double(x * s);
    return y * y;
  };
  double a[K] = {};
  std::uint32_t count = 0, j = 0;
  for (; j + K <= len; j += K) {
    const std::uint32_t b = bits8(j);
    count += static_cast<std::uint32_t>(std::popcount(b));
    const std::uint64_t* lo = nibble_table<std::uint64_t>.lane[b & 15u];
    const std::uint64_t* hi = nibble_table<std::uint64_t>.lane[b >> 4];
    for (std::uint32_t r = 0; r < 4; ++r) a[r] = a[r] + blend_lanes<double>(lo[r], sq(g[j + r]), 0.0);
    for (std::uint32_t r = 0; r < 4; ++r)
      a[4 + r] = a[4 + r] + blend_lanes<double>(hi[r], sq(g[j + 4 + r]), 0.0);
  }
  for (; j < len; ++j)
    if (bit(j)) {
      a[0] = a[0] + sq(g[j]);
      ++count;
    }
  kept = double(count);
  return backend::combine_strands<K>(a);
}

/// Whether a mask view is 1 everywhere at compile time (mask::dense's `all`).
template <class Mask>
inline constexpr bool mask_is_all = requires {
  requires Mask::all;
};

/// Reduction over g alone: Σg² and the count of non-finite entries.
template <class T>
struct check_pass {
  T inv_scale;
  template <class W, class G>
  FLATMIN_HD grad_stats operator()(const elem<W, G>& e) const {
    const T g = static_cast<T>(e.g) * inv_scale;
    grad_stats s;
    s.bad = is_finite(g) ? 0.0 : 1.0;
    s.g2 = double(g) * double(g);
    return s;
  }

  /// Host fast path over a group of M segments (used by backend::eigen): the same sums in the
  /// same order as element by element, vectorised. A non-finite entry makes Σg² non-finite
  /// (squares are ≥ 0), and only then are the entries counted.
  template <std::uint32_t M>
  void segments(const backend::segment_view<T> (&v)[M], grad_stats (&out)[M]) const {
    const T* g[M];
    std::uint32_t len[M];
    double g2[M];
    for (std::uint32_t m = 0; m < M; ++m) {
      g[m] = v[m].g;
      len[m] = v[m].len;
    }
    sum_squares_strands(g, len, inv_scale, g2);
    for (std::uint32_t m = 0; m < M; ++m) {
      out[m] = grad_stats{};
      out[m].g2 = g2[m];
      if (!is_finite(g2[m]))
        for (std::uint32_t j = 0; j < len[m]; ++j) out[m].bad += is_finite(g[m][j] * inv_scale) ? 0.0 : 1.0;
    }
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

  static constexpr bool gradient_only = requires { requires Term::is_gradient; }
  &&mask_is_all<Mask>;
  /// SAM's term under a bit mask that can hand out eight bits at a time (mask::detail::bit_view).
  static constexpr bool gradient_bits = requires { requires Term::is_gradient; }
  &&element_bit_mask<Mask>;

  template <class W, class G>
  FLATMIN_HD grad_stats operator()(const elem<W, G>& e) const {
    const T g = static_cast<T>(e.g) * inv_scale;
    grad_stats s;
    s.bad = is_finite(g) ? 0.0 : 1.0;
    s.g2 = double(g) * double(g);
    if (e.flags & tensor_flags::perturb) {
      const bool in = mask(e.i, e.flags);
      if (in || !norm_over_mask) {
        const double n = term.norm(static_cast<T>(e.w), g, e.i, e.flags);
        s.n2 = n * n;
      }
      if (in) {
        const double d = term.dir(static_cast<T>(e.w), g, e.i, e.flags);
        s.d2 = d * d;
        s.kept = 1.0;
      }
    }
    return s;
  }

  /// Host fast path over a group of segments (used by backend::eigen when present): SAM with
  /// every entry masked in, where Σn² = Σd² = Σg² (the same terms in the same order) and kept =
  /// len on perturbed tensors, so one vectorised sum gives all three, bitwise equal to the element
  /// path. Other terms and masks have no group form and are summed element by element.
  template <std::uint32_t M>
  void segments(const backend::segment_view<T> (&v)[M], grad_stats (&out)[M]) const requires(gradient_only) {
    check_pass<T>{inv_scale}.segments(v, out);
    for (std::uint32_t m = 0; m < M; ++m)
      if (v[m].flags & tensor_flags::perturb) {
        out[m].n2 = out[m].g2;
        out[m].d2 = out[m].g2;
        out[m].kept = double(v[m].len);
      }
  }

  /// Host fast path for SAM's term under an element bit mask (FSAM, SSAM with element units):
  /// Σg² and the non-finite count from `check_pass`, Σd² and the kept count from the masked
  /// strands above with eight mask bits per lookup, bitwise equal to the element path (which
  /// looked a unit and a bit up per entry: bench_masks `ascend_cancel`, bench/RESULTS.md).
  template <std::uint32_t M>
  void segments(const backend::segment_view<T> (&v)[M], grad_stats (&out)[M]) const requires(gradient_bits) {
    check_pass<T>{inv_scale}.segments(v, out);
    for (std::uint32_t m = 0; m < M; ++m) {
      if (!(v[m].flags & tensor_flags::perturb)) continue;
      if (!(v[m].flags & tensor_flags::mask_eligible)) {  // always perturbed: the mask is 1 here
        out[m].n2 = out[m].g2;
        out[m].d2 = out[m].g2;
        out[m].kept = double(v[m].len);
        continue;
      }
      const std::uint64_t base = v[m].index;
      const std::uint32_t flags = v[m].flags, len = v[m].len;
      if (!mask.element_units()) {  // not eight bits per eight entries: entry by entry, same order
        constexpr std::uint32_t K = backend::reduction_strands;
        grad_stats a[K]{};
        std::uint32_t j = 0;
        for (; j + K <= len; j += K)
          for (std::uint32_t r = 0; r < K; ++r)
            a[r] = a[r] + (*this)(elem<T>{v[m].w[j + r], v[m].g[j + r], base + j + r, 0, 0, flags});
        for (; j < len; ++j) a[0] = a[0] + (*this)(elem<T>{v[m].w[j], v[m].g[j], base + j, 0, 0, flags});
        out[m] = backend::combine_strands<K>(a);
        continue;
      }
      double kept = 0;
      const double d2 = masked_sum_squares_strands(
          v[m].g, len, inv_scale, [&](std::uint32_t j) { return mask.bits8(base + j); },
          [&](std::uint32_t j) { return mask(base + j, flags); }, kept);
      out[m].d2 = d2;
      out[m].kept = kept;
      out[m].n2 = norm_over_mask ? d2 : out[m].g2;
    }
  }
};

/// What a segment form under an element bit mask leaves to the element path: a segment of an
/// unperturbed tensor (nothing to do), of a tensor the mask does not cover, or of units that are
/// not elements (entry by entry through `f`). True when it handled the segment.
template <class T, class Mask, class F>
inline bool by_elements(const F& f, const Mask& mask, const backend::segment_view<T>& v, std::uint64_t slot) {
  if (!(v.flags & tensor_flags::perturb)) return true;
  if ((v.flags & tensor_flags::mask_eligible) && mask.element_units()) return false;
  for (std::uint32_t j = 0; j < v.len; ++j) f(elem<T>{v.w[j], v.g[j], v.index + j, slot + j, 0, v.flags});
  return true;
}

/// saved ← w;  w ← w + scale · dir(w, g)   on perturbed, masked entries. Computed in T, rounded
/// once to the weight type W; the saved weights are W (an exact copy).
template <class T, class Term, class Mask, class W = T>
struct ascend_pass {
  Term term;
  Mask mask;
  T scale;
  T inv_scale;
  W* saved;

  /// Without a branch on the mask inside a perturbed tensor: w is saved for every entry the range
  /// holds (each has a slot: dense storage, or a compact range of masked-in entries; the restore
  /// selects by the same mask) and the move is blended in by the mask bit.
  template <class G>
  FLATMIN_HD void operator()(const elem<W, G>& e) const {
    if (!(e.flags & tensor_flags::perturb)) return;  // per tensor: predictable
    const W x = e.w;
    saved[e.k] = x;
    const T w = static_cast<T>(x);
    const T moved = w + scale * term.dir(w, static_cast<T>(e.g) * inv_scale, e.i, e.flags);
    e.w = static_cast<W>(mask_is_all<Mask> ? moved : blend(mask(e.i, e.flags), moved, w));
  }

  /// Host segment form under an element bit mask (backend::eigen::for_each): the same values as
  /// the element path, eight mask bits per lookup. `slot`: the saved slot of the first entry.
  /// Only where weights, gradients and T are one type (the backend passes segment_view<W, G>).
  void segment(const backend::segment_view<T>& v, std::uint64_t slot) const
      requires(element_bit_mask<Mask> && std::same_as<W, T>) {
    if (by_elements(*this, mask, v, slot)) return;
    T* FLATMIN_RESTRICT w = v.w;
    const T* FLATMIN_RESTRICT g = v.g;
    T* FLATMIN_RESTRICT sv = saved + slot;
    for_each_mask_lane<T>(v.len, v.index, v.flags, mask, [&](std::uint32_t j, lane_t<T> m) {
      const T x = w[j];
      sv[j] = x;
      w[j] = blend_lanes<T>(m, x + scale * term.dir(x, g[j] * inv_scale, v.index + j, v.flags), x);
    });
  }
};

/// w ← saved   on perturbed, masked entries (bit-exact). T: the weight type (no arithmetic).
template <class T, class Mask>
struct restore_pass {
  Mask mask;
  const T* saved;
  template <class G>
  FLATMIN_HD void operator()(const elem<T, G>& e) const {
    if (!(e.flags & tensor_flags::perturb)) return;  // per tensor: predictable
    e.w = mask_is_all<Mask> ? saved[e.k] : blend(mask(e.i, e.flags), saved[e.k], e.w);
  }

  /// Host segment form under an element bit mask, as ascend_pass's.
  void segment(const backend::segment_view<T>& v, std::uint64_t slot) const requires element_bit_mask<Mask> {
    if (by_elements(*this, mask, v, slot)) return;
    T* FLATMIN_RESTRICT w = v.w;
    const T* FLATMIN_RESTRICT sv = saved + slot;
    for_each_mask_lane<T>(v.len, v.index, v.flags, mask,
                          [&](std::uint32_t j, lane_t<T> m) { w[j] = blend_lanes<T>(m, sv[j], w[j]); });
  }
};

/// w ← saved (if `restore` and the entry was perturbed);  g ← adjust(w, g / grad_scale);
/// base(w, g)   — one pass, reading saved w, g_adv and the base state, writing w and the state.
/// `Restore`: −1 reads the `restore` member at run time; 0 / 1 fix it at compile time, which the
/// optimizer does (a run-time flag guarding the read of `saved` is control flow that keeps the
/// host loop from vectorising once the body is too large for the compiler to unswitch).
/// Computed in T; w is rounded once to the weight type W when written.
template <class T, class Mask, class Adjust, class Base, int Restore = -1, class W = T>
struct descend_pass {
  Mask mask;
  Adjust adjust;
  Base base;
  T inv_scale;
  const W* saved;
  bool restore;  ///< needs `saved` to hold a slot for every element of the range (dense storage)

  template <class G>
  FLATMIN_HD void operator()(const elem<W, G>& e) const {
    T w = static_cast<T>(e.w);
    if (Restore < 0 ? restore : Restore == 1) {
      // read unconditionally and select, so that the host loop vectorises (see `restore`)
      const T s = static_cast<T>(saved[e.k]);
      w = ((e.flags & tensor_flags::perturb) && mask(e.i, e.flags)) ? s : w;
    }
    const T g = adjust(w, static_cast<T>(e.g) * inv_scale, e);
    base(w, g, e.i, e.flags);
    e.w = static_cast<W>(w);
  }
};

}  // namespace flatmin::kernels
