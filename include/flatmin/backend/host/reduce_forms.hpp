#pragma once
/// @file reduce_forms.hpp
/// backend::eigen's group forms of the statistics reductions (kernels/sam_passes.hpp): the sums of
/// a group of M segments read side by side and vectorised, in the order of summation.hpp, so that
/// each segment's result is bitwise equal to the element path's (backend::thrust's). The forms
/// read the gradients (and the optimizer's buffers), never the weights, so they serve any weight
/// and gradient types (a 16-bit gradient is converted to the compute type T as the element path
/// does). A pass without a form here is summed element by element.

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../../kernels/sam_passes.hpp"
#include "../../kernels/unit_scores.hpp"
#include "../summation.hpp"
#include "mask_lanes.hpp"
#include "strands.hpp"

namespace flatmin::backend::host {

/// Where a group form writes segment m's result: `at[m·stride]` (backend::eigen's partials of
/// segments that are `stride` apart).
template <class R>
struct group_out {
  R* at;
  std::ptrdiff_t stride;
  FLATMIN_SUM_INLINE R& operator[](std::uint32_t m) const { return at[std::ptrdiff_t(m) * stride]; }
};

/// `group_form<F>::run(f, views, out)` sums pass f over each of M segments into out[0 … M−1] (every
/// field written: backend::eigen passes its partials, not zeroed); none by default.
template <class F>
struct group_form {};

/// Whether pass F has a group form with results R over segments of weights W and gradients G
/// (what backend::eigen::reduce asks).
template <class F, class R, class W, class G, std::uint32_t M>
concept has_group_form = requires(const F& f, const segment_view<W, G> (&v)[M], group_out<R> out) {
  group_form<std::remove_cvref_t<F>>::run(f, v, out);
};

/// Whether F's group form reads its M segments side by side (the sums of squares; backend::eigen
/// then takes them a quarter of a thread's share apart) rather than one after another (a form
/// with `static constexpr bool one_at_a_time = true`: adjacent segments, one stream per array).
template <class F>
inline constexpr bool reads_side_by_side =
    !requires { requires group_form<std::remove_cvref_t<F>>::one_at_a_time; };

/// Σg² and the non-finite count. A non-finite entry makes Σg² non-finite (squares are ≥ 0), and
/// only then are the entries counted.
template <class T>
struct group_form<kernels::check_pass<T>> {
  template <class W, class G, std::uint32_t M>
  static FLATMIN_SUM_INLINE void run(const kernels::check_pass<T>& p, const segment_view<W, G> (&v)[M],
                                     group_out<kernels::grad_stats> out) {
    const G* g[M];
    std::uint32_t len[M];
    double g2[M];
    for (std::uint32_t m = 0; m < M; ++m) {
      g[m] = v[m].g;
      len[m] = v[m].len;
    }
    sum_squares_strands(g, len, p.inv_scale, g2);
    for (std::uint32_t m = 0; m < M; ++m) {
      out[m] = kernels::grad_stats{};
      out[m].g2 = g2[m];
      if (!kernels::is_finite(g2[m]))
        for (std::uint32_t j = 0; j < len[m]; ++j)
          out[m].bad += kernels::is_finite(static_cast<T>(g[m][j]) * p.inv_scale) ? 0.0 : 1.0;
    }
  }
};

/// The same sums, and the group's scaled gradients written out (check_copy_pass): the copy runs
/// after the sums, segment by segment, while the group's gradients are still in cache.
template <class T>
struct group_form<kernels::check_copy_pass<T>> {
  template <class W, class G, std::uint32_t M>
  static FLATMIN_SUM_INLINE void run(const kernels::check_copy_pass<T>& p, const segment_view<W, G> (&v)[M],
                                     group_out<kernels::grad_stats> out) {
    group_form<kernels::check_pass<T>>::run(kernels::check_pass<T>{p.inv_scale}, v, out);
    for (std::uint32_t m = 0; m < M; ++m) {
      const G* g = v[m].g;
      T* to = p.out + v[m].index;
      for (std::uint32_t j = 0; j < v[m].len; ++j) to[j] = static_cast<T>(g[j]) * p.inv_scale;
    }
  }
};

/// SAM's statistics where the mask is all ones (Σn² = Σd² = Σg², kept = len on perturbed tensors:
/// one vectorised sum gives all three), or an element bit mask (Σd² and the kept count from the
/// masked strands, eight mask bits per lookup: the element path looked a unit and a bit up per
/// entry, bench_masks `ascend_cancel`, bench/RESULTS.md). Other terms and masks have no form.
template <class T, class Term, class Mask>
  requires(kernels::stats_pass<T, Term, Mask>::sam_term &&
           (kernels::mask_is_all<Mask> || element_bit_mask<Mask>))
struct group_form<kernels::stats_pass<T, Term, Mask>> {
  using pass = kernels::stats_pass<T, Term, Mask>;

