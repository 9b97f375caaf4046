#pragma once
/// @file segment_forms.hpp
/// backend::eigen's segment forms of the ascent and the restore under an element bit mask
/// (kernels/sam_passes.hpp): the values of the element path, the mask read eight bits per lookup
/// and blended in by integer lanes (mask_lanes.hpp); and of RWP's random ascent, row by row. A
/// pass without a form here runs element by element.

#include <cstdint>
#include <type_traits>

#include "../../kernels/gaussian.hpp"
#include "../../kernels/sam_passes.hpp"
#include "mask_lanes.hpp"

namespace flatmin::backend::host {

/// `segment_form<F>::run(f, view, slot)` runs pass f over one segment (`slot`: the saved slot of
/// its first entry); none by default.
template <class F>
struct segment_form {};

/// Whether pass F has a segment form over segments of T (what backend::eigen::for_each asks).
template <class F, class T>
concept has_segment_form = requires(const F& f, const segment_view<T>& v, std::uint64_t slot) {
  segment_form<std::remove_cvref_t<F>>::run(f, v, slot);
};

/// What a segment form under an element bit mask leaves to the element path: a segment of an
/// unperturbed tensor (nothing to do), of a tensor the mask does not cover, or of units that are
/// not elements (entry by entry through `f`). True when it handled the segment.
template <class T, class Mask, class F>
FLATMIN_SUM_INLINE bool by_elements(const F& f, const Mask& mask, const segment_view<T>& v,
                                    std::uint64_t slot) {
  if (!(v.flags & tensor_flags::perturb)) return true;
  if ((v.flags & tensor_flags::mask_eligible) && mask.element_units()) return false;
  for (std::uint32_t j = 0; j < v.len; ++j) f(elem<T>{v.w[j], v.g[j], v.index + j, slot + j, 0, v.flags});
  return true;
}

/// saved ← w;  w ← w + scale · dir(w, g), blended in by the mask's lanes.
template <class T, class Term, element_bit_mask Mask>
struct segment_form<kernels::ascend_pass<T, Term, Mask>> {
  static FLATMIN_SUM_INLINE void run(const kernels::ascend_pass<T, Term, Mask>& p, const segment_view<T>& v,
                  std::uint64_t slot) {
    if (by_elements(p, p.mask, v, slot)) return;
    T* FLATMIN_RESTRICT w = v.w;
    const T* FLATMIN_RESTRICT g = v.g;
    T* FLATMIN_RESTRICT sv = p.saved + slot;
    for_each_mask_lane<T>(v.len, v.index, v.flags, p.mask, [&](std::uint32_t j, kernels::lane_t<T> m) {
      const T x = w[j];
      sv[j] = x;
      w[j] = kernels::blend_lanes<T>(m, x + p.scale * p.term.dir(x, g[j] * p.inv_scale, v.index + j, v.flags),
                                     x);
    });
  }
};

/// RWP's ascent (kernels::gaussian_term, every entry masked in, the weights their own compute
/// type): the segment row by row, each row's norm read once, so that the inner loop is the draws
/// alone and vectorises (about 5× the element path on AVX2: bench_passes opt_rwp_sgd). The
/// operations per entry are the element path's, so are the bits. The term has been resolved for
/// the segment's tensor (`for_tensor`).
template <class T, class Mask, class Store>
  requires(kernels::mask_is_all<Mask> && !Store::master)
struct segment_form<kernels::ascend_pass<T, kernels::gaussian_term<T>, Mask, T, Store>> {
  using pass = kernels::ascend_pass<T, kernels::gaussian_term<T>, Mask, T, Store>;
  static FLATMIN_SUM_INLINE void run(const pass& p, const segment_view<T>& v, std::uint64_t slot) {
    if (!(v.flags & tensor_flags::perturb)) return;
    const kernels::gaussian_term<T>& term = p.term;
    T* FLATMIN_RESTRICT w = v.w;
    T* FLATMIN_RESTRICT sv = p.saved + slot;
    const T scale = p.scale;
    const std::uint64_t seed = term.seed, stream = term.stream, index = v.index;
    std::uint32_t j = 0;
    const kernels::row_locator& at = term.at;
    while (j < v.len) {
      const std::uint64_t x = index + j - at.offset;  // the entry's place in its tensor
      const std::uint64_t row = x / at.row_length;
      const std::uint64_t left = (row + 1) * at.row_length - x;  // entries of this row from j on
      const std::uint32_t stop = left < v.len - j ? j + static_cast<std::uint32_t>(left) : v.len;
      const double n = static_cast<double>(term.norms[at.first_row + row]);
      for (; j < stop; ++j) {
        const T w0 = w[j];
        sv[j] = w0;
        const double z = kernels::standard_normal(kernels::counter_hash(seed, stream, index + j));
        const T d = static_cast<T>(n * z);
        w[j] = w0 + scale * d;
      }
    }
  }
};

/// w ← saved, blended in by the mask's lanes.
template <class T, element_bit_mask Mask>
struct segment_form<kernels::restore_pass<T, Mask>> {
  static FLATMIN_SUM_INLINE void run(const kernels::restore_pass<T, Mask>& p, const segment_view<T>& v,
                                     std::uint64_t slot) {
    if (by_elements(p, p.mask, v, slot)) return;
    T* FLATMIN_RESTRICT w = v.w;
    const T* FLATMIN_RESTRICT sv = p.saved + slot;
    for_each_mask_lane<T>(v.len, v.index, v.flags, p.mask, [&](std::uint32_t j, kernels::lane_t<T> m) {
      w[j] = kernels::blend_lanes<T>(m, sv[j], w[j]);
    });
  }
};

}  // namespace flatmin::backend::host