  template <class W, class G, std::uint32_t M>
  static FLATMIN_SUM_INLINE void run(const pass& p, const segment_view<W, G> (&v)[M],
                                     group_out<kernels::grad_stats> out) {
    if constexpr (!kernels::mask_is_all<Mask>) {
      if (p.mask.element_units() && every_segment_masked(v)) {  // FSAM's usual group: one sweep each
        for (std::uint32_t m = 0; m < M; ++m) {
          const std::uint64_t base = v[m].index;
          const std::uint32_t flags = v[m].flags, len = v[m].len;
          const G* g = v[m].g;
          double kept = 0, g2 = 0;
          const double d2 = masked_sum_squares_strands(
              g, len, p.inv_scale, [&](std::uint32_t j) { return p.mask.bits8(base + j); },
              [&](std::uint32_t j) { return p.mask(base + j, flags); }, kept, g2);
          out[m] = kernels::grad_stats{};
          out[m].g2 = g2;
          out[m].d2 = d2;
          out[m].kept = kept;
          out[m].n2 = p.norm_over_mask ? d2 : g2;
          if (!kernels::is_finite(g2))  // check_pass's count, only when the sum shows one
            for (std::uint32_t j = 0; j < len; ++j)
              out[m].bad += kernels::is_finite(static_cast<T>(g[j]) * p.inv_scale) ? 0.0 : 1.0;
        }
        return;
      }
    }
    group_form<kernels::check_pass<T>>::run(kernels::check_pass<T>{p.inv_scale}, v, out);
    for (std::uint32_t m = 0; m < M; ++m) {
      if (!(v[m].flags & tensor_flags::perturb)) continue;
      if (kernels::mask_is_all<Mask> || !(v[m].flags & tensor_flags::mask_eligible)) {
        out[m].n2 = out[m].g2;  // every entry is in: the mask is 1 here
        out[m].d2 = out[m].g2;
        out[m].kept = double(v[m].len);
        continue;
      }
      if constexpr (!kernels::mask_is_all<Mask>) {
        const std::uint64_t base = v[m].index;
        const std::uint32_t flags = v[m].flags, len = v[m].len;
        if (!p.mask.element_units()) {  // not eight bits per eight entries: the element path's sums
          out[m] = strand_sum<kernels::grad_stats>(len, [&](std::uint32_t j) {
            return p(elem<W, G>{v[m].w[j], v[m].g[j], base + j, 0, 0, flags});
          });
          continue;
        }
        double kept = 0, all = 0;  // `all` is out[m].g2 (the same order), summed by the check's form
        const double d2 = masked_sum_squares_strands(
            v[m].g, len, p.inv_scale, [&](std::uint32_t j) { return p.mask.bits8(base + j); },
            [&](std::uint32_t j) { return p.mask(base + j, flags); }, kept, all);
        out[m].d2 = d2;
        out[m].kept = kept;
        out[m].n2 = p.norm_over_mask ? d2 : out[m].g2;
      }
    }
  }

 private:
  /// Whether every segment of the group is perturbed and eligible for the mask (an empty one, the
  /// short group's filler, is either).
  template <class W, class G, std::uint32_t M>
  static FLATMIN_SUM_INLINE bool every_segment_masked(const segment_view<W, G> (&v)[M]) {
    constexpr std::uint32_t both = tensor_flags::perturb | tensor_flags::mask_eligible;
    bool all = true;
    for (std::uint32_t m = 0; m < M; ++m) all = all && ((v[m].flags & both) == both || v[m].len == 0);
    return all;
  }
};

/// The statistics of a term that reads a buffer of the optimizer instead of the gradient
/// (Momentum-SAM's: norm = dir = −m[i], `Term::reads_buffer`), every entry masked in: Σn² = Σd² =
/// Σm² over perturbed tensors from one vectorised sum of the buffer's run (no gradient statistics:
/// the views hold no gradient of this step), kept = len. Σ(−m)² is Σm² bit for bit.
template <class T, class Term, class Mask>
  requires(kernels::stats_pass<T, Term, Mask>::buffer_term && kernels::mask_is_all<Mask>)
struct group_form<kernels::stats_pass<T, Term, Mask>> {
  using pass = kernels::stats_pass<T, Term, Mask>;

  template <class W, class G, std::uint32_t M>
  static FLATMIN_SUM_INLINE void run(const pass& p, const segment_view<W, G> (&v)[M],
                                     group_out<kernels::grad_stats> out) {
    for (std::uint32_t m = 0; m < M; ++m) out[m] = kernels::grad_stats{};
    if (p.term.v == nullptr) {  // no momentum yet: every norm is 0, the count is still kept
      for (std::uint32_t m = 0; m < M; ++m)
        if (v[m].flags & tensor_flags::perturb) out[m].kept = double(v[m].len);
      return;
    }
    const T* b[M];
    std::uint32_t len[M];
    double b2[M];
    for (std::uint32_t m = 0; m < M; ++m) {
      const bool in = (v[m].flags & tensor_flags::perturb) != 0;
      b[m] = p.term.v + v[m].index;
      len[m] = in ? v[m].len : 0u;  // a tensor that is not perturbed adds nothing
    }
    sum_squares_strands(b, len, T(1), b2);
    for (std::uint32_t m = 0; m < M; ++m) {
      out[m].n2 = b2[m];
      out[m].d2 = b2[m];
      out[m].kept = double(len[m]);
    }
  }
};

/// The statistics of a term that is not rescaled to a radius (perturb::gaussian's), every entry
/// masked in: the gradient's Σg² and non-finite count (check_pass's form), kept = len on
/// perturbed tensors; no Σn², Σd².
template <class T, class Term, class Mask>
  requires(!kernels::stats_pass<T, Term, Mask>::normalised && kernels::mask_is_all<Mask>)
struct group_form<kernels::stats_pass<T, Term, Mask>> {
  using pass = kernels::stats_pass<T, Term, Mask>;

  template <class W, class G, std::uint32_t M>
  static FLATMIN_SUM_INLINE void run(const pass& p, const segment_view<W, G> (&v)[M],
                                     group_out<kernels::grad_stats> out) {
    group_form<kernels::check_pass<T>>::run(kernels::check_pass<T>{p.inv_scale}, v, out);
    for (std::uint32_t m = 0; m < M; ++m)
      if (v[m].flags & tensor_flags::perturb) out[m].kept = double(v[m].len);
  }
};

/// The sparse masks' element scores (kernels/unit_scores.hpp): each segment's scores written and
/// its count of non-finite scores, with what the element path decides per entry (the tensor's
/// flags, the estimator, whether a sum is read and where) decided once per segment, so that the
/// entry loops vectorise. The scores are the element path's, term for term; the partials are
/// counts, the same in any order. (The element path, scalar, was 40 % of a Fisher refresh at 10^7:
/// bench_masks BM_fisher_refresh.)
template <class T>
struct group_form<kernels::element_scores<T>> {
  /// Segment by segment: its segments are adjacent (apart, the estimate took 1.2-1.5x as long:
  /// bench_masks BM_fisher_estimate, one thread, 10^7).
  static constexpr bool one_at_a_time = true;

  template <class W, class G, std::uint32_t M>
  static FLATMIN_SUM_INLINE void run(const kernels::element_scores<T>& p, const segment_view<W, G> (&v)[M],
                                     group_out<double> out) {
    for (std::uint32_t m = 0; m < M; ++m) out[m] = static_cast<double>(segment(p, v[m].g, v[m]));
  }

  /// One segment's scores written; returns its count of non-finite scores.
  template <class W, class G>
  static FLATMIN_SUM_INLINE std::uint32_t segment(const kernels::element_scores<T>& p,
                                                  const G* FLATMIN_RESTRICT g, const segment_view<W, G>& v) {
    T* FLATMIN_RESTRICT o = p.out + v.index;
    const T s = p.inv_scale;
    const std::uint32_t len = v.len;
    if (!kernels::candidate_flags(v.flags)) {
      std::uint32_t bad = 0;
      for (std::uint32_t j = 0; j < len; ++j) o[j] = T(-1);
      if (p.check_all)
        for (std::uint32_t j = 0; j < len; ++j) {
          const T x = static_cast<T>(g[j]) * s;
          bad += x - x == T(0) ? 0u : 1u;
        }
      return bad;
    }
    switch (p.what) {
      case kernels::score_of::square:
        return entries<kernels::score_of::square>(g, p.from ? p.from + v.index : nullptr, o, len, s);
      case kernels::score_of::magnitude:
        return entries<kernels::score_of::magnitude>(g, p.from ? p.from + v.index : nullptr, o, len, s);
      case kernels::score_of::zero:
        break;
    }
    for (std::uint32_t j = 0; j < len; ++j) o[j] = T(0);
    return 0;
  }

 private:
  /// out[j] = from[j] + h(g[j] · s) (h alone without `from`; in place when from is out).
  template <kernels::score_of What, class G>
  static FLATMIN_SUM_INLINE std::uint32_t entries(const G* FLATMIN_RESTRICT g, const T* from, T* out,
                                                  std::uint32_t len, T s) {
    std::uint32_t bad = 0;
    if (from == nullptr) {
      T* FLATMIN_RESTRICT o = out;
      for (std::uint32_t j = 0; j < len; ++j) {
        const T h = kernels::score_term(static_cast<T>(g[j]) * s, What);
        o[j] = h;
        bad += h - h == T(0) ? 0u : 1u;
      }
    } else if (from == out) {
      T* FLATMIN_RESTRICT o = out;
      for (std::uint32_t j = 0; j < len; ++j) {
        const T h = kernels::score_term(static_cast<T>(g[j]) * s, What);
        o[j] = o[j] + h;
        bad += h - h == T(0) ? 0u : 1u;
      }
    } else {
      const T* FLATMIN_RESTRICT f = from;
      T* FLATMIN_RESTRICT o = out;
      for (std::uint32_t j = 0; j < len; ++j) {
        const T h = kernels::score_term(static_cast<T>(g[j]) * s, What);
        o[j] = f[j] + h;
        bad += h - h == T(0) ? 0u : 1u;
      }
    }
    return bad;
  }
};

/// A statistics pass with the sparse mask's element scores (kernels::stats_scores_pass): the
/// statistics pass's own form over the group, then each segment's scores while its gradients are
/// still in cache (check_copy_pass's order). Where the statistics have no form, neither has this.
template <class Stats, class T>
struct group_form<kernels::stats_scores_pass<Stats, T>> {
  static constexpr bool one_at_a_time = true;
  template <class W, class G, std::uint32_t M>
    requires has_group_form<Stats, kernels::grad_stats, W, G, M>
  static FLATMIN_SUM_INLINE void run(const kernels::stats_scores_pass<Stats, T>& p,
                                     const segment_view<W, G> (&v)[M], group_out<kernels::grad_stats> out) {
    group_form<std::remove_cvref_t<Stats>>::run(p.stats, v, out);
    for (std::uint32_t m = 0; m < M; ++m)
      static_cast<void>(group_form<kernels::element_scores<T>>::segment(p.scores, v[m].g, v[m]));
  }
};

}  // namespace flatmin::backend::host
